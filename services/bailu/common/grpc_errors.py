"""The one mapping between `BailuError` and gRPC statuses, used on both sides of the hop.

The error class travels in the trailing metadata entry `bailu-error` (with
`bailu-error-param` for the offending field), so that the gateway rebuilds
the same class the worker raised; a status without it (a dead worker, a
proxy) is mapped from its code alone.

The whole status must fit in grpc's trailing-metadata limit (8 KiB by default, on the receiving side), or the
caller gets a bare RESOURCE_EXHAUSTED ("metadata size exceeds soft limit") in place of the error: a message
that echoes a huge input (an unknown model name) is cut to `MAX_DETAILS_BYTES`, a param to `MAX_PARAM_BYTES`.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from bailu.common.errors import (
    ERROR_CLASSES,
    BailuError,
    DeadlineExceeded,
    InternalError,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    Unavailable,
)

ERROR_KEY = "bailu-error"
PARAM_KEY = "bailu-error-param"
# UTF-8 bytes; grpc percent-encodes the details (up to 3 bytes each), which stays well under 8 KiB.
MAX_DETAILS_BYTES = 1024
MAX_PARAM_BYTES = 256

_BY_CODE: dict[grpc.StatusCode, type[BailuError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.NOT_FOUND: ModelNotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    # A bare CANCELLED comes from the peer's side (a worker shutting down cancels its calls): the caller did
    # not go away, so it is a transport failure, retried elsewhere. A worker reports a cancelled caller as
    # `Cancelled` in the metadata.
    grpc.StatusCode.CANCELLED: Unavailable,
}


def to_status(error: BailuError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """The gRPC code, details and trailing metadata that report `error`."""
    metadata: list[tuple[str, str]] = [(ERROR_KEY, error.name)]
    if error.param:
        metadata.append((PARAM_KEY, _bounded(error.param, MAX_PARAM_BYTES)))
    return error.grpc_code, _bounded(error.message, MAX_DETAILS_BYTES), tuple(metadata)


def _bounded(text: str, limit: int) -> str:
    """`text`, cut to at most `limit` UTF-8 bytes (on a character boundary, ending with "…") when longer."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - len("…".encode())].decode(errors="ignore") + "…"


def from_status(
    code: grpc.StatusCode | None, details: str | None, metadata: Sequence[tuple[str, str | bytes]] | None
) -> BailuError:
    """Rebuild the error a worker reported (or infer one from a bare status)."""
    entries = {k: v if isinstance(v, str) else v.decode() for k, v in (metadata or ())}
    cls = ERROR_CLASSES.get(entries.get(ERROR_KEY, ""))
    if cls is None:
        cls = _BY_CODE.get(code or grpc.StatusCode.UNKNOWN, InternalError)
        if cls is InternalError or cls is Unavailable:
            # Transport failures: the text is grpc-internal, not for clients.
            return cls("the inference worker failed" if cls is InternalError else "inference worker unavailable")
    return cls(details or cls.__doc__ or cls.__name__, param=entries.get(PARAM_KEY))
