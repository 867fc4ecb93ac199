"""Send one completion to a worker, retrying on another only before the first token.

Time bounds of one attempt (the request's deadline bounds them all):
- before the first token, `first_token_timeout_s`; sooner, as soon as the worker stops answering its load
  poll (`WorkerClient.unreachable`) while another worker can take the request: a frozen worker costs a
  poll interval and a poll timeout, not the TTFT budget;
- after it, `stream_idle_timeout_s` between chunks (`WorkerClient.generate`).
A stall before the first token is retried like any other retryable error; after it, it ends the stream.

With admission control (`AdmissionPolicy`, gateway/priority.py) each attempt first asks whether the request
can be served in time at all (refused at once with `DeadlineUnmeetable` or `Shed` if not, counted in
bailu_gateway_shed_total), then goes to the worker with the shortest estimated wait for its priority class.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator

from bailu.common.errors import BailuError, DeadlineExceeded, DeadlineUnmeetable, Shed, Stalled
from bailu.common.metrics import GatewayMetrics
from bailu.common.types import INTERACTIVE, GenerateChunk, GenerateRequest
from bailu.gateway.priority import SHED_REASONS, AdmissionPolicy
from bailu.gateway.relay import RelayStream
from bailu.gateway.workers import WorkerClient, WorkerPool, WorkerStream

log = logging.getLogger(__name__)


class Router:
    def __init__(
        self,
        pool: WorkerPool,
        metrics: GatewayMetrics,
        max_attempts: int,
        *,
        first_token_timeout_s: float | None = None,
        idle_timeout_s: float | None = None,
        admission: AdmissionPolicy | None = None,
    ) -> None:
        """`first_token_timeout_s` and `idle_timeout_s` bound each attempt (None: only the deadline does);
        `admission` is the admission control policy. None turns the feature off, as before it: least-loaded
        routing, no refusals, and requests reach the workers without priority class or first-token deadline,
        so that they wait in arrival order."""
        self.pool = pool
        self.metrics = metrics
        self.max_attempts = max_attempts
        self.first_token_timeout_s = first_token_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.admission = admission

    async def stream(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        """Chunks of the completion. Before the first chunk, a worker that is overloaded, unavailable,
        unreachable or stalled is replaced by another (up to `max_attempts` workers); after it, errors
        reach the caller. Closing the iterator cancels the worker's stream."""
        tried: set[str] = set()
        last_error: BailuError | None = None
        if self.admission is None:
            request = dataclasses.replace(request, priority=INTERACTIVE, first_token_deadline=None)
        while True:
            self._admit(request, tried)
            try:
                worker = self.pool.pick(
                    request.model,
                    request.adapter,
                    tried,
                    raw_prompt=not request.is_chat,
                    priority=None if self.admission is None else request.priority,
                    response_format=request.sampling.response_format,
                    tools=request.tools,
                )
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
            stream = worker.generate(
                request, timeout, first_token_s=self.first_token_timeout_s, idle_s=self.idle_timeout_s
            )
            try:
                first = await self._first_chunk(worker, stream, request, tried)
                if first is None:
                    return
                started = True
                yield first
                async for chunk in stream:
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
                await stream.aclose()

    def _admit(self, request: GenerateRequest, tried: set[str]) -> None:
        """With admission control, refuse a request no untried worker can serve in time (and count it)."""
        if self.admission is None:
            return
        try:
            self.admission.check(request, self.pool.candidates(request.model, request.adapter, tried), time.time())
        except (DeadlineUnmeetable, Shed) as exc:
            self.metrics.shed.labels(request.priority, SHED_REASONS[type(exc)]).inc()
            log.info("request refused by admission control", extra={"error": exc.name, "reason": exc.message})
            raise

    def _elsewhere(self, request: GenerateRequest, tried: set[str]) -> bool:
        """Whether another attempt may go to another worker now."""
        return len(tried) < self.max_attempts and bool(self.pool.candidates(request.model, request.adapter, tried))

    async def _first_chunk(
        self, worker: WorkerClient, stream: WorkerStream | RelayStream, request: GenerateRequest, tried: set[str]
    ) -> GenerateChunk | None:
        """The stream's first chunk (None if it ended without one). While waiting, a worker that stops
        answering its load poll is abandoned (`Stalled`) as soon as another worker can take the request; with
        nowhere else to go the attempt waits on, within its first-token budget."""
        read = asyncio.ensure_future(anext(stream, None))
        try:
            while not read.done():
                if worker.unreachable.is_set():
                    if self._elsewhere(request, tried):
                        raise Stalled(f"the inference worker {worker.address} stopped answering before the first token")
                    # Look again each poll: another worker may become ready, or this one answer again.
                    await asyncio.wait({read}, timeout=self.pool.poll_interval_s)
                    continue
                lost = asyncio.ensure_future(worker.unreachable.wait())
                try:
                    await asyncio.wait({read, lost}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    lost.cancel()
            return read.result()
        finally:
            if not read.done():
                read.cancel()  # cancels the worker call too
                await asyncio.gather(read, return_exceptions=True)
