"""The gateway's OpenAPI document (`/openapi.json`): FastAPI's, shaped to say what the API really answers.

Routes declare their own answers (`completion_responses`, `error_responses`: the error body, the
`text/event-stream` of a streamed completion); `shape` then adds what the middleware answers for every
route alike, derived from the routes rather than restated on each:

- `/v1/` routes require an API key: the HTTP Bearer security scheme, and a 401;
- routes with a body: a 400 (validation errors are 400s, as OpenAI answers) and a 413 (the body limit);
- FastAPI's 422 and its validation-error schemas are dropped: the gateway never answers 422;
- the component schemas are pydantic's own, regenerated from the routes' models: FastAPI's document model
  turns every bound into a float, and `seed`'s int64 bound 2**63 - 1 does not survive that.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.routing import BaseRoute

from bailu.common.errors import ERROR_CLASSES
from bailu.gateway.middleware import AUTHENTICATED_PREFIX
from bailu.gateway.responses import STREAM_EVENTS, ErrorResponse
from bailu.gateway.responses_api_models import RESPONSES_STREAM_EVENTS

BEARER_SCHEME = "bearerAuth"
_BODY_METHODS = frozenset({"post", "put", "patch"})
_COMPONENT = "#/components/schemas/{model}"

# The statuses whose errors say when to retry (`Retry-After`), derived from the error classes.
RETRY_AFTER_STATUSES = frozenset(c.http_status for c in ERROR_CLASSES.values() if c.default_retry_after_s is not None)

ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Invalid request: malformed JSON, a wrong type, an out-of-range or unknown parameter, text that is not "
    "valid Unicode; `error.param` names the field",
    401: "Missing or unknown API key (`Authorization: Bearer <key>`), or one revoked (`code: api_key_revoked`) or "
    "expired (`code: api_key_expired`)",
    503: "The API key store (Redis) does not answer and this replica has not seen the key before; retry after "
    "`Retry-After`",
    413: "The body is larger than `BAILU_GATEWAY_MAX_BODY_BYTES` (`code: request_too_large`)",
}

# What each route can answer besides 200 and the errors `shape` adds to every route of its kind.
COMPLETION_ERRORS: dict[int, str] = {
    400: ERROR_DESCRIPTIONS[400] + "; or a `response_format` or `tool_choice` the model's engine cannot serve "
    "(`code: unsupported_value`)",
    404: "Unknown model (`code: model_not_found`), or a registry version (`name@version`) no worker serves",
    413: "The body is larger than `BAILU_GATEWAY_MAX_BODY_BYTES` (`code: request_too_large`), or the prompt longer "
    "than `BAILU_GATEWAY_MAX_PROMPT_CHARS` or the model's context (`code: context_length_exceeded`)",
    403: "The API key lacks the `generate` scope (`code: missing_scope`)",
    429: "The API key is over a quota (`code: rate_limit_exceeded`, `type: requests` or `tokens`; or "
    "`concurrency_limit_exceeded`), or every worker's queue is full (`code: server_overloaded`); retry after "
    "`Retry-After`",
    503: "No worker is ready, or none has loaded the requested version yet; or the API key store does not answer; "
    "retry after `Retry-After`",
    504: "The request's deadline (`BAILU_GATEWAY_REQUEST_TIMEOUT_S`) passed (`code: deadline_exceeded`), or its "
    "worker stopped sending (`code: upstream_stalled`)",
}
RESPONSES_ERRORS: dict[int, str] = {
    **COMPLETION_ERRORS,
    404: COMPLETION_ERRORS[404] + "; or a `previous_response_id` that is unknown, expired, not stored (`store: "
    "false`) or another API key's (`code: previous_response_not_found`)",
    503: COMPLETION_ERRORS[503] + "; or the stored responses (Redis) cannot be read",
}
RESPONSE_RETRIEVE_ERRORS: dict[int, str] = {
    403: "The API key lacks the `generate` scope (`code: missing_scope`)",
    404: "Unknown or expired response id, one not stored (`store: false`), or another API key's",
    503: "The stored responses (Redis) cannot be read, or the API key store does not answer; retry after `Retry-After`",
}
MODEL_ERRORS: dict[int, str] = {404: "No model of that id is listed by `GET /v1/models` (`code: model_not_found`)"}
FEEDBACK_ERRORS: dict[int, str] = {
    400: ERROR_DESCRIPTIONS[400] + "; or fields that do not fit the feedback's `type`",
    403: "The API key lacks the `feedback` scope (`code: missing_scope`)",
    404: "Unknown or expired response id, or one that belongs to another API key",
    409: "The idempotency key (`Idempotency-Key`, else `feedback_id`) was used before with a different body",
    503: "Feedback storage (Redis) is unavailable or not configured, or the API key store does not answer; retry "
    "after `Retry-After`",
}
FEEDBACK_BATCH_ERRORS: dict[int, str] = {
    400: "The body is not a batch: not JSON, not an object, no `events`, or none or more than "
    "`BAILU_GATEWAY_FEEDBACK_BATCH_MAX_EVENTS` of them (an invalid event is refused in its own result)",
    403: FEEDBACK_ERRORS[403],
    503: FEEDBACK_ERRORS[503] + " (a retry with the same `feedback_id`s records nothing twice)",
}


def error_responses(statuses: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """A route's `responses=` for these error statuses, each with its description and the error body."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status, description in statuses.items():
        entry: dict[str, Any] = {"model": ErrorResponse, "description": description}
        if status in RETRY_AFTER_STATUSES:
            entry["headers"] = _retry_after()
        responses[status] = entry
    return responses


def completion_responses(
    body: type[BaseModel], chunk: type[BaseModel], errors: Mapping[int, str]
) -> dict[int | str, dict[str, Any]]:
    """A completion route's `responses=`: `body` as JSON, or with `stream: true` server-sent events of `chunk`.

    As OpenAPI 3.1 documents a stream, the `text/event-stream` schema describes one event: its `data` is a
    `chunk` (or, for a stream failing after its first token, one `ErrorResponse`) as JSON, then `[DONE]`."""
    payload = {"anyOf": [{"$ref": _COMPONENT.format(model=m.__name__)} for m in (chunk, ErrorResponse)]}
    event = {
        "type": "object",
        "description": f"One server-sent event: `data:` a `{chunk.__name__}`; the last one `data: [DONE]`",
        "required": ["data"],
        "properties": {
            "data": {
                "anyOf": [
                    {"const": "[DONE]"},
                    {"type": "string", "contentMediaType": "application/json", "contentSchema": payload},
                ]
            }
        },
    }
    ok = {
        "model": body,
        "description": "The completion (JSON), or with `stream: true` its server-sent events",
        "content": {"text/event-stream": {"schema": event}},
    }
    return {200: ok, **error_responses(errors)}


def responses_api_responses(
    body: type[BaseModel], events: Iterable[type[BaseModel]], errors: Mapping[int, str]
) -> dict[int | str, dict[str, Any]]:
    """The Responses API route's `responses=`: `body` as JSON, or with `stream: true` server-sent events, each
    named by its `event:` line (the `type` of its `data`), with no `[DONE]`."""
    payload = {"anyOf": [{"$ref": _COMPONENT.format(model=m.__name__)} for m in events]}
    event = {
        "type": "object",
        "description": "One server-sent event: `event:` its type, `data:` the event as JSON",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string"},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": payload},
        },
    }
    ok = {
        "model": body,
        "description": "The response (JSON), or with `stream: true` its server-sent events",
        "content": {"text/event-stream": {"schema": event}},
    }
    return {200: ok, **error_responses(errors)}


def _retry_after() -> dict[str, Any]:
    return {
        "Retry-After": {
            "description": "Seconds to wait before retrying",
            "required": True,
            "schema": {"type": "integer", "minimum": 1},
        }
    }


def _error_entry(status: int) -> dict[str, Any]:
    """An error response as it appears in the document (what `error_responses` makes FastAPI write)."""
    entry: dict[str, Any] = {
        "description": ERROR_DESCRIPTIONS[status],
        "content": {"application/json": {"schema": {"$ref": _COMPONENT.format(model=ErrorResponse.__name__)}}},
    }
    if status in RETRY_AFTER_STATUSES:
        entry["headers"] = _retry_after()
    return entry


def _by_status(responses: dict[str, Any]) -> dict[str, Any]:
    return dict(sorted(responses.items(), key=lambda item: item[0]))


def route_models(routes: Iterable[BaseRoute]) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    """The models the routes' bodies and responses are documented with, each with its schema mode."""
    models: dict[type[BaseModel], JsonSchemaMode] = {}
    for route in routes:
        if not isinstance(route, APIRoute):
            continue
        body = route.body_field.field_info.annotation if route.body_field is not None else None
        if isinstance(body, type) and issubclass(body, BaseModel):
            models[body] = "validation"
        for model in (route.response_model, *(r.get("model") for r in route.responses.values())):
            if isinstance(model, type) and issubclass(model, BaseModel):
                models.setdefault(model, "serialization")
    return list(models.items())


def shape(document: dict[str, Any], models: Iterable[tuple[type[BaseModel], JsonSchemaMode]] = ()) -> dict[str, Any]:
    """FastAPI's generated document made to match the gateway (see the module docstring); returns it.
    `models` are the routes' (`route_models`), whose exact schemas replace FastAPI's."""
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            if method in _BODY_METHODS:
                responses.setdefault("400", _error_entry(400))
                responses.setdefault("413", _error_entry(413))
            if path.startswith(AUTHENTICATED_PREFIX):
                operation["security"] = [{BEARER_SCHEME: []}]
                responses.setdefault("401", _error_entry(401))
                responses.setdefault("503", _error_entry(503))
            operation["responses"] = _by_status(responses)
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    events = [(model, "serialization") for model in (*STREAM_EVENTS, *RESPONSES_STREAM_EVENTS, ErrorResponse)]
    _, exact = models_json_schema([*models, *events], ref_template=_COMPONENT)  # type: ignore[list-item]
    schemas.update(exact.get("$defs", {}))
    components["securitySchemes"] = {
        BEARER_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (`bailu keys create`; a static one: `python -m bailu.gateway.auth new`)",
        }
    }
    return document


def install(app: FastAPI) -> None:
    """Serve the shaped document at `/openapi.json` (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                openapi_version=app.openapi_version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = shape(document, route_models(app.routes))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
