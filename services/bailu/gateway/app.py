"""The gateway's ASGI app: OpenAI-compatible routes over the worker pool."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from bailu import __version__
from bailu.common.errors import BailuError, Cancelled, RequestTooLarge
from bailu.common.logging import request_id_var
from bailu.common.metrics import GatewayMetrics
from bailu.common.types import FinishReason, GenerateChunk, GenerateRequest, Usage
from bailu.gateway import errors
from bailu.gateway.auth import KeyStore
from bailu.gateway.middleware import GatewayMiddleware
from bailu.gateway.openai_format import SSE_DONE, ResponseBuilder, new_id, sse
from bailu.gateway.routing import Router
from bailu.gateway.schemas import ChatCompletionRequest, CompletionRequest
from bailu.gateway.settings import GatewaySettings
from bailu.gateway.workers import WorkerPool

log = logging.getLogger(__name__)

T = TypeVar("T")

# OpenAI's default max_tokens for /v1/completions.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
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

    def __init__(self, settings: GatewaySettings, pool: WorkerPool, router: Router, metrics: GatewayMetrics):
        self.settings = settings
        self.pool = pool
        self.router = router
        self.metrics = metrics

    def build_request(
        self, body: ChatCompletionRequest | CompletionRequest, *, max_tokens: int | None
    ) -> GenerateRequest:
        model, adapter = self.pool.resolve(body.model)
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
            model=model,
            adapter=adapter,
            messages=messages,
            prompt=prompt,
            sampling=body.sampling(max_tokens),
            deadline=time.time() + self.settings.request_timeout_s,
        )
        request.validate()
        return request

    async def respond(
        self,
        request: Request,
        kind: str,
        body: ChatCompletionRequest | CompletionRequest,
        gen: GenerateRequest,
    ) -> Response:
        builder = ResponseBuilder(kind, body.model, new_id(kind))
        start = time.monotonic()
        self.metrics.inflight.inc()
        stream = self.router.stream(gen)
        try:
            first = await _until_disconnect(request, anext(stream))
        except BaseException:
            self.metrics.inflight.dec()
            await stream.aclose()  # type: ignore[attr-defined]
            raise
        self.metrics.ttft.labels(body.model).observe(time.monotonic() - start)
        if body.stream:
            return StreamingResponse(
                self._sse(builder, body, first, stream),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            text, finish, usage = await _until_disconnect(request, self._collect(first, stream))
        finally:
            self.metrics.inflight.dec()
            await stream.aclose()  # type: ignore[attr-defined]
        return JSONResponse(builder.full(text, finish, usage))

    async def _collect(
        self, first: GenerateChunk, stream: AsyncIterator[GenerateChunk]
    ) -> tuple[str, FinishReason | None, Usage | None]:
        parts, finish, usage, tokens = [first.text], first.finish_reason, first.usage, first.token_count
        async for chunk in stream:
            parts.append(chunk.text)
            tokens += chunk.token_count
            finish, usage = chunk.finish_reason or finish, chunk.usage or usage
        self.metrics.tokens.labels(self.metrics_model(first)).inc(tokens)
        return "".join(parts), finish, usage

    @staticmethod
    def metrics_model(chunk: GenerateChunk) -> str:
        return chunk.served_model or "unknown"

    async def _sse(
        self,
        builder: ResponseBuilder,
        body: ChatCompletionRequest | CompletionRequest,
        first: GenerateChunk,
        stream: AsyncIterator[GenerateChunk],
    ) -> AsyncIterator[bytes]:
        usage: Usage | None = None
        tokens = 0
        try:
            if builder.kind == "chat":
                yield sse(builder.chunk("", None, first=True))
            chunk: GenerateChunk | None = first
            while chunk is not None:
                tokens += chunk.token_count
                usage = chunk.usage or usage
                if chunk.finish_reason is not None:
                    yield sse(builder.chunk(chunk.text, chunk.finish_reason))
                elif chunk.text:
                    yield builder.text_event(chunk.text)
                chunk = await anext(stream, None)
            if body.include_usage:
                yield sse(builder.usage_chunk(usage))
            yield SSE_DONE
        except BailuError as exc:
            # Headers are gone: the error travels as an event, and the stream ends cleanly.
            log.warning("stream failed after the first token", extra={"error": exc.name, "reason": exc.message})
            yield sse(errors.error_body(exc))
            yield SSE_DONE
        finally:
            self.metrics.inflight.dec()
            self.metrics.tokens.labels(self.metrics_model(first)).inc(tokens)
            await stream.aclose()  # type: ignore[attr-defined]


def create_app(
    settings: GatewaySettings,
    *,
    pool: WorkerPool | None = None,
    keys: KeyStore | None = None,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """The gateway app. The pool starts polling workers when the app starts."""
    registry = registry or CollectorRegistry()
    metrics = GatewayMetrics(registry)
    keys = keys or KeyStore.load(settings.api_keys_file, settings.api_key_hashes)
    pool = pool or WorkerPool(
        settings.workers,
        settings.workers_dns,
        poll_interval_s=settings.load_poll_interval_s,
        discovery_interval_s=settings.discovery_interval_s,
    )
    router = Router(pool, metrics, settings.max_attempts)
    handler = CompletionHandler(settings, pool, router, metrics)
    if not settings.workers and not settings.workers_dns and not pool.workers:
        log.warning("no workers configured: set BAILU_GATEWAY_WORKERS or BAILU_GATEWAY_WORKERS_DNS")
    if not len(keys):
        log.warning("no API keys configured: every /v1 request will be refused")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.start()
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(title="Bailu gateway", version=__version__, lifespan=lifespan)
    app.state.pool = pool
    app.state.metrics = metrics
    errors.install(app)
    app.add_middleware(GatewayMiddleware, keys=keys, metrics=metrics, max_body_bytes=settings.max_body_bytes)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        gen = handler.build_request(body, max_tokens=body.effective_max_tokens())
        return await handler.respond(request, "chat", body, gen)

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        max_tokens = body.max_tokens if body.max_tokens is not None else COMPLETIONS_DEFAULT_MAX_TOKENS
        gen = handler.build_request(body, max_tokens=max_tokens)
        return await handler.respond(request, "text", body, gen)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        data = []
        for card in pool.models():
            entry: dict[str, Any] = {"id": card.name, "object": "model", "created": 0, "owned_by": "bailu"}
            if card.kind == "adapter":
                entry["parent"] = card.base_model
            if card.max_model_len:
                entry["max_model_len"] = card.max_model_len
            data.append(entry)
        return {"object": "list", "data": data}

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok\n")

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> PlainTextResponse:
        ready = len(pool.ready_workers())
        metrics.workers_ready.set(ready)
        if ready:
            return PlainTextResponse(f"ready: {ready} worker(s)\n")
        return PlainTextResponse("not ready: no worker is ready\n", status_code=503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        metrics.workers_ready.set(len(pool.ready_workers()))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
