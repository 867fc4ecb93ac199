"""Worker pools on every engine: the image, settings, shared memory, probes and GPUs each engine's pods get.

The engine servers (vLLM, SGLang, LmDeploy, swift) run as child processes of the worker on localhost; these tests
check what the chart gives them, down to the command line the worker would start from the rendered environment.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

import pytest
import yaml

from bailu.worker.engines.server.dialects import DIALECTS
from bailu.worker.engines.server.http import HttpEngine
from bailu.worker.settings import EngineKind, WorkerSettings
from tests.chart.conftest import ENGINE_VALUES, Render
from tests.chart.helm import (
    CHART,
    RELEASE,
    REPO,
    Helm,
    Manifest,
    containers,
    env_values,
    mounts,
    objects,
    one,
    pod_spec,
    volumes,
)
from tests.chart.kube import claimed_versions, validation_error

DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())
APP_VERSION = str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])
POOLS: dict[str, dict[str, Any]] = {pool["name"]: pool for pool in ENGINE_VALUES["worker"]["pools"]}
# Engines that come in an image of their own: docker/worker-<engine>.Dockerfile (worker-cpu is the plain worker's).
ENGINE_DOCKERFILES = {
    path.name.removeprefix("worker-").removesuffix(".Dockerfile"): path
    for path in sorted((REPO / "docker").glob("worker-*.Dockerfile"))
    if path.name != "worker-cpu.Dockerfile"
}
ENGINE_SERVER_ENV = {
    "BAILU_WORKER_ENGINE_HOST",
    "BAILU_WORKER_TENSOR_PARALLEL_SIZE",
    "BAILU_WORKER_ENGINE_START_TIMEOUT_S",
    "BAILU_WORKER_ENGINE_STOP_GRACE_S",
}


def pool_value(pool: dict[str, Any], key: str) -> Any:
    """A pool's value as the chart resolves it: the entry's, else worker.defaults'."""
    return pool.get(key, DEFAULTS["worker"]["defaults"][key])


def worker(manifests: list[Manifest], pool: str) -> tuple[Manifest, dict[str, Any]]:
    deployment = one(manifests, "Deployment", f"{RELEASE}-worker-{pool}")
    return deployment, next(c for c in containers(deployment) if c["name"] == "worker")


def startup_budget(probe: dict[str, Any]) -> int:
    """Seconds a startup probe lets a container start, with Kubernetes' defaults."""
    return int(probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3))


def worker_settings(container: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> WorkerSettings:
    """WorkerSettings as the worker in this container reads them (variables from Secrets left out)."""
    for name in [n for n in os.environ if n.startswith("BAILU_")]:
        monkeypatch.delenv(name)
    for name, value in env_values(container).items():
        if name.startswith("BAILU_WORKER_"):
            monkeypatch.setenv(name, value)
    return WorkerSettings()


def test_the_test_values_have_a_pool_per_engine() -> None:
    assert {pool["engine"] for pool in POOLS.values()} == {kind.value for kind in EngineKind}


def test_engine_images_are_the_images_make_builds() -> None:
    """worker.engineImages names exactly the engines with a Dockerfile of their own, each an engine the worker
    knows, in the image that Dockerfile's ENV says and that `make images` builds from it."""
    images = DEFAULTS["worker"]["engineImages"]
    assert set(images) == set(ENGINE_DOCKERFILES)
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(schema["definitions"]["engineImages"]["properties"]) == set(images)
    assert set(images) <= {kind.value for kind in EngineKind}
    makefile = (REPO / "Makefile").read_text()
    for engine, dockerfile in ENGINE_DOCKERFILES.items():
        assert re.search(rf"^\s*BAILU_WORKER_ENGINE={engine}\b", dockerfile.read_text(), re.M), dockerfile
        line = f"$(DOCKER) build -f docker/{dockerfile.name} -t $(IMAGE_REGISTRY){images[engine]}:$(IMAGE_TAG) ."
        assert line in makefile, f"the images target does not build {images[engine]}"


@pytest.mark.parametrize("name", list(POOLS))
def test_each_pool_runs_its_engine(engine_manifests: list[Manifest], name: str) -> None:
    pool = POOLS[name]
    engine = pool["engine"]
    deployment, c = worker(engine_manifests, name)
    env = env_values(c)
    assert env["BAILU_WORKER_ENGINE"] == engine
    assert deployment["metadata"]["labels"]["bailu/engine"] == engine
    # The engine's own image unless the pool names one; the tag and pull policy of worker.defaults.image.
    if engine in DEFAULTS["worker"]["engineImages"]:
        assert c["image"] == f"bailu/worker-{engine}:{APP_VERSION}"
        # The engine image's ENTRYPOINT starts the worker.
        assert "args" not in c
        assert "command" not in c
    else:
        assert c["image"] == f"{DEFAULTS['worker']['defaults']['image']['repository']}:{APP_VERSION}"
        assert c["args"] == ["python", "-m", "bailu.worker"]
    assert c["imagePullPolicy"] == DEFAULTS["worker"]["defaults"]["image"]["pullPolicy"]
    # Only the worker's ports: the engine server listens on localhost, unreachable from outside the pod.
    assert {(p["name"], p["containerPort"]) for p in c["ports"]} == {("grpc", 50051), ("http-metrics", 9091)}
    # Shared memory for the engine's processes, sized by the pool's value.
    assert mounts(c)["/dev/shm"]["name"] == "shm"
    assert volumes(deployment)["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": pool_value(pool, "shmSizeLimit")}
    # GPUs requested as the pool's extended resource, and only for pools that have some.
    gpus = pool_value(pool, "gpus")
    resource = pool_value(pool, "gpuResourceName")
    if gpus:
        assert c["resources"]["limits"][resource] == c["resources"]["requests"][resource] == gpus
    else:
        assert resource not in c["resources"].get("limits", {})
    # Probes on the worker's probe server; the startup probe allows a long load.
    startup = c["startupProbe"]
    assert startup == pool_value(pool, "startupProbe")
    assert startup["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    assert startup_budget(startup) >= 15 * 60
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert c["securityContext"] == DEFAULTS["containerSecurityContext"]


@pytest.mark.parametrize("name", list(POOLS))
def test_engine_servers_get_their_settings(engine_manifests: list[Manifest], name: str) -> None:
    """The engine-server settings the chart sets itself, for exactly the engines the worker runs as servers."""
    pool = POOLS[name]
    deployment, c = worker(engine_manifests, name)
    env = env_values(c)
    drain = float(env["BAILU_WORKER_DRAIN_GRACE_S"])
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    if pool["engine"] not in DIALECTS:
        assert not ENGINE_SERVER_ENV & set(env), "in-process engines get no engine-server settings"
        assert grace == math.ceil(drain) + pool_value(pool, "terminationGraceExtraSeconds")
        return
    assert env["BAILU_WORKER_ENGINE_HOST"] == "127.0.0.1"
    expected_tp = pool.get("tensorParallelSize") or max(1, pool_value(pool, "gpus"))
    assert env["BAILU_WORKER_TENSOR_PARALLEL_SIZE"] == str(expected_tp)
    assert float(env["BAILU_WORKER_ENGINE_START_TIMEOUT_S"]) == startup_budget(c["startupProbe"])
    stop = float(env["BAILU_WORKER_ENGINE_STOP_GRACE_S"])
    assert stop == pool_value(pool, "engineStopGraceSeconds")
    # The kubelet waits for the drain and then for the engine's processes to exit.
    assert grace == math.ceil(drain) + math.ceil(stop) + pool_value(pool, "terminationGraceExtraSeconds")
    assert grace > drain + stop


def test_the_startup_probe_bounds_the_engine_start(engine_manifests: list[Manifest]) -> None:
    _, c = worker(engine_manifests, "lmdeploy")
    assert env_values(c)["BAILU_WORKER_ENGINE_START_TIMEOUT_S"] == str(60 + 15 * 160)
    _, c = worker(engine_manifests, "vllm")
    assert env_values(c)["BAILU_WORKER_ENGINE_START_TIMEOUT_S"] == str(10 * 90)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "vllm",
            [
                "--host 127.0.0.1",
                "--tensor-parallel-size 2",
                "--gpu-memory-utilization 0.85",
                "--enable-lora --max-loras 8 --max-lora-rank 32",
                "--lora-modules poet=/models/adapters/poet/v1",
                "--enable-prefix-caching --dtype bfloat16",
            ],
        ),
        ("sglang", ["--host 127.0.0.1 --port 30000", "--tp-size 2", "--mem-fraction-static 0.9", "--dp-size 2"]),
        ("lmdeploy", ["--server-name 127.0.0.1", "--tp 1", "--cache-max-entry-count 0.9"]),
        ("swift", ["--host 127.0.0.1", "--model_type qwen2", "--template qwen2_5"]),
    ],
)
def test_the_worker_starts_the_engine_the_values_describe(
    engine_manifests: list[Manifest], monkeypatch: pytest.MonkeyPatch, name: str, expected: list[str]
) -> None:
    """From the rendered environment, the worker's own code builds the engine's command line and supervisor."""
    _, c = worker(engine_manifests, name)
    settings = worker_settings(c, monkeypatch)
    engine = HttpEngine.from_settings(settings)
    argv = " ".join(
        engine.dialect.argv(engine.config, engine.server.options.executable, engine.server.options.extra_args)
    )
    assert "/models/base/Qwen2.5-7B-Instruct" in argv, "the checkpoint in the model store"
    for part in expected:
        assert part in argv, argv
    assert engine.server.supervisor.start_timeout_s == startup_budget(c["startupProbe"])
    assert engine.server.supervisor.stop_grace_s == pool_value(POOLS[name], "engineStopGraceSeconds")
    for key, value in POOLS[name].get("settings", {}).items():
        assert getattr(settings, key) == value, key


def test_engine_servers_stay_inside_the_pod(engine_manifests: list[Manifest]) -> None:
    """No Service port and no NetworkPolicy rule beyond the worker's gRPC and metrics ports."""
    service = one(engine_manifests, "Service", f"{RELEASE}-worker")
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"grpc", "http-metrics"}
    policy = one(engine_manifests, "NetworkPolicy", f"{RELEASE}-worker")
    ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule.get("ports", [])}
    assert ports == {"grpc", "http-metrics"}
    for deployment in objects(engine_manifests, "Deployment"):
        for c in containers(deployment):
            assert {p["containerPort"] for p in c.get("ports", [])} <= {50051, 9091, 8000, 9092}


@pytest.mark.parametrize("kube_version", claimed_versions())
def test_engine_pools_validate(render: Render, kube_version: str) -> None:
    manifests = render(values=ENGINE_VALUES, kube_version=kube_version)
    errors = [e for m in manifests if m["kind"] == "Deployment" and (e := validation_error(m, kube_version))]
    assert not errors, "\n".join(errors)


def test_engine_images_follow_the_registry_and_tag(render: Render) -> None:
    values = {
        "imageRegistry": "registry.example.com/mirror/",
        "worker": {
            "defaults": {"image": {"repository": "bailu/worker", "tag": "0.2.0-rc1", "pullPolicy": "Always"}},
            "engineImages": {"sglang": "team/sglang-worker"},
            "pools": [
                {**POOLS["vllm"]},
                {**POOLS["sglang"]},
                {
                    **POOLS["lmdeploy"],
                    "image": {"repository": "team/lmdeploy-custom", "tag": "7", "pullPolicy": "Never"},
                },
                {**POOLS["swift"]},
            ],
        },
    }
    manifests = render(values=values)
    images = {name: worker(manifests, name)[1] for name in ("vllm", "sglang", "lmdeploy", "swift")}
    assert images["vllm"]["image"] == "registry.example.com/mirror/bailu/worker-vllm:0.2.0-rc1"
    assert images["sglang"]["image"] == "registry.example.com/mirror/team/sglang-worker:0.2.0-rc1"
    assert images["vllm"]["imagePullPolicy"] == images["sglang"]["imagePullPolicy"] == "Always"
    # A pool's own image wins over its engine's.
    assert images["lmdeploy"]["image"] == "registry.example.com/mirror/team/lmdeploy-custom:7"
    assert images["lmdeploy"]["imagePullPolicy"] == "Never"
    assert images["swift"]["image"] == "registry.example.com/mirror/bailu/worker:0.2.0-rc1"


def test_notes_name_each_pools_image(helm: Helm) -> None:
    notes = helm.notes(ENGINE_VALUES)
    assert f"- vllm: engine vllm (image bailu/worker-vllm:{APP_VERSION}), model qwen" in notes
    assert f"- swift: engine swift (image bailu/worker:{APP_VERSION}), model qwen" in notes


def test_engine_stop_grace_defaults_to_the_workers_default() -> None:
    assert (
        DEFAULTS["worker"]["defaults"]["engineStopGraceSeconds"]
        == WorkerSettings.model_fields["engine_stop_grace_s"].default
    )
