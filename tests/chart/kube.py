"""Kubernetes versions the chart claims (Chart.yaml's kubeVersion) and schema validation of built-in kinds."""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable
from typing import Any

import kubernetes_validate
import yaml
from kubernetes_validate import utils as kv_utils

from tests.chart.helm import CHART

Version = tuple[int, int, int]
_OPS: dict[str, Callable[[Version, Version], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "=": operator.eq,
    "!=": operator.ne,
}


def parse_version(text: str) -> Version:
    match = re.fullmatch(r"v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:-.*)?", text.strip())
    if not match:
        raise ValueError(f"not a version: {text!r}")
    major, minor, patch = (int(g) if g else 0 for g in match.groups())
    return major, minor, patch


def satisfies(version: str, constraint: str) -> bool:
    """Whether `version` meets a semver range of comparisons joined by spaces or commas ("-0" suffixes ignored)."""
    if "||" in constraint:
        raise ValueError("kubeVersion ranges with || are not supported by the chart tests")
    v = parse_version(version)
    for op, bound in re.findall(r"(>=|<=|!=|>|<|=)?\s*(v?\d[\w.\-]*)", constraint):
        if not _OPS[op or "="](v, parse_version(bound)):
            return False
    return True


def chart_kube_constraint() -> str:
    return str(yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"])


def claimed_versions() -> list[str]:
    """The oldest and newest Kubernetes minor versions that the chart claims and kubernetes-validate knows."""
    constraint = chart_kube_constraint()
    known = [v for v in kv_utils.all_versions() if satisfies(v, constraint)]
    if not known:
        raise AssertionError(f"kubernetes-validate has no schemas for kubeVersion {constraint!r}")
    return sorted({known[0], known[-1]}, key=parse_version)


def _cache_schema_files() -> None:
    """kubernetes-validate re-reads its (large) schema files for every object: read each once."""
    if not hasattr(kv_utils.schema_contents, "cache_info"):
        kv_utils.schema_contents = functools.lru_cache(maxsize=None)(kv_utils.schema_contents)


def is_builtin(resource: dict[str, Any], version: str) -> bool:
    """Whether kubernetes-validate has a schema for the resource's kind (else it is a custom resource)."""
    _cache_schema_files()
    try:
        kubernetes_validate.validate(resource, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return False
    except kubernetes_validate.ValidationError:
        return True
    return True


def validation_error(resource: dict[str, Any], version: str) -> str | None:
    """Why a built-in object is invalid for that Kubernetes version in strict mode (no unknown fields), or None."""
    _cache_schema_files()
    try:
        kubernetes_validate.validate(resource, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        return f"{resource['kind']}/{resource['metadata']['name']} at {path or '<root>'}: {exc.message}"
    return None
