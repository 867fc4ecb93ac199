"""Fixtures of the chart tests: the real helm binary, cached renderings, the CRD schemas.

helm comes from `make setup` (.venv/bin/helm). Without it the tests fail under CI (CI=true) and
skip elsewhere; without the CRDs folder, CRD validation fails when BAILU_REQUIRE_CRDS=1 (as
.ci/run sets) and skips elsewhere.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.chart.crds import CrdIndex, crds_dir
from tests.chart.helm import EXAMPLES, Helm, Manifest, find_helm, values_key

Render = Callable[..., list[Manifest]]


@pytest.fixture(scope="session")
def helm() -> Helm:
    binary = find_helm()
    if binary is None:
        message = "helm not found: `make setup` installs it into .venv/bin"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return Helm(binary)


@pytest.fixture(scope="session")
def render(helm: Helm) -> Render:
    """render(values_files=(), values=None, kube_version=None): the rendered objects, cached per arguments.

    Tests must not modify what it returns.
    """
    cache: dict[str, list[Manifest]] = {}

    def _render(
        values_files: Sequence[Path] = (), values: dict[str, Any] | None = None, kube_version: str | None = None
    ) -> list[Manifest]:
        key = values_key(values_files, values, kube_version)
        if key not in cache:
            cache[key] = helm.template(values_files, values, kube_version)
        return cache[key]

    return _render


@pytest.fixture(scope="session")
def crd_index() -> CrdIndex:
    folder = crds_dir()
    if not folder.is_dir():
        if os.environ.get("BAILU_REQUIRE_CRDS") == "1":
            pytest.fail(f"BAILU_REQUIRE_CRDS=1 but the CRDs folder {folder} is missing (or set BAILU_CRDS_DIR)")
        pytest.skip(
            f"no CRDs folder at {folder} (set BAILU_CRDS_DIR): custom resources not validated here; CI requires it"
        )
    return CrdIndex.load(folder)


@pytest.fixture(scope="session")
def default_manifests(render: Render) -> list[Manifest]:
    return render()


@pytest.fixture(scope="session")
def gpu_manifests(render: Render) -> list[Manifest]:
    return render([example("values-gpu.yaml")])


@pytest.fixture(scope="session")
def demo_manifests(render: Render) -> list[Manifest]:
    return render([example("values-cpu-demo.yaml")])


def example(name: str) -> Path:
    path = next((p for p in EXAMPLES if p.name == name), None)
    assert path is not None, f"deploy/{name} is missing"
    return path


# The top-level keys of the worker's values before chart 0.5.0 (deprecated, still accepted) → their place under
# `worker`.
OLD_WORKER_KEYS = {
    "workerDefaults": "defaults",
    "workerServiceAccount": "serviceAccount",
    "workerService": "service",
    "workerEngineImages": "engineImages",
    "workers": "pools",
}


def with_old_worker_keys(values: dict[str, Any]) -> dict[str, Any]:
    """The same values with `worker`'s keys written as the deprecated top-level keys."""
    new_to_old = {new: old for old, new in OLD_WORKER_KEYS.items()}
    converted = copy.deepcopy({key: value for key, value in values.items() if key != "worker"})
    for key, value in values.get("worker", {}).items():
        converted[new_to_old[key]] = copy.deepcopy(value)
    return converted


# Values that switch on every optional object and feature of the chart.
FULL_VALUES: dict[str, Any] = {
    "imageRegistry": "registry.example.com/bailu",
    "imagePullSecrets": [{"name": "regcred"}],
    "commonLabels": {"team": "writing"},
    "gateway": {
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 5, "targetCPUUtilizationPercentage": 60},
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "hosts": [{"host": "bailu.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
            "tls": [{"secretName": "bailu-tls", "hosts": ["bailu.example.com"]}],
        },
        "httpRoute": {
            "enabled": True,
            "parentRefs": [{"name": "public", "namespace": "gateway-system"}],
            "hostnames": ["bailu.example.com"],
        },
        "apiKeys": {"extraHashes": ["sha256:" + "ab" * 32]},
        "settings": {"log_level": "DEBUG", "max_body_bytes": 2097152, "request_timeout_s": 90.5, "host": "::"},
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}
        ],
        "priorityClassName": "bailu-high",
    },
    "worker": {
        "defaults": {"settings": {"warmup": True, "max_queue": 16}, "drainGraceSeconds": 45.5},
        "pools": [
            {
                "name": "gpu",
                "engine": "transformers",
                "replicas": 0,
                "gpus": 2,
                "model": {
                    "name": "big",
                    "source": "modelStore",
                    "path": "base/big",
                    "type": "qwen2",
                    "template": "qwen2_5",
                },
                "adapters": {"poet": "adapters/poet/v3", "legal": "/opt/adapters/legal"},
                "settings": {"warmup": False},
                "runtimeClassName": "nvidia",
                "podDisruptionBudget": {"enabled": True, "maxUnavailable": "50%"},
            },
            {
                "name": "sim",
                "engine": "sim",
                "model": {"name": "bailu-sim", "source": "none"},
                "extraEnv": [{"name": "OMP_NUM_THREADS", "value": "1"}],
            },
        ],
    },
    "collector": {
        "replicas": 2,
        "startTrainingRuns": True,
        "trigger": {
            "minNewPairs": 50,
            "cooldownSeconds": 7200.5,
            "dailyCap": 0,
            "peakWindow": "22:00-24:00",
            "timezone": "Europe/Paris",
            "intervalSeconds": 15,
        },
        "settings": {"block_list": ["lorem ipsum", "spam"], "min_letter_share": 0.75, "claim_idle_ms": 120000},
        "nodeSelector": {"pool": "cpu"},
        "serviceAccount": {"annotations": {"example.com/role": "collector"}},
    },
    "trainer": {
        "workerPool": "gpu",
        "adapterName": "legal-poet",
        "rlhfType": "dpo",
        "gpus": 2,
        "gpuResourceName": "nvidia.com/mig-3g.40gb",
        "schedule": "30 2 * * 6",
        "timeZone": "Europe/Paris",
        "suspend": False,
        "settings": {
            "learning_rate": 0.0002,
            "max_steps": 500,
            "quant_bits": 4,
            "merge": True,
            "quantize": "awq",
            "extra_sft_args": "--gradient_checkpointing true --warmup_ratio 0.05",
        },
        "extraEnv": [{"name": "NCCL_DEBUG", "value": "WARN"}],
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "runtimeClassName": "nvidia",
        "priorityClassName": "batch-low",
        "podLabels": {"team": "ml"},
        "serviceAccount": {"annotations": {"example.com/role": "trainer"}},
    },
    "registry": {"path": "registry/v1"},
    "storage": {"modelStore": {"storageClassName": "-"}, "datasets": {"storageClassName": "nfs-client", "keep": False}},
    "networkPolicy": {
        "extraEgress": [{"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}], "ports": [{"port": 6380, "protocol": "TCP"}]}],
        "kubernetesApi": {"cidrs": ["198.51.100.10/32", "198.51.100.11/32"]},
    },
}

# Values that use existing Secrets, claims, ServiceAccount and CronJob and an external Redis, with policies
# and tests off.
EXISTING_VALUES: dict[str, Any] = {
    "gateway": {"apiKeys": {"existingSecret": "my-keys", "hashesKey": "hashes", "plainKeyKey": "key"}},
    "redis": {"enabled": False, "external": {"url": "rediss://redis.example.com:6380/0", "existingSecret": "redis-pw"}},
    "storage": {"modelStore": {"existingClaim": "models"}, "datasets": {"existingClaim": "data", "mountPath": "/data"}},
    "collector": {
        "startTrainingRuns": True,
        "trainerCronJob": "nightly-trainer",
        "serviceAccount": {"create": False, "name": "ml-jobs"},
        "trigger": {"peakWindow": ""},
    },
    "trainer": {"serviceAccount": {"create": False, "name": "ml-jobs"}},
    "networkPolicy": {"enabled": False},
    "tests": {"enabled": False},
}


# One worker pool per engine the worker knows (bailu.worker.settings.EngineKind; a test keeps the two equal), as
# an operator would write them: the GPU engines with GPUs and no image of their own, each with other engine knobs.
_STORE_MODEL = {"name": "qwen", "source": "modelStore", "path": "base/Qwen2.5-7B-Instruct"}
ENGINE_VALUES: dict[str, Any] = {
    "worker": {
        "pools": [
            {"name": "transformers", "engine": "transformers", "model": _STORE_MODEL},
            {"name": "sim", "engine": "sim", "model": {"name": "bailu-sim", "source": "none"}},
            {
                "name": "vllm",
                "engine": "vllm",
                "gpus": 2,  # tensor parallel over both: tensorParallelSize is unset
                "model": _STORE_MODEL,
                "adapters": {"poet": "adapters/poet/v1"},
                "shmSizeLimit": "8Gi",
                "settings": {
                    "gpu_memory_utilization": 0.85,
                    "max_loras": 8,
                    "max_lora_rank": 32,
                    "engine_args": "--enable-prefix-caching --dtype bfloat16",
                },
            },
            {
                "name": "sglang",
                "engine": "sglang",
                "gpus": 4,
                "tensorParallelSize": 2,  # data parallel over the rest, through engine_args
                "engineStopGraceSeconds": 45.5,
                "model": _STORE_MODEL,
                "settings": {"engine_port": 30000, "engine_args": "--dp-size 2", "engine_restart_limit": 5},
            },
            {
                "name": "lmdeploy",
                "engine": "lmdeploy",
                "gpus": 1,
                "gpuResourceName": "nvidia.com/mig-3g.40gb",
                "model": _STORE_MODEL,
                # A slow model store: 60 s + 15 s x 160 = 41 minutes to load.
                "startupProbe": {
                    "httpGet": {"path": "/readyz", "port": "http-metrics"},
                    "initialDelaySeconds": 60,
                    "periodSeconds": 15,
                    "failureThreshold": 160,
                },
            },
            {
                "name": "swift",
                "engine": "swift",
                "model": {**_STORE_MODEL, "type": "qwen2", "template": "qwen2_5"},
                "settings": {"max_loras": 0},
            },
        ],
    },
}


@pytest.fixture(scope="session")
def full_values() -> dict[str, Any]:
    return FULL_VALUES


@pytest.fixture(scope="session")
def full_manifests(render: Render) -> list[Manifest]:
    return render(values=FULL_VALUES)


@pytest.fixture(scope="session")
def existing_manifests(render: Render) -> list[Manifest]:
    return render(values=EXISTING_VALUES)


@pytest.fixture(scope="session")
def engine_manifests(render: Render) -> list[Manifest]:
    return render(values=ENGINE_VALUES)
