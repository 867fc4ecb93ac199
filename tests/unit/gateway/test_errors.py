"""OpenAI-style error bodies and the mapping of validation errors to 400s."""

from __future__ import annotations

import json

import pytest

from bailu.common.errors import (
    ERROR_CLASSES,
    BailuError,
    BodyTooLarge,
    DeadlineExceeded,
    InvalidRequest,
    Overloaded,
    RequestTooLarge,
)
from bailu.gateway.errors import error_body, error_response, from_validation_error


@pytest.mark.parametrize("cls", list(ERROR_CLASSES.values()), ids=list(ERROR_CLASSES))
def test_error_response_status_and_body(cls: type[BailuError]) -> None:
    response = error_response(cls("it broke", param="model"))
    assert response.status_code == cls.http_status
    assert json.loads(bytes(response.body)) == {
        "error": {"message": "it broke", "type": cls.openai_type, "param": "model", "code": cls.openai_code}
    }


@pytest.mark.parametrize(("retry_after_s", "header"), [(2.0, "2"), (0.2, "1"), (1.5, "2")])
def test_retry_after_is_whole_seconds_at_least_one(retry_after_s: float, header: str) -> None:
    assert error_response(Overloaded("busy", retry_after_s=retry_after_s)).headers["retry-after"] == header


@pytest.mark.parametrize("cls", [InvalidRequest, DeadlineExceeded])
def test_no_retry_after_header_for_errors_that_are_not_retried(cls: type[BailuError]) -> None:
    assert "retry-after" not in error_response(cls("no")).headers


def test_error_body_of_invalid_request() -> None:
    assert error_body(InvalidRequest("bad", param="n"))["error"]["type"] == "invalid_request_error"


def test_body_prefix_is_dropped_from_the_param() -> None:
    # FastAPI's RequestValidationError locations start with "body".
    error = from_validation_error([{"type": "missing", "loc": ("body", "messages"), "msg": "Field required"}])
    assert error.param == "messages"
    assert error.message == "missing required parameter: messages"


def test_invalid_json() -> None:
    error = from_validation_error([{"type": "json_invalid", "loc": ("body", 12), "msg": "JSON decode error"}])
    assert error.param is None
    assert "not valid JSON" in error.message


@pytest.mark.parametrize("kind", ["model_attributes_type", "dict_type"])
def test_body_that_is_not_an_object(kind: str) -> None:
    error = from_validation_error([{"type": kind, "loc": ("body",), "msg": "Input should be an object"}])
    assert error.param is None
    assert "JSON object" in error.message


def test_no_errors_still_gives_a_400() -> None:
    error = from_validation_error([])
    assert isinstance(error, InvalidRequest)
    assert error.http_status == 400


def test_body_too_large_has_its_own_code_and_prompt_too_long_keeps_context_length() -> None:
    assert BodyTooLarge.http_status == RequestTooLarge.http_status == 413
    assert BodyTooLarge.openai_code == "request_too_large"
    assert RequestTooLarge.openai_code == "context_length_exceeded"
    assert ERROR_CLASSES["BodyTooLarge"] is BodyTooLarge


def test_error_body_never_fails_to_encode() -> None:
    # A lone surrogate echoed from the client is escaped, so that the body is valid UTF-8 JSON.
    response = error_response(InvalidRequest("unknown x\ud800", param="x\ud800"))
    body = json.loads(bytes(response.body).decode("utf-8"))
    assert body["error"] == {
        "message": "unknown x\\ud800",
        "type": "invalid_request_error",
        "param": "x\\ud800",
        "code": None,
    }


def test_extra_headers_are_kept() -> None:
    assert error_response(InvalidRequest("no"), headers={"Allow": "POST"}).headers["allow"] == "POST"


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "the request body is missing: send a JSON object"),
        ("model_attributes_type", "the request body must be a JSON object"),
        ("string_unicode", "a field name in the request body is not valid Unicode text"),
    ],
)
def test_errors_about_the_whole_body_never_print_none(kind: str, message: str) -> None:
    error = from_validation_error([{"type": kind, "loc": ("body",), "msg": "whatever"}])
    assert error.param is None
    assert error.message == message


def test_header_location_is_dropped_from_the_param() -> None:
    loc = ("header", "Idempotency-Key")
    error = from_validation_error([{"type": "string_too_long", "loc": loc, "msg": "String should have at most 128"}])
    assert error.param == "Idempotency-Key"
