"""`bailu retrain`: a training Job from the trainer CronJob, in the kubeconfig's cluster.

What `kubectl create job --from=cronjob/<release>-bailu-trainer` does, through the same code the
collector uses (`bailu.common.kube_jobs.build_job`): the CronJob's job template, the
`cronjob.kubernetes.io/instantiate: manual` annotation, the CronJob as owner, and the dataset
version in `BAILU_TRAINER_DATASET_VERSION` of every container. With no --dataset-version the
variable is set to "" — the trainer's "newest sealed version", resolved when the Job runs —
replacing any version the template pins, and no dataset-version annotation is written.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bailu.cli.errors import CliError
from bailu.cli.output import dump_json
from bailu.common.kube_jobs import api_message, build_job

if TYPE_CHECKING:
    from kubernetes.client import BatchV1Api, V1Job

# The label that tells Jobs apart by who started them (the collector's say bailu-feedback-collector).
MANAGED_BY = "bailu-cli"
REQUEST_TIMEOUT_S = 30.0
CHART_NAME = "bailu"


def trainer_cronjob(release: str) -> str:
    """The chart's trainer CronJob for a release: `<fullname>-trainer`, where the fullname is the release name
    when it contains "bailu", else `<release>-bailu` (as the chart's bailu.fullname helper)."""
    fullname = _trunc(release if CHART_NAME in release else f"{release}-{CHART_NAME}")
    return _trunc(f"{fullname}-trainer")


def _trunc(name: str) -> str:
    """Helm's `trunc 63 | trimSuffix "-"`."""
    name = name[:63]
    return name[:-1] if name.endswith("-") else name


@dataclass(frozen=True)
class Cluster:
    api: BatchV1Api
    context: str
    namespace: str  # the context's namespace, "default" when it names none


def load_cluster(kubeconfig: str | None, context: str | None) -> Cluster:
    """A client configured from the kubeconfig (KUBECONFIG or ~/.kube/config unless `kubeconfig` is given), as
    kubectl would use it: the current context unless `context` is given."""
    try:
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException
    except ImportError as exc:
        raise CliError("the kubernetes package is missing: install bailu with the collector extra") from exc
    try:
        contexts, current = config.list_kube_config_contexts(config_file=kubeconfig)
    except (ConfigException, OSError, ValueError) as exc:
        raise CliError(f"cannot read the kubeconfig: {exc}") from exc
    chosen = current if context is None else next((c for c in contexts or [] if c.get("name") == context), None)
    if chosen is None:
        known = ", ".join(sorted(c.get("name", "?") for c in contexts or [])) or "none"
        raise CliError(
            f"no context {context!r} in the kubeconfig (contexts: {known})"
            if context
            else "the kubeconfig has no current context: pass --context"
        )
    configuration = client.Configuration()
    try:
        config.load_kube_config(
            config_file=kubeconfig, context=chosen["name"], client_configuration=configuration, persist_config=False
        )
    except (ConfigException, OSError, ValueError) as exc:
        raise CliError(f"cannot use kubeconfig context {chosen['name']!r}: {exc}") from exc
    namespace = (chosen.get("context") or {}).get("namespace") or "default"
    return Cluster(client.BatchV1Api(client.ApiClient(configuration)), chosen["name"], namespace)


def _call(what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
    """One API request; its failure as one line (the API server's Status message says which permission lacks)."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return func(*args, _request_timeout=REQUEST_TIMEOUT_S, **kwargs)
    except ApiException as exc:
        detail = api_message(exc.body)
        raise CliError(f"{what} failed: {exc.status} {exc.reason}" + (f": {detail}" if detail else "")) from exc
    except HTTPError as exc:
        raise CliError(f"{what} failed: the Kubernetes API did not answer ({exc})") from exc


def create_job(api: BatchV1Api, namespace: str, cronjob: str, dataset_version: str, now: datetime) -> str:
    """Create the Job; returns its name. A CronJob without a job template is a `RunnerError` (a BailuError,
    reported as one line by `main`)."""
    what = f"reading cronjob/{cronjob} in namespace {namespace}"
    template = _call(what, api.read_namespaced_cron_job, cronjob, namespace)
    job = build_job(template, dataset_version, namespace=namespace, now=now, managed_by=MANAGED_BY)
    assert job.metadata is not None  # build_job always writes it
    created: V1Job = _call(
        f"creating a Job in namespace {namespace}",
        api.create_namespaced_job,
        namespace,
        job,
        # The generated client sends no Content-Type (the API server then assumes JSON): say it.
        _headers={"Content-Type": "application/json"},
    )
    name = created.metadata.name if created.metadata is not None else None
    return name or str(job.metadata.name)


def retrain(args: argparse.Namespace) -> int:
    cluster = load_cluster(args.kubeconfig, args.context)
    namespace = args.namespace or cluster.namespace
    cronjob = args.cronjob or trainer_cronjob(args.release)
    name = create_job(cluster.api, namespace, cronjob, args.dataset_version, datetime.now(UTC))
    kubectl = ["kubectl", *(["--context", args.context] if args.context else []), "-n", namespace]
    commands = {
        "status": shlex.join([*kubectl, "get", "job", name, "-w"]),
        "logs": shlex.join([*kubectl, "logs", "-f", f"job/{name}"]),
    }
    if args.json:
        dump_json(
            {
                "job": name,
                "namespace": namespace,
                "context": cluster.context,
                "cronjob": cronjob,
                "dataset_version": args.dataset_version,
                "commands": commands,
            }
        )
        return 0
    version = args.dataset_version or "the newest sealed version (resolved when the Job starts)"
    print(f"job.batch/{name} created in namespace {namespace} (context {cluster.context}) from cronjob/{cronjob}")
    print(f"dataset version: {version}")
    print("watch it:")
    print(f"  {commands['status']}")
    print(f"  {commands['logs']}")
    print("then: bailu models show <adapter name>, and bailu models canary / promote / rollback")
    return 0


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "retrain",
        parents=[common],
        help="start a training Job in the cluster from the trainer CronJob",
        description="Create a training Job from the trainer CronJob, as `kubectl create job "
        "--from=cronjob/<release>-bailu-trainer` does, in the kubeconfig's current context (or --context), with "
        "the dataset version to train on (default: the newest sealed one when the Job starts). Prints the Job's name "
        "and the kubectl commands to watch it.",
    )
    p.add_argument("--dataset-version", default="", help="dataset version to train on (default: the newest)")
    p.add_argument("--namespace", "-n", help="namespace of the release (default: the kubeconfig context's)")
    p.add_argument("--release", default="bailu", help="Helm release name, for the CronJob's name (default: bailu)")
    p.add_argument("--cronjob", help="the trainer CronJob (default: <release>-bailu-trainer, as the chart names it)")
    p.add_argument("--context", help="kubeconfig context (default: the current one)")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: KUBECONFIG, else ~/.kube/config)")
    p.set_defaults(handler=lambda args, settings: retrain(args))
