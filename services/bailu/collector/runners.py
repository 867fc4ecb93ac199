"""How a training run is started: a local process (make dev) or a Kubernetes Job from the trainer CronJob
(built by `bailu.common.kube_jobs`).

Both runners hand the trainer the dataset version to train on: the local one through its command line
(`{dataset_version}`, `{dataset_dir}`) and the environment, the Kubernetes one through the environment
variable `BAILU_TRAINER_DATASET_VERSION` of every container of the Job's pod.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shlex
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from bailu.collector.settings import CollectorSettings, RunnerKind
from bailu.common.kube_jobs import DATASET_VERSION_ENV, RunnerError, api_message, build_job

if TYPE_CHECKING:
    from kubernetes.client import BatchV1Api

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# The managed-by label of the Jobs the collector starts (`bailu retrain` writes its own).
MANAGED_BY = "bailu-feedback-collector"

T = TypeVar("T")


class Runner(Protocol):
    async def start(self, dataset_version: str, dataset_dir: Path) -> str:
        """Start a training run on `dataset_version` (a sealed version under `dataset_dir`) and return its id
        without waiting for it to finish. Raises `RunnerError` (or any exception) when it could not start."""
        ...


def _utc_now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- local


class LocalRunner:
    """Starts the trainer as a detached local process; its output goes to `<dataset_dir>/runs/<run id>.log`."""

    def __init__(self, command: str, *, clock: Callable[[], datetime] = _utc_now) -> None:
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise ValueError(f"local runner command {command!r} cannot be parsed: {exc}") from exc
        if not argv:
            raise ValueError(
                "local runner needs a command (BAILU_COLLECTOR_LOCAL_COMMAND), for example "
                "'python -m bailu.trainer --dataset-dir {dataset_dir} --dataset-version {dataset_version}'"
            )
        self.argv = argv
        self.clock = clock
        self._processes: dict[str, subprocess.Popen[bytes]] = {}

    def command_for(self, dataset_version: str, dataset_dir: Path) -> list[str]:
        """The argv with the placeholders filled in (each argument stays one argument; no shell)."""
        directory = str(dataset_dir.resolve())
        return [
            arg.replace("{dataset_version}", dataset_version).replace("{dataset_dir}", directory) for arg in self.argv
        ]

    async def start(self, dataset_version: str, dataset_dir: Path) -> str:
        self._reap()
        run_id = f"local-{self.clock().astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
        argv = self.command_for(dataset_version, dataset_dir)
        log_path = dataset_dir / "runs" / f"{run_id}.log"
        process = await asyncio.to_thread(self._spawn, argv, log_path, dataset_version)
        self._processes[run_id] = process
        log.info(
            "local training run started",
            extra={"run_id": run_id, "pid": process.pid, "argv": argv, "log": str(log_path)},
        )
        return run_id

    @staticmethod
    def _spawn(argv: list[str], log_path: Path, dataset_version: str) -> subprocess.Popen[bytes]:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with log_path.open("ab") as log:
                return subprocess.Popen(  # nosec B603 # argv list, no shell: the operator's LOCAL_COMMAND
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, DATASET_VERSION_ENV: dataset_version},
                    start_new_session=True,  # not in the collector's process group: survives its Ctrl-C
                )
        except OSError as exc:
            raise RunnerError(f"cannot start the local trainer {argv[0]!r}: {exc}") from exc

    def _reap(self) -> None:
        for run_id, process in list(self._processes.items()):
            code = process.poll()
            if code is not None:
                del self._processes[run_id]
                log.info("local training run finished", extra={"run_id": run_id, "exit_code": code})


# --------------------------------------------------------------------------- kubernetes


class KubernetesRunner:
    """Creates a Job from the trainer CronJob's template through the Kubernetes API (namespace-scoped).

    Needs RBAC in its namespace: `get` on `cronjobs` and `create` on `jobs` (group `batch`).
    The CronJob is normally suspended: it exists only as the template.
    """

    def __init__(
        self,
        namespace: str,
        cronjob: str,
        api: BatchV1Api | None = None,
        *,
        clock: Callable[[], datetime] = _utc_now,
        request_timeout_s: float = 30.0,
    ) -> None:
        if not namespace:
            raise ValueError("kubernetes runner needs a namespace")
        if not cronjob:
            raise ValueError("kubernetes runner needs the trainer CronJob's name (BAILU_COLLECTOR_KUBERNETES_CRONJOB)")
        if api is None:
            from kubernetes import client

            api = client.BatchV1Api()
        self.namespace = namespace
        self.cronjob = cronjob
        self.api = api
        self.clock = clock
        self.request_timeout_s = request_timeout_s

    @classmethod
    def from_settings(
        cls, settings: CollectorSettings, *, namespace_file: Path = SERVICE_ACCOUNT_NAMESPACE
    ) -> KubernetesRunner:
        """In-cluster configuration (the pod's service account); the namespace from the settings or the pod's."""
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)  # this client's, not the global default
        namespace = settings.kubernetes_namespace
        if not namespace:
            try:
                namespace = namespace_file.read_text().strip()
            except OSError as exc:
                raise ValueError(
                    f"no namespace configured (BAILU_COLLECTOR_KUBERNETES_NAMESPACE) and {namespace_file} "
                    f"cannot be read: {exc}"
                ) from exc
        return cls(namespace, settings.kubernetes_cronjob, client.BatchV1Api(client.ApiClient(configuration)))

    async def start(self, dataset_version: str, dataset_dir: Path) -> str:
        """Create the Job; `dataset_dir` is not used (the Job mounts the dataset volume its template names)."""
        cronjob = await self._call(
            f"read CronJob {self.namespace}/{self.cronjob}",
            self.api.read_namespaced_cron_job,
            self.cronjob,
            self.namespace,
            _request_timeout=self.request_timeout_s,
        )
        job = build_job(cronjob, dataset_version, namespace=self.namespace, now=self.clock(), managed_by=MANAGED_BY)
        assert job.metadata is not None
        assert job.metadata.name is not None
        created = await self._call(
            f"create Job {self.namespace}/{job.metadata.name}",
            self.api.create_namespaced_job,
            self.namespace,
            job,
            # The generated client sends no Content-Type (the API server then assumes JSON): say it.
            _headers={"Content-Type": "application/json"},
            _request_timeout=self.request_timeout_s,
        )
        name = created.metadata.name if created.metadata is not None and created.metadata.name else job.metadata.name
        log.info(
            "training Job created",
            extra={
                "job": name,
                "namespace": self.namespace,
                "cronjob": self.cronjob,
                "dataset_version": dataset_version,
            },
        )
        return name

    @staticmethod
    async def _call(what: str, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return await asyncio.to_thread(func, *args, **kwargs)
        except ApiException as exc:
            detail = api_message(exc.body)
            raise RunnerError(
                f"Kubernetes API: {what} failed: {exc.status} {exc.reason}" + (f": {detail}" if detail else ""),
                status=exc.status,
                reason=exc.reason,
            ) from exc
        except HTTPError as exc:
            raise RunnerError(f"Kubernetes API: {what} failed: {exc}") from exc


def create_runner(settings: CollectorSettings) -> Runner | None:
    """The runner the settings ask for; None for `runner=none` (the policy is then only evaluated and logged)."""
    if settings.runner is RunnerKind.LOCAL:
        return LocalRunner(settings.local_command)
    if settings.runner is RunnerKind.KUBERNETES:
        return KubernetesRunner.from_settings(settings)
    return None
