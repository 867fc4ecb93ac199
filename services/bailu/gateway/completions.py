"""Chat and text completions: validated OpenAI requests in, routed generations out.

A request with `n` > 1 runs `n` generations (possibly on different workers)
and returns them as candidates with their `index`, streamed interleaved or
together. Every stored completion (`store`, with a per-deployment default)
goes to the completion log once it is complete.

The client's `model` is resolved once per request (`ModelResolver`), so that all
`n` candidates come from the same version; responses report the served name
(e.g. `bailu-poet@v0003` for a request to `bailu-poet`), as OpenAI reports a
dated snapshot for an alias.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from bailu.common.errors import BailuError, Cancelled, RequestTooLarge
from bailu.common.logging import request_id_var
from bailu.common.metrics import GatewayMetrics
from bailu.common.records import Choice, CompletionRecord, prompt_hash
from bailu.common.types import GenerateChunk, GenerateRequest
from bailu.gateway import errors
from bailu.gateway.completion_log import CompletionLog
from bailu.gateway.models import ModelResolver
from bailu.gateway.openai_format import SSE_DONE, Candidate, ResponseBuilder, new_id, sse, total_usage
from bailu.gateway.routing import Router
from bailu.gateway.schemas import ChatCompletionRequest, CompletionRequest
from bailu.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

T = TypeVar("T")
Body = ChatCompletionRequest | CompletionRequest

# OpenAI's default max_tokens for /v1/completions.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (and raising `Cancelled`) if the client disconnects first."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, BailuError):
            await task
        raise Cancelled("the client disconnected")
    return task.result()


def served_name(gen: GenerateRequest) -> str:
    """The name a response reports: the adapter the request went to, or the base model."""
    return gen.adapter or gen.model


async def _merge(streams: list[AsyncIterator[GenerateChunk]]) -> AsyncIterator[tuple[int, GenerateChunk]]:
    """Chunks of several candidate streams as they come, tagged with the candidate's index."""
    if len(streams) == 1:  # the common case stays a plain loop
        async for chunk in streams[0]:
            yield 0, chunk
        return
    queue: asyncio.Queue[tuple[int, GenerateChunk | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[GenerateChunk]) -> None:
        try:
            async for chunk in stream:
                await queue.put((index, chunk))
            await queue.put((index, None))
        except Exception as exc:
            await queue.put((index, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
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


class CompletionHandler:
    """Turns validated OpenAI requests into routed generations and OpenAI responses."""

    def __init__(
        self,
        settings: GatewaySettings,
        resolver: ModelResolver,
        router: Router,
        metrics: GatewayMetrics,
        completion_log: CompletionLog | None,
    ) -> None:
        self.settings = settings
        self.resolver = resolver
        self.router = router
        self.metrics = metrics
        self.completion_log = completion_log

    def build_request(self, body: Body, *, max_tokens: int | None) -> GenerateRequest:
        target = self.resolver.resolve(body.model)
        if isinstance(body, ChatCompletionRequest):
            messages, prompt = body.messages_domain(), None
            size, param = sum(len(m.content) for m in messages), "messages"
        else:
            messages, prompt = None, body.prompt_text()
            size, param = len(prompt), "prompt"
        if size > self.settings.max_prompt_chars:
            raise RequestTooLarge(
                f"the prompt has {size} characters; this deployment accepts at most {self.settings.max_prompt_chars}",
                param=param,
            )
        request = GenerateRequest(
            request_id=request_id_var.get() or uuid.uuid4().hex,
            model=target.model,
            adapter=target.adapter,
            messages=messages,
            prompt=prompt,
            sampling=body.sampling(max_tokens),
            deadline=time.time() + self.settings.request_timeout_s,
        )
        request.validate()
        self.metrics.model_requests.labels(body.model, target.served).inc()
        return request

    @staticmethod
    def _candidate_requests(gen: GenerateRequest, n: int) -> list[GenerateRequest]:
        if n == 1:
            return [gen]
        seed = gen.sampling.seed
        return [
            dataclasses.replace(
                gen,
                request_id=f"{gen.request_id}-{i}",
                # A fixed seed would make every candidate the same text.
                sampling=dataclasses.replace(gen.sampling, seed=None if seed is None else seed + i),
            )
            for i in range(n)
        ]

    async def respond(self, request: Request, kind: str, body: Body, gen: GenerateRequest, key_id: str) -> Response:
        builder = ResponseBuilder(kind, served_name(gen), new_id(kind))
        start = time.monotonic()
        self.metrics.inflight.inc()
        streams = [self.router.stream(r) for r in self._candidate_requests(gen, body.n)]
        candidates = [Candidate(i) for i in range(body.n)]
        try:
            # Errors before the first token of every candidate still get a proper HTTP status.
            firsts = await until_disconnect(request, asyncio.gather(*(anext(s) for s in streams)))
        except BaseException:
            self.metrics.inflight.dec()
            await asyncio.gather(*(s.aclose() for s in streams), return_exceptions=True)  # type: ignore[attr-defined]
            raise
        ttft = time.monotonic() - start
        self.metrics.ttft.labels(body.model).observe(ttft)
        finish = _Finisher(self, builder, body, gen, candidates, key_id, start, ttft)
        if body.stream:
            return StreamingResponse(
                self._sse(builder, body, firsts, streams, candidates, finish),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            for candidate, first in zip(candidates, firsts, strict=True):
                candidate.add(first)
            await until_disconnect(request, self._collect(streams, candidates))
        finally:
            self.metrics.inflight.dec()
            await asyncio.gather(*(s.aclose() for s in streams), return_exceptions=True)  # type: ignore[attr-defined]
        finish.done()
        return JSONResponse(builder.full(candidates))

    @staticmethod
    async def _collect(streams: list[AsyncIterator[GenerateChunk]], candidates: list[Candidate]) -> None:
        async for index, chunk in _merge(streams):
            candidates[index].add(chunk)

    async def _sse(
        self,
        builder: ResponseBuilder,
        body: Body,
        firsts: list[GenerateChunk],
        streams: list[AsyncIterator[GenerateChunk]],
        candidates: list[Candidate],
        finish: _Finisher,
    ) -> AsyncIterator[bytes]:
        try:
            pending: list[tuple[int, GenerateChunk]] = list(enumerate(firsts))
            if builder.kind == "chat":
                for index in range(len(candidates)):
                    yield sse(builder.chunk("", None, index=index, first=True))
            for index, chunk in pending:
                if event := self._event(builder, candidates[index], chunk):
                    yield event
            async for index, chunk in _merge(streams):
                if event := self._event(builder, candidates[index], chunk):
                    yield event
            if body.include_usage:
                yield sse(builder.usage_chunk(total_usage(candidates)))
            yield SSE_DONE
            finish.done()
        except BailuError as exc:
            # Headers are gone: the error travels as an event, and the stream ends cleanly.
            log.warning("stream failed after the first token", extra={"error": exc.name, "reason": exc.message})
            yield sse(errors.error_body(exc))
            yield SSE_DONE
        finally:
            self.metrics.inflight.dec()
            await asyncio.gather(*(s.aclose() for s in streams), return_exceptions=True)  # type: ignore[attr-defined]

    @staticmethod
    def _event(builder: ResponseBuilder, candidate: Candidate, chunk: GenerateChunk) -> bytes:
        candidate.add(chunk)
        if chunk.finish_reason is not None:
            return sse(builder.chunk(chunk.text, chunk.finish_reason, index=candidate.index))
        if chunk.text:
            return builder.text_event(chunk.text, candidate.index)
        return b""


class _Finisher:
    """What happens once a completion is complete: token metrics and the completion log."""

    def __init__(
        self,
        handler: CompletionHandler,
        builder: ResponseBuilder,
        body: Body,
        gen: GenerateRequest,
        candidates: list[Candidate],
        key_id: str,
        start: float,
        ttft: float,
    ) -> None:
        self.handler, self.builder, self.body, self.gen = handler, builder, body, gen
        self.candidates, self.key_id, self.start, self.ttft = candidates, key_id, start, ttft

    def done(self) -> None:
        handler, gen, candidates = self.handler, self.gen, self.candidates
        served = candidates[0].served_model or gen.served_model
        handler.metrics.tokens.labels(served).inc(sum(c.tokens for c in candidates))
        store = self.body.store if self.body.store is not None else handler.settings.store_default
        if not store or handler.completion_log is None:
            return
        usage = total_usage(candidates)
        messages = CompletionRecord.messages_of(gen.messages)
        handler.completion_log.submit(
            CompletionRecord(
                id=self.builder.id,
                created=time.time(),
                key_id=self.key_id,
                model=self.body.model,
                served_model=served,
                resolved_model=served_name(gen),
                messages=messages,
                prompt=gen.prompt,
                choices=[Choice(c.index, c.text, c.finish.value if c.finish else None) for c in candidates],
                sampling={k: v for k, v in dataclasses.asdict(gen.sampling).items() if v not in (None, ())},
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                ttft_ms=round(self.ttft * 1000, 1),
                total_ms=round((time.monotonic() - self.start) * 1000, 1),
                request_id=gen.request_id,
                prompt_hash=prompt_hash(messages, gen.prompt),
            )
        )
