"""values.schema.json refuses bad values with a clear message, and agrees with the services' code."""

from __future__ import annotations

import json
import re
from typing import Any

import pydantic
import pytest
import yaml

from bailu.collector.settings import CollectorSettings
from bailu.gateway.settings import GatewaySettings
from bailu.trainer.settings import QuantMethod, RlhfType, TrainerSettings
from bailu.worker.settings import EngineKind, WorkerSettings
from tests.chart.conftest import OLD_WORKER_KEYS, with_old_worker_keys
from tests.chart.helm import CHART, Helm, HelmError

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())

# Settings the chart sets itself (from other values), so they are not accepted in a settings map.
GATEWAY_MANAGED = {"port", "workers", "workers_dns", "api_keys_file", "api_key_hashes", "redis_url"}
WORKER_MANAGED = {
    "port",
    "http_port",
    "engine",
    "model_name",
    "model_path",
    "model_type",
    "template",
    "adapters",
    "drain_grace_s",
    "registry_dir",  # the model store's registry (registry.path)
    "registry_redis_url",  # the release's Redis
    # Engine servers:
    "engine_host",  # 127.0.0.1: the engine listens on localhost only
    "tensor_parallel_size",  # the pool's tensorParallelSize, or its gpus
    "engine_start_timeout_s",  # the startup probe's budget
    "engine_stop_grace_s",  # the pool's engineStopGraceSeconds (also in terminationGracePeriodSeconds)
}
COLLECTOR_MANAGED = {
    "redis_url",
    "consumer_name",
    "http_port",
    "dataset_dir",
    "runner",
    "kubernetes_namespace",
    "kubernetes_cronjob",
    "trigger_min_new_pairs",
    "trigger_cooldown_s",
    "trigger_daily_cap",
    "trigger_peak_window",
    "trigger_timezone",
    "trigger_interval_s",
    "local_command",  # the local runner has no use in a cluster
}
TRAINER_MANAGED = {
    "dataset_dir",
    "dataset_version",  # each run's (BAILU_TRAINER_DATASET_VERSION from the runner; unset: the newest)
    "registry_dir",
    "redis_url",
    "work_dir",
    "base_model",  # the next four: the worker pool's model (trainer.workerPool)
    "model_path",
    "model_type",
    "template",
    "adapter_name",  # trainer.adapterName
    "rlhf_type",  # trainer.rlhfType
}
# collector.trigger values → the CollectorSettings fields they set.
TRIGGER_FIELDS = {
    "minNewPairs": "trigger_min_new_pairs",
    "cooldownSeconds": "trigger_cooldown_s",
    "dailyCap": "trigger_daily_cap",
    "peakWindow": "trigger_peak_window",
    "timezone": "trigger_timezone",
    "intervalSeconds": "trigger_interval_s",
}
POOL_ONLY_KEYS = {"name", "engine", "model", "adapters"}


def pool(**fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": "p", "engine": "sim", "model": {"name": "m", "source": "none"}}
    entry.update(fields)
    return {key: value for key, value in entry.items() if value is not None}


# Values the schema refuses, each with what the error says (the path of the bad value).
BAD_VALUES: list[tuple[dict[str, Any], list[str]]] = [
    ({"worker": {"pools": [pool(engine=None)]}}, ["at '/worker/pools/0': missing property 'engine'"]),
    (
        {"worker": {"pools": [pool(engine="tensorrt")]}},
        ["at '/worker/pools/0/engine': value must be one of " + ", ".join(repr(kind.value) for kind in EngineKind)],
    ),
    ({"worker": {"pools": [pool(replicas=-1)]}}, ["at '/worker/pools/0/replicas': minimum: got -1, want 0"]),
    ({"gateway": {"replicas": -2}}, ["at '/gateway/replicas': minimum: got -2, want 0"]),
    ({"worker": {"pools": [pool(gpus=-1)]}}, ["at '/worker/pools/0/gpus': minimum: got -1, want 0"]),
    (
        {"worker": {"pools": [pool(engine="transformers", model={"name": "m"})]}},
        ["at '/worker/pools/0/model': missing properties 'source', 'path'"],
    ),
    ({"worker": {"pools": [pool(name="GPU_pool")]}}, ["at '/worker/pools/0/name'", "does not match pattern"]),
    ({"worker": {"pools": [pool(gpu=1)]}}, ["invalid propertyName 'gpu'"]),
    (
        {"worker": {"pools": [pool(image={"tag": "1"})]}},
        ["at '/worker/pools/0/image'", "missing property 'repository'"],
    ),
    ({"worker": {"defaults": {"engine": "sim"}}}, ["invalid propertyName 'engine'"]),
    ({"worker": {"pools": [pool(settings={"max_batch": 2})]}}, ["invalid propertyName 'max_batch'"]),
    ({"worker": {"pools": [pool(settings={"model_path": "/m"})]}}, ["invalid propertyName 'model_path'"]),
    ({"gateway": {"settings": {"port": 9000}}}, ["invalid propertyName 'port'"]),
    ({"gateway": {"apiKeys": {"extraHashes": ["my-plain-key"]}}}, ["at '/gateway/apiKeys/extraHashes/0'"]),
    ({"redis": {"external": {"url": "redis://:secret@host:6379"}}}, ["at '/redis/external/url'"]),
    ({"gateway": {"httpRoute": {"enabled": True}}}, ["at '/gateway/httpRoute/parentRefs'"]),
    ({"gateway": {"image": {"repository": "bailu/gateway", "tag": 1.0}}}, ["at '/gateway/image/tag'"]),
    ({"collector": {"replicas": -1}}, ["at '/collector/replicas': minimum: got -1, want 0"]),
    ({"collector": {"trigger": {"peakWindow": "6:00-9:30"}}}, ["at '/collector/trigger/peakWindow'"]),
    ({"collector": {"trigger": {"peakWindow": "06:00-25:00"}}}, ["at '/collector/trigger/peakWindow'"]),
    ({"collector": {"trigger": {"peakWindow": "24:00-06:00"}}}, ["at '/collector/trigger/peakWindow'"]),
    ({"collector": {"trigger": {"peakWindow": "06:00-24:30"}}}, ["at '/collector/trigger/peakWindow'"]),
    ({"collector": {"trigger": {"peakWindow": "mornings"}}}, ["at '/collector/trigger/peakWindow'"]),
    ({"collector": {"trigger": {"timezone": ""}}}, ["at '/collector/trigger/timezone'"]),
    ({"collector": {"trigger": {"timezone": "UTC+2 hours"}}}, ["at '/collector/trigger/timezone'"]),
    ({"collector": {"trigger": {"minNewPairs": 0}}}, ["at '/collector/trigger/minNewPairs': minimum: got 0"]),
    ({"collector": {"trigger": {"dailyCap": -1}}}, ["at '/collector/trigger/dailyCap': minimum: got -1"]),
    ({"collector": {"trigger": {"cooldownSeconds": -5}}}, ["at '/collector/trigger/cooldownSeconds'"]),
    ({"collector": {"trigger": {"intervalSeconds": 0}}}, ["at '/collector/trigger/intervalSeconds'"]),
    ({"collector": {"trigger": {"peakHours": "06:00-09:00"}}}, ["additional properties 'peakHours'"]),
    ({"collector": {"trainerCronJob": "Trainer_1"}}, ["at '/collector/trainerCronJob'"]),
    ({"collector": {"startTrainingRuns": "yes"}}, ["at '/collector/startTrainingRuns'"]),
    ({"collector": {"settings": {"batch": 10}}}, ["invalid propertyName 'batch'"]),
    ({"collector": {"settings": {"redis_url": "redis://r:6379/0"}}}, ["invalid propertyName 'redis_url'"]),
    ({"collector": {"settings": {"trigger_daily_cap": 3}}}, ["invalid propertyName 'trigger_daily_cap'"]),
    ({"networkPolicy": {"kubernetesApi": {"cidrs": ["api.example.com"]}}}, ["at '/networkPolicy/kubernetesApi"]),
    ({"networkPolicy": {"kubernetesApi": {"ports": [70000]}}}, ["at '/networkPolicy/kubernetesApi/ports/0'"]),
    ({"trainer": {"gpus": -1}}, ["at '/trainer/gpus': minimum: got -1, want 0"]),
    (
        {"trainer": {"rlhfType": "ppo"}},
        ["at '/trainer/rlhfType': value must be one of 'orpo', 'dpo', 'simpo', 'kto', 'none'"],
    ),
    ({"trainer": {"adapterName": "poet@v2"}}, ["at '/trainer/adapterName'", "does not match pattern"]),
    ({"trainer": {"workerPool": "GPU"}}, ["at '/trainer/workerPool'"]),
    ({"trainer": {"schedule": "daily"}}, ["at '/trainer/schedule'"]),
    ({"trainer": {"timeZone": "UTC+2 hours"}}, ["at '/trainer/timeZone'"]),
    ({"trainer": {"backoffLimit": -1}}, ["at '/trainer/backoffLimit': minimum: got -1, want 0"]),
    ({"trainer": {"suspend": "yes"}}, ["at '/trainer/suspend'"]),
    ({"trainer": {"scratchSizeLimit": "lots"}}, ["at '/trainer/scratchSizeLimit'"]),
    ({"trainer": {"epochs": 2}}, ["additional properties 'epochs'"]),
    ({"trainer": {"settings": {"epoch": 2}}}, ["invalid propertyName 'epoch'"]),
    ({"trainer": {"settings": {"base_model": "m"}}}, ["invalid propertyName 'base_model'"]),
    ({"trainer": {"settings": {"dataset_version": "v000001"}}}, ["invalid propertyName 'dataset_version'"]),
    ({"trainer": {"settings": {"rlhf_type": "dpo"}}}, ["invalid propertyName 'rlhf_type'"]),
    (
        {"trainer": {"settings": {"quant_bits": 8}}},
        ["at '/trainer/settings/quant_bits': value must be one of 0, 4"],
    ),
    ({"trainer": {"settings": {"lora_rank": 0}}}, ["at '/trainer/settings/lora_rank': minimum: got 0, want 1"]),
    ({"trainer": {"settings": {"canary_weight": 1.5}}}, ["at '/trainer/settings/canary_weight': maximum"]),
    ({"trainer": {"settings": {"eval_fraction": 1}}}, ["at '/trainer/settings/eval_fraction'"]),
    ({"trainer": {"settings": {"quantize": "int8"}}}, ["at '/trainer/settings/quantize'"]),
    ({"trainer": {"settings": {"extra_sft_args": ["--a", "1"]}}}, ["at '/trainer/settings/extra_sft_args'"]),
    ({"registry": {"path": "/models/registry"}}, ["at '/registry/path'"]),
    (
        {"worker": {"pools": [pool(settings={"gpu_memory_utilization": 1.5})]}},
        ["at '/worker/pools/0/settings/gpu_memory_utilization': maximum: got 1.5, want 1"],
    ),
    (
        {"worker": {"pools": [pool(settings={"gpu_memory_utilization": 0})]}},
        ["at '/worker/pools/0/settings/gpu_memory_utilization': exclusiveMinimum"],
    ),
    (
        {"worker": {"pools": [pool(tensorParallelSize=-1)]}},
        ["at '/worker/pools/0/tensorParallelSize': minimum: got -1, want 0"],
    ),
    ({"worker": {"pools": [pool(tensorParallelSize=1.5)]}}, ["at '/worker/pools/0/tensorParallelSize'"]),
    (
        {"worker": {"defaults": {"settings": {"max_loras": -1}}}},
        ["at '/worker/defaults/settings/max_loras': minimum"],
    ),
    (
        {"worker": {"pools": [pool(settings={"max_lora_rank": 0})]}},
        ["at '/worker/pools/0/settings/max_lora_rank': minimum"],
    ),
    (
        {"worker": {"pools": [pool(settings={"engine_port": 70000})]}},
        ["at '/worker/pools/0/settings/engine_port': maximum"],
    ),
    (
        {"worker": {"pools": [pool(settings={"engine_args": ["--enforce-eager"]})]}},
        ["at '/worker/pools/0/settings/engine_args'"],
    ),
    ({"worker": {"pools": [pool(settings={"engine_host": "0.0.0.0"})]}}, ["invalid propertyName 'engine_host'"]),
    (
        {"worker": {"pools": [pool(settings={"tensor_parallel_size": 2})]}},
        ["invalid propertyName 'tensor_parallel_size'"],
    ),
    (
        {"worker": {"pools": [pool(settings={"engine_start_timeout_s": 60})]}},
        ["invalid propertyName 'engine_start_timeout_s'"],
    ),
    (
        {"worker": {"pools": [pool(engineStopGraceSeconds=-1)]}},
        ["at '/worker/pools/0/engineStopGraceSeconds': minimum"],
    ),
    ({"worker": {"engineImages": {"tensorrt": "bailu/worker-trt"}}}, ["additional properties 'tensorrt'"]),
    ({"worker": {"engineImages": {"vllm": ""}}}, ["at '/worker/engineImages/vllm'"]),
]
BAD_VALUE_IDS = [
    "worker-without-engine",
    "unknown-engine",
    "negative-worker-replicas",
    "negative-gateway-replicas",
    "negative-gpus",
    "model-without-path",
    "bad-pool-name",
    "unknown-pool-key",
    "pool-image-without-repository",
    "engine-in-defaults",
    "unknown-setting",
    "chart-managed-setting",
    "chart-managed-gateway-setting",
    "plain-key-as-hash",
    "password-in-redis-url",
    "route-without-parent",
    "numeric-image-tag",
    "negative-collector-replicas",
    "peak-window-one-digit-hour",
    "peak-window-hour-25",
    "peak-window-starts-at-24",
    "peak-window-ends-after-24",
    "peak-window-words",
    "empty-timezone",
    "bad-timezone",
    "zero-min-new-pairs",
    "negative-daily-cap",
    "negative-cooldown",
    "zero-interval",
    "unknown-trigger-key",
    "bad-cronjob-name",
    "non-boolean-runs",
    "unknown-collector-setting",
    "chart-managed-collector-setting",
    "trigger-setting-in-settings",
    "api-cidr-not-a-cidr",
    "api-port-out-of-range",
    "negative-trainer-gpus",
    "unknown-rlhf-type",
    "adapter-name-with-at",
    "bad-worker-pool-name",
    "bad-schedule",
    "bad-schedule-timezone",
    "negative-backoff-limit",
    "non-boolean-suspend",
    "bad-scratch-size",
    "unknown-trainer-key",
    "unknown-trainer-setting",
    "chart-managed-trainer-setting",
    "dataset-version-in-settings",
    "rlhf-type-in-settings",
    "quant-bits-8",
    "zero-lora-rank",
    "canary-weight-above-1",
    "eval-fraction-1",
    "unknown-quantize",
    "extra-args-as-list",
    "absolute-registry-path",
    "gpu-memory-above-1",
    "gpu-memory-0",
    "negative-tensor-parallel",
    "fractional-tensor-parallel",
    "negative-max-loras",
    "zero-lora-rank",
    "engine-port-out-of-range",
    "engine-args-as-list",
    "engine-host-in-settings",
    "tensor-parallel-in-settings",
    "start-timeout-in-settings",
    "negative-stop-grace",
    "unknown-engine-image",
    "empty-engine-image",
]


@pytest.mark.parametrize(
    ("values", "messages"),
    BAD_VALUES,
    ids=BAD_VALUE_IDS,
)
def test_bad_values_fail_with_the_schema_message(helm: Helm, values: dict[str, Any], messages: list[str]) -> None:
    with pytest.raises(HelmError) as failure:
        helm.template(values=values)
    text = str(failure.value)
    assert "values don't meet the specifications of the schema" in text
    for message in messages:
        assert message in text, text


# Values the templates refuse (checks across values that the schema cannot express), each with the message.
CROSS_CHECKS: list[tuple[dict[str, Any], str]] = [
    ({"worker": {"pools": [pool(name="a"), pool(name="a")]}}, 'the pool name "a" is used twice'),
    (
        {
            "storage": {"modelStore": {"enabled": False}},
            "worker": {
                "pools": [pool(engine="transformers", model={"name": "m", "source": "modelStore", "path": "x"})]
            },
        },
        "model.source is modelStore but storage.modelStore.enabled is false",
    ),
    (
        {
            "storage": {"modelStore": {"enabled": False}},
            "worker": {"pools": [pool(adapters={"poet": "adapters/poet"})]},
        },
        'adapter "poet" has a path relative to the model store',
    ),
    ({"gateway": {"apiKeys": {"plainKeyKey": "keys", "hashesKey": "keys"}}}, "must differ"),
    (
        {"storage": {"datasets": {"enabled": False}}, "trainer": {"enabled": False}},
        "collector.enabled is true but storage.datasets.enabled is false",
    ),
    ({"redis": {"enabled": False}}, "collector.enabled is true but there is no Redis"),
    (
        {"collector": {"trigger": {"peakWindow": "06:00-06:00"}}},
        'collector.trigger.peakWindow "06:00-06:00": start and end are equal',
    ),
    (
        {"collector": {"trigger": {"peakWindow": "00:00-24:00"}}},
        'collector.trigger.peakWindow "00:00-24:00": start and end are equal',
    ),
    (
        {"collector": {"startTrainingRuns": True, "serviceAccount": {"create": False}}},
        "would bind the collector's Role to the namespace's \"default\" ServiceAccount",
    ),
    (
        {"storage": {"modelStore": {"enabled": False}}, "worker": {"pools": [pool()]}},
        "trainer.enabled is true but storage.modelStore.enabled is false",
    ),
    (
        {"storage": {"datasets": {"enabled": False}}, "collector": {"enabled": False}},
        "trainer.enabled is true but storage.datasets.enabled is false",
    ),
    ({"trainer": {"workerPool": "gpu"}}, 'trainer.workerPool "gpu" is not the name of a pool in worker.pools'),
    (
        {
            "worker": {
                "pools": [
                    pool(name="cpu", engine="transformers", model={"name": "m", "source": "image", "path": "/m"}),
                    pool(name="sim"),
                ]
            },
            "trainer": {"workerPool": "sim"},
        },
        'trainer.workerPool "sim" serves no model (model.source none)',
    ),
    ({"worker": {"pools": [pool(name="sim")]}}, "no worker pool serves a model (source image or modelStore)"),
    (
        {"collector": {"startTrainingRuns": True}, "trainer": {"enabled": False}},
        "collector.startTrainingRuns is true but there is no trainer CronJob to start runs from",
    ),
    (
        {
            "worker": {
                "pools": [pool(name="v", engine="vllm", model={"name": "m", "source": "modelStore", "path": "m"})]
            }
        },
        "worker.pools[v]: the vllm engine runs on GPUs: set gpus (1 or more)",
    ),
    (
        {
            "worker": {
                "pools": [
                    pool(
                        engine="sglang",
                        gpus=2,
                        tensorParallelSize=4,
                        model={"name": "m", "source": "modelStore", "path": "m"},
                    )
                ]
            }
        },
        "worker.pools[p]: tensorParallelSize 4 is more than the pool's gpus (2)",
    ),
    (
        {"worker": {"defaults": {"settings": {"engine_port": 50051}}}},
        "worker.pools[cpu]: settings.engine_port 50051 is the worker's gRPC port",
    ),
    (
        {
            "worker": {
                "pools": [
                    pool(
                        engine="swift",
                        settings={"engine_port": 9091},
                        model={"name": "m", "source": "modelStore", "path": "m"},
                    )
                ]
            }
        },
        "worker.pools[p]: settings.engine_port 9091 is the worker's HTTP (probes and metrics) port",
    ),
]
CROSS_CHECK_IDS = [
    "duplicate-pool",
    "model-store-disabled",
    "adapter-without-store",
    "same-secret-keys",
    "collector-without-datasets",
    "collector-without-redis",
    "empty-peak-window",
    "whole-day-peak-window",
    "role-on-default-account",
    "trainer-without-model-store",
    "trainer-without-datasets",
    "trainer-unknown-pool",
    "trainer-pool-without-model",
    "trainer-without-a-model",
    "runs-without-cronjob",
    "gpu-engine-without-gpus",
    "tensor-parallel-over-gpus",
    "engine-port-is-grpc",
    "engine-port-is-http",
]


@pytest.mark.parametrize(
    ("values", "message"),
    CROSS_CHECKS,
    ids=CROSS_CHECK_IDS,
)
def test_cross_checks_fail_with_a_message(helm: Helm, values: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmError, match=re.escape(message)):
        helm.template(values=values)


def _worker_cases(cases: list[tuple[dict[str, Any], Any]], ids: list[str]) -> list[Any]:
    """The cases whose values are under `worker`, to be tried again under the deprecated top-level keys."""
    return [
        pytest.param(values, expected, id=id_)
        for (values, expected), id_ in zip(cases, ids, strict=True)
        if "worker" in values
    ]


def _old_path(message: str) -> str:
    """A schema message about a value under `worker` as it reads when the value is under its deprecated key."""
    for old, new in OLD_WORKER_KEYS.items():
        message = message.replace(f"'/worker/{new}", f"'/{old}")
    return message


@pytest.mark.parametrize(("values", "messages"), _worker_cases(BAD_VALUES, BAD_VALUE_IDS))
def test_the_deprecated_worker_keys_refuse_the_same_bad_values(
    helm: Helm, values: dict[str, Any], messages: list[str]
) -> None:
    """Under workerDefaults, workers, ... (charts before 0.5.0) the schema refuses what it refuses under `worker`."""
    with pytest.raises(HelmError) as failure:
        helm.template(values=with_old_worker_keys(values))
    text = str(failure.value)
    assert "values don't meet the specifications of the schema" in text
    for message in messages:
        assert _old_path(message) in text, text


@pytest.mark.parametrize(("values", "message"), _worker_cases(CROSS_CHECKS, CROSS_CHECK_IDS))
def test_the_deprecated_worker_keys_fail_the_same_cross_checks(
    helm: Helm, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(HelmError, match=re.escape(message)):
        helm.template(values=with_old_worker_keys(values))


def test_the_engine_list_is_the_workers_engine_list() -> None:
    """The schema's one engine enum equals bailu.worker.settings.EngineKind (add new engines to both)."""
    assert SCHEMA["definitions"]["engine"]["enum"] == [kind.value for kind in EngineKind]
    refs = json.dumps(SCHEMA).count('"#/definitions/engine"')
    assert refs == 1, "the engine enum must be referenced, not repeated"


def test_the_trainer_enums_are_the_settings_enums() -> None:
    """trainer.rlhfType and settings.quantize accept exactly the trainer's choices (add new ones to both)."""
    assert SCHEMA["definitions"]["rlhfType"]["enum"] == [kind.value for kind in RlhfType]
    quantize = SCHEMA["definitions"]["trainerSettings"]["properties"]["quantize"]["enum"]
    assert quantize == [method.value for method in QuantMethod]
    assert DEFAULTS["trainer"]["rlhfType"] == TrainerSettings.model_fields["rlhf_type"].default.value
    assert DEFAULTS["trainer"]["adapterName"] == TrainerSettings.model_fields["adapter_name"].default


@pytest.mark.parametrize(
    ("definition", "settings", "fewest"),
    [("trainerSettings", TrainerSettings, 15), ("workerSettings", WorkerSettings, 20)],
    ids=["trainer", "worker"],
)
def test_setting_bounds_are_the_settings_bounds(
    definition: str, settings: type[TrainerSettings | WorkerSettings], fewest: int
) -> None:
    """Where the schema bounds a setting, a value just inside passes the settings class and one just outside fails
    it: the chart refuses at install what the service would refuse at start (or hours later), and nothing else."""
    properties = SCHEMA["definitions"][definition]["properties"]
    checked = 0
    for field, rule in properties.items():
        for key, outside, inside in (
            ("minimum", -1, 0),
            ("maximum", 1, 0),
            ("exclusiveMinimum", 0, 1),
            ("exclusiveMaximum", 0, -1),
        ):
            if key not in rule:
                continue
            bound = rule[key]
            step = 1 if rule.get("type") == "integer" else 0.01
            good = bound + inside * step if key.startswith("exclusive") else bound
            bad = bound + outside * step if not key.startswith("exclusive") else bound
            settings(**{field: good})  # accepted
            with pytest.raises(pydantic.ValidationError):
                settings(**{field: bad})
            checked += 1
    assert checked >= fewest


def test_every_bounded_worker_setting_is_bounded_in_the_schema() -> None:
    """Each WorkerSettings field the settings map accepts has the class's bounds and type in the schema, so a new
    bounded field cannot be accepted unchecked."""
    properties = SCHEMA["definitions"]["workerSettings"]["properties"]
    accepted = SCHEMA["definitions"]["workerSettings"]["propertyNames"]["enum"]
    names = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}
    for field in accepted:
        info = WorkerSettings.model_fields[field]
        bounds = {names[k]: getattr(m, k) for m in info.metadata for k in names if hasattr(m, k)}
        types = {int: "integer", float: "number", bool: "boolean", str: "string"}
        assert field in properties, f"{field} has no schema property"
        assert properties[field]["type"] == types[info.annotation], field
        assert {k: v for k, v in properties[field].items() if k in names.values()} == bounds, field


def test_collector_without_datasets_or_redis_renders_when_disabled(helm: Helm) -> None:
    manifests = helm.template(
        values={
            "collector": {"enabled": False},
            "trainer": {"enabled": False},
            "storage": {"datasets": {"enabled": False}},
            "redis": {"enabled": False},
        }
    )
    assert not [m for m in manifests if m["metadata"]["labels"]["app.kubernetes.io/component"] == "collector"]


@pytest.mark.parametrize(
    ("definition", "settings", "managed"),
    [
        ("gatewaySettings", GatewaySettings, GATEWAY_MANAGED),
        ("workerSettings", WorkerSettings, WORKER_MANAGED),
        ("collectorSettings", CollectorSettings, COLLECTOR_MANAGED),
        ("trainerSettings", TrainerSettings, TRAINER_MANAGED),
    ],
    ids=["gateway", "worker", "collector", "trainer"],
)
def test_settings_maps_accept_exactly_the_unmanaged_fields(
    definition: str,
    settings: type[GatewaySettings | WorkerSettings | CollectorSettings | TrainerSettings],
    managed: set[str],
) -> None:
    """Every field of the settings class is either settable through the values or set by the chart."""
    accepted = set(SCHEMA["definitions"][definition]["propertyNames"]["enum"])
    fields = set(settings.model_fields)
    assert managed <= fields, f"managed names that are not fields: {managed - fields}"
    assert accepted <= fields, f"the schema accepts names that are not fields: {accepted - fields}"
    missing = fields - accepted - managed
    assert not missing, f"{settings.__name__} fields the chart can neither set nor accept: {missing}"
    assert not accepted & managed


def test_trigger_values_default_to_the_settings_defaults() -> None:
    """collector.trigger's defaults are CollectorSettings' defaults, and its keys are the schema's."""
    trigger = DEFAULTS["collector"]["trigger"]
    assert (
        set(trigger)
        == set(TRIGGER_FIELDS)
        == set(SCHEMA["properties"]["collector"]["properties"]["trigger"]["properties"])
    )
    assert set(TRIGGER_FIELDS.values()) <= COLLECTOR_MANAGED
    for key, field in TRIGGER_FIELDS.items():
        assert trigger[key] == CollectorSettings.model_fields[field].default, key


def test_pool_keys_agree_between_defaults_entries_and_schema() -> None:
    pool_fields = set(SCHEMA["definitions"]["poolFields"]["properties"])
    assert set(DEFAULTS["worker"]["defaults"]) == pool_fields
    assert set(SCHEMA["definitions"]["workerDefaultKeys"]["propertyNames"]["enum"]) == pool_fields
    entry_keys = set(SCHEMA["definitions"]["workerPool"]["propertyNames"]["enum"])
    assert entry_keys == pool_fields | POOL_ONLY_KEYS


def test_each_deprecated_worker_key_has_the_schema_of_its_new_place() -> None:
    """The deprecated top-level keys are checked by the very definitions of their places under `worker`, and
    values.yaml has none of them (the templates take an old key that is present as set by the user)."""
    worker = SCHEMA["properties"]["worker"]["properties"]
    assert set(worker) == set(OLD_WORKER_KEYS.values()) == set(DEFAULTS["worker"])
    for old, new in OLD_WORKER_KEYS.items():
        entry = SCHEMA["properties"][old]
        if old == "workerDefaults":
            # Less one rule: its image may leave out the repository, which worker.defaults.image's gives.
            strict = SCHEMA["definitions"]["workerDefaults"]
            assert worker[new] == {"$ref": "#/definitions/workerDefaults"}
            assert entry["allOf"] == strict["allOf"]
            assert strict["properties"] == {"image": {"$ref": "#/definitions/image"}}
        else:
            assert entry["allOf"] == [worker[new]], old
        assert entry["deprecated"] is True
        assert f"use worker.{new} " in entry["description"], old
    assert not set(OLD_WORKER_KEYS) & set(DEFAULTS)


def test_every_value_is_commented() -> None:
    """Every key of values.yaml is documented: a comment above it or on its line, inside the value of a
    documented key (e.g. a probe's fields), or a section whose keys are all documented."""
    entries = _value_keys((CHART / "values.yaml").read_text().splitlines())
    undocumented = [f"line {e.line}: {e.key}" for e in entries if not e.documented()]
    assert not undocumented, "keys without a comment:\n" + "\n".join(undocumented)


class _Key:
    def __init__(self, line: int, key: str, indent: int, commented: bool, parent: _Key | None) -> None:
        self.line, self.key, self.indent, self.commented, self.parent = line, key, indent, commented, parent
        self.children: list[_Key] = []

    def documented(self) -> bool:
        node: _Key | None = self
        while node is not None:
            if node.commented:
                return True
            node = node.parent
        return bool(self.children) and all(child.documented() for child in self.children)


def _value_keys(lines: list[str]) -> list[_Key]:
    keys: list[_Key] = []
    stack: list[_Key] = []
    previous = ""
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text:
            continue
        body = raw.lstrip()
        indent = len(raw) - len(body)
        if body.startswith("- "):  # a list item: its key (if any) sits after the dash
            body = body[2:].lstrip()
            indent = len(raw) - len(body)
        match = re.match(r"^([A-Za-z0-9_.\-/]+):(\s|$)", body)
        if text.startswith("#") or text.startswith("- #") or not match:
            previous = text
            continue
        while stack and stack[-1].indent >= indent:
            stack.pop()
        commented = previous.startswith("#") or previous.startswith("- #") or " #" in body
        key = _Key(number, match.group(1), indent, commented, stack[-1] if stack else None)
        if key.parent is not None:
            key.parent.children.append(key)
        keys.append(key)
        stack.append(key)
        previous = text
    return keys
