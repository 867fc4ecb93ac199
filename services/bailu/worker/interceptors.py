"""The worker's gRPC server interceptor: errors are mapped to gRPC statuses here, once, for every RPC.

A `BailuError` becomes its status with the `bailu-error` trailing metadata (`common/grpc_errors.py`),
whether it is raised before a stream starts or in the middle of it; any other exception is logged with
its traceback and reported as a generic INTERNAL, its text never sent. Requests are deserialized here
too, inside that mapping, so that bytes that are not the RPC's message (corrupt wire format, invalid
UTF-8 in a string field) are INVALID_ARGUMENT rather than grpc's own UNKNOWN with the parser's text.
The caller's request id (`x-request-id` metadata) is set for the RPC's log records. Cancellation passes
through untouched.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from bailu.common.errors import BailuError, InternalError, InvalidRequest
from bailu.common.grpc_errors import to_status
from bailu.common.logging import request_id_var, reset_request_id

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"

_Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]
_Deserializer = Callable[[bytes], Any] | None


def _request_id(context: grpc.aio.ServicerContext) -> str:
    metadata = dict(context.invocation_metadata() or ())
    return str(metadata.get(REQUEST_ID_KEY, ""))


def _decode(deserializer: _Deserializer, request: Any) -> Any:
    """The request message of the raw bytes grpc received (the handler's own deserializer, run here)."""
    if deserializer is None:
        return request
    try:
        return deserializer(request)
    except DecodeError as exc:  # its text names the message type and the fault ("String field had bad UTF-8")
        raise InvalidRequest(f"the request could not be decoded: {exc}") from None


def reported(method: str, exc: Exception) -> BailuError:
    """The error `exc` is reported as: itself if a `BailuError`; else (logged with its traceback, its text never
    sent) a generic `InternalError`."""
    if isinstance(exc, BailuError):
        return exc
    log.exception("rpc failed unexpectedly", extra={"rpc": method}, exc_info=exc)
    return InternalError("the worker failed unexpectedly; see its log")


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: Exception) -> None:
    """End the RPC with the status that reports `exc` (`context.abort` raises)."""
    if isinstance(exc, grpc.aio.AbortError):
        raise exc  # the handler ended the RPC itself
    code, details, metadata = to_status(reported(method, exc))
    await context.abort(code, details, metadata)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps what unary-unary and unary-stream handlers raise to gRPC statuses (see the module docstring)."""

    async def intercept_service(
        self, continuation: _Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = str(handler_call_details.method)  # type from grpc-stubs: str
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary, handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            behavior = handler.unary_stream
            # An async generator streams by yielding; a coroutine (grpc's health Watch) by context.write().
            decode = handler.request_deserializer
            wrapped = (
                self._stream(method, behavior, decode)
                if inspect.isasyncgenfunction(behavior)
                else self._unary(method, behavior, decode)
            )
            return grpc.unary_stream_rpc_method_handler(
                wrapped,
                response_serializer=handler.response_serializer,
            )
        return handler  # Relay (stream-stream) reports each stream's errors in band (worker/relay.py)

    @staticmethod
    def _unary(method: str, behavior: Callable[..., Any], decode: _Deserializer) -> Callable[..., Awaitable[Any]]:
        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = request_id_var.set(_request_id(context))
            try:
                return await behavior(_decode(decode, request), context)
            except Exception as exc:
                await _abort(context, method, exc)
            finally:
                reset_request_id(token)

        return unary

    @staticmethod
    def _stream(
        method: str, behavior: Callable[..., AsyncGenerator[Any, None]], decode: _Deserializer
    ) -> Callable[..., AsyncIterator[Any]]:
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            token = request_id_var.set(_request_id(context))
            responses: AsyncGenerator[Any, None] | None = None
            try:
                responses = behavior(_decode(decode, request), context)
                async for response in responses:
                    yield response
            except Exception as exc:
                await _abort(context, method, exc)
            finally:
                if responses is not None:
                    await responses.aclose()
                reset_request_id(token)

        return stream
