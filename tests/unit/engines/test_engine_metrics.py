"""Each engine's /metrics sample read into the normalised load, and re-exported as bailu_worker_engine_*."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bailu.worker.engines.server.dialects import DIALECTS, LMDEPLOY, SGLANG, VLLM
from bailu.worker.engines.server.engine_metrics import EngineLoad, EngineMetricsCollector, parse_engine_metrics
from tests.unit.engines.conftest import expected, sample

CASES = [
    ("vllm", "metrics.txt"),
    ("vllm", "metrics_legacy.txt"),
    ("sglang", "metrics.txt"),
    ("lmdeploy", "metrics.txt"),
]


@pytest.mark.parametrize(("engine", "name"), CASES, ids=[f"{e}/{n}" for e, n in CASES])
def test_sample_is_read_into_the_normalised_load(engine: str, name: str) -> None:
    want = expected(engine)[name]
    load = parse_engine_metrics(sample(engine, name), DIALECTS[engine].metric_names)
    assert load.queued == want["queued"]
    assert load.running == want["running"]
    assert load.cache_usage == pytest.approx(want["cache_usage"])
    if want["ttft_count"] is None:
        assert load.ttft_buckets == ()
        return
    buckets = dict(load.ttft_buckets)
    assert buckets[math.inf] == want["ttft_count"]
    assert buckets[0.1] == want["ttft_le_0.1"]
    assert load.ttft_sum == pytest.approx(want["ttft_sum"])
    bounds = [le for le, _ in load.ttft_buckets]
    assert bounds == sorted(bounds)


def test_metrics_of_another_engine_are_not_mistaken_for_ours() -> None:
    load = parse_engine_metrics(sample("sglang", "metrics.txt"), VLLM.metric_names)
    assert load == EngineLoad()


def test_kv_cache_is_the_fullest_rank_and_queues_add_up_over_ranks() -> None:
    # lmdeploy's sample has two data-parallel engines: the queue is both, the cache is the fuller one.
    load = parse_engine_metrics(sample("lmdeploy", "metrics.txt"), LMDEPLOY.metric_names)
    assert load.queued == 1.0 + 2.0
    assert load.cache_usage == 0.6


def read(registry: CollectorRegistry) -> dict[str, float]:
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            key = s.name + ("{le=" + s.labels["le"] + "}" if "le" in s.labels else "")
            assert s.labels.get("engine") == "sglang"
            values[key] = s.value
    return values


def test_collector_exports_the_worker_names() -> None:
    load = parse_engine_metrics(sample("sglang", "metrics.txt"), SGLANG.metric_names)
    registry = CollectorRegistry()
    state = {"load": load, "up": True}
    registry.register(
        EngineMetricsCollector(
            "sglang", load=lambda: state["load"], up=lambda: state["up"], restarts=lambda: 2, scrape_errors=lambda: 1
        )
    )
    values = read(registry)
    assert values["bailu_worker_engine_up"] == 1.0
    assert values["bailu_worker_engine_restarts_total"] == 2.0
    assert values["bailu_worker_engine_metrics_scrape_errors_total"] == 1.0
    assert values["bailu_worker_engine_queued_requests"] == load.queued
    assert values["bailu_worker_engine_running_requests"] == load.running
    assert values["bailu_worker_engine_cache_usage_ratio"] == load.cache_usage
    assert values["bailu_worker_engine_time_to_first_token_seconds_count"] == dict(load.ttft_buckets)[math.inf]
    assert values["bailu_worker_engine_time_to_first_token_seconds_bucket{le=0.1}"] == dict(load.ttft_buckets)[0.1]

    # Down, and no scrape: the load gauges disappear instead of repeating stale values.
    state.update(load=None, up=False)
    values = read(registry)
    assert values["bailu_worker_engine_up"] == 0.0
    assert "bailu_worker_engine_queued_requests" not in values
