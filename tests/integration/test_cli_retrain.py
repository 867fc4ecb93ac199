"""`bailu retrain` against a local HTTP server that answers like the Kubernetes API server, reached through a
kubeconfig file as kubectl would reach a cluster: the Job it creates is `kubectl create job --from=cronjob/...`'s
plus the dataset version."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_trigger_runners import CRONJOB, CRONJOB_UID, FORBIDDEN

TOKEN = "kubeconfig-token-1234"
CRONJOB_PATH = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/cronjobs/([^/?]+)")
JOBS_PATH = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs(\?.*)?$")


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: Any


class ApiServer:
    """Answers GET cronjob (for the CronJobs in `cronjobs`, by namespace and name) and POST jobs (echoed back as
    created, or `post_error`), and records every request."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.cronjobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.post_error: tuple[int, dict[str, Any]] | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _record(self) -> Recorded:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                recorded = Recorded(self.command, self.path, headers, json.loads(raw) if raw else None)
                server.requests.append(recorded)
                return recorded

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _not_found(self, what: str) -> None:
                body = {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404, "message": what}
                self._answer(404, body)

            def do_GET(self) -> None:
                request = self._record()
                match = CRONJOB_PATH.match(request.path)
                found = server.cronjobs.get((match.group(1), match.group(2))) if match else None
                if found is None:
                    self._not_found(f'cronjobs.batch "{match.group(2) if match else "?"}" not found')
                else:
                    self._answer(200, found)

            def do_POST(self) -> None:
                request = self._record()
                if not JOBS_PATH.match(request.path):
                    self._not_found("no such resource")
                elif server.post_error is not None:
                    self._answer(*server.post_error)
                else:
                    created = copy.deepcopy(request.body)
                    created["metadata"].update(uid="0b5d1e2c-0000-4000-8000-000000000001", resourceVersion="48300")
                    self._answer(201, created)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def add_cronjob(self, namespace: str, name: str) -> dict[str, Any]:
        cronjob = copy.deepcopy(CRONJOB)
        cronjob["metadata"].update(name=name, namespace=namespace)
        self.cronjobs[(namespace, name)] = cronjob
        return cronjob


@pytest.fixture
def api_server() -> Iterator[ApiServer]:
    server = ApiServer()
    server.thread.start()
    server.add_cronjob("bailu", "bailu-trainer")
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture
def kubeconfig(tmp_path: Path, api_server: ApiServer) -> Path:
    """Two contexts on the same server: `prod` (current, namespace bailu) and `staging` (no namespace)."""
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "local", "cluster": {"server": api_server.url}}],
                "users": [{"name": "operator", "user": {"token": TOKEN}}],
                "contexts": [
                    {"name": "prod", "context": {"cluster": "local", "user": "operator", "namespace": "bailu"}},
                    {"name": "staging", "context": {"cluster": "local", "user": "operator"}},
                ],
                "current-context": "prod",
            }
        )
    )
    return path


def retrain(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`bailu retrain ...` with the kubeconfig as KUBECONFIG (how kubectl finds it too)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BAILU_") and "proxy" not in k.lower()}
    env["KUBECONFIG"] = str(kubeconfig)
    return subprocess.run(
        [sys.executable, "-m", "bailu.cli", "retrain", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def template_spec(version: str) -> dict[str, Any]:
    """The CronJob's job template spec with BAILU_TRAINER_DATASET_VERSION set in every container."""
    spec = copy.deepcopy(CRONJOB["spec"]["jobTemplate"]["spec"])
    pod = spec["template"]["spec"]
    for container in [*pod["containers"], *pod["initContainers"]]:
        container.setdefault("env", []).append({"name": "BAILU_TRAINER_DATASET_VERSION", "value": version})
    return spec


def test_retrain_creates_the_job_kubectl_would_with_the_dataset_version(
    kubeconfig: Path, api_server: ApiServer
) -> None:
    done = retrain(kubeconfig, "--dataset-version", "v000042", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)

    get, post = api_server.requests
    assert (get.method, get.path.split("?")[0]) == ("GET", "/apis/batch/v1/namespaces/bailu/cronjobs/bailu-trainer")
    assert (post.method, post.path.split("?")[0]) == ("POST", "/apis/batch/v1/namespaces/bailu/jobs")
    assert get.headers["authorization"] == post.headers["authorization"] == f"Bearer {TOKEN}"
    assert post.headers["content-type"] == "application/json"
    job = post.body
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    meta = job["metadata"]
    assert re.fullmatch(r"bailu-trainer-v000042-\d{14}", meta["name"])
    assert meta["namespace"] == "bailu"
    assert meta["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "CronJob", "name": "bailu-trainer", "uid": CRONJOB_UID, "controller": True}
    ]
    template_meta = CRONJOB["spec"]["jobTemplate"]["metadata"]
    assert meta["annotations"] == {
        **template_meta["annotations"],
        "cronjob.kubernetes.io/instantiate": "manual",
        "bailu.dev/dataset-version": "v000042",
    }
    assert meta["labels"] == {
        **template_meta["labels"],
        "app.kubernetes.io/managed-by": "bailu-cli",
        "bailu.dev/dataset-version": "v000042",
    }
    assert job["spec"] == template_spec("v000042")

    assert out["job"] == meta["name"]
    assert (out["namespace"], out["context"], out["cronjob"]) == ("bailu", "prod", "bailu-trainer")
    assert out["dataset_version"] == "v000042"
    assert out["commands"] == {
        "status": f"kubectl -n bailu get job {meta['name']} -w",
        "logs": f"kubectl -n bailu logs -f job/{meta['name']}",
    }


def test_without_a_version_the_job_trains_on_the_newest(kubeconfig: Path, api_server: ApiServer) -> None:
    """No --dataset-version: the variable is "" (the trainer's newest sealed version, resolved when it runs) even
    where the template pins one, and nothing claims a version in the Job's labels or annotations."""
    pinned = api_server.cronjobs[("bailu", "bailu-trainer")]
    trainer = pinned["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    trainer["env"].insert(0, {"name": "BAILU_TRAINER_DATASET_VERSION", "value": "v000001"})

    done = retrain(kubeconfig)
    assert done.returncode == 0, done.stderr
    job = api_server.requests[-1].body
    assert re.fullmatch(r"bailu-trainer-\d{14}", job["metadata"]["name"])
    assert "bailu.dev/dataset-version" not in job["metadata"]["annotations"]
    assert "bailu.dev/dataset-version" not in job["metadata"]["labels"]
    assert job["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"] == "manual"
    pod = job["spec"]["template"]["spec"]
    for container in [*pod["containers"], *pod["initContainers"]]:
        values = [e.get("value") for e in container["env"] if e["name"] == "BAILU_TRAINER_DATASET_VERSION"]
        assert values == [""], container["name"]
    # Human output: the Job and how to watch it.
    name = job["metadata"]["name"]
    assert f"job.batch/{name} created in namespace bailu (context prod) from cronjob/bailu-trainer" in done.stdout
    assert "the newest sealed version" in done.stdout
    assert f"kubectl -n bailu logs -f job/{name}" in done.stdout
    assert f"kubectl -n bailu get job {name} -w" in done.stdout


def test_context_namespace_release_and_cronjob(kubeconfig: Path, api_server: ApiServer) -> None:
    api_server.add_cronjob("default", "writing-bailu-trainer")
    api_server.add_cronjob("ml", "nightly")
    # A context without a namespace means "default", as for kubectl; the release names the chart's CronJob.
    done = retrain(kubeconfig, "--context", "staging", "--release", "writing", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert (out["context"], out["namespace"], out["cronjob"]) == ("staging", "default", "writing-bailu-trainer")
    assert out["commands"]["logs"] == f"kubectl --context staging -n default logs -f job/{out['job']}"
    assert api_server.requests[-1].body["metadata"]["ownerReferences"][0]["name"] == "writing-bailu-trainer"
    done = retrain(kubeconfig, "--namespace", "ml", "--cronjob", "nightly", "--json")
    assert done.returncode == 0, done.stderr
    assert api_server.requests[-1].path.startswith("/apis/batch/v1/namespaces/ml/jobs")
    assert json.loads(done.stdout)["job"].startswith("nightly-")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cronjob", "no-such"], "bailu: error: reading cronjob/no-such in namespace bailu failed: 404 Not Found"),
        (["--context", "nowhere"], "bailu: error: no context 'nowhere' in the kubeconfig (contexts: prod, staging)"),
    ],
    ids=["unknown-cronjob", "unknown-context"],
)
def test_errors_are_one_line(kubeconfig: Path, api_server: ApiServer, args: list[str], message: str) -> None:
    done = retrain(kubeconfig, *args)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith(message), done.stderr
    assert not [r for r in api_server.requests if r.method == "POST"]


def test_a_forbidden_create_says_which_permission_lacks(kubeconfig: Path, api_server: ApiServer) -> None:
    api_server.post_error = (403, FORBIDDEN)
    done = retrain(kubeconfig)
    assert done.returncode == 1
    assert "creating a Job in namespace bailu failed: 403 Forbidden" in done.stderr
    assert 'cannot create resource "jobs"' in done.stderr
    assert "Traceback" not in done.stderr


def test_no_kubeconfig_and_no_cluster(tmp_path: Path) -> None:
    done = retrain(tmp_path / "missing-kubeconfig")
    assert done.returncode == 1
    assert done.stderr.startswith("bailu: error: cannot read the kubeconfig"), done.stderr
    unreachable = tmp_path / "unreachable"
    unreachable.write_text(
        yaml.safe_dump(
            {
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    done = retrain(unreachable)
    assert done.returncode == 1
    assert "reading cronjob/bailu-trainer in namespace default failed: the Kubernetes API did not answer" in (
        done.stderr
    )
