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

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        retry_after_s: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """`headers` go on the HTTP error response (a rate limit's `x-ratelimit-*`); not carried over gRPC."""
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s if retry_after_s is not None else self.default_retry_after_s
        self.headers = dict(headers or {})

    @property
    def name(self) -> str:
        """Stable identifier used to carry the class across the gRPC hop."""
        return type(self).__name__


class InvalidRequest(BailuError):
    """The request is malformed: bad JSON, wrong types, out-of-range parameters."""

    http_status = 400
    openai_type = "invalid_request_error"
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class UnsupportedValue(InvalidRequest):
    """A known OpenAI field with a value that asks for a feature this deployment does not serve."""

    openai_code = "unsupported_value"


class AuthenticationFailed(BailuError):
    """The API key is missing or unknown."""

    http_status = 401
    openai_type = "authentication_error"
    openai_code = "invalid_api_key"
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class KeyRevoked(AuthenticationFailed):
    """The API key was revoked (`bailu keys revoke`)."""

    openai_code = "api_key_revoked"


class KeyExpired(AuthenticationFailed):
    """The API key's expiry passed."""

    openai_code = "api_key_expired"


class PermissionDenied(BailuError):
    """The API key is valid but lacks the scope the route needs."""

    http_status = 403
    openai_type = "permission_error"
    openai_code = "missing_scope"
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class PriorityDenied(PermissionDenied):
    """The request asks for a priority above its API key's own (`X-Bailu-Priority`)."""

    openai_code = "priority_not_allowed"


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


class PreviousResponseNotFound(NotFound):
    """A Responses API `previous_response_id` that names no stored response of the caller's API key."""

    openai_code = "previous_response_not_found"


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


class RateLimited(BailuError):
    """The API key is over one of its quotas; `Retry-After` says when it may try again. As OpenAI does, the
    type names the exhausted quota: `requests` (per minute), `tokens` (per minute)."""

    http_status = 429
    openai_type = "requests"
    openai_code = "rate_limit_exceeded"
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_retry_after_s = 1.0


class TokensRateLimited(RateLimited):
    """The API key is over its tokens-per-minute quota."""

    openai_type = "tokens"


class ConcurrencyLimited(RateLimited):
    """The API key has as many completions in progress as it may have at once."""

    openai_code = "concurrency_limit_exceeded"


class Unavailable(BailuError):
    """No worker can take the request now (none ready, or draining)."""

    http_status = 503
    openai_type = "server_error"
    openai_code = "service_unavailable"
    grpc_code = grpc.StatusCode.UNAVAILABLE
    retryable = True
    default_retry_after_s = 2.0


class DeadlineUnmeetable(Unavailable):
    """Admission control: no worker can start the request before its time-to-first-token deadline (the
    shortest estimated queue wait is longer than the time left), so it is refused at once rather than after
    the wait; `Retry-After` is that estimated wait."""

    openai_code = "ttft_deadline_unmeetable"


class Shed(Unavailable):
    """Admission control: a batch request while every worker's queue is filled to the share kept for batch
    work (`batch_queue_share`), so that interactive requests still find room."""

    openai_code = "shed_under_load"


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
        UnsupportedValue,
        AuthenticationFailed,
        KeyRevoked,
        KeyExpired,
        PermissionDenied,
        PriorityDenied,
        ModelNotFound,
        NotFound,
        PreviousResponseNotFound,
        Conflict,
        RequestTooLarge,
        BodyTooLarge,
        Overloaded,
        RateLimited,
        TokensRateLimited,
        ConcurrencyLimited,
        Unavailable,
        DeadlineUnmeetable,
        Shed,
        DeadlineExceeded,
        Stalled,
        Cancelled,
        InternalError,
    )
}
