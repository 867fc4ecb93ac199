"""Training Jobs from the trainer CronJob, as `kubectl create job --from=cronjob/NAME` makes them, plus the
dataset version to train on; shared by whoever starts training runs (the collector's Kubernetes runner,
`bailu retrain`).

The `kubernetes` client is imported inside the functions: `common` does not require it.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bailu.common.errors import BailuError

if TYPE_CHECKING:
    from kubernetes.client import V1CronJob, V1Job

# The trainer reads the dataset version to train on from this variable ("": its newest sealed version).
DATASET_VERSION_ENV = "BAILU_TRAINER_DATASET_VERSION"
INSTANTIATE_ANNOTATION = "cronjob.kubernetes.io/instantiate"
DATASET_VERSION_LABEL = "bailu.dev/dataset-version"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MAX_NAME = 63  # a Job's name ends up in a label value (job-name) on its pods


class RunnerError(BailuError):
    """A training run could not be started; `status` and `reason` are the Kubernetes API's when it answered."""

    def __init__(self, message: str, *, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


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


def build_job(cronjob: V1CronJob, dataset_version: str, *, namespace: str, now: datetime, managed_by: str) -> V1Job:
    """The Job `kubectl create job --from=cronjob/NAME` would create, plus the dataset version.

    As kubectl does: the job template's spec unchanged, its labels, its annotations plus
    `cronjob.kubernetes.io/instantiate: manual`, and the CronJob as controlling owner (so deleting the
    CronJob deletes the Job). Added: `BAILU_TRAINER_DATASET_VERSION` in every (init) container,
    the managed-by label (`managed_by`: who starts the Job), and, unless the version is "" (the trainer's
    newest), the dataset version as a label (sanitised) and an annotation (verbatim).
    Raises `RunnerError` when the CronJob has no name, uid or job template with a pod spec.
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
