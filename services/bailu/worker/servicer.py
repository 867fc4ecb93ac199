"""The gRPC servicer: protobuf at the edge, admission control, per-request metrics and logs.

Errors are not handled here: a `BailuError` (or any other exception) raised by an RPC reaches
`ErrorInterceptor` (`interceptors.py`), which reports it as the matching gRPC status.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator

import grpc

from bailu.common import wire
from bailu.common.errors import BailuError, Cancelled, InternalError, InvalidRequest, UnsupportedValue
from bailu.common.logging import request_id_var, reset_request_id
from bailu.common.metrics import WorkerMetrics
from bailu.v1 import worker_pb2 as pb
from bailu.v1 import worker_pb2_grpc as pb_grpc
from bailu.worker.admission import Admission
from bailu.worker.engines.base import Engine
from bailu.worker.relay import RelaySession

log = logging.getLogger(__name__)


def _outcome(exc: BaseException) -> tuple[str, str]:
    """The outcome label and reason a failed generation is counted and logged with."""
    if isinstance(exc, BailuError):
        return exc.name, exc.message
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return Cancelled.__name__, ""
    return InternalError.__name__, ""


class InferenceWorkerServicer(pb_grpc.InferenceWorkerServicer):
    def __init__(self, engine: Engine, admission: Admission, metrics: WorkerMetrics) -> None:
        self.engine = engine
        self.admission = admission
        self.metrics = metrics
        self.relays: set[RelaySession] = set()
        self.closing = False

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        async with contextlib.aclosing(self.generate(request)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def Relay(
        self, request_iterator: AsyncIterator[pb.RelayRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RelayResponse]:
        session = RelaySession(self.generate)
        self.relays.add(session)
        if self.closing:
            session.close()
        try:
            async with contextlib.aclosing(session.run(request_iterator)) as responses:
                async for response in responses:
                    yield response
        finally:
            self.relays.discard(session)

    def close_relays(self) -> None:
        """End every Relay call once its streams have ended, and new ones at once (the worker drains)."""
        self.closing = True
        for session in self.relays:
            session.close()

    async def generate(self, request: pb.GenerateRequest) -> AsyncGenerator[pb.GenerateResponse, None]:
        """One completion, as `Generate` streams it and as each `Relay` stream carries it."""
        # The interceptor has set the caller's request id (x-request-id); the request's own one wins.
        rid = request.request_id or request_id_var.get() or uuid.uuid4().hex
        token = request_id_var.set(rid)
        outcome, reason = "ok", ""
        start = time.monotonic()
        ttft: float | None = None
        tokens = 0
        try:
            req = wire.request_from_pb(request)
            req.validate()
            if req.continues_assistant and not self.engine.continues_assistant:
                raise UnsupportedValue(
                    f"the {self.engine.kind} engine does not continue a trailing assistant message: end the "
                    "messages with a user or tool message",
                    param=f"messages[{len(req.as_messages()) - 1}].role",
                )
            self.engine.check_target(req)
            async with self.admission.slot(
                req.deadline, priority=req.priority, first_token_deadline=req.first_token_deadline
            ):
                stream = self.engine.generate(req)
                try:
                    async for chunk in stream:
                        if ttft is None:
                            ttft = time.monotonic() - start
                            self.metrics.ttft.observe(ttft)
                        tokens += chunk.token_count
                        self.metrics.tokens.inc(chunk.token_count)
                        yield wire.chunk_to_pb(chunk)
                finally:
                    await stream.aclose()
        except BaseException as exc:
            outcome, reason = _outcome(exc)
            raise
        finally:
            self.metrics.requests.labels(outcome).inc()
            log.info(
                "generate",
                extra={
                    "outcome": outcome,
                    "reason": reason or None,
                    "completion_tokens": tokens,
                    "ttft_ms": None if ttft is None else round(ttft * 1000, 1),
                    "duration_ms": round((time.monotonic() - start) * 1000, 1),
                },
            )
            reset_request_id(token)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[wire.card_to_pb(card) for card in self.engine.models()],
            engine=self.engine.kind,
            capabilities=wire.capabilities_to_pb(self.engine.capabilities),
            relay=True,
        )

    async def LoadAdapter(
        self, request: pb.LoadAdapterRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoadAdapterResponse:
        if not request.name or not request.path:
            raise InvalidRequest("name and path are required", param="name" if not request.name else "path")
        card = await self.engine.load_adapter(request.name, request.path)
        log.info("adapter loaded", extra={"adapter": request.name, "path": request.path})
        return pb.LoadAdapterResponse(model=wire.card_to_pb(card))

    async def UnloadAdapter(
        self, request: pb.UnloadAdapterRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnloadAdapterResponse:
        await self.engine.unload_adapter(request.name)
        return pb.UnloadAdapterResponse()

    async def GetLoad(self, request: pb.GetLoadRequest, context: grpc.aio.ServicerContext) -> pb.LoadReport:
        report = self.admission.report()
        if not self.engine.ready:  # an engine server restarting: route elsewhere meanwhile
            report = dataclasses.replace(report, ready=False)
        return wire.load_to_pb(report)
