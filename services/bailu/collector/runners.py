"""How a training run is started: a local process (make dev) or a Kubernetes Job from the trainer CronJob.

Both runners hand the trainer the dataset version to train on: the local one through its command line
(`{dataset_version}`, `{dataset_dir}`) and the environment, the Kubernetes one through the environment
variable `BAILU_TRAINER_DATASET_VERSION` of every container of the Job's pod.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import shlex
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from bailu.collector.settings import CollectorSettings, RunnerKind
from bailu.common.errors import BailuError

if TYPE_CHECKING:
    from kubernetes.client import BatchV1Api, V1CronJob, V1Job

logger = logging.getLogger(__name__)

DATASET_VERSION_ENV = "BAILU_TRAINER_DATASET_VERSION"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
INSTANTIATE_ANNOTATION = "cronjob.kubernetes.io/instantiate"
DATASET_VERSION_LABEL = "bailu.dev/dataset-version"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "bailu-feedback-collector"
MAX_NAME = 63  # a Job's name ends up in a label value (job-name) on its pods

T = TypeVar("T")


class RunnerError(BailuError):
    """A training run could not be started; `status` and `reason` are the Kubernetes API's when it answered."""

    def __init__(self, message: str, *, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


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
        logger.info(
            "local training run started",
            extra={"run_id": run_id, "pid": process.pid, "argv": argv, "log": str(log_path)},
        )
        return run_id

    @staticmethod
    def _spawn(argv: list[str], log_path: Path, dataset_version: str) -> subprocess.Popen[bytes]:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with log_path.open("ab") as log:
                return subprocess.Popen(
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
                logger.info("local training run finished", extra={"run_id": run_id, "exit_code": code})


# --------------------------------------------------------------------------- kubernetes


def _dns_label(text: str) -> str:
    """Lower-case letters, digits and '-' only, no leading or trailing '-'."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")


def _label_value(text: str) -> str:
    """A valid label value: at most 63 of [A-Za-z0-9._-], starting and ending with a letter or digit."""
    value = re.sub(r"[^A-Za-z0-9._-]", "_", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def job_name(cronjob: str, dataset_version: str, now: datetime) -> str:
    """`<cronjob>-<short version>-<UTC timestamp>`, a DNS-1123 label of at most 63 characters.

    The CronJob's part is shortened first, so the version and the timestamp survive."""
    stamp = now.astimezone(UTC).strftime("%Y%m%d%H%M%S")
    version = _dns_label(dataset_version)[:12].strip("-")
    suffix = f"{version}-{stamp}" if version else stamp
    prefix = _dns_label(cronjob)[: MAX_NAME - len(suffix) - 1].strip("-")
    return f"{prefix}-{suffix}" if prefix else suffix


def build_job(
    cronjob: V1CronJob, dataset_version: str, *, namespace: str, now: datetime, managed_by: str = MANAGED_BY
) -> V1Job:
    """The Job `kubectl create job --from=cronjob/NAME` would create, plus the dataset version.

    As kubectl does: the job template's spec unchanged, its labels, its annotations plus
    `cronjob.kubernetes.io/instantiate: manual`, and the CronJob as controlling owner (so deleting the
    CronJob deletes the Job). Added: `BAILU_TRAINER_DATASET_VERSION` in every (init) container,
    the managed-by label (`managed_by`: who starts the Job), and, unless the version is "" (the trainer's
    newest), the dataset version as a label (sanitised) and an annotation (verbatim).
    """
    from kubernetes import client

    meta = cronjob.metadata
    template = cronjob.spec.job_template if cronjob.spec is not None else None
    if meta is None or not meta.name or not meta.uid:
        raise RunnerError("the CronJob read from the API has no name or uid")
    if template is None or template.spec is None or template.spec.template.spec is None:
        raise RunnerError(f"CronJob {meta.name} has no job template with a pod spec")
    spec = template.spec.model_copy(deep=True)
    pod_spec = spec.template.spec
    assert pod_spec is not None  # checked above
    for container in [*pod_spec.containers, *(pod_spec.init_containers or [])]:
        # Replaced in place if the template declares it (later variables may refer to it), else appended.
        var = client.V1EnvVar(name=DATASET_VERSION_ENV, value=dataset_version)
        env = list(container.env or [])
        names = [existing.name for existing in env]
        if DATASET_VERSION_ENV in names:
            env[names.index(DATASET_VERSION_ENV)] = var
        else:
            env.append(var)
        container.env = env
    template_meta = template.metadata
    labels = dict(template_meta.labels or {}) if template_meta is not None else {}
    labels[MANAGED_BY_LABEL] = managed_by
    version_label = _label_value(dataset_version)
    if version_label:
        labels[DATASET_VERSION_LABEL] = version_label
    annotations = dict(template_meta.annotations or {}) if template_meta is not None else {}
    annotations[INSTANTIATE_ANNOTATION] = "manual"
    if dataset_version:
        annotations[DATASET_VERSION_LABEL] = dataset_version
    return client.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=client.V1ObjectMeta(
            name=job_name(meta.name, dataset_version, now),
            namespace=namespace,
            labels=labels,
            annotations=annotations,
            owner_references=[
                client.V1OwnerReference(
                    api_version="batch/v1", kind="CronJob", name=meta.name, uid=meta.uid, controller=True
                )
            ],
        ),
        spec=spec,
    )


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
        job = build_job(cronjob, dataset_version, namespace=self.namespace, now=self.clock())
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
        logger.info(
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


def api_message(body: object) -> str:
    """The `message` of a Kubernetes `Status` body (it says which permission is missing), if any."""
    if not body:
        return ""
    try:
        status = json.loads(body if isinstance(body, str | bytes) else str(body))
    except ValueError:
        return ""
    message = status.get("message") if isinstance(status, dict) else None
    return message if isinstance(message, str) else ""


def create_runner(settings: CollectorSettings) -> Runner | None:
    """The runner the settings ask for; None for `runner=none` (the policy is then only evaluated and logged)."""
    if settings.runner is RunnerKind.LOCAL:
        return LocalRunner(settings.local_command)
    if settings.runner is RunnerKind.KUBERNETES:
        return KubernetesRunner.from_settings(settings)
    return None
