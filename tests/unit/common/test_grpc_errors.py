"""The BailuError <-> gRPC status mapping used on both sides of the hop."""

from __future__ import annotations

import grpc
import pytest

from bailu.common.errors import (
    ERROR_CLASSES,
    BailuError,
    Cancelled,
    DeadlineExceeded,
    InternalError,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    Unavailable,
)
from bailu.common.grpc_errors import ERROR_KEY, MAX_DETAILS_BYTES, MAX_PARAM_BYTES, PARAM_KEY, from_status, to_status


@pytest.mark.parametrize("cls", list(ERROR_CLASSES.values()), ids=list(ERROR_CLASSES))
def test_round_trip_preserves_class_message_and_param(cls: type[BailuError]) -> None:
    code, details, metadata = to_status(cls("something went wrong", param="messages[0].role"))
    assert code is cls.grpc_code
    back = from_status(code, details, metadata)
    assert type(back) is cls
    assert back.message == "something went wrong"
    assert back.param == "messages[0].role"


@pytest.mark.parametrize("cls", list(ERROR_CLASSES.values()), ids=list(ERROR_CLASSES))
def test_round_trip_without_param(cls: type[BailuError]) -> None:
    code, details, metadata = to_status(cls("no param"))
    assert [key for key, _ in metadata] == [ERROR_KEY]
    back = from_status(code, details, metadata)
    assert type(back) is cls
    assert back.param is None


def test_metadata_values_may_be_bytes() -> None:
    metadata = ((ERROR_KEY, b"ModelNotFound"), (PARAM_KEY, b"model"))
    back = from_status(grpc.StatusCode.NOT_FOUND, "no such model", metadata)
    assert type(back) is ModelNotFound
    assert back.param == "model"


def test_metadata_wins_over_the_code() -> None:
    # RequestTooLarge and InvalidRequest share INVALID_ARGUMENT: only the metadata tells them apart.
    back = from_status(grpc.StatusCode.INVALID_ARGUMENT, "too long", ((ERROR_KEY, "RequestTooLarge"),))
    assert type(back).__name__ == "RequestTooLarge"


def test_class_survives_grpc_aio_metadata() -> None:
    metadata = grpc.aio.Metadata((ERROR_KEY, "Overloaded"), (PARAM_KEY, "x"))
    back = from_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", metadata)
    assert type(back) is Overloaded
    assert back.param == "x"


@pytest.mark.parametrize("cls", [InvalidRequest, ModelNotFound, Overloaded, DeadlineExceeded])
def test_bare_status_maps_by_code(cls: type[BailuError]) -> None:
    """Without the metadata entry, the class's own gRPC code brings it back (for a shared code, the
    general class: InvalidRequest rather than RequestTooLarge, ModelNotFound rather than NotFound)."""
    back = from_status(cls.grpc_code, "details from the worker", None)
    assert type(back) is cls
    assert back.message == "details from the worker"
    assert back.param is None


@pytest.mark.parametrize("metadata", [None, (), (("other", "x"),), ((ERROR_KEY, "NoSuchClass"),)])
def test_unknown_or_missing_error_key_falls_back_to_the_code(metadata: tuple[tuple[str, str], ...] | None) -> None:
    assert type(from_status(grpc.StatusCode.NOT_FOUND, "gone", metadata)) is ModelNotFound


TRANSPORT_TEXT = "failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.7:50051: Connection refused"


def test_bare_unavailable_hides_the_transport_text() -> None:
    back = from_status(grpc.StatusCode.UNAVAILABLE, TRANSPORT_TEXT, None)
    assert type(back) is Unavailable
    assert back.retryable
    assert "10.0.0.7" not in back.message
    assert "connect" not in back.message


def test_bare_cancelled_is_a_retryable_transport_failure() -> None:
    """A bare CANCELLED comes from the worker's side (shutting down): the caller did not go away."""
    back = from_status(grpc.StatusCode.CANCELLED, "Cancelled on the server side", None)
    assert type(back) is Unavailable
    assert back.retryable
    # A worker that reports a cancelled caller says so in the metadata.
    assert type(from_status(grpc.StatusCode.CANCELLED, "gone", ((ERROR_KEY, "Cancelled"),))) is Cancelled


@pytest.mark.parametrize("code", [grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS, None])
def test_bare_unknown_status_is_a_generic_internal_error(code: grpc.StatusCode | None) -> None:
    back = from_status(code, TRANSPORT_TEXT, None)
    assert type(back) is InternalError
    assert "10.0.0.7" not in back.message
    assert back.param is None


def test_unavailable_reported_by_the_worker_keeps_its_message() -> None:
    code, details, metadata = to_status(Unavailable("the worker is draining"))
    assert from_status(code, details, metadata).message == "the worker is draining"


def test_empty_details_fall_back_to_a_description() -> None:
    back = from_status(grpc.StatusCode.INVALID_ARGUMENT, "", ((ERROR_KEY, "InvalidRequest"),))
    assert type(back) is InvalidRequest
    assert back.message


@pytest.mark.parametrize("text", ["m" * 20_000, "模型" * 5_000, "a" + "😀" * 3_000])
def test_huge_details_and_params_are_cut_to_fit_the_trailers(text: str) -> None:
    """grpc refuses trailers over 8 KiB (a bare RESOURCE_EXHAUSTED in place of the error): a message echoing a
    huge input is cut, on a character boundary, and says so."""
    code, details, metadata = to_status(ModelNotFound(f"model '{text}' is not served", param=text))
    assert code is grpc.StatusCode.NOT_FOUND
    assert len(details.encode()) <= MAX_DETAILS_BYTES
    assert details.startswith("model '")
    assert details.endswith("…")
    param = dict(metadata)[PARAM_KEY]
    assert len(param.encode()) <= MAX_PARAM_BYTES
    assert text.startswith(param.removesuffix("…"))
