"""The gateway's ASGI app: OpenAI-compatible routes over the worker pool, feedback over Redis."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Path, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bailu import __version__
from bailu.common.errors import ModelNotFound, NotFound, PermissionDenied, PreviousResponseNotFound, Unavailable
from bailu.common.memory import IdleTrimmer
from bailu.common.metrics import GatewayMetrics
from bailu.common.records import CompletionRecord
from bailu.gateway import errors, openapi, responses_api_format
from bailu.gateway.auth import Authenticator, KeyStore
from bailu.gateway.backpressure import install_log_filter
from bailu.gateway.completion_log import CompletionLog
from bailu.gateway.completions import COMPLETIONS_DEFAULT_MAX_TOKENS, CompletionHandler
from bailu.gateway.feedback import IDEMPOTENCY_HEADER, FeedbackHandler, FeedbackRequest, feedback_disabled
from bailu.gateway.feedback_batch import FeedbackBatchResult, batch_body, parse_batch, request_body_schema
from bailu.gateway.middleware import GatewayMiddleware, RouteLabels
from bailu.gateway.model_names import ModelResolver
from bailu.gateway.priority import AdmissionPolicy
from bailu.gateway.quotas import Quotas
from bailu.gateway.registry_watch import RegistryWatcher
from bailu.gateway.responses import (
    ChatCompletion,
    ChatCompletionChunk,
    FeedbackAccepted,
    Model,
    ModelList,
    TextCompletion,
    TextCompletionChunk,
)
from bailu.gateway.responses_api import RESPONSE_ID_PREFIX, ResponseCreateRequest
from bailu.gateway.responses_api_format import ResponsesPresenter
from bailu.gateway.responses_api_models import RESPONSES_STREAM_EVENTS, ResponseObject
from bailu.gateway.routing import Router
from bailu.gateway.schemas import ChatCompletionRequest, CompletionRequest
from bailu.gateway.settings import GatewaySettings
from bailu.gateway.workers import WorkerPool
from bailu.keys.model import FEEDBACK, GENERATE, ApiKey
from bailu.keys.store import KeyRegistry
from bailu.registry.index import RegistryIndex

log = logging.getLogger(__name__)


def request_headers(request: Request) -> dict[str, str]:
    """The request's headers by lower-cased name (the last one wins)."""
    return {name.lower(): value for name, value in request.headers.items()}


def create_app(
    settings: GatewaySettings,
    *,
    pool: WorkerPool | None = None,
    keys: KeyStore | None = None,
    metrics_registry: CollectorRegistry | None = None,
    redis: Redis | None = None,
) -> FastAPI:
    """The gateway app. The pool starts polling workers, the completion log its writer, and the registry
    watcher its view of the model aliases, when the app starts.

    Without Redis (`BAILU_GATEWAY_REDIS_URL` empty and no client given) completions are served but not
    logged, feedback is refused with 503, and registry adapter names do not resolve (workers' own model
    names, `<name>@<version>` included, still do)."""
    metrics_registry = metrics_registry or CollectorRegistry()
    metrics = GatewayMetrics(metrics_registry)
    keys = keys or KeyStore.load(settings.api_keys_file, settings.api_key_hashes)
    pool = pool or WorkerPool(
        settings.workers,
        settings.workers_dns,
        poll_interval_s=settings.load_poll_interval_s,
        discovery_interval_s=settings.discovery_interval_s,
        relay=settings.worker_relay,
    )
    if redis is None and settings.redis_url:
        redis = Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
            health_check_interval=30,
        )
    resolver = ModelResolver(pool, metrics)
    completion_log = feedback = watcher = None
    if redis is not None:
        watcher = RegistryWatcher(
            RegistryIndex(redis),
            resolver,
            metrics,
            refresh_s=settings.registry_refresh_s,
            # One XREAD blocks for less than a Redis call may take.
            block_s=settings.redis_timeout_s / 2,
        )
        completion_log = CompletionLog(
            redis,
            metrics,
            retention_s=settings.completion_log_retention_s,
            max_stream_len=settings.completion_log_max_len,
            queue_size=settings.completion_log_queue,
        )
        feedback = FeedbackHandler(
            redis, completion_log, metrics, idempotency_ttl_s=settings.feedback_idempotency_ttl_s
        )
    router = Router(
        pool,
        metrics,
        settings.max_attempts,
        first_token_timeout_s=settings.first_token_timeout_s,
        idle_timeout_s=settings.stream_idle_timeout_s,
        admission=AdmissionPolicy.from_settings(settings),
    )
    auth = Authenticator(
        keys,
        KeyRegistry(redis) if redis is not None else None,
        metrics,
        cache_s=settings.key_cache_s,
        stale_s=settings.key_stale_s,
    )
    # A lease outlives the longest completion, so that a replica that dies leaks a key's slot only that long.
    quotas = Quotas(redis, metrics, lease_ttl_s=settings.request_timeout_s + 30, timeout_s=settings.redis_timeout_s)
    handler = CompletionHandler(settings, resolver, router, metrics, completion_log, quotas)
    if not settings.workers and not settings.workers_dns and not pool.workers:
        log.warning("no workers configured: set BAILU_GATEWAY_WORKERS or BAILU_GATEWAY_WORKERS_DNS")
    if not auth.configured:
        log.warning("no API keys configured: every /v1 request will be refused")
    if redis is None:
        log.warning(
            "no Redis configured: completions are not logged, feedback is refused, only static API keys work "
            "and quotas are this replica's own"
        )

    trimmer = IdleTrimmer(pool.inflight, pool.calls_started, settings.memory_trim_s)
    install_log_filter()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.start()
        if completion_log is not None:
            completion_log.start()
        if watcher is not None:
            await watcher.start()
        trimmer.start()
        try:
            yield
        finally:
            await trimmer.close()
            if watcher is not None:
                await watcher.close()
            if completion_log is not None:
                await completion_log.close()
            await pool.close()
            await quotas.close()
            if redis is not None:
                await redis.aclose()

    app = FastAPI(title="Bailu gateway", version=__version__, lifespan=lifespan)
    app.state.pool = pool
    app.state.resolver = resolver
    app.state.registry_watcher = watcher
    app.state.metrics = metrics
    app.state.memory_trimmer = trimmer
    app.state.completion_log = completion_log
    errors.install(app)
    openapi.install(app)

    def caller(scope: str) -> Any:
        """The dependency that hands a route its caller's key, refusing (403) a key without `scope`."""

        async def check(request: Request) -> ApiKey:  # async: no thread hop per request
            key: ApiKey = request.scope["state"]["api_key"]
            if not key.allows(scope):
                metrics.auth_rejections.labels("scope").inc()
                raise PermissionDenied(
                    f"the API key {key.id} lacks the {scope!r} scope that {request.method} {request.url.path} "
                    f"needs (its scopes: {', '.join(sorted(key.scopes)) or 'none'})"
                )
            return key

        return Depends(check)

    generating, rating = caller(GENERATE), caller(FEEDBACK)

    @app.post(
        "/v1/chat/completions",
        response_model=None,
        summary="Chat completion (OpenAI-compatible), streamed with `stream: true`",
        responses=openapi.completion_responses(ChatCompletion, ChatCompletionChunk, openapi.COMPLETION_ERRORS),
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request, key: ApiKey = generating) -> Response:
        target, gen = handler.build_request(
            body, max_tokens=body.effective_max_tokens(), key=key, headers=request_headers(request)
        )
        return await handler.respond(request, "chat", body, target, gen, key)

    @app.post(
        "/v1/completions",
        response_model=None,
        summary="Text completion (OpenAI-compatible), streamed with `stream: true`",
        responses=openapi.completion_responses(TextCompletion, TextCompletionChunk, openapi.COMPLETION_ERRORS),
    )
    async def completions(body: CompletionRequest, request: Request, key: ApiKey = generating) -> Response:
        max_tokens = body.max_tokens if body.max_tokens is not None else COMPLETIONS_DEFAULT_MAX_TOKENS
        target, gen = handler.build_request(body, max_tokens=max_tokens, key=key, headers=request_headers(request))
        return await handler.respond(request, "text", body, target, gen, key)

    @app.post(
        "/v1/responses",
        response_model=None,
        summary="Create a response (OpenAI's Responses API), streamed with `stream: true`",
        responses=openapi.responses_api_responses(ResponseObject, RESPONSES_STREAM_EVENTS, openapi.RESPONSES_ERRORS),
    )
    async def create_response(body: ResponseCreateRequest, request: Request, key: ApiKey = generating) -> Response:
        previous = None
        if body.previous_response_id is not None:
            previous = await find_stored(body.previous_response_id, key, PreviousResponseNotFound)
        chat = body.chat_request(previous)
        target, gen = handler.build_request(
            chat, max_tokens=chat.effective_max_tokens(), key=key, headers=request_headers(request)
        )
        return await handler.respond(request, "chat", chat, target, gen, key, presenter=ResponsesPresenter(body))

    @app.get(
        "/v1/responses/{response_id}",
        response_model=ResponseObject,
        summary="Retrieve a stored response of this API key",
        responses=openapi.error_responses(openapi.RESPONSE_RETRIEVE_ERRORS),
    )
    async def retrieve_response(
        response_id: Annotated[str, Path(description="The `id` of a stored response (`resp_...`).")],
        key: ApiKey = generating,
    ) -> JSONResponse:
        return JSONResponse(responses_api_format.response_of_record(await find_stored(response_id, key, NotFound)))

    async def find_stored(response_id: str, key: ApiKey, missing: type[NotFound]) -> CompletionRecord:
        """The stored Responses API response `response_id` of `key`, else `missing` (a 404: unknown, expired,
        not stored and another key's look the same)."""
        param = "previous_response_id" if missing is PreviousResponseNotFound else None
        if completion_log is None:
            raise missing("responses are not stored on this deployment (no Redis configured)", param=param)
        record = None
        if response_id.startswith(RESPONSE_ID_PREFIX):
            try:
                record = await completion_log.lookup_for(key.id, response_id)
            except RedisError as exc:
                raise Unavailable(f"stored responses cannot be read right now ({type(exc).__name__})") from exc
        if record is None:
            what = "Previous response" if param else "Response"
            raise missing(f"{what} with id '{response_id}' not found.", param=param)
        return record

    @app.post(
        "/v1/feedback",
        status_code=202,
        response_model=FeedbackAccepted,
        summary="Record a rating, a comparison or an edit of earlier responses",
        responses=openapi.error_responses(openapi.FEEDBACK_ERRORS),
    )
    async def post_feedback(
        body: FeedbackRequest,
        key: ApiKey = rating,
        idempotency_key: Annotated[
            str | None,
            Header(
                alias=IDEMPOTENCY_HEADER,
                min_length=1,
                max_length=128,
                description="Retries with the same key are recorded once (as `feedback_id` does).",
            ),
        ] = None,
    ) -> FeedbackAccepted:
        if feedback is None:
            raise feedback_disabled()
        return await feedback.accept(body, key.id, idempotency_key)

    @app.post(
        "/v1/feedback/batch",
        response_model=FeedbackBatchResult,
        summary="Record up to `BAILU_GATEWAY_FEEDBACK_BATCH_MAX_EVENTS` feedback events at once, each with its "
        "own result",
        responses={
            200: {"description": "A result per event, in order: 202 with its id, or its own error (400, 404, 409)"},
            **openapi.error_responses(openapi.FEEDBACK_BATCH_ERRORS),
        },
        openapi_extra=request_body_schema(settings.feedback_batch_max_events, FeedbackRequest.__name__),
    )
    async def post_feedback_batch(request: Request, key: ApiKey = rating) -> JSONResponse:
        if feedback is None:
            raise feedback_disabled()
        events = parse_batch(await request.body(), settings.feedback_batch_max_events)
        return JSONResponse(batch_body(await feedback.accept_batch(events, key.id)))

    @app.get("/v1/models", response_model=ModelList, response_model_exclude_none=True, summary="List the models")
    async def list_models() -> ModelList:
        # What workers serve, then the registry adapter names a worker can serve a version of.
        data = [
            Model(
                id=card.name,
                parent=card.base_model if card.kind == "adapter" else None,
                max_model_len=card.max_model_len or None,
            )
            for card in [*pool.models(), *resolver.listed()]
        ]
        return ModelList(data=data)

    @app.get(
        "/v1/models/{model_id:path}",
        response_model=Model,
        response_model_exclude_none=True,
        summary="Retrieve one model",
        responses=openapi.error_responses(openapi.MODEL_ERRORS),
    )
    async def retrieve_model(
        model_id: Annotated[str, Path(description="A name `GET /v1/models` lists (it may hold `/` and `@`).")],
    ) -> Model:
        model = next((m for m in (await list_models()).data if m.id == model_id), None)
        if model is None:
            raise ModelNotFound(f"the model '{model_id}' does not exist", param="model")
        return model

    @app.get("/healthz", response_class=PlainTextResponse, summary="Liveness: the process answers")
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok\n")

    @app.get(
        "/readyz",
        response_class=PlainTextResponse,
        summary="Readiness: at least one worker is ready",
        responses={
            503: {"description": "No worker is ready", "content": {"text/plain": {"schema": {"type": "string"}}}}
        },
    )
    async def readyz() -> PlainTextResponse:
        ready = len(pool.ready_workers())
        metrics.workers_ready.set(ready)
        if ready:
            return PlainTextResponse(f"ready: {ready} worker(s)\n")
        return PlainTextResponse("not ready: no worker is ready\n", status_code=503)

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (text exposition format)")
    async def prometheus_metrics() -> Response:
        metrics.workers_ready.set(len(pool.ready_workers()))
        return Response(generate_latest(metrics_registry), media_type=CONTENT_TYPE_LATEST)

    # Added once every route exists: the request metrics get one route label per route.
    app.add_middleware(
        GatewayMiddleware,
        auth=auth,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        route_labels=RouteLabels(app.routes),
    )
    return app
