"""The gateway's OpenAPI document says what the gateway answers: statuses, bodies, streams, auth; never 422."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from bailu.common.errors import ERROR_CLASSES
from bailu.common.types import INT64_MAX, INT64_MIN, FinishReason, Usage
from bailu.gateway.app import create_app
from bailu.gateway.auth import KeyStore
from bailu.gateway.errors import error_body
from bailu.gateway.openai_format import Candidate, ResponseBuilder
from bailu.gateway.openapi import BEARER_SCHEME
from bailu.gateway.settings import GatewaySettings

JSON = "application/json"
SSE = "text/event-stream"


def openapi_document() -> dict[str, Any]:
    """The document the gateway serves at `/openapi.json` (no worker, Redis or server needed to build it)."""
    app = create_app(GatewaySettings(workers=[]), keys=KeyStore([]))
    return app.openapi()


def schema_validator(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """A validator for `schema`, a schema of `document` (e.g. `{"$ref": "#/components/schemas/ChatCompletion"}`):
    the document is its root, so that its `#/components/...` references resolve."""
    return jsonschema.Draft202012Validator({**document, **schema})


def component(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi_document()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


def test_no_422_anywhere(document: dict[str, Any]) -> None:
    text = json.dumps(document)
    assert '"422"' not in text
    assert "HTTPValidationError" not in text
    for _, _, operation in operations(document):
        assert "422" not in operation["responses"]


EXPECTED_STATUSES = {
    ("/v1/chat/completions", "post"): {"200", "400", "401", "403", "404", "413", "429", "503", "504"},
    ("/v1/completions", "post"): {"200", "400", "401", "403", "404", "413", "429", "503", "504"},
    ("/v1/responses", "post"): {"200", "400", "401", "403", "404", "413", "429", "503", "504"},
    ("/v1/responses/{response_id}", "get"): {"200", "401", "403", "404", "503"},
    ("/v1/feedback", "post"): {"202", "400", "401", "403", "404", "409", "413", "503"},
    # Per-event statuses (202, 400, 404, 409) are in the body's results.
    ("/v1/feedback/batch", "post"): {"200", "400", "401", "403", "413", "503"},
    # 503: the API key store does not answer.
    ("/v1/models", "get"): {"200", "401", "503"},
    ("/v1/models/{model_id}", "get"): {"200", "401", "404", "503"},
    ("/healthz", "get"): {"200"},
    ("/readyz", "get"): {"200", "503"},
    ("/metrics", "get"): {"200"},
}


def test_every_route_documents_the_statuses_it_answers(document: dict[str, Any]) -> None:
    found = {(path, method): set(op["responses"]) for path, method, op in operations(document)}
    assert found == EXPECTED_STATUSES


def test_errors_use_the_error_body_and_retryable_ones_say_when(document: dict[str, Any]) -> None:
    for _, _, operation in operations(document):
        for status, response in operation["responses"].items():
            if not status.startswith(("4", "5")) or "text/plain" in response.get("content", {}):
                continue
            assert response["content"][JSON]["schema"] == component("ErrorResponse")
            assert ("Retry-After" in response.get("headers", {})) == (status in ("429", "503")), status


def test_v1_routes_require_a_bearer_key(document: dict[str, Any]) -> None:
    assert document["components"]["securitySchemes"][BEARER_SCHEME] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"][BEARER_SCHEME]["description"],
    }
    for path, _, operation in operations(document):
        expected = [{BEARER_SCHEME: []}] if path.startswith("/v1/") else None
        assert operation.get("security") == expected, path


@pytest.mark.parametrize(("path", "body", "chunk"), [
    ("/v1/chat/completions", "ChatCompletion", "ChatCompletionChunk"),
    ("/v1/completions", "TextCompletion", "TextCompletionChunk"),
])  # fmt: skip
def test_completions_are_json_or_server_sent_events(document: dict[str, Any], path: str, body: str, chunk: str) -> None:
    content = document["paths"][path]["post"]["responses"]["200"]["content"]
    assert content[JSON]["schema"] == component(body)
    event = content[SSE]["schema"]
    assert event["required"] == ["data"]
    done, payload = event["properties"]["data"]["anyOf"]
    assert done == {"const": "[DONE]"}
    assert payload["contentMediaType"] == JSON
    assert payload["contentSchema"]["anyOf"] == [component(chunk), component("ErrorResponse")]


def refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref":
                yield item
            else:
                yield from refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from refs(item)


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for ref in refs(document):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


def test_integer_bounds_are_exact(document: dict[str, Any]) -> None:
    # FastAPI's document model would make them floats, and 2**63 - 1 does not survive that.
    seed = document["components"]["schemas"]["ChatCompletionRequest"]["properties"]["seed"]["anyOf"][0]
    assert (seed["minimum"], seed["maximum"]) == (INT64_MIN, INT64_MAX)
    assert isinstance(seed["maximum"], int)


def test_request_examples_are_valid_requests(document: dict[str, Any]) -> None:
    for name in ("ChatCompletionRequest", "CompletionRequest", "ResponseCreateRequest"):
        examples = document["components"]["schemas"][name]["examples"]
        assert examples
        for example in examples:
            schema_validator(document, component(name)).validate(example)


@pytest.mark.parametrize("cls", list(ERROR_CLASSES.values()), ids=list(ERROR_CLASSES))
def test_every_error_body_matches_the_schema(document: dict[str, Any], cls: type) -> None:
    schema_validator(document, component("ErrorResponse")).validate(error_body(cls("no", param="model")))
    schema_validator(document, component("ErrorResponse")).validate(error_body(cls("no")))


def finished(index: int, text: str, usage: Usage | None) -> Candidate:
    candidate = Candidate(index, [text], FinishReason.LENGTH, usage)
    return candidate


@pytest.mark.parametrize(("kind", "body", "chunk"), [
    ("chat", "ChatCompletion", "ChatCompletionChunk"),
    ("text", "TextCompletion", "TextCompletionChunk"),
])  # fmt: skip
def test_what_the_response_builder_makes_matches_the_schema(
    document: dict[str, Any], kind: str, body: str, chunk: str
) -> None:
    builder = ResponseBuilder(kind, "m@v0001", "id-1")
    candidates = [finished(0, "white dew", Usage(3, 2)), finished(1, "", Usage(3, 1))]
    schema_validator(document, component(body)).validate(builder.full(candidates))
    schema_validator(document, component(body)).validate(builder.full([Candidate(0)]))
    chunks = [
        builder.chunk("", None, index=0, first=True),
        json.loads(builder.text_event("dew", 1).removeprefix(b"data: ")),
        builder.chunk("", FinishReason.STOP, index=1),
        builder.usage_chunk(Usage(3, 3)),
    ]
    for event in chunks:
        schema_validator(document, component(chunk)).validate(event)
