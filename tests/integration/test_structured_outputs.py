"""Structured outputs (`response_format` json_object / json_schema) through the real gateway and worker (gRPC):
the sim engine's documented instances, the official openai client's `parse`, the 400s, a worker whose engine
cannot constrain its output, and the transformers engine on the real SmolLM2 checkpoint (20 tries of 20)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pydantic
import pytest

from bailu.common.types import EngineCapabilities
from bailu.worker.engines.sim import SimEngine
from bailu.worker.server import WorkerServer
from bailu.worker.settings import WorkerSettings
from tests.conftest import MODEL, SMOLLM2_DIR, TEST_KEY

CHAT = "/v1/chat/completions"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "mood": {"enum": ["calm", "cheerful", "tired"]},
    },
    "required": ["name", "age", "mood"],
    "additionalProperties": False,
}


def chat_body(response_format: Any, **kwargs: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Describe a person as JSON: name, age and mood."}],
        "response_format": response_format,
        **kwargs,
    }


def json_schema(schema: dict[str, Any], name: str = "person") -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


async def test_sim_json_schema_output_parses_and_validates_streamed_and_not(start_worker, start_gateway, http):
    worker = await start_worker(sim_output_tokens=3)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    response = await http.post(gateway.url + CHAT, json=chat_body(json_schema(PERSON), n=2), headers=gateway.headers)
    assert response.status_code == 200, response.text
    for choice in response.json()["choices"]:
        assert choice["finish_reason"] == "stop"
        jsonschema.validate(json.loads(choice["message"]["content"]), PERSON)

    body = chat_body({"type": "json_object"}, stream=True)
    async with http.stream("POST", gateway.url + CHAT, json=body, headers=gateway.headers) as streamed:
        assert streamed.status_code == 200
        events = [json.loads(line[6:]) async for line in streamed.aiter_lines() if line.startswith("data: {")]
    pieces = [e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]]
    assert len([p for p in pieces if p]) > 1  # streamed a token at a time, not in one piece
    assert isinstance(json.loads("".join(pieces)), dict)


class Step(pydantic.BaseModel):
    explanation: str
    output: str


class Solution(pydantic.BaseModel):
    steps: list[Step]
    final_answer: str
    confidence: Literal["low", "high"]
    caveat: str | None


async def test_openai_parse_with_a_pydantic_model_gets_the_parsed_object(start_worker, start_gateway):
    worker = await start_worker()
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    sent: list[dict[str, Any]] = []

    async def record(request: httpx.Request) -> None:
        sent.append(json.loads(request.content))

    async with (
        httpx.AsyncClient(event_hooks={"request": [record]}) as transport,
        openai.AsyncOpenAI(
            base_url=gateway.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=30, http_client=transport
        ) as sdk,
    ):
        completion = await sdk.chat.completions.parse(
            model=MODEL, messages=[{"role": "user", "content": "Solve 8x + 7 = -23"}], response_format=Solution
        )
    # What the client sends: a strict json_schema named after the model, with its $defs.
    response_format = sent[0]["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["name"] == "Solution"
    assert response_format["json_schema"]["strict"] is True
    assert "$defs" in response_format["json_schema"]["schema"]
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Solution)
    assert parsed.steps
    assert isinstance(parsed.steps[0], Step)
    assert Solution.model_validate_json(completion.choices[0].message.content or "") == parsed


async def test_an_invalid_schema_is_a_400_naming_it(start_worker, start_gateway, http):
    worker = await start_worker()
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    body = chat_body(json_schema({"type": "object", "properties": {"a": {"type": "integr"}}}))
    response = await http.post(gateway.url + CHAT, json=body, headers=gateway.headers)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "response_format.json_schema.schema"
    assert "not a valid JSON Schema" in error["message"]
    assert error["type"] == "invalid_request_error"


class FreeTextSim(SimEngine):
    """A sim whose engine declares that it cannot constrain its output (as ms-swift's server does)."""

    @property
    def capabilities(self) -> EngineCapabilities:
        return EngineCapabilities(structured_outputs=False)


async def test_a_model_whose_engine_cannot_constrain_answers_400_not_free_text(start_gateway, http):
    settings = WorkerSettings(host="127.0.0.1", port=0, http_port=0, engine="sim", model_name=MODEL)
    engine = FreeTextSim(MODEL, ttft_s=0.005, itl_s=0.002, output_tokens=4, capacity=2)
    server = WorkerServer(settings, engine=engine)
    await server.start()
    try:
        await server.wait_ready(60)
        gateway = await start_gateway([f"127.0.0.1:{server.port}"])
        warmed = engine.tokens_generated  # the worker's warm-up
        for response_format in (json_schema(PERSON), {"type": "json_object"}):
            response = await http.post(gateway.url + CHAT, json=chat_body(response_format), headers=gateway.headers)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["message"].startswith(
                f"model '{MODEL}' does not support response_format {response_format['type']}"
            )
            assert (error["param"], error["code"]) == ("response_format", "unsupported_value")
        assert engine.tokens_generated == warmed  # nothing was generated unconstrained
        plain = await http.post(gateway.url + CHAT, json=chat_body({"type": "text"}), headers=gateway.headers)
        assert plain.status_code == 200, plain.text
    finally:
        await server.stop(0)


TRIES = 20


@pytest.mark.e2e
@pytest.mark.slow
async def test_smollm2_json_schema_output_validates_in_20_of_20_tries(start_worker, start_gateway, http):
    """The acceptance check: SmolLM2-135M on the transformers engine, sampled (temperature 1), 20 requests at
    once through the gateway, each output parsed and validated against the schema."""
    worker = await start_worker(
        engine="transformers", model_path=str(SMOLLM2_DIR), max_batch_size=TRIES, batch_wait_ms=500, max_model_len=512
    )
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])

    async def one() -> dict[str, Any]:
        body = chat_body(json_schema(PERSON), temperature=1.0, max_tokens=48)
        response = await http.post(gateway.url + CHAT, json=body, headers=gateway.headers, timeout=240)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    # No seed: equal sampling parameters, so that ms-swift runs the 20 as one batch.
    replies = await asyncio.gather(*(one() for _ in range(TRIES)))
    outputs = [reply["choices"][0]["message"]["content"] for reply in replies]
    for reply, output in zip(replies, outputs, strict=True):
        assert reply["choices"][0]["finish_reason"] == "stop", output
        jsonschema.validate(json.loads(output), PERSON)
    assert len(set(outputs)) > 1  # sampled, not one answer repeated
