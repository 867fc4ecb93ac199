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
import math
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Mapping
from typing import Any, Protocol, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from bailu.common.errors import BailuError, Cancelled, PriorityDenied, RequestTooLarge
from bailu.common.logging import request_id_var
from bailu.common.metrics import GatewayMetrics
from bailu.common.types import ChatMessage, GenerateChunk, GenerateRequest, ToolUse
from bailu.gateway import errors
from bailu.gateway.completion_log import CompletionLog
from bailu.gateway.lifecycle import Body, Completion
from bailu.gateway.model_names import ModelResolver, Target
from bailu.gateway.openai_format import SSE_DONE, Candidate, ResponseBuilder, sse, total_usage
from bailu.gateway.priority import request_class
from bailu.gateway.quotas import Quotas
from bailu.gateway.routing import Router
from bailu.gateway.schemas import ChatCompletionRequest
from bailu.gateway.settings import GatewaySettings
from bailu.keys.model import ApiKey

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


def message_chars(message: ChatMessage) -> int:
    """The characters of a chat turn that go into the prompt: its text and the calls it made."""
    return len(message.content) + sum(len(c.name) + len(c.arguments) for c in message.tool_calls)


def tools_chars(tools: ToolUse) -> int:
    """The characters of the tools the prompt shows the model (none unless they are in use)."""
    if not tools.active:
        return 0
    return sum(len(t.name) + len(t.description) + len(t.parameters) for t in tools.tools)


def estimated_prompt_tokens(gen: GenerateRequest) -> int:
    """The prompt's tokens as the gateway guesses them before a worker counts them (about four characters a
    token, plus a few per chat message for its template, and the tools' JSON the template shows the model):
    what a key's tokens-per-minute quota reserves."""
    if gen.messages is not None:
        tools = tools_chars(gen.tools)
        tools_tokens = math.ceil(tools / 4) + 4 * len(gen.tools.tools) if tools else 0
        return sum(math.ceil(message_chars(m) / 4) + 4 for m in gen.messages) + tools_tokens
    return math.ceil(len(gen.prompt or "") / 4)


class Presenter(Protocol):
    """Another API's format for a completion (the Responses API's): its id, the fields its completion record
    adds, its JSON body and its stream. `events` must call `completion.finish()` once the completion is
    complete, as the completion formats' stream does."""

    @property
    def response_id(self) -> str: ...

    @property
    def record_extras(self) -> Mapping[str, Any]: ...

    def full(self, completion: Completion) -> dict[str, Any]: ...

    def events(self, completion: Completion, firsts: list[GenerateChunk]) -> AsyncGenerator[bytes, None]: ...


class CompletionHandler:
    """Turns validated OpenAI requests into routed generations and OpenAI responses."""

    def __init__(
        self,
        settings: GatewaySettings,
        resolver: ModelResolver,
        router: Router,
        metrics: GatewayMetrics,
        completion_log: CompletionLog | None,
        quotas: Quotas,
    ) -> None:
        self.settings = settings
        self.quotas = quotas
        self.resolver = resolver
        self.router = router
        self.metrics = metrics
        self.completion_log = completion_log

    def build_request(
        self, body: Body, *, max_tokens: int | None, key: ApiKey, headers: Mapping[str, str]
    ) -> tuple[Target, GenerateRequest]:
        """Resolve the client's model and build the generation to route, in the request's priority class with
        its first-token deadline (`priority.request_class`); raises the request's errors."""
        now = time.time()
        try:
            priority, first_token_deadline = request_class(headers, key.priority, self.settings, now)
        except PriorityDenied:
            self.metrics.auth_rejections.labels("priority").inc()
            raise
        target = self.resolver.resolve(body.model)
        if isinstance(body, ChatCompletionRequest):
            messages, prompt, tools = body.messages_domain(), None, body.tool_use()
            size, param = sum(message_chars(m) for m in messages), "messages"
        else:
            messages, prompt, tools = None, body.prompt_text(), ToolUse()
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
            deadline=now + self.settings.request_timeout_s,
            priority=priority,
            first_token_deadline=first_token_deadline,
            tools=tools,
        )
        request.validate()
        self.metrics.model_requests.labels(body.model, target.resolved).inc()
        return target, request

    async def respond(
        self,
        request: Request,
        kind: str,
        body: Body,
        target: Target,
        gen: GenerateRequest,
        key: ApiKey,
        *,
        presenter: Presenter | None = None,
    ) -> Response:
        """Admit the request under the key's quotas, run it, and answer (every answer, errors included, carries
        the key's `x-ratelimit-*` headers): in OpenAI's completion formats, or as `presenter` formats it."""
        reserved = estimated_prompt_tokens(gen)
        quota = await self.quotas.admit(key, tokens=reserved)
        store = body.store if body.store is not None else self.settings.store_default
        try:
            completion = Completion(
                kind,
                body,
                target,
                gen,
                key_id=key.id,
                router=self.router,
                metrics=self.metrics,
                completion_log=self.completion_log if store else None,
                stream_buffer_chunks=self.settings.stream_buffer_chunks,
                client_write_timeout_s=self.settings.client_write_timeout_s,
                quota=quota,
                reserved_tokens=reserved,
                response_id=presenter.response_id if presenter else None,
                record_extras=presenter.record_extras if presenter else None,
            )
        except BaseException:
            await quota.settle(0)
            raise
        streaming = False
        try:
            firsts = await until_disconnect(request, completion.first_chunks())
            if body.stream:
                events = presenter.events(completion, firsts) if presenter else self._sse(completion, firsts)
                response = completion.stream(events, {**SSE_HEADERS, **quota.headers})
                streaming = True  # from here the response closes the completion
                return response
            await until_disconnect(request, completion.collect(firsts))
            completion.finish()
            full = presenter.full(completion) if presenter else completion.builder.full(completion.candidates)
            return JSONResponse(full, headers=quota.headers)
        except BailuError as exc:
            exc.headers = {**quota.headers, **exc.headers}
            raise
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
        return builder.event(candidate, chunk)
