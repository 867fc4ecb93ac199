"""The completion log: every stored completion goes to a Redis stream and a per-response key.

Writes happen off the response path: `submit()` only queues the record; a
background task writes queued records in pipelined batches. A full queue or a
Redis failure drops records (counted, logged) and never fails or delays a
generation. Records not yet written are still found by `lookup()`, so that
feedback that follows a response at once is not refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bailu.common import redis_keys
from bailu.common.metrics import GatewayMetrics
from bailu.common.records import DATA_FIELD, CompletionRecord

log = logging.getLogger(__name__)

# An unknown response id is asked once more after this long: another gateway replica may have answered it a
# moment ago and not yet written its log.
SETTLE_S = 0.1


class CompletionLog:
    def __init__(
        self,
        redis: Redis,
        metrics: GatewayMetrics,
        *,
        retention_s: int,
        max_stream_len: int,
        queue_size: int = 10_000,
        batch_size: int = 256,
    ) -> None:
        self.redis = redis
        self.metrics = metrics
        self.retention_s = retention_s
        self.max_stream_len = max_stream_len
        self.batch_size = batch_size
        self._queue: asyncio.Queue[CompletionRecord] = asyncio.Queue(queue_size)
        self._pending: OrderedDict[str, CompletionRecord] = OrderedDict()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (up to `timeout`), then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def submit(self, record: CompletionRecord) -> None:
        """Queue a record for writing; never blocks, never raises."""
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self.metrics.completion_log_dropped.labels("queue_full").inc()
            return
        self._pending[record.id] = record

    def queued(self, response_id: str) -> CompletionRecord | None:
        """The record of a response this replica queued and has not written yet, else None."""
        return self._pending.get(response_id)

    async def lookup(self, response_id: str) -> CompletionRecord | None:
        """The record of a response, queued or written; None if unknown or expired.
        Raises `RedisError` when Redis cannot be reached."""
        pending = self.queued(response_id)
        if pending is not None:
            return pending
        data = await self.redis.get(redis_keys.response_key(response_id))
        return None if data is None else CompletionRecord.from_json(data)

    async def lookup_for(self, key_id: str, response_id: str, *, settle_s: float = SETTLE_S) -> CompletionRecord | None:
        """The record of a response that the API key `key_id` was answered, else None: unknown, expired and
        another key's look the same, so that nothing is revealed. An unknown id is asked once more after
        `settle_s` (`SETTLE_S`: another replica may not have written its log yet).
        Raises `RedisError` when Redis cannot be reached."""
        record = await self.lookup(response_id)
        if record is None:
            await asyncio.sleep(settle_s)
            record = await self.lookup(response_id)
        return record if record is not None and record.key_id == key_id else None

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
                self.metrics.completion_log_written.inc(len(batch))
            except RedisError as exc:
                self.metrics.completion_log_dropped.labels("redis_error").inc(len(batch))
                log.warning("completion log write failed", extra={"records": len(batch), "error": str(exc)})
            finally:
                for record in batch:
                    self._pending.pop(record.id, None)
                    self._queue.task_done()

    async def _write(self, batch: list[CompletionRecord]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for record in batch:
                data = record.to_json()
                pipe.xadd(
                    redis_keys.COMPLETIONS_STREAM,
                    {DATA_FIELD: data},
                    maxlen=self.max_stream_len,
                    approximate=True,
                )
                pipe.set(redis_keys.response_key(record.id), data, ex=self.retention_s)
            await pipe.execute()
