"""The worker's values of charts before 0.5.0 still work: the top-level workerDefaults, workerServiceAccount,
workerService, workerEngineImages and workers render what the same values under `worker` render, win over
`worker` where they are set, and make the install notes name each one used with its new place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import (
    ENGINE_VALUES,
    FULL_VALUES,
    OLD_WORKER_KEYS,
    Render,
    example,
    with_old_worker_keys,
)
from tests.chart.helm import RELEASE, Helm, Manifest, containers, env_values, one

# Every key under `worker`, each away from its default: the shared ServiceAccount and Service, an engine image.
SHARED_VALUES: dict[str, Any] = {
    "worker": {
        "defaults": {
            "replicas": 2,
            "image": {"tag": "0.2.0"},
            "settings": {"max_queue": 8},
            "podLabels": {"team": "serving"},
            "podDisruptionBudget": {"maxUnavailable": "25%"},
        },
        "serviceAccount": {"name": "serving", "annotations": {"example.com/role": "worker"}},
        "service": {"annotations": {"example.com/scrape": "true"}},
        "engineImages": {"vllm": "team/vllm-worker"},
        "pools": [
            {"name": "v", "engine": "vllm", "gpus": 1, "model": {"name": "m", "source": "modelStore", "path": "m"}},
            {"name": "s", "engine": "sim", "model": {"name": "sim", "source": "none"}, "settings": {"max_queue": 4}},
        ],
    },
}
VALUE_SETS = {"full": FULL_VALUES, "engines": ENGINE_VALUES, "shared": SHARED_VALUES}
EXAMPLE_NAMES = ["values-gpu.yaml", "values-cpu-demo.yaml"]
NOTE = "DEPRECATED VALUES: chart 0.5.0 moved the worker values under one key, `worker`."


def comparable(manifests: list[Manifest]) -> list[Manifest]:
    """The rendered objects, less what differs between any two renderings (generated Secrets' data)."""
    return [
        {k: v for k, v in m.items() if k not in ("data", "stringData")} if m["kind"] == "Secret" else m
        for m in manifests
    ]


def test_the_example_files_use_only_the_new_keys() -> None:
    for name in EXAMPLE_NAMES:
        values = yaml.safe_load(example(name).read_text())
        assert "worker" in values, name
        assert not set(OLD_WORKER_KEYS) & set(values), name


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_old_keys_render_what_the_new_keys_render(render: Render, name: str) -> None:
    new = render(values=VALUE_SETS[name])
    old = render(values=with_old_worker_keys(VALUE_SETS[name]))
    assert comparable(old) == comparable(new)
    assert any(m["kind"] == "Deployment" and m["metadata"]["labels"].get("bailu/worker-pool") for m in new)


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_an_example_file_written_with_the_old_keys_renders_the_same(render: Render, name: str) -> None:
    path: Path = example(name)
    old = render(values=with_old_worker_keys(yaml.safe_load(path.read_text())))
    assert comparable(old) == comparable(render([path]))


def test_the_shared_values_reach_their_objects(render: Render) -> None:
    """SHARED_VALUES (compared above) really sets the worker's shared objects, so the comparison covers them."""
    manifests = render(values=with_old_worker_keys(SHARED_VALUES))
    account = one(manifests, "ServiceAccount", "serving")
    assert account["metadata"]["annotations"] == {"example.com/role": "worker"}
    service = one(manifests, "Service", f"{RELEASE}-worker")
    assert service["metadata"]["annotations"] == {"example.com/scrape": "true"}
    deployment = one(manifests, "Deployment", f"{RELEASE}-worker-v")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "serving"
    assert containers(deployment)[0]["image"] == "team/vllm-worker:0.2.0"
    assert one(manifests, "PodDisruptionBudget", f"{RELEASE}-worker-s")["spec"]["maxUnavailable"] == "25%"


def test_an_old_key_wins_over_the_new_place_only_where_set(render: Render) -> None:
    """As a values file's keys won over the chart's defaults: maps merged deeply (a null removes a key), the
    `workers` list replacing worker.pools whole."""
    pools = SHARED_VALUES["worker"]["pools"]
    mixed = {
        "worker": {
            "defaults": {"replicas": 3, "settings": {"max_queue": 8, "max_batch_size": 2}},
            "serviceAccount": {"annotations": {"example.com/role": "worker"}},
            "pools": pools,
        },
        "workerDefaults": {"settings": {"max_queue": 7}, "resources": {"limits": None}},
        "workerServiceAccount": {"name": "serving"},
        "workers": pools[:1],
    }
    merged = {
        "worker": {
            "defaults": {
                "replicas": 3,
                "settings": {"max_queue": 7, "max_batch_size": 2},
                "resources": {"limits": None},
            },
            "serviceAccount": {"name": "serving", "annotations": {"example.com/role": "worker"}},
            "pools": pools[:1],
        }
    }
    manifests = render(values=mixed)
    assert comparable(manifests) == comparable(render(values=merged))
    deployments = [m for m in manifests if m["kind"] == "Deployment" and "bailu/worker-pool" in m["metadata"]["labels"]]
    assert [m["metadata"]["name"] for m in deployments] == [f"{RELEASE}-worker-v"]
    worker = next(c for c in containers(deployments[0]) if c["name"] == "worker")
    assert deployments[0]["spec"]["replicas"] == 3
    assert env_values(worker)["BAILU_WORKER_MAX_QUEUE"] == "7"
    assert env_values(worker)["BAILU_WORKER_MAX_BATCH_SIZE"] == "2"
    assert worker["resources"]["limits"] == {"nvidia.com/gpu": 1}  # no memory limit: the null removed it
    assert one(manifests, "ServiceAccount", "serving")["metadata"]["annotations"] == {"example.com/role": "worker"}


def test_the_notes_name_each_old_key_used_and_its_new_place(helm: Helm) -> None:
    old = helm.notes(with_old_worker_keys(SHARED_VALUES))
    assert NOTE in old
    lines = old.split(NOTE, 1)[1].splitlines()
    named = [line.strip() for line in lines if line.strip().startswith("- ")]
    assert named == [f"- {key} → worker.{OLD_WORKER_KEYS[key]}" for key in sorted(OLD_WORKER_KEYS)]
    # Apart from the note, the notes are those of the same values under the new keys.
    assert old.split("\n\n" + NOTE, 1)[0] == helm.notes(SHARED_VALUES).rstrip("\n")


def test_the_notes_name_only_the_old_keys_used(helm: Helm) -> None:
    notes = helm.notes({"workerService": {"annotations": {"example.com/scrape": "true"}}})
    assert NOTE in notes
    assert "- workerService → worker.service" in notes
    assert "workerDefaults" not in notes
    assert "workers →" not in notes


@pytest.mark.parametrize("values", [None, SHARED_VALUES, FULL_VALUES], ids=["defaults", "shared", "full"])
def test_no_deprecation_note_without_old_keys(helm: Helm, values: dict[str, Any] | None) -> None:
    assert "DEPRECATED" not in helm.notes(values)
