"""The one mapping from errors to OpenAI-style HTTP error bodies."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from bailu.common.errors import BailuError, InternalError, InvalidRequest, NotFound, UnsupportedValue
from bailu.gateway.field_policy import NOT_SUPPORTED
from bailu.gateway.strict_body import INVALID_UNICODE

log = logging.getLogger(__name__)


def _printable(text: str | None) -> str | None:
    """`text` as UTF-8 can encode it: a lone surrogate that reached a message (text echoed from a client)
    is written as its escape (`\\ud800`), so that no error body ever fails to encode."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8") if text is not None else None


def error_body(error: BailuError) -> dict[str, Any]:
    """The OpenAI error body of `error` (the `ErrorResponse` of the API schema)."""
    return {
        "error": {
            "message": _printable(error.message),
            "type": error.openai_type,
            "param": _printable(error.param),
            "code": error.openai_code,
        }
    }


def error_response(error: BailuError, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = {**error.headers, **(headers or {})}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
    return JSONResponse(error_body(error), status_code=error.http_status, headers=headers)


def _is_branch_marker(part: Any) -> bool:
    """pydantic's union-branch markers in an error's `loc` (`str`, `list[str]`, ...)."""
    return isinstance(part, str) and (part.startswith(("function-", "list[")) or part in ("str", "int"))


def _loc_to_param(loc: tuple[Any, ...]) -> str | None:
    param = ""
    for part in loc:
        if part in ("body", "header", "query") and not param:  # FastAPI's location, not a field
            continue
        if isinstance(part, int):
            param += f"[{part}]"
        elif _is_branch_marker(part):
            continue
        else:
            param += f".{part}" if param else str(part)
    return param or None


def _most_specific(errors: list[Any]) -> Any:
    """The error to report. For a union field (`str | list[str]`) pydantic reports every branch, the `str`
    branch first; a branch whose type matched but whose value did not (a list too long, a bad part) says
    more than "Input should be a valid string"."""
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    branch = next((i for i, part in enumerate(loc) if _is_branch_marker(part)), None)
    if branch is None:
        return first
    for error in errors:
        other = tuple(error.get("loc", ()))
        if other[:branch] != loc[:branch] or len(other) <= branch or not _is_branch_marker(other[branch]):
            continue
        type_mismatch = len(other) == branch + 1 and str(error.get("type", "")).endswith("_type")
        if not type_mismatch:
            return error
    return first


def from_validation_error(errors: list[Any]) -> InvalidRequest:
    """The first validation problem as a 400 naming the offending field."""
    first = _most_specific(errors) if errors else {}
    kind = first.get("type", "")
    param = _loc_to_param(tuple(first.get("loc", ())))
    if kind == "json_invalid":
        return InvalidRequest("the request body is not valid JSON")
    if kind == "string_unicode":
        # pydantic's own check, before any field's: a field name; `loc` is the object that has it.
        where = param or "the request body"
        return InvalidRequest(f"a field name in {where} is not valid Unicode text", param=param)
    if param is None:
        # The body as a whole: absent, `null`, or not an object.
        if kind == "missing":
            return InvalidRequest("the request body is missing: send a JSON object")
        return InvalidRequest("the request body must be a JSON object")
    if kind == "extra_forbidden":
        return InvalidRequest(f"unrecognized request argument supplied: {param}", param=param)
    if kind == "missing":
        return InvalidRequest(f"missing required parameter: {param}", param=param)
    if kind == NOT_SUPPORTED:
        return UnsupportedValue(f"unsupported value for {param}: {first.get('msg', 'not supported')}", param=param)
    if kind == INVALID_UNICODE:
        return InvalidRequest(f"{param} is {first.get('msg', 'not valid Unicode text')}", param=param)
    return InvalidRequest(f"invalid value for {param}: {first.get('msg', 'invalid')}", param=param)


def install(app: Any) -> None:
    """Register the exception handlers: every error leaves as an OpenAI error body."""

    @app.exception_handler(BailuError)
    async def _bailu(request: Request, exc: BailuError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(from_validation_error(list(exc.errors())))

    @app.exception_handler(ValidationError)
    async def _validation(request: Request, exc: ValidationError) -> JSONResponse:
        return error_response(from_validation_error(list(exc.errors())))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(NotFound(f"unknown URL: {request.method} {request.url.path}"))
        if exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        # Starlette's own headers kept: a 405 lists the allowed methods in `Allow`.
        response = error_response(InvalidRequest(message), headers=dict(exc.headers or {}))
        response.status_code = exc.status_code
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(InternalError("the server had an error processing your request"))
