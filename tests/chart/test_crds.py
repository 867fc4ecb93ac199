"""The CRD validation machinery works: a custom resource built here against the real KEDA ScaledObject CRD.

The chart renders no custom resource yet (KEDA ScaledObjects and Prometheus Operator objects come
with their own issues); these tests prove that the validation test_render applies to every
rendered custom resource would catch a bad one.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.chart.crds import CrdIndex, gvk, strict_schema

SCALED_OBJECT: dict[str, Any] = {
    "apiVersion": "keda.sh/v1alpha1",
    "kind": "ScaledObject",
    "metadata": {"name": "bailu-worker-gpu", "namespace": "bailu"},
    "spec": {
        "scaleTargetRef": {"name": "bailu-worker-gpu"},
        "minReplicaCount": 1,
        "maxReplicaCount": 4,
        "triggers": [
            {
                "type": "cron",
                "metadata": {
                    "timezone": "Europe/Paris",
                    "start": "0 7 * * 1-5",
                    "end": "0 10 * * 1-5",
                    "desiredReplicas": "4",
                },
            },
            {
                "type": "prometheus",
                "metadata": {
                    "serverAddress": "http://prometheus.monitoring:9090",
                    "query": "sum(queue)",
                    "threshold": "8",
                },
            },
        ],
    },
}


def scaled_object(**spec_changes: Any) -> dict[str, Any]:
    resource = copy.deepcopy(SCALED_OBJECT)
    for key, value in spec_changes.items():
        if value is None:
            del resource["spec"][key]
        else:
            resource["spec"][key] = value
    return resource


def test_the_folder_holds_the_expected_crds(crd_index: CrdIndex) -> None:
    kinds = {kind for (_, _, kind) in crd_index.schemas}
    assert {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PodMonitor", "PrometheusRule"} <= kinds
    assert crd_index.files[gvk(SCALED_OBJECT)] == "keda.sh_scaledobjects.yaml"


def test_a_valid_scaled_object_validates(crd_index: CrdIndex) -> None:
    assert crd_index.has(SCALED_OBJECT)
    assert crd_index.errors(SCALED_OBJECT) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"minReplicaCont": 1}, "'minReplicaCont' was unexpected"),
        ({"maxReplicaCount": "four"}, "spec.maxReplicaCount: 'four' is not of type 'integer'"),
        ({"scaleTargetRef": None}, "'scaleTargetRef' is a required property"),
        ({"triggers": [{"metadata": {}}]}, "'type' is a required property"),
    ],
    ids=["unknown-field", "wrong-type", "missing-required", "bad-trigger"],
)
def test_an_invalid_scaled_object_is_caught(crd_index: CrdIndex, change: dict[str, Any], expected: str) -> None:
    errors = crd_index.errors(scaled_object(**change))
    assert any(expected in e for e in errors), errors


def test_an_unknown_version_has_no_crd(crd_index: CrdIndex) -> None:
    resource = {**SCALED_OBJECT, "apiVersion": "keda.sh/v9"}
    assert not crd_index.has(resource)
    with pytest.raises(KeyError):
        crd_index.errors(resource)


def test_strict_schema_keeps_open_objects_open() -> None:
    schema = {
        "type": "object",
        "properties": {
            "closed": {"type": "object", "properties": {"a": {"type": "string", "nullable": True}}},
            "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"a": {}}},
            "map": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    strict = strict_schema(schema)
    assert strict["additionalProperties"] is False
    assert strict["properties"]["closed"]["additionalProperties"] is False
    assert strict["properties"]["closed"]["properties"]["a"]["type"] == ["string", "null"]
    assert "additionalProperties" not in strict["properties"]["open"]
    assert strict["properties"]["map"]["additionalProperties"] == {"type": "string"}
    assert set(strict["properties"]) >= {"apiVersion", "kind", "metadata"}


@pytest.mark.parametrize(("require", "outcome"), [("1", "1 error"), ("", "1 skipped")], ids=["ci", "elsewhere"])
def test_a_missing_crds_folder_fails_only_where_required(tmp_path: Path, require: str, outcome: str) -> None:
    """.ci/run sets BAILU_REQUIRE_CRDS=1, so CI can never skip the CRD validation."""
    env = {**os.environ, "BAILU_CRDS_DIR": str(tmp_path / "absent"), "BAILU_REQUIRE_CRDS": require}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"{__file__}::test_a_valid_scaled_object_validates",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert outcome in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == (1 if require else 0)
    if require:
        assert "BAILU_REQUIRE_CRDS=1 but the CRDs folder" in proc.stdout
