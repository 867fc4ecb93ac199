"""`response_format` on /v1/chat/completions: what each format turns into, and the 400s of a bad one."""

from __future__ import annotations

import json
from typing import Any, Literal

import pydantic
import pytest
from openai.lib._pydantic import to_strict_json_schema

from bailu.common.errors import InvalidRequest, UnsupportedValue
from bailu.common.types import MAX_JSON_SCHEMA_CHARS, MAX_JSON_SCHEMA_DEPTH, EngineCapabilities, LoadReport, ModelCard
from bailu.gateway.errors import from_validation_error
from bailu.gateway.schemas import ChatCompletionRequest, CompletionRequest
from bailu.gateway.workers import WorkerPool
from tests.unit.gateway.conftest import put_worker

SCHEMA_PARAM = "response_format.json_schema.schema"
NAME, EXTRA = "response_format.json_schema.name", "response_format.json_schema.mode"
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def chat(response_format: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], "response_format": response_format}


def schema_format(schema: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, **extra}}


def rejection(body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(pydantic.ValidationError) as info:
        ChatCompletionRequest.model_validate(body)
    return from_validation_error(info.value.errors())


def test_json_schema_goes_to_the_worker_as_compact_text_in_the_clients_key_order() -> None:
    # Keys out of alphabetical order: the constrained output follows the schema's order, so it must survive.
    schema = {"type": "object", "properties": {"zeta": {"type": "string"}, "alpha": {"type": "integer"}}}
    sampling = ChatCompletionRequest.model_validate(chat(schema_format(schema, strict=True))).sampling(None)
    compact = '{"type":"object","properties":{"zeta":{"type":"string"},"alpha":{"type":"integer"}}}'
    assert sampling.json_schema == compact
    assert json.loads(sampling.json_schema) == schema
    assert not sampling.json_object
    assert sampling.response_format == "json_schema"


def test_json_object_and_text() -> None:
    as_object = ChatCompletionRequest.model_validate(chat({"type": "json_object"})).sampling(None)
    assert (as_object.json_object, as_object.json_schema, as_object.response_format) == (True, "", "json_object")
    for free in ({"type": "text"}, None):
        sampling = ChatCompletionRequest.model_validate(chat(free)).sampling(None)
        assert (sampling.json_object, sampling.json_schema, sampling.response_format) == (False, "", "text")


def test_the_schema_the_openai_client_sends_for_a_pydantic_model_is_accepted() -> None:
    """What `client.chat.completions.parse(response_format=Model)` sends: $defs, $ref, anyOf with null, enums."""

    class Step(pydantic.BaseModel):
        explanation: str
        output: str

    class Solution(pydantic.BaseModel):
        steps: list[Step]
        answer: str
        confidence: Literal["low", "high"]
        note: str | None

    schema = to_strict_json_schema(Solution)
    assert "$defs" in schema
    body = chat(schema_format(schema, strict=True, description="a worked solution"))
    assert json.loads(ChatCompletionRequest.model_validate(body).sampling(None).json_schema) == schema


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "objekt"}, "not a valid JSON Schema"),
        ({"type": "object", "properties": {"a": {"minLength": -1}}}, "at properties/a/minLength"),
        ({"type": "string", "pattern": "("}, "is not a 'regex'"),
        ({"$schema": 7}, "$schema must be a metaschema's URI"),
        ({"type": "string", "enum": ["\ud800"]}, "not valid Unicode"),
        ({"description": "x" * MAX_JSON_SCHEMA_CHARS}, f"at most {MAX_JSON_SCHEMA_CHARS} are accepted"),
    ],
)
def test_a_schema_that_is_not_a_valid_json_schema_or_too_large_is_a_400_naming_it(schema: Any, words: str) -> None:
    error = rejection(chat(schema_format(schema)))
    assert error.param == SCHEMA_PARAM
    assert error.http_status == 400
    assert words in error.message


def test_a_schema_nested_too_deep_is_a_400_before_any_recursion() -> None:
    schema: dict[str, Any] = {"type": "array"}
    for _ in range(MAX_JSON_SCHEMA_DEPTH * 4):  # deep enough to exhaust a recursive checker
        schema = {"type": "array", "items": schema}
    error = rejection(chat(schema_format(schema)))
    assert error.param == SCHEMA_PARAM
    assert f"at most {MAX_JSON_SCHEMA_DEPTH} are accepted" in error.message


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        ({"type": "json_schema"}, "response_format"),
        ({"type": "json_object", "json_schema": {"name": "x", "schema": {}}}, "response_format"),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, SCHEMA_PARAM),
        ({"type": "json_schema", "json_schema": {"name": "no spaces", "schema": {}}}, NAME),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": []}}, SCHEMA_PARAM),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "mode": 1}}, EXTRA),
        ({"type": "xml"}, "response_format.type"),
    ],
)
def test_malformed_response_formats_name_the_field(response_format: dict[str, Any], param: str) -> None:
    assert rejection(chat(response_format)).param == param


def test_completions_take_no_response_format_as_openai() -> None:
    body = {"model": "m", "prompt": "dew", "response_format": {"type": "json_object"}}
    with pytest.raises(pydantic.ValidationError) as info:
        CompletionRequest.model_validate(body)
    error = from_validation_error(info.value.errors())
    assert error.message == "unrecognized request argument supplied: response_format"


BASE = ModelCard("base", "base", "", 4096)
READY = LoadReport(queued=0, running=0, capacity=4, max_queue=8, ready=True)


async def test_constrained_requests_go_only_to_workers_that_can_constrain(pool: WorkerPool) -> None:
    free_only = put_worker(pool, "free:1", READY, (BASE,))
    free_only.capabilities = EngineCapabilities(structured_outputs=False)
    able = put_worker(pool, "able:1", LoadReport(0, 4, 4, 8, True), (BASE,))  # busier
    able.capabilities = EngineCapabilities(structured_outputs=True)
    for _ in range(10):
        assert pool.pick("base", "", set(), response_format="json_schema").address == "able:1"
        assert pool.pick("base", "", set(), response_format="json_object").address == "able:1"
        assert pool.pick("base", "", set()).address == "free:1"  # free text goes by load


async def test_no_worker_able_to_constrain_is_a_400_not_free_text(pool: WorkerPool) -> None:
    put_worker(pool, "free:1", READY, (BASE,)).capabilities = EngineCapabilities(structured_outputs=False)
    with pytest.raises(UnsupportedValue) as info:
        pool.pick("base", "", set(), response_format="json_schema")
    assert info.value.param == "response_format"
    assert info.value.http_status == 400
    assert info.value.message.startswith("model 'base' does not support response_format json_schema")


async def test_a_worker_predating_capabilities_is_not_trusted_to_constrain(pool: WorkerPool) -> None:
    put_worker(pool, "old:1", READY, (BASE,))  # never reported capabilities
    with pytest.raises(UnsupportedValue):
        pool.pick("base", "", set(), response_format="json_object")
