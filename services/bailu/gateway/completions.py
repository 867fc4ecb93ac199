"""Chat and text completions: validated OpenAI requests in, routed generations out.

A request with `n` > 1 runs `n` generations (possibly on different workers)
and returns them as candidates with their `index`, streamed interleaved or
together. Every stored completion (`store`, with a per-deployment default)
goes to the completion log once it is complete.

The client's `model` is resolved once per request (`ModelResolver`), so that all
`n` candidates come from the same version; responses report the resolved name
(`Target.resolved`, e.g. `bailu-poet@v0003` for a request to `bailu-poet`), as
OpenAI reports a dated snapshot for an alias. Each request's lifecycle (in-flight
count, worker streams, completion record) is owned by a `Completion`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable
from typing import TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from bailu.common.errors import BailuError, Cancelled, RequestTooLarge
from bailu.common.logging import request_id_var
from bailu.common.metrics import GatewayMetrics
from bailu.common.types import GenerateChunk, GenerateRequest
from bailu.gateway import errors
from bailu.gateway.completion_log import CompletionLog
from bailu.gateway.lifecycle import Body, Completion
from bailu.gateway.model_names import ModelResolver, Target
from bailu.gateway.openai_format import SSE_DONE, Candidate, ResponseBuilder, sse, total_usage
from bailu.gateway.routing import Router
from bailu.gateway.schemas import ChatCompletionRequest
from bailu.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

T = TypeVar("T")

# OpenAI's default max_tokens for /v1/completions.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


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

    def build_request(self, body: Body, *, max_tokens: int | None) -> tuple[Target, GenerateRequest]:
        """Resolve the client's model and build the generation to route (raises the request's errors)."""
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
        self.metrics.model_requests.labels(body.model, target.resolved).inc()
        return target, request

    async def respond(
        self, request: Request, kind: str, body: Body, target: Target, gen: GenerateRequest, key_id: str
    ) -> Response:
        store = body.store if body.store is not None else self.settings.store_default
        completion = Completion(
            kind,
            body,
            target,
            gen,
            key_id=key_id,
            router=self.router,
            metrics=self.metrics,
            completion_log=self.completion_log if store else None,
            stream_buffer_chunks=self.settings.stream_buffer_chunks,
            client_write_timeout_s=self.settings.client_write_timeout_s,
        )
        streaming = False
        try:
            firsts = await until_disconnect(request, completion.first_chunks())
            if body.stream:
                response = completion.stream(self._sse(completion, firsts), SSE_HEADERS)
                streaming = True  # from here the response closes the completion
                return response
            await until_disconnect(request, completion.collect(firsts))
            completion.finish()
            return JSONResponse(completion.builder.full(completion.candidates))
        finally:
            if not streaming:
                await completion.close()

    async def _sse(self, completion: Completion, firsts: list[GenerateChunk]) -> AsyncGenerator[bytes, None]:
        builder, candidates = completion.builder, completion.candidates
        try:
            if builder.kind == "chat":
                for index in range(len(candidates)):
                    yield sse(builder.chunk("", None, index=index, first=True))
            for index, chunk in enumerate(firsts):
                if event := self._event(builder, candidates[index], chunk):
                    yield event
            async with contextlib.aclosing(completion.chunks()) as chunks:
                async for index, chunk in chunks:
                    if event := self._event(builder, candidates[index], chunk):
                        yield event
            if completion.body.include_usage:
                yield sse(builder.usage_chunk(total_usage(candidates)))
            yield SSE_DONE
            completion.finish()
        except BailuError as exc:
            # Headers are gone: the error travels as an event, and the stream ends cleanly.
            log.warning("stream failed after the first token", extra={"error": exc.name, "reason": exc.message})
            yield sse(errors.error_body(exc))
            yield SSE_DONE

    @staticmethod
    def _event(builder: ResponseBuilder, candidate: Candidate, chunk: GenerateChunk) -> bytes:
        candidate.add(chunk)
        if chunk.finish_reason is not None:
            return sse(builder.chunk(chunk.text, chunk.finish_reason, index=candidate.index))
        if chunk.text:
            return builder.text_event(chunk.text, candidate.index)
        return b""
