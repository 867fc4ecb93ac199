"""The retraining trigger against a real redis-server, and the runners that start training runs.

- `Trigger.check` runs against a real redis-server (the `redis_server` fixture) with a fake clock and a
  recording runner written here: the runner is the seam between deciding and starting.
- `LocalRunner` really starts a process.
- `KubernetesRunner` uses the real `kubernetes` Python client, talking HTTP to a small API server
  (`tests.kube_api`) that serves the CronJob below and records the Job the client creates. No live cluster
  was used: what is checked is the request the official client sends (method, path, body), not how a
  cluster answers it.
"""

from __future__ import annotations

import asyncio
import copy
import re
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from kubernetes import client
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from bailu.collector.runners import KubernetesRunner, LocalRunner
from bailu.collector.trigger import TRIGGER_LOCK, Trigger, TriggerPolicy, parse_peak_window
from bailu.common import redis_keys
from bailu.common.kube_jobs import RunnerError
from bailu.common.metrics import TRIGGER_RUNS
from tests.conftest import RedisServer
from tests.kube_api import KubeApiServer

PARIS = ZoneInfo("Europe/Paris")

# --------------------------------------------------------------------------- trigger


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class Dataset:
    """Stands in for the dataset store: sealing returns None when nothing was added since the last seal."""

    pairs: int = 0
    sealed_at: int = 0
    versions: list[str] = field(default_factory=list)
    seal_calls: int = 0

    async def seal(self) -> str | None:
        self.seal_calls += 1
        if self.versions and self.pairs == self.sealed_at:
            return None
        self.sealed_at = self.pairs
        self.versions.append(f"v{len(self.versions) + 1:06d}")
        return self.versions[-1]

    async def pairs_total(self) -> int:
        return self.pairs


@dataclass
class RecordingRunner:
    calls: list[tuple[str, Path]] = field(default_factory=list)
    fail: bool = False
    delay_s: float = 0.0

    async def start(self, dataset_version: str, dataset_dir: Path) -> str:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail:
            raise RunnerError("Kubernetes API: create Job failed: 500 Internal Server Error", status=500)
        self.calls.append((dataset_version, dataset_dir))
        return f"run-{len(self.calls)}"


def make_policy() -> TriggerPolicy:
    return TriggerPolicy(
        min_new_pairs=10, cooldown_s=3600, daily_cap=2, peak_window=parse_peak_window("06:00-09:30"), timezone=PARIS
    )


@dataclass
class Replica:
    trigger: Trigger
    registry: CollectorRegistry


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2025, 6, 2, 12, 0, tzinfo=PARIS))  # a Monday afternoon, outside the peak window


def replica(redis: Redis, runner: RecordingRunner | None, dataset: Dataset, clock: Clock, tmp_path: Path) -> Replica:
    registry = CollectorRegistry()
    trigger = Trigger(
        make_policy(),
        runner,
        redis,
        seal=dataset.seal,
        pairs_total=dataset.pairs_total,
        dataset_dir=tmp_path / "datasets",
        clock=clock,
        metrics_registry=registry,
    )
    return Replica(trigger, registry)


async def state(redis: Redis) -> dict[str, str]:
    raw = await redis.hgetall(redis_keys.TRIGGER_HASH)
    return {k.decode(): v.decode() for k, v in raw.items()}


async def test_not_due_does_nothing(redis: Redis, clock: Clock, tmp_path: Path) -> None:
    dataset, runner = Dataset(pairs=9), RecordingRunner()
    one = replica(redis, runner, dataset, clock, tmp_path)
    assert await one.trigger.check() is None
    assert runner.calls == []
    assert dataset.seal_calls == 0
    assert await state(redis) == {}
    assert (
        one.registry.get_sample_value("bailu_collector_trigger_decisions_total", {"decision": "not_enough_pairs"}) == 1
    )


async def test_due_seals_and_starts_once_and_records_the_run(redis: Redis, clock: Clock, tmp_path: Path) -> None:
    dataset, runner = Dataset(pairs=10), RecordingRunner()
    one = replica(redis, runner, dataset, clock, tmp_path)

    assert await one.trigger.check() == "run-1"
    assert runner.calls == [("v000001", tmp_path / "datasets")]
    assert dataset.seal_calls == 1
    assert await state(redis) == {
        "last_run_at": "2025-06-02T10:00:00+00:00",
        "last_run_id": "run-1",
        "last_dataset_version": "v000001",
        "pairs_at_last_run": "10",
        "day": "2025-06-02",
        "runs_on_day": "1",
    }
    assert await redis.get(TRIGGER_LOCK) is None
    assert one.registry.get_sample_value(TRIGGER_RUNS, {"outcome": "started"}) == 1

    # Right after: nothing new, and cooling down anyway.
    assert await one.trigger.check() is None
    assert len(runner.calls) == 1


async def test_cool_down_daily_cap_and_peak_window_across_checks(redis: Redis, clock: Clock, tmp_path: Path) -> None:
    dataset, runner = Dataset(pairs=10), RecordingRunner()
    trigger = replica(redis, runner, dataset, clock, tmp_path).trigger
    assert await trigger.check() == "run-1"  # 12:00

    dataset.pairs = 25
    clock.advance(timedelta(minutes=59, seconds=59))
    assert await trigger.check() is None  # 12:59:59, still cooling down
    clock.advance(timedelta(seconds=1))
    assert await trigger.check() == "run-2"  # 13:00, exactly one cool-down later
    assert runner.calls[-1][0] == "v000002"

    dataset.pairs = 40
    clock.advance(timedelta(hours=5))
    assert await trigger.check() is None  # 18:00: daily cap of 2 reached
    assert (await state(redis))["runs_on_day"] == "2"

    clock.now = datetime(2025, 6, 3, 7, 0, tzinfo=PARIS)
    assert await trigger.check() is None  # next local day, but inside the peak window
    clock.now = datetime(2025, 6, 3, 9, 30, tzinfo=PARIS)
    assert await trigger.check() == "run-3"
    recorded = await state(redis)
    assert (recorded["day"], recorded["runs_on_day"], recorded["pairs_at_last_run"]) == ("2025-06-03", "1", "40")

    # New pairs below the threshold: 49 - 40 = 9 < 10.
    dataset.pairs = 49
    clock.advance(timedelta(hours=2))
    assert await trigger.check() is None
    dataset.pairs = 50
    assert await trigger.check() == "run-4"
    assert [version for version, _ in runner.calls] == ["v000001", "v000002", "v000003", "v000004"]


async def test_two_replicas_checking_at_once_start_one_run(
    redis_server: RedisServer, clock: Clock, tmp_path: Path
) -> None:
    dataset = Dataset(pairs=500)
    runner = RecordingRunner(delay_s=0.2)  # the first replica holds the lock while the other one checks
    connections = [Redis.from_url(redis_server.url) for _ in range(3)]
    try:
        replicas = [replica(connection, runner, dataset, clock, tmp_path) for connection in connections]
        results = await asyncio.gather(*(r.trigger.check() for r in replicas))
        assert [r for r in results if r is not None] == ["run-1"]
        assert len(runner.calls) == 1
        assert dataset.seal_calls == 1
        assert (await state(connections[0]))["runs_on_day"] == "1"
    finally:
        for connection in connections:
            await connection.aclose()


async def test_a_replica_that_decided_on_stale_state_does_not_start_a_second_run(
    redis_server: RedisServer, clock: Clock, tmp_path: Path
) -> None:
    """B reads the state, then A starts a run and releases the lock, then B takes the lock: B must re-read."""
    dataset, runner = Dataset(pairs=500), RecordingRunner()
    a_done = asyncio.Event()
    b_read_state = asyncio.Event()

    async def b_pairs_total() -> int:
        # Called by B after its first state read; the second call (under the lock) must not wait.
        if not a_done.is_set():
            b_read_state.set()
            await a_done.wait()
        return dataset.pairs

    async with Redis.from_url(redis_server.url) as ra, Redis.from_url(redis_server.url) as rb:
        a = replica(ra, runner, dataset, clock, tmp_path).trigger
        b = Trigger(
            make_policy(),
            runner,
            rb,
            seal=dataset.seal,
            pairs_total=b_pairs_total,
            dataset_dir=tmp_path / "datasets",
            clock=clock,
        )

        async def a_after_b_read() -> str | None:
            await b_read_state.wait()
            try:
                return await a.check()
            finally:
                a_done.set()

        assert await asyncio.gather(b.check(), a_after_b_read()) == [None, "run-1"]
    assert len(runner.calls) == 1
    assert dataset.seal_calls == 1


async def test_runner_failure_leaves_the_state_and_the_next_check_retries(
    redis: Redis, clock: Clock, tmp_path: Path
) -> None:
    dataset, runner = Dataset(pairs=10), RecordingRunner()
    one = replica(redis, runner, dataset, clock, tmp_path)
    assert await one.trigger.check() == "run-1"
    before = await state(redis)

    dataset.pairs = 30
    clock.advance(timedelta(hours=1))
    runner.fail = True
    assert await one.trigger.check() is None
    after = await state(redis)
    assert after.pop("sealed_version") == "v000002"  # kept for the retry: it cannot be sealed again
    assert after == before
    assert await redis.get(TRIGGER_LOCK) is None
    assert one.registry.get_sample_value(TRIGGER_RUNS, {"outcome": "failed"}) == 1

    runner.fail = False
    clock.advance(timedelta(minutes=1))
    assert await one.trigger.check() == "run-2"
    assert runner.calls[-1][0] == "v000002"  # nothing new was sealed: the pending version is used
    assert dataset.seal_calls == 3
    recorded = await state(redis)
    assert "sealed_version" not in recorded
    assert (recorded["last_run_id"], recorded["runs_on_day"], recorded["pairs_at_last_run"]) == ("run-2", "2", "30")
    assert one.registry.get_sample_value(TRIGGER_RUNS, {"outcome": "started"}) == 2


async def test_without_a_runner_the_policy_is_only_evaluated(redis: Redis, clock: Clock, tmp_path: Path) -> None:
    dataset = Dataset(pairs=500)
    one = replica(redis, None, dataset, clock, tmp_path)
    assert await one.trigger.check() is None
    assert dataset.seal_calls == 0
    assert await state(redis) == {}
    assert one.registry.get_sample_value("bailu_collector_trigger_decisions_total", {"decision": "due"}) == 1


# --------------------------------------------------------------------------- local runner


async def test_local_runner_starts_a_real_process(tmp_path: Path) -> None:
    script = (
        "import os, pathlib, sys; "
        "print('training', sys.argv[1], flush=True); "
        "version = os.environ['BAILU_TRAINER_DATASET_VERSION']; "
        "pathlib.Path(sys.argv[2], 'trained.txt').write_text(sys.argv[1] + ' ' + version)"
    )
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(script)} {{dataset_version}} {{dataset_dir}}"
    dataset_dir = tmp_path / "data sets"  # a space: the path must stay one argument (no shell)
    dataset_dir.mkdir()
    runner = LocalRunner(command)

    run_id = await runner.start("v000007", dataset_dir)

    output = dataset_dir / "trained.txt"
    deadline = time.monotonic() + 10
    while not output.exists() or not output.read_text():
        assert time.monotonic() < deadline, "the trainer process did not write its file"
        await asyncio.sleep(0.02)
    assert output.read_text() == "v000007 v000007"
    assert re.fullmatch(r"local-\d{8}T\d{6}Z-[0-9a-f]{6}", run_id)
    log = dataset_dir / "runs" / f"{run_id}.log"
    assert "training v000007" in log.read_text()


def test_local_runner_needs_a_command() -> None:
    with pytest.raises(ValueError, match="local runner needs a command"):
        LocalRunner("   ")
    with pytest.raises(ValueError, match="cannot be parsed"):
        LocalRunner("python -c 'unterminated")


async def test_local_runner_reports_a_missing_program(tmp_path: Path) -> None:
    runner = LocalRunner(f"{tmp_path / 'no-such-trainer'} {{dataset_version}}")
    with pytest.raises(RunnerError, match="cannot start the local trainer"):
        await runner.start("v000001", tmp_path)


# --------------------------------------------------------------------------- kubernetes runner

NAMESPACE = "bailu"
CRONJOB_NAME = "bailu-trainer"
CRONJOB_UID = "7d3f2a4e-1c8b-4e55-9a0e-2f6b1d9c0a11"
CRONJOB_PATH = f"/apis/batch/v1/namespaces/{NAMESPACE}/cronjobs/{CRONJOB_NAME}"
JOBS_PATH = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"

# What a real API server returns for the chart's (suspended) trainer CronJob, server-side defaults included.
CRONJOB: dict[str, Any] = {
    "kind": "CronJob",
    "apiVersion": "batch/v1",
    "metadata": {
        "name": CRONJOB_NAME,
        "namespace": NAMESPACE,
        "uid": CRONJOB_UID,
        "resourceVersion": "48213",
        "generation": 1,
        "creationTimestamp": "2025-06-01T08:00:00Z",
        "labels": {
            "app.kubernetes.io/name": "bailu",
            "app.kubernetes.io/instance": "bailu",
            "app.kubernetes.io/component": "trainer",
            "app.kubernetes.io/managed-by": "Helm",
        },
        "annotations": {"meta.helm.sh/release-name": "bailu", "meta.helm.sh/release-namespace": NAMESPACE},
    },
    "spec": {
        "schedule": "0 3 * * *",
        "timeZone": "Europe/Paris",
        "suspend": True,
        "concurrencyPolicy": "Forbid",
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 1,
        "jobTemplate": {
            "metadata": {
                "labels": {
                    "app.kubernetes.io/name": "bailu",
                    "app.kubernetes.io/instance": "bailu",
                    "app.kubernetes.io/component": "trainer",
                    "app.kubernetes.io/managed-by": "Helm",
                },
                "annotations": {"bailu.dev/chart-version": "0.1.0"},
            },
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": 21600,
                "ttlSecondsAfterFinished": 86400,
                "template": {
                    "metadata": {
                        "labels": {"app.kubernetes.io/name": "bailu", "app.kubernetes.io/component": "trainer"},
                        "annotations": {"kubectl.kubernetes.io/default-container": "trainer"},
                    },
                    "spec": {
                        "restartPolicy": "Never",
                        "serviceAccountName": "bailu-trainer",
                        "terminationGracePeriodSeconds": 30,
                        "dnsPolicy": "ClusterFirst",
                        "schedulerName": "default-scheduler",
                        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000},
                        "nodeSelector": {"nvidia.com/gpu.present": "true"},
                        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                        "initContainers": [
                            {
                                "name": "wait-for-dataset",
                                "image": "ghcr.io/bailu/bailu:0.1.0",
                                "command": ["python", "-m", "bailu.trainer.wait"],
                                "imagePullPolicy": "IfNotPresent",
                                "terminationMessagePath": "/dev/termination-log",
                                "terminationMessagePolicy": "File",
                                "volumeMounts": [{"name": "store", "mountPath": "/data"}],
                            }
                        ],
                        "containers": [
                            {
                                "name": "trainer",
                                "image": "ghcr.io/bailu/bailu:0.1.0",
                                "args": ["python", "-m", "bailu.trainer"],
                                "env": [
                                    {"name": "BAILU_TRAINER_STORE_DIR", "value": "/data"},
                                    {
                                        "name": "BAILU_TRAINER_REDIS_PASSWORD",
                                        "valueFrom": {"secretKeyRef": {"name": "bailu-redis", "key": "password"}},
                                    },
                                ],
                                "resources": {
                                    "requests": {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": "1"},
                                    "limits": {"memory": "48Gi", "nvidia.com/gpu": "1"},
                                },
                                "volumeMounts": [
                                    {"name": "store", "mountPath": "/data"},
                                    {"name": "shm", "mountPath": "/dev/shm"},
                                ],
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                "imagePullPolicy": "IfNotPresent",
                                "terminationMessagePath": "/dev/termination-log",
                                "terminationMessagePolicy": "File",
                            },
                            {
                                "name": "metrics-pusher",
                                "image": "ghcr.io/bailu/bailu:0.1.0",
                                "args": ["python", "-m", "bailu.trainer.push_metrics"],
                                "resources": {"limits": {"cpu": "100m", "memory": "128Mi"}},
                                "imagePullPolicy": "IfNotPresent",
                                "terminationMessagePath": "/dev/termination-log",
                                "terminationMessagePolicy": "File",
                            },
                        ],
                        "volumes": [
                            {"name": "store", "persistentVolumeClaim": {"claimName": "bailu-store"}},
                            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
                        ],
                    },
                },
            },
        },
    },
    "status": {"lastScheduleTime": "2025-06-01T03:00:00Z"},
}

FORBIDDEN: dict[str, Any] = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": 'jobs.batch is forbidden: User "system:serviceaccount:bailu:bailu-collector" cannot create '
    'resource "jobs" in API group "batch" in the namespace "bailu"',
    "reason": "Forbidden",
    "details": {"group": "batch", "kind": "jobs"},
    "code": 403,
}


@pytest.fixture
def api_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[KubeApiServer]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with KubeApiServer() as server:
        server.add_cronjob(CRONJOB, NAMESPACE, CRONJOB_NAME)
        yield server


@pytest.fixture
def batch_api(api_server: KubeApiServer) -> Iterator[client.BatchV1Api]:
    """The official client's BatchV1Api, configured to talk to the API server."""
    with client.ApiClient(client.Configuration(host=api_server.url)) as api_client:
        yield client.BatchV1Api(api_client)


STARTED_AT = datetime(2025, 6, 2, 10, 15, 30, tzinfo=UTC)


def expected_job_spec(version: str) -> dict[str, Any]:
    """The template's Job spec with only the dataset version added to every container's environment."""
    spec = copy.deepcopy(CRONJOB["spec"]["jobTemplate"]["spec"])
    pod = spec["template"]["spec"]
    for container in [*pod["containers"], *pod["initContainers"]]:
        container.setdefault("env", []).append({"name": "BAILU_TRAINER_DATASET_VERSION", "value": version})
    return spec


async def test_kubernetes_runner_creates_the_job_kubectl_would(
    api_server: KubeApiServer, batch_api: client.BatchV1Api, tmp_path: Path
) -> None:
    runner = KubernetesRunner(NAMESPACE, CRONJOB_NAME, batch_api, clock=lambda: STARTED_AT)

    name = await runner.start("v000042", tmp_path)

    assert name == "bailu-trainer-v000042-20250602101530"
    assert [(r.method, r.path) for r in api_server.requests] == [("GET", CRONJOB_PATH), ("POST", JOBS_PATH)]
    post = api_server.requests[1]
    assert post.headers["content-type"] == "application/json"
    job = post.body
    assert job["apiVersion"] == "batch/v1"
    assert job["kind"] == "Job"
    assert "status" not in job
    meta = job["metadata"]
    assert meta["name"] == name
    assert meta["namespace"] == NAMESPACE
    assert meta["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "CronJob", "name": CRONJOB_NAME, "uid": CRONJOB_UID, "controller": True}
    ]
    assert meta["annotations"] == {
        "bailu.dev/chart-version": "0.1.0",
        "cronjob.kubernetes.io/instantiate": "manual",
        "bailu.dev/dataset-version": "v000042",
    }
    assert meta["labels"] == {
        "app.kubernetes.io/name": "bailu",
        "app.kubernetes.io/instance": "bailu",
        "app.kubernetes.io/component": "trainer",
        "app.kubernetes.io/managed-by": "bailu-feedback-collector",
        "bailu.dev/dataset-version": "v000042",
    }
    assert set(meta) == {"name", "namespace", "labels", "annotations", "ownerReferences"}
    # The template's spec travels unchanged (pod template, GPU limits, volumes, secrets in env, ...).
    assert job["spec"] == expected_job_spec("v000042")


async def test_kubernetes_runner_replaces_a_declared_dataset_version_in_place(
    api_server: KubeApiServer, batch_api: client.BatchV1Api, tmp_path: Path
) -> None:
    template = api_server.cronjobs[(NAMESPACE, CRONJOB_NAME)]
    trainer = template["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    trainer["env"].insert(0, {"name": "BAILU_TRAINER_DATASET_VERSION", "value": "latest"})
    runner = KubernetesRunner(NAMESPACE, CRONJOB_NAME, batch_api, clock=lambda: STARTED_AT)

    await runner.start("v000043", tmp_path)

    env = api_server.requests[1].body["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [var["name"] for var in env] == [
        "BAILU_TRAINER_DATASET_VERSION",
        "BAILU_TRAINER_STORE_DIR",
        "BAILU_TRAINER_REDIS_PASSWORD",
    ]
    assert env[0] == {"name": "BAILU_TRAINER_DATASET_VERSION", "value": "v000043"}


async def test_kubernetes_api_errors_become_runner_errors(
    api_server: KubeApiServer, batch_api: client.BatchV1Api, tmp_path: Path
) -> None:
    api_server.post_error = (403, FORBIDDEN)
    runner = KubernetesRunner(NAMESPACE, CRONJOB_NAME, batch_api, clock=lambda: STARTED_AT)

    with pytest.raises(RunnerError) as caught:
        await runner.start("v000042", tmp_path)

    assert caught.value.status == 403
    assert caught.value.reason == "Forbidden"
    assert "403 Forbidden" in str(caught.value)
    assert 'cannot create resource "jobs"' in str(caught.value)
    assert [r.method for r in api_server.requests] == ["GET", "POST"]


async def test_a_missing_cronjob_is_a_runner_error(
    api_server: KubeApiServer, batch_api: client.BatchV1Api, tmp_path: Path
) -> None:
    runner = KubernetesRunner(NAMESPACE, "no-such-cronjob", batch_api)
    with pytest.raises(RunnerError, match="read CronJob bailu/no-such-cronjob failed: 404") as caught:
        await runner.start("v000042", tmp_path)
    assert caught.value.status == 404
    assert [r.method for r in api_server.requests] == ["GET"]
