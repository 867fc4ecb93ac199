"""Send one completion to a worker, retrying on another only before the first token."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from bailu.common.errors import BailuError, DeadlineExceeded
from bailu.common.metrics import GatewayMetrics
from bailu.common.types import GenerateChunk, GenerateRequest
from bailu.gateway.workers import WorkerPool

log = logging.getLogger(__name__)


class Router:
    def __init__(self, pool: WorkerPool, metrics: GatewayMetrics, max_attempts: int) -> None:
        self.pool = pool
        self.metrics = metrics
        self.max_attempts = max_attempts

    async def stream(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        """Chunks of the completion. Before the first chunk, a worker that is overloaded or
        unavailable is replaced by another (up to `max_attempts` workers); after it, errors
        reach the caller. Closing the iterator cancels the worker's stream."""
        tried: set[str] = set()
        last_error: BailuError | None = None
        while True:
            try:
                worker = self.pool.pick(request.model, request.adapter, tried, raw_prompt=not request.is_chat)
            except BailuError:
                if last_error is not None:
                    raise last_error from None  # no other worker: report the worker's own error
                raise
            tried.add(worker.address)
            timeout = None
            if request.deadline is not None:
                timeout = request.deadline - time.time()
                if timeout <= 0:
                    raise DeadlineExceeded("the request's deadline passed")
            started = False
            stream = worker.generate(request, timeout)
            try:
                async for chunk in stream:
                    started = True
                    yield chunk
                return
            except BailuError as exc:
                if started or not exc.retryable or len(tried) >= self.max_attempts:
                    raise
                log.info(
                    "retrying on another worker",
                    extra={"worker": worker.address, "error": exc.name, "reason": exc.message},
                )
                self.metrics.retries.inc()
                last_error = exc
            finally:
                await stream.aclose()  # type: ignore[attr-defined]
