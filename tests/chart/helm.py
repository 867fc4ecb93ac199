"""Run the real `helm` binary on the chart and parse what it renders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "bailu"
EXAMPLES = sorted((REPO / "deploy").glob("values*.yaml"))
RELEASE = "bailu"
NAMESPACE = "bailu-test"

Manifest = dict[str, Any]


def find_helm() -> str | None:
    """The helm that `make setup` installs into the venv, else one on PATH."""
    venv_helm = REPO / ".venv" / "bin" / "helm"
    if venv_helm.is_file() and os.access(venv_helm, os.X_OK):
        return str(venv_helm)
    return shutil.which("helm")


class HelmError(Exception):
    """helm exited with an error; the message is its stderr."""


@dataclass
class Helm:
    binary: str

    def run(self, *args: str) -> str:
        proc = subprocess.run([self.binary, *args], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise HelmError(proc.stderr.strip() or proc.stdout.strip())
        return proc.stdout

    def lint(self, values_files: Sequence[Path] = ()) -> str:
        return self.run("lint", "--strict", str(CHART), *_values_args(values_files))

    def template(
        self,
        values_files: Sequence[Path] = (),
        values: dict[str, Any] | None = None,
        kube_version: str | None = None,
    ) -> list[Manifest]:
        """Every object `helm template` renders (test hooks included), for the given values."""
        with tempfile.TemporaryDirectory(prefix="bailu-values-") as tmp:
            files = list(values_files)
            if values is not None:
                extra = Path(tmp) / "values.yaml"
                extra.write_text(yaml.safe_dump(values))
                files.append(extra)
            args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, *_values_args(files)]
            if kube_version:
                args += ["--kube-version", kube_version]
            out = self.run(*args)
        return [doc for doc in yaml.safe_load_all(out) if doc]

    def notes(self, values: dict[str, Any] | None = None) -> str:
        """The install notes (NOTES.txt) as `helm install --dry-run=client` prints them."""
        with tempfile.TemporaryDirectory(prefix="bailu-values-") as tmp:
            files = []
            if values is not None:
                files.append(Path(tmp) / "values.yaml")
                files[0].write_text(yaml.safe_dump(values))
            out = self.run(
                "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client", *_values_args(files)
            )
        return out.split("NOTES:", 1)[1]


def _values_args(files: Sequence[Path]) -> list[str]:
    return [arg for f in files for arg in ("-f", str(f))]


def values_key(values_files: Sequence[Path], values: dict[str, Any] | None, kube_version: str | None) -> str:
    """A cache key for one rendering."""
    return json.dumps([[str(f) for f in values_files], values, kube_version], sort_keys=True)


# --- reading rendered manifests -------------------------------------------------------------------

WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod")


def objects(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_spec(workload: Manifest) -> dict[str, Any]:
    """The pod spec of a workload (or of a Pod)."""
    if workload["kind"] == "Pod":
        return dict(workload["spec"])
    if workload["kind"] == "CronJob":
        return dict(workload["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return dict(workload["spec"]["template"]["spec"])


def pod_labels(workload: Manifest) -> dict[str, str]:
    if workload["kind"] == "Pod":
        return dict(workload["metadata"]["labels"])
    if workload["kind"] == "CronJob":
        return dict(workload["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"])
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def containers(workload: Manifest) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_values(container: dict[str, Any]) -> dict[str, str]:
    """The container's literal environment variables (those set from a Secret are left out)."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def env_names(container: dict[str, Any]) -> list[str]:
    return [e["name"] for e in container.get("env", [])]


def mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Volume mounts by mount path."""
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


def volumes(workload: Manifest) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
