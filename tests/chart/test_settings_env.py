"""Every BAILU_* variable the chart sets is a field of that service's settings class, and parses.

The chart and the code cannot drift apart: a renamed or removed field, or a value the settings
class would refuse, fails here rather than in a crash-looping pod.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
import pytest
from pydantic_settings import BaseSettings, SettingsError

from bailu.cli.settings import CliSettings
from bailu.collector.settings import CollectorSettings
from bailu.collector.trigger import TriggerPolicy
from bailu.gateway.settings import GatewaySettings
from bailu.trainer.settings import TrainerSettings
from bailu.worker.settings import WorkerSettings
from tests.chart.conftest import ENGINE_VALUES, EXISTING_VALUES, FULL_VALUES, Render
from tests.chart.helm import EXAMPLES, WORKLOADS, Manifest, containers, pod_labels

Settings = tuple[str, type[BaseSettings]]
# The settings classes of each component whose containers read BAILU_* variables (a variable must be a field of
# one of them). Training pods also carry the operator CLI's variables, for `bailu models ...` run in one.
SERVICES: dict[str, list[Settings]] = {
    "gateway": [("BAILU_GATEWAY_", GatewaySettings)],
    "worker": [("BAILU_WORKER_", WorkerSettings)],
    "collector": [("BAILU_COLLECTOR_", CollectorSettings)],
    "trainer": [("BAILU_TRAINER_", TrainerSettings), ("BAILU_", CliSettings)],
}
# A value a Secret provides, as it stands in for the check.
SECRET_VALUE = "password"
# What a service builds from its settings at start beyond the settings class's own validation, by component:
# a value the class accepts but the service refuses (an unknown time zone) would crash-loop the pod too.
STARTUP_CHECKS: dict[str, tuple[str, Callable[[Any], object]]] = {
    "collector": ("the retraining policy", TriggerPolicy.from_settings),
}
RENDERINGS: list[tuple[str, tuple[Path, ...], dict[str, Any] | None]] = [
    ("defaults", (), None),
    *((path.name, (path,), None) for path in EXAMPLES),
    ("full", (), FULL_VALUES),
    ("existing", (), EXISTING_VALUES),
    ("engines", (), ENGINE_VALUES),
]


def expanded_env(container: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """The container's variables as the process sees them: Kubernetes expands `$(NAME)` with variables defined
    before (a Secret's value stands in as SECRET_VALUE), and leaves a reference to a later or unknown one as it
    is. Returns the values and the references left unresolved."""
    values: dict[str, str] = {}
    unresolved: list[str] = []
    for var in container.get("env", []):
        if "value" not in var:
            values[var["name"]] = SECRET_VALUE
            continue

        def resolve(match: re.Match[str], name: str = var["name"]) -> str:
            if match.group(1) in values:
                return values[match.group(1)]
            unresolved.append(f"{name} refers to $({match.group(1)})")
            return match.group(0)

        values[var["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", resolve, var["value"])
    return values, unresolved


def env_problems(manifests: list[Manifest], monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], set[str]]:
    """What is wrong with the BAILU_* variables of every container, and the components checked."""
    problems: list[str] = []
    checked: set[str] = set()
    for workload in (m for m in manifests if m["kind"] in WORKLOADS):
        component = pod_labels(workload)["app.kubernetes.io/component"]
        name = workload["metadata"]["name"]
        for container in containers(workload):
            names = [e["name"] for e in container.get("env", [])]
            if len(names) != len(set(names)):
                problems.append(f"{name}: a variable is set twice: {names}")
            bailu = [n for n in names if n.startswith("BAILU_")]
            if component not in SERVICES:
                if bailu:
                    problems.append(f"{name} ({component}) sets {bailu}, but no settings class is known for it")
                continue
            classes = SERVICES[component]
            for variable in bailu:
                if not any(
                    variable.startswith(prefix) and variable.removeprefix(prefix).lower() in cls.model_fields
                    for prefix, cls in classes
                ):
                    owners = " or ".join(cls.__name__ for _, cls in classes)
                    problems.append(f"{name}: {variable} is not a field of {owners}")
            values, unresolved = expanded_env(container)
            problems += [f"{name}: {u}, which is not defined before it" for u in unresolved]
            # The values must parse as the service reads them.
            for existing in [n for n in os.environ if n.startswith("BAILU_")]:
                monkeypatch.delenv(existing)
            for variable, value in values.items():
                if variable.startswith("BAILU_"):
                    monkeypatch.setenv(variable, value)
            for _, settings_class in classes:
                try:
                    settings = settings_class()
                except (pydantic.ValidationError, SettingsError) as exc:
                    problems.append(f"{name}: {settings_class.__name__} refuses the chart's values: {exc}")
                    continue
                if component in STARTUP_CHECKS and settings_class is classes[0][1]:
                    what, check = STARTUP_CHECKS[component]
                    try:
                        check(settings)
                    except ValueError as exc:
                        problems.append(f"{name}: {what} refuses the chart's values: {exc}")
            checked.add(component)
    return problems, checked


@pytest.mark.parametrize(("name", "files", "values"), RENDERINGS, ids=[r[0] for r in RENDERINGS])
def test_bailu_variables_are_settings_fields(
    render: Render, monkeypatch: pytest.MonkeyPatch, name: str, files: tuple[Path, ...], values: dict[str, Any] | None
) -> None:
    problems, checked = env_problems(render(files, values), monkeypatch)
    assert not problems, "\n".join(problems)
    assert checked == set(SERVICES), f"{name}: no container of {set(SERVICES) - checked}"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"worker": {"defaults": {"extraEnv": [{"name": "BAILU_WORKER_MAX_TOKENS", "value": "9"}]}}},
            "BAILU_WORKER_MAX_TOKENS is not a field of WorkerSettings",
        ),
        (
            {"gateway": {"extraEnv": [{"name": "BAILU_WORKER_PORT", "value": "1"}]}},
            "BAILU_WORKER_PORT is not a field of GatewaySettings",
        ),
        # (The schema refuses a bad value in worker.defaults.settings; extraEnv bypasses it.)
        (
            {"worker": {"defaults": {"extraEnv": [{"name": "BAILU_WORKER_MAX_QUEUE", "value": "lots"}]}}},
            "WorkerSettings refuses the chart's values",
        ),
        (
            {"collector": {"extraEnv": [{"name": "BAILU_COLLECTOR_WORKERS", "value": "x"}]}},
            "BAILU_COLLECTOR_WORKERS is not a field of CollectorSettings",
        ),
        ({"collector": {"settings": {"sft_min_score": 9}}}, "CollectorSettings refuses the chart's values"),
        (
            {"trainer": {"extraEnv": [{"name": "BAILU_TRAINER_EPOCH", "value": "2"}]}},
            "BAILU_TRAINER_EPOCH is not a field of TrainerSettings or CliSettings",
        ),
        ({"trainer": {"extraEnv": [{"name": "BAILU_TRAINER_SEED", "value": "x"}]}}, "TrainerSettings refuses"),
        (
            {"trainer": {"extraEnv": [{"name": "BAILU_TRAINER_TARGET_MODULES", "value": "$(MODULES)"}]}},
            "BAILU_TRAINER_TARGET_MODULES refers to $(MODULES), which is not defined before it",
        ),
        # The schema accepts any IANA-looking name; the collector's policy refuses unknown zones at start.
        ({"collector": {"trigger": {"timezone": "Mars/Olympus_Mons"}}}, "the retraining policy refuses"),
    ],
    ids=[
        "unknown-field",
        "other-service",
        "bad-value",
        "collector-unknown-field",
        "collector-bad-value",
        "trainer-unknown-field",
        "trainer-bad-value",
        "undefined-reference",
        "bad-zone",
    ],
)
def test_the_check_catches_drift(
    render: Render, monkeypatch: pytest.MonkeyPatch, values: dict[str, Any], expected: str
) -> None:
    problems, _ = env_problems(render(values=values), monkeypatch)
    assert any(expected in p for p in problems), problems
