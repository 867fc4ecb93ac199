"""The collector process: the consumer loop, periodic chores, the retraining trigger, probes and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bailu.collector.consumer import Batch, FeedbackConsumer
from bailu.collector.runners import create_runner
from bailu.collector.settings import CollectorSettings
from bailu.collector.trigger import Trigger, TriggerPolicy
from bailu.common.metrics import CollectorMetrics
from bailu.common.probes import ProbeServer
from bailu.datasets.store import DatasetStore

log = logging.getLogger(__name__)

TriggerCheck = Callable[[], Awaitable[str | None]]


class CollectorService:
    def __init__(
        self,
        settings: CollectorSettings,
        *,
        redis: Redis | None = None,
        metrics_registry: CollectorRegistry | None = None,
        trigger: TriggerCheck | None = None,  # default: the retraining trigger the settings describe
    ) -> None:
        self.settings = settings
        self.redis = redis or Redis.from_url(
            settings.redis_url, socket_connect_timeout=5.0, socket_timeout=max(5.0, settings.block_ms / 1000 + 5)
        )
        self.metrics_registry = metrics_registry or CollectorRegistry()
        self.metrics = CollectorMetrics(self.metrics_registry)
        self.store = DatasetStore(settings.dataset_dir)
        self.consumer = FeedbackConsumer(settings, self.redis, self.store, self.metrics)
        if trigger is None:
            policy = TriggerPolicy.from_settings(settings)
            trigger = Trigger(
                policy,
                create_runner(settings),
                self.redis,
                seal=lambda: asyncio.to_thread(self.store.seal),
                pairs_total=self.consumer.pairs_total,
                dataset_dir=settings.dataset_dir,
                metrics_registry=self.metrics_registry,
            ).check
        self.trigger = trigger
        self.ready = False
        self.probes = ProbeServer(settings.host, settings.http_port, lambda: self.ready, self.metrics_registry)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; Redis outages are waited out with backoff."""
        await self.probes.start()
        log.info("collector listening", extra={"http_port": self.probes.port, "consumer": self.consumer.consumer})
        backoff = 0.5
        try:
            while not stop.is_set():
                try:
                    await self._consume(stop)
                except RedisError as exc:
                    self.ready = False
                    self.metrics.ready.set(0)
                    log.warning("redis unavailable; retrying", extra={"error": str(exc), "retry_s": backoff})
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
                backoff = 0.5
        finally:
            await self.probes.close()
            await self.redis.aclose()

    async def _consume(self, stop: asyncio.Event) -> None:
        consumer = self.consumer
        await consumer.setup()
        self.ready = True
        self.metrics.ready.set(1)
        next_reclaim = next_gauges = 0.0
        next_trigger = time.monotonic() + self.settings.trigger_interval_s
        # The next batch is read and prepared while the one before it is written and committed (batches still
        # commit one after the other, in order; see FeedbackConsumer.prepare).
        ahead: asyncio.Task[Batch | None] | None = None
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_reclaim:
                    await consumer.reclaim()
                    next_reclaim = now + self.settings.claim_idle_ms / 2000
                batch = await (ahead or self._next_batch())
                ahead = None
                if batch is not None:
                    if not stop.is_set():
                        ahead = asyncio.create_task(self._next_batch())
                    await consumer.process(batch)
                    if consumer.batches_done % self.settings.trim_every_batches == 0:
                        await consumer.trim()
                if now >= next_gauges:
                    await consumer.update_gauges()
                    next_gauges = now + 5
                if now >= next_trigger:
                    next_trigger = now + self.settings.trigger_interval_s
                    await self.trigger()
            if ahead is not None:  # stopping: commit what was read ahead rather than leave it pending
                batch, ahead = await ahead, None
                if batch is not None:
                    await consumer.process(batch)
        finally:
            if ahead is not None:  # a failure: what it read stays pending and is delivered again
                ahead.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await ahead

    async def _next_batch(self) -> Batch | None:
        messages = await self.consumer.read()
        return await self.consumer.prepare(messages) if messages else None
