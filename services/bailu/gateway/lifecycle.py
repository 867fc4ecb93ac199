"""One completion's lifecycle, owned in one place (`Completion`): from the moment its worker streams open
until they are closed, whichever way the request ends (a complete response, an error, a client that leaves
before the first token, before the response starts, or mid-stream).

While open, a completion counts in `bailu_gateway_inflight_requests`; closing it takes it out, closes its
worker streams (which cancels the worker calls) and closes the response body that reads them. Once every
candidate is complete, `finish` counts the tokens and submits the completion record. A streaming
response is a `CompletionStream`, which closes its completion when the response ends.

Every buffer between the workers and the client is bounded, and a client that stops reading is cut off
after `client_write_timeout_s` (see `backpressure.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from bailu.common.metrics import GatewayMetrics
from bailu.common.records import Choice, CompletionRecord, prompt_hash
from bailu.common.types import INT64_MIN, GenerateChunk, GenerateRequest
from bailu.gateway.backpressure import ABANDONED_RESPONSES, ClientWriteTimeout, send_within
from bailu.gateway.completion_log import CompletionLog
from bailu.gateway.model_names import Target
from bailu.gateway.openai_format import Candidate, ResponseBuilder, new_id, total_usage
from bailu.gateway.quotas import QuotaGrant
from bailu.gateway.routing import Router
from bailu.gateway.schemas import ChatCompletionRequest, CompletionRequest

log = logging.getLogger(__name__)

Body = ChatCompletionRequest | CompletionRequest


def candidate_requests(gen: GenerateRequest, n: int) -> list[GenerateRequest]:
    """The `n` generations of one request, each with its own request id and seed.

    Candidate `i` gets `seed + i` (a fixed seed would make every candidate the same text), wrapped around
    within int64, the wire's seed type: a seed near 2**63 - 1 continues from -2**63, so the `n` seeds stay
    distinct and always fit."""
    if n == 1:
        return [gen]
    seed = gen.sampling.seed
    return [
        dataclasses.replace(
            gen,
            request_id=f"{gen.request_id}-{i}",
            sampling=dataclasses.replace(
                gen.sampling, seed=None if seed is None else (seed - INT64_MIN + i) % (1 << 64) + INT64_MIN
            ),
        )
        for i in range(n)
    ]


class Completion:
    """One request's `n` candidates, from their worker streams to the completion record.

    Creating it opens the streams and counts it in flight; `close()` must follow on every path (it is
    idempotent). The response model name is the resolved one (`Target.resolved`, e.g. `bailu-poet@v0003`
    for a request to `bailu-poet`)."""

    def __init__(
        self,
        kind: str,
        body: Body,
        target: Target,
        gen: GenerateRequest,
        *,
        key_id: str,
        router: Router,
        metrics: GatewayMetrics,
        completion_log: CompletionLog | None,
        stream_buffer_chunks: int = 32,
        client_write_timeout_s: float = 30.0,
        quota: QuotaGrant | None = None,
        reserved_tokens: int = 0,
        response_id: str | None = None,
        record_extras: Mapping[str, Any] | None = None,
    ) -> None:
        """`completion_log` is where `finish` submits the record (None: not stored). `stream_buffer_chunks`
        bounds the chunks the merge of `n` > 1 candidates holds for a slow client; a streaming response
        gives up on a client that takes longer than `client_write_timeout_s` to accept one write.
        `quota` is the key's quota grant, settled with the tokens used when the completion closes
        (`reserved_tokens`, the prompt's estimate, stands for the prompt when no usage came back).
        `response_id` replaces the id of `kind` (a Responses API `resp_...`), and `record_extras` are
        `CompletionRecord` fields the completion record gets besides those of the request."""
        self.body, self.target, self.gen, self.key_id = body, target, gen, key_id
        self.quota = quota
        self.reserved_tokens = reserved_tokens
        self.metrics = metrics
        self.completion_log = completion_log
        self.stream_buffer_chunks = stream_buffer_chunks
        self.client_write_timeout_s = client_write_timeout_s
        self.record_extras = dict(record_extras or {})
        self.builder = ResponseBuilder(
            kind, target.resolved, response_id or new_id(kind), logprobs=gen.sampling.logprobs
        )
        self.candidates = [Candidate(i) for i in range(body.n)]
        self.start = time.monotonic()
        self.ttft = 0.0
        self._body: AsyncGenerator[bytes, None] | None = None
        self._closed = False
        self.streams = [router.stream(r) for r in candidate_requests(gen, body.n)]
        metrics.inflight.inc()

    async def first_chunks(self) -> list[GenerateChunk]:
        """The first chunk of every candidate (errors before them still get a proper HTTP status)."""
        # Tasks of our own: when one candidate fails, the others are cancelled (and awaited) at once, not
        # left waiting for a first token that nobody will read.
        tasks = [asyncio.ensure_future(anext(s)) for s in self.streams]
        try:
            firsts = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        self.ttft = time.monotonic() - self.start
        self.metrics.ttft.labels(self.body.model).observe(self.ttft)
        return firsts

    async def chunks(self) -> AsyncGenerator[tuple[int, GenerateChunk], None]:
        """The candidates' next chunks as they come, tagged with the candidate's index.

        Pulled, never pushed: while the caller does not ask for the next chunk, at most
        `stream_buffer_chunks` (plus one per candidate) wait here, and the worker streams are not read
        (so gRPC flow control holds the workers back)."""
        if len(self.streams) == 1:  # the common case stays a plain loop
            async for chunk in self.streams[0]:
                yield 0, chunk
            return
        queue: asyncio.Queue[tuple[int, GenerateChunk | BaseException | None]] = asyncio.Queue(
            self.stream_buffer_chunks
        )

        async def pump(index: int, stream: AsyncIterator[GenerateChunk]) -> None:
            try:
                async for chunk in stream:
                    await queue.put((index, chunk))
                await queue.put((index, None))
            except Exception as exc:
                await queue.put((index, exc))

        tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(self.streams)]
        try:
            remaining = len(self.streams)
            while remaining:
                index, item = await queue.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield index, item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def collect(self, firsts: list[GenerateChunk]) -> None:
        """Read every candidate to its end (a non-streaming response)."""
        for candidate, first in zip(self.candidates, firsts, strict=True):
            candidate.add(first)
        async with contextlib.aclosing(self.chunks()) as chunks:
            async for index, chunk in chunks:
                self.candidates[index].add(chunk)

    def stream(self, body: AsyncGenerator[bytes, None], headers: dict[str, str]) -> CompletionStream:
        """The streaming response whose `body` reads this completion; it closes the completion when it ends."""
        self._body = body
        return CompletionStream(self, body, headers)

    def finish(self) -> None:
        """Every candidate is complete: count the tokens and submit the completion record."""
        gen, candidates = self.gen, self.candidates
        reported = candidates[0].served_model or gen.reported_model
        self.metrics.tokens.labels(reported).inc(sum(c.tokens for c in candidates))
        if self.completion_log is None:
            return
        usage = total_usage(candidates)
        messages = CompletionRecord.messages_of(gen.messages)
        self.completion_log.submit(
            CompletionRecord(
                id=self.builder.id,
                created=time.time(),
                key_id=self.key_id,
                model=self.body.model,
                served_model=reported,
                resolved_model=self.target.resolved,
                messages=messages,
                prompt=gen.prompt,
                choices=[
                    Choice(c.index, c.text, c.finish.value if c.finish else None, tuple(c.tool_calls))
                    for c in candidates
                ],
                sampling=gen.sampling.requested(),
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                ttft_ms=round(self.ttft * 1000, 1),
                total_ms=round((time.monotonic() - self.start) * 1000, 1),
                request_id=gen.request_id,
                prompt_hash=prompt_hash(messages, gen.prompt),
                metadata=dict(self.body.metadata or {}),
                **self.record_extras,
            )
        )

    def tokens_used(self) -> int:
        """Prompt plus completion tokens, for the key's tokens-per-minute quota: the usage the workers reported,
        else (a completion cut short) the prompt's estimate and the tokens streamed so far; nothing when no
        worker generated anything (refused, shed, failed before its first token)."""
        if not any(c.parts for c in self.candidates):
            return 0
        usage = total_usage(self.candidates)
        prompt = usage.prompt_tokens if usage is not None else self.reserved_tokens
        return prompt + sum(c.usage.completion_tokens if c.usage else c.tokens for c in self.candidates)

    async def close(self) -> None:
        """Out of flight; the response body, then the worker streams, closed (the worker calls cancelled); the
        quota admission settled."""
        if self._closed:
            return
        self._closed = True
        self.metrics.inflight.dec()
        # Shielded: a caller cancelled once more while closing must not leave a worker call open, nor the
        # key's quota unsettled (its concurrency slot held until the lease expires).
        await asyncio.shield(self._close_and_settle())

    async def _close_and_settle(self) -> None:
        try:
            await self._close_streams()
        finally:
            if self.quota is not None:
                await self.quota.settle(self.tokens_used())

    async def _close_streams(self) -> None:
        # The body first: closing it stops the tasks that read the streams (`chunks`), which cannot be
        # closed while something reads them.
        if self._body is not None:
            with contextlib.suppress(Exception):
                await self._body.aclose()
        await asyncio.gather(*(s.aclose() for s in self.streams), return_exceptions=True)  # type: ignore[attr-defined]


class CompletionStream(StreamingResponse):
    """The SSE response of a streaming completion; it closes the completion when the response ends, however
    it ends, and abandons it when the client takes longer than the completion's `client_write_timeout_s`
    to accept one write (counted in `bailu_gateway_client_write_timeouts_total`).

    The body generator's own `finally` cannot do that: when the client is gone before the response starts,
    Starlette cancels the response before it iterates the body (and a body suspended at a `yield` is
    never resumed either), so only garbage collection would ever run that `finally`. `__call__` itself
    always returns or raises, so the `finally` around it runs on every path, at once."""

    def __init__(self, completion: Completion, body: AsyncGenerator[bytes, None], headers: dict[str, str]) -> None:
        super().__init__(body, media_type="text/event-stream", headers=headers)
        self.completion = completion

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        completion = self.completion
        try:
            await super().__call__(scope, receive, send_within(send, completion.client_write_timeout_s))
        except ClientWriteTimeout as exc:
            # Nothing more can reach this client: the response ends here, unfinished (uvicorn closes the
            # connection), and the `finally` cancels the worker streams.
            completion.metrics.client_write_timeouts.inc()
            log.warning("client stopped reading: response abandoned", extra={"reason": str(exc)})
            ABANDONED_RESPONSES.expect()  # uvicorn's ERROR for the unfinished response would repeat this one
        finally:
            await completion.close()
