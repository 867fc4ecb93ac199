"""An engine server's Prometheus metrics, normalised, and re-exported as the worker's own.

Each engine names its queue, running requests, KV-cache usage and time-to-first-token histogram its own
way (`vllm:num_requests_waiting`, `sglang:num_queue_reqs`, `lmdeploy:num_requests_waiting`, ...).
`MetricNames` (part of each dialect) lists the names to read; `parse_engine_metrics` turns a scrape
into an `EngineLoad`; `EngineMetricsCollector` exports it as `bailu_worker_engine_*`, so that routing,
dashboards and alerts never depend on which engine runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from bailu.common.metrics import (
    WORKER_ENGINE_CACHE_USAGE,
    WORKER_ENGINE_QUEUED,
    WORKER_ENGINE_RESTARTS,
    WORKER_ENGINE_RUNNING,
    WORKER_ENGINE_SCRAPE_ERRORS,
    WORKER_ENGINE_TTFT,
    WORKER_ENGINE_UP,
)


@dataclass(frozen=True, slots=True)
class MetricNames:
    """Where an engine keeps each normalised value; for each, the first name present in a scrape is used
    (so that one dialect reads the names of several releases, e.g. vLLM's renamed KV-cache gauge)."""

    queued: tuple[str, ...] = ()
    running: tuple[str, ...] = ()
    cache_usage: tuple[str, ...] = ()
    ttft: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """One scrape of an engine, normalised. Values are summed over the engine's label sets (data-parallel
    ranks, models); cache usage is the highest of them, as a fraction in [0, 1]."""

    queued: float | None = None
    running: float | None = None
    cache_usage: float | None = None
    # Cumulative (upper bound, count) pairs ending with +Inf, the sum of observations; empty when unknown.
    ttft_buckets: tuple[tuple[float, float], ...] = ()
    ttft_sum: float = 0.0
    ttft_source: str = field(default="", compare=False)


def parse_engine_metrics(text: str, names: MetricNames) -> EngineLoad:
    """Read the values named by `names` from a Prometheus text exposition; absent ones stay None."""
    gauges: dict[str, list[float]] = {}
    histograms: dict[str, tuple[dict[float, float], float]] = {}
    for family in text_string_to_metric_families(text):
        if family.type == "histogram":
            buckets: dict[float, float] = {}
            total = 0.0
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    bound = float(sample.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
                elif sample.name.endswith("_sum"):
                    total += sample.value
            histograms[family.name] = (buckets, total)
        else:
            values = [s.value for s in family.samples if s.name == family.name or family.type in ("gauge", "untyped")]
            gauges[family.name] = [v for v in values if not math.isnan(v)]

    def first(candidates: tuple[str, ...], combine: Callable[[list[float]], float]) -> float | None:
        for name in candidates:
            values = gauges.get(name)
            if values:
                return combine(values)
        return None

    load = EngineLoad(
        queued=first(names.queued, sum),
        running=first(names.running, sum),
        cache_usage=first(names.cache_usage, max),
    )
    for name in names.ttft:
        if name in histograms:
            buckets, total = histograms[name]
            ordered = tuple(sorted(buckets.items()))
            return EngineLoad(load.queued, load.running, load.cache_usage, ordered, total, name)
    return load


class EngineMetricsCollector(Collector):
    """Exports an engine server's state at scrape time, read through the callables given."""

    def __init__(
        self,
        engine: str,
        load: Callable[[], EngineLoad | None],
        up: Callable[[], bool],
        restarts: Callable[[], int],
        scrape_errors: Callable[[], int],
    ) -> None:
        self.engine = engine
        self._load = load
        self._up = up
        self._restarts = restarts
        self._scrape_errors = scrape_errors

    def collect(self) -> Iterator[Metric]:
        labels = ["engine"]
        up = GaugeMetricFamily(WORKER_ENGINE_UP, "1 while the engine server answers its health endpoint", labels=labels)
        up.add_metric([self.engine], 1.0 if self._up() else 0.0)
        yield up
        restarts = CounterMetricFamily(
            WORKER_ENGINE_RESTARTS, "Restarts of the engine server after it died", labels=labels
        )
        restarts.add_metric([self.engine], float(self._restarts()))
        yield restarts
        errors = CounterMetricFamily(
            WORKER_ENGINE_SCRAPE_ERRORS, "Failed reads of the engine server's own /metrics", labels=labels
        )
        errors.add_metric([self.engine], float(self._scrape_errors()))
        yield errors
        load = self._load()
        if load is None:
            return
        for name, doc, value in (
            (WORKER_ENGINE_QUEUED, "Requests waiting inside the engine (its own queue)", load.queued),
            (WORKER_ENGINE_RUNNING, "Requests the engine is generating", load.running),
            (WORKER_ENGINE_CACHE_USAGE, "Fraction of the engine's KV cache in use (0 to 1)", load.cache_usage),
        ):
            if value is not None:
                gauge = GaugeMetricFamily(name, doc, labels=labels)
                gauge.add_metric([self.engine], value)
                yield gauge
        if load.ttft_buckets:
            histogram = HistogramMetricFamily(
                WORKER_ENGINE_TTFT,
                "Time to first token measured inside the engine (its own buckets)",
                labels=labels,
            )
            histogram.add_metric([self.engine], [(_bound(le), count) for le, count in load.ttft_buckets], load.ttft_sum)
            yield histogram


def _bound(le: float) -> str:
    return "+Inf" if math.isinf(le) else repr(le)
