"""One error hierarchy for every service.

Each class carries its HTTP status, its OpenAI error `type`/`code` and its gRPC
status code. The gateway maps them to OpenAI error bodies in one place
(`bailu.gateway.errors`), the worker to gRPC statuses in one place
(`bailu.common.grpc_errors`). Anything that is not a `BailuError` is an
internal error: it is logged with its traceback and reported as a generic
500/INTERNAL, never leaked.
"""

from __future__ import annotations

from typing import ClassVar

import grpc


class BailuError(Exception):
    """Base class of every error a Bailu service reports to its callers."""

    http_status: ClassVar[int] = 500
    openai_type: ClassVar[str] = "server_error"
    openai_code: ClassVar[str | None] = None
    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    retryable: ClassVar[bool] = False
    # Sent as Retry-After when the raiser gives no better estimate.
    default_retry_after_s: ClassVar[float | None] = None

    def __init__(self, message: str, *, param: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s if retry_after_s is not None else self.default_retry_after_s

    @property
    def name(self) -> str:
        """Stable identifier used to carry the class across the gRPC hop."""
        return type(self).__name__


class InvalidRequest(BailuError):
    """The request is malformed: bad JSON, wrong types, out-of-range parameters."""

    http_status = 400
    openai_type = "invalid_request_error"
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class AuthenticationFailed(BailuError):
    """The API key is missing or unknown."""

    http_status = 401
    openai_type = "authentication_error"
    openai_code = "invalid_api_key"
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class ModelNotFound(BailuError):
    """The model or adapter does not exist on any worker."""

    http_status = 404
    openai_type = "invalid_request_error"
    openai_code = "model_not_found"
    grpc_code = grpc.StatusCode.NOT_FOUND


class NotFound(BailuError):
    """An unknown URL or resource other than a model."""

    http_status = 404
    openai_type = "invalid_request_error"
    openai_code = "not_found"
    grpc_code = grpc.StatusCode.NOT_FOUND


class Conflict(BailuError):
    """The request conflicts with an earlier one (an idempotency key reused with another body)."""

    http_status = 409
    openai_type = "invalid_request_error"
    openai_code = "idempotency_key_reused"
    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class RequestTooLarge(BailuError):
    """The prompt is longer than this deployment or the model's context accepts."""

    http_status = 413
    openai_type = "invalid_request_error"
    openai_code = "context_length_exceeded"
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class BodyTooLarge(RequestTooLarge):
    """The request body is larger than this deployment accepts (a limit on bytes, not on context)."""

    openai_code = "request_too_large"


class Overloaded(BailuError):
    """Every worker's queue is full; the client should retry later."""

    http_status = 429
    openai_type = "rate_limit_error"
    openai_code = "server_overloaded"
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retryable = True
    default_retry_after_s = 1.0


class Unavailable(BailuError):
    """No worker can take the request now (none ready, or draining)."""

    http_status = 503
    openai_type = "server_error"
    openai_code = "service_unavailable"
    grpc_code = grpc.StatusCode.UNAVAILABLE
    retryable = True
    default_retry_after_s = 2.0


class DeadlineExceeded(BailuError):
    """The request's deadline passed before it completed."""

    http_status = 504
    openai_type = "timeout"
    openai_code = "deadline_exceeded"
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Stalled(BailuError):
    """An upstream stopped sending within its bound: a worker (or a worker's engine) sent no first token within
    the attempt's time-to-first-token budget, or nothing for the stream's idle timeout, or stopped answering.
    Retried on another worker before the first token; after it, the stream ends with this error."""

    http_status = 504
    openai_type = "timeout"
    openai_code = "upstream_stalled"
    # UNAVAILABLE: transient, worth retrying elsewhere (a bare DEADLINE_EXCEEDED would not be retried).
    grpc_code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class Cancelled(BailuError):
    """The caller went away."""

    http_status = 499
    openai_type = "invalid_request_error"
    openai_code = "cancelled"
    grpc_code = grpc.StatusCode.CANCELLED


class InternalError(BailuError):
    """An unexpected failure; details are in the server's log, not in the response."""


ERROR_CLASSES: dict[str, type[BailuError]] = {
    cls.__name__: cls
    for cls in (
        InvalidRequest,
        AuthenticationFailed,
        ModelNotFound,
        NotFound,
        Conflict,
        RequestTooLarge,
        BodyTooLarge,
        Overloaded,
        Unavailable,
        DeadlineExceeded,
        Stalled,
        Cancelled,
        InternalError,
    )
}
