"""`bailu retrain` against a local HTTP server that answers like the Kubernetes API server, reached through a
kubeconfig file as kubectl would reach a cluster: the Job it creates is `kubectl create job --from=cronjob/...`'s
plus the dataset version."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.test_trigger_runners import CRONJOB, CRONJOB_UID, FORBIDDEN, expected_job_spec
from tests.kube_api import KubeApiServer

TOKEN = "kubeconfig-token-1234"


@pytest.fixture
def api_server() -> Iterator[KubeApiServer]:
    with KubeApiServer() as server:
        server.add_cronjob(CRONJOB, "bailu", "bailu-trainer")
        yield server


@pytest.fixture
def kubeconfig(tmp_path: Path, api_server: KubeApiServer) -> Path:
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


def test_retrain_creates_the_job_kubectl_would_with_the_dataset_version(
    kubeconfig: Path, api_server: KubeApiServer
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
    assert job["spec"] == expected_job_spec("v000042")

    assert out["job"] == meta["name"]
    assert (out["namespace"], out["context"], out["cronjob"]) == ("bailu", "prod", "bailu-trainer")
    assert out["dataset_version"] == "v000042"
    assert out["commands"] == {
        "status": f"kubectl -n bailu get job {meta['name']} -w",
        "logs": f"kubectl -n bailu logs -f job/{meta['name']}",
    }


def test_without_a_version_the_job_trains_on_the_newest(kubeconfig: Path, api_server: KubeApiServer) -> None:
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


def test_context_namespace_release_and_cronjob(kubeconfig: Path, api_server: KubeApiServer) -> None:
    api_server.add_cronjob(CRONJOB, "default", "writing-bailu-trainer")
    api_server.add_cronjob(CRONJOB, "ml", "nightly")
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
def test_errors_are_one_line(kubeconfig: Path, api_server: KubeApiServer, args: list[str], message: str) -> None:
    done = retrain(kubeconfig, *args)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith(message), done.stderr
    assert not [r for r in api_server.requests if r.method == "POST"]


def test_a_forbidden_create_says_which_permission_lacks(kubeconfig: Path, api_server: KubeApiServer) -> None:
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
