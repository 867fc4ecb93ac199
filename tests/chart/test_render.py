"""The chart lints, renders, and every object it renders is valid for the Kubernetes versions it claims."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chart.conftest import Render
from tests.chart.crds import CrdIndex
from tests.chart.helm import EXAMPLES, Helm, HelmError
from tests.chart.kube import chart_kube_constraint, claimed_versions, is_builtin, parse_version, validation_error

# The default values, then every example values file under deploy/.
VALUE_SETS: list[tuple[Path, ...]] = [(), *((path,) for path in EXAMPLES)]
VALUE_IDS = ["defaults", *(path.name for path in EXAMPLES)]
KUBE_VERSIONS = claimed_versions()


def test_examples_exist() -> None:
    names = {path.name for path in EXAMPLES}
    assert {"values-cpu-demo.yaml", "values-gpu.yaml"} <= names


def test_claimed_versions_span_the_range() -> None:
    """The oldest and newest Kubernetes minor versions the chart claims that kubernetes-validate has schemas for."""
    assert chart_kube_constraint() == ">=1.29.0-0"
    assert parse_version(KUBE_VERSIONS[0])[:2] == (1, 29)
    assert len(KUBE_VERSIONS) == 2
    assert parse_version(KUBE_VERSIONS[1]) > parse_version(KUBE_VERSIONS[0])


@pytest.mark.parametrize("values_files", VALUE_SETS, ids=VALUE_IDS)
def test_lint_strict(helm: Helm, values_files: tuple[Path, ...]) -> None:
    out = helm.lint(values_files)
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out
    assert "[ERROR]" not in out


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_files", VALUE_SETS, ids=VALUE_IDS)
def test_every_object_validates_against_kubernetes_schemas(
    render: Render, values_files: tuple[Path, ...], kube_version: str
) -> None:
    manifests = render(values_files, kube_version=kube_version)
    assert manifests, "nothing rendered"
    builtin = [m for m in manifests if is_builtin(m, kube_version)]
    errors = [e for m in builtin if (e := validation_error(m, kube_version))]
    assert not errors, "\n".join(errors)
    assert {m["kind"] for m in builtin} >= {"Deployment", "Service", "Secret", "StatefulSet", "NetworkPolicy"}
    deployments = {m["metadata"]["name"] for m in builtin if m["kind"] == "Deployment"}
    assert "bailu-collector" in deployments, "every example deploys the collector"


@pytest.mark.parametrize("values_files", VALUE_SETS, ids=VALUE_IDS)
def test_every_custom_resource_has_a_crd_and_validates(
    render: Render, crd_index: CrdIndex, values_files: tuple[Path, ...]
) -> None:
    """Custom resources (kinds kubernetes-validate does not know) validate against ../shared/crds."""
    version = KUBE_VERSIONS[-1]
    custom = [m for m in render(values_files) if not is_builtin(m, version)]
    missing = [f"{m['apiVersion']} {m['kind']}" for m in custom if not crd_index.has(m)]
    assert not missing, f"no CRD in the CRDs folder for: {missing}"
    errors = [f"{m['kind']}/{m['metadata']['name']}: {e}" for m in custom for e in crd_index.errors(m)]
    assert not errors, "\n".join(errors)


def test_full_feature_values_validate(render: Render, full_values: dict[str, object]) -> None:
    """Every optional built-in object (Ingress, HPA, the collector's Role, ...) validates too; the HTTPRoute has
    its own test."""
    for kube_version in KUBE_VERSIONS:
        manifests = render(values=full_values, kube_version=kube_version)
        kinds = {m["kind"] for m in manifests}
        assert {"Ingress", "HorizontalPodAutoscaler", "HTTPRoute", "Role", "RoleBinding"} <= kinds
        assert "bailu-collector" in {m["metadata"]["name"] for m in manifests if m["kind"] == "PodDisruptionBudget"}
        errors = [e for m in manifests if is_builtin(m, kube_version) and (e := validation_error(m, kube_version))]
        assert not errors, "\n".join(errors)


def test_httproute_validates_against_its_crd(
    render: Render, crd_index: CrdIndex, full_values: dict[str, object]
) -> None:
    route = next(m for m in render(values=full_values) if m["kind"] == "HTTPRoute")
    if not crd_index.has(route):
        pytest.skip(
            "the Gateway API HTTPRoute CRD (gateway.networking.k8s.io_httproutes.yaml) is not in the CRDs folder: "
            "the HTTPRoute is checked by assertions only (test_components)"
        )
    assert not crd_index.errors(route)


def test_older_kubernetes_is_refused(helm: Helm) -> None:
    with pytest.raises(HelmError, match="kubeVersion"):
        helm.template(kube_version="1.28.0")
