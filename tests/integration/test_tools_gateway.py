"""Tools through the real gateway and sim workers (gRPC): the official openai client's round trip (a forced call,
then its result sent back), streamed calls for `n` candidates, the completion record, `tool_choice: none`, the
400s of inconsistent requests, and routing by the engines' tool capabilities."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk
from redis.asyncio import Redis

from bailu.common.types import EngineCapabilities
from bailu.worker.engines.sim import SimEngine
from bailu.worker.server import WorkerServer
from bailu.worker.settings import WorkerSettings
from tests.conftest import MODEL, TEST_KEY
from tests.integration.test_feedback_gateway import stored, wait_for_record
from tests.integration.test_gateway import CHAT, assert_documented

CALL_ID = re.compile(r"^call_[0-9a-f]{24}$")
CITY: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 24}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
FORECAST: dict[str, Any] = {
    "type": "function",
    "function": {"name": "get_forecast", "description": "The weather forecast for a city", "parameters": CITY},
}
CLOCK: dict[str, Any] = {"type": "function", "function": {"name": "now", "description": "The time"}}
NAMED: dict[str, Any] = {"type": "function", "function": {"name": "get_forecast"}}
QUESTION: dict[str, Any] = {"role": "user", "content": "Will there be dew in Kyoto tomorrow?"}


def chat_body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [QUESTION], **fields}


def client(gateway: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=30)


def assert_valid_call(call: Any, name: str = "get_forecast") -> dict[str, Any]:
    """A function call of `name` (an SDK model or OpenAI's JSON shape) with an OpenAI id and arguments that
    validate against the function's schema; returns the arguments."""
    as_dict = call if isinstance(call, dict) else call.model_dump()
    assert CALL_ID.match(as_dict["id"]), as_dict
    assert as_dict["type"] == "function"
    assert as_dict["function"]["name"] == name
    arguments: dict[str, Any] = json.loads(as_dict["function"]["arguments"])
    jsonschema.validate(arguments, CITY if name == "get_forecast" else {"type": "object"})
    return arguments


async def document_of(gateway: Any, http: httpx.AsyncClient) -> dict[str, Any]:
    document: dict[str, Any] = (await http.get(gateway.url + "/openapi.json")).json()
    return document


# --------------------------------------------------------------------------- forced calls, end to end


async def test_the_openai_client_forces_a_call_then_sends_its_result_back(start_worker, start_gateway) -> None:
    worker = await start_worker(sim_output_tokens=5)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    async with client(gateway) as sdk:
        history: list[Any] = [QUESTION]
        tools: list[Any] = [FORECAST, CLOCK]
        named: Any = NAMED
        reply = await sdk.chat.completions.create(model=MODEL, messages=history, tools=tools, tool_choice=named)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        [call] = choice.message.tool_calls or []
        assert_valid_call(call)

        # The conversation as SDK users keep it: the reply's full dump, then the tool's result.
        history += [
            choice.message.model_dump(),
            {"role": "tool", "tool_call_id": call.id, "content": "Dew likely before dawn, 4 C."},
        ]
        answer = await sdk.chat.completions.create(model=MODEL, messages=history, tools=tools)
        assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
        assert answer.usage is not None
        assert reply.usage is not None
        assert answer.usage.prompt_tokens > reply.usage.prompt_tokens  # the call and its result are in the prompt


async def test_required_with_parallel_calls_off_makes_exactly_one_call(start_worker, start_gateway, http) -> None:
    worker = await start_worker()
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    document = await document_of(gateway, http)
    body = chat_body(tools=[FORECAST, CLOCK], tool_choice="required", parallel_tool_calls=False)
    response = await http.post(gateway.url + CHAT, json=body, headers=gateway.headers)
    assert response.status_code == 200, response.text
    await assert_documented(document, "post", CHAT, response)
    [choice] = response.json()["choices"]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert_valid_call(call, call["function"]["name"])
    assert call["function"]["name"] in ("get_forecast", "now")


async def test_streamed_calls_of_two_candidates_accumulate_in_the_sdk(start_worker, start_gateway, http) -> None:
    worker = await start_worker(sim_output_tokens=6)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    document = await document_of(gateway, http)
    body = chat_body(tools=[FORECAST], tool_choice=NAMED, n=2, stream=True, stream_options={"include_usage": True})
    async with http.stream("POST", gateway.url + CHAT, json=body, headers=gateway.headers) as response:
        assert response.status_code == 200
        await assert_documented(document, "post", CHAT, response)
    async with http.stream("POST", gateway.url + CHAT, json=body, headers=gateway.headers) as response:
        events = [json.loads(line[6:]) async for line in response.aiter_lines() if line.startswith("data: {")]
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for event in events:
        state.handle_chunk(ChatCompletionChunk.model_validate(event))
    final = state.get_final_completion()
    assert sorted(c.index for c in final.choices) == [0, 1]
    for choice in final.choices:
        assert choice.finish_reason == "tool_calls"
        [call] = choice.message.tool_calls or []
        assert_valid_call(call)
    # Each call's id and name come once, on its first piece; the stream ends with the usage.
    pieces = [p for e in events for c in e["choices"] for p in c["delta"].get("tool_calls") or ()]
    assert len([p for p in pieces if "id" in p]) == 2
    assert events[-1]["choices"] == []
    assert events[-1]["usage"]["completion_tokens"] > 0


async def test_the_completion_record_keeps_the_calls(start_worker, start_gateway, redis_server, http) -> None:
    worker = await start_worker()
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"], redis_url=redis_server.url)
    redis = Redis.from_url(redis_server.url)
    try:
        response = await http.post(
            gateway.url + CHAT, json=chat_body(tools=[FORECAST], tool_choice=NAMED), headers=gateway.headers
        )
        assert response.status_code == 200, response.text
        body = response.json()
        await wait_for_record(redis, body["id"])
        record = await stored(redis, body["id"])
        assert record is not None
        [call] = body["choices"][0]["message"]["tool_calls"]
        choice = record.choice(0)
        assert choice is not None
        assert choice.finish_reason == "tool_calls"
        assert [(c.id, c.name, c.arguments) for c in choice.tool_calls] == [
            (call["id"], "get_forecast", call["function"]["arguments"])
        ]
    finally:
        await redis.aclose()


# --------------------------------------------------------------------------- no calls


async def test_tool_choice_none_answers_in_text(start_worker, start_gateway, http) -> None:
    worker = await start_worker(sim_output_tokens=4)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    document = await document_of(gateway, http)
    response = await http.post(
        gateway.url + CHAT, json=chat_body(tools=[FORECAST], tool_choice="none"), headers=gateway.headers
    )
    assert response.status_code == 200, response.text
    await assert_documented(document, "post", CHAT, response)
    [choice] = response.json()["choices"]
    assert choice["finish_reason"] in ("stop", "length")
    assert "tool_calls" not in choice["message"]
    assert choice["message"]["content"]


async def test_history_with_a_call_and_its_result_is_accepted(start_worker, start_gateway, http) -> None:
    """Tool history alone (no tools offered now): what a client sends after running a call."""
    worker = await start_worker(sim_output_tokens=3)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    call = {"id": "call_" + "0" * 24, "type": "function", "function": {"name": "now", "arguments": "{}"}}
    messages = [
        QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": [{"type": "text", "text": "06:12"}]},
    ]
    response = await http.post(gateway.url + CHAT, json=chat_body(messages=messages), headers=gateway.headers)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]


# --------------------------------------------------------------------------- the 400s


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"tools": [FORECAST], "tool_choice": {"type": "function", "function": {"name": "now"}}},
         "tool_choice.function.name", "names the function 'now', which is not among the tools"),
        ({"tools": [FORECAST], "tool_choice": "required", "response_format": {"type": "json_object"}},
         "tool_choice", "not both"),
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        ({"tools": [FORECAST, FORECAST]}, "tools[1].function.name", "two tools are named"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
         "tools[0].function.parameters", "must describe an object"),
        ({"messages": [QUESTION, {"role": "tool", "tool_call_id": "call_x", "content": "?"}]},
         "messages", "which no earlier assistant message made"),
    ],
)  # fmt: skip
async def test_inconsistent_tool_requests_are_400s(
    start_worker, start_gateway, http, fields: dict[str, Any], param: str, words: str
) -> None:
    worker = await start_worker()
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    document = await document_of(gateway, http)
    response = await http.post(gateway.url + CHAT, json=chat_body(**fields), headers=gateway.headers)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error")
    assert words in error["message"]
    await assert_documented(document, "post", CHAT, response)


# --------------------------------------------------------------------------- routing by capability


class LimitedSim(SimEngine):
    """A sim whose engine declares the tool capabilities it is given (as an engine server without a tool
    parser, or one that cannot constrain its output, does)."""

    def __init__(self, *args: Any, tool_calls: bool, auto_tool_choice: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tool_capabilities = EngineCapabilities(tool_calls=tool_calls, auto_tool_choice=auto_tool_choice)

    @property
    def capabilities(self) -> EngineCapabilities:
        return self._tool_capabilities


@pytest.mark.parametrize(
    ("tool_calls", "auto_tool_choice", "fields", "message"),
    [
        (False, True, {"tool_choice": "required"},
         "does not support tool_choice required: its engine cannot force tool calls"),
        (False, True, {"tool_choice": NAMED},
         "does not support tool_choice function 'get_forecast': its engine cannot force tool calls"),
        (True, False, {}, "does not support tool_choice auto: its engine has no tool parser"),
    ],
)  # fmt: skip
async def test_a_model_whose_engine_cannot_answers_400_not_free_text(
    start_gateway, http, tool_calls: bool, auto_tool_choice: bool, fields: dict[str, Any], message: str
) -> None:
    settings = WorkerSettings(host="127.0.0.1", port=0, http_port=0, engine="sim", model_name=MODEL)
    engine = LimitedSim(
        MODEL,
        ttft_s=0.005,
        itl_s=0.002,
        output_tokens=4,
        capacity=2,
        tool_calls=tool_calls,
        auto_tool_choice=auto_tool_choice,
    )
    server = WorkerServer(settings, engine=engine)
    await server.start()
    try:
        await server.wait_ready(60)
        gateway = await start_gateway([f"127.0.0.1:{server.port}"])
        warmed = engine.tokens_generated  # the worker's warm-up
        response = await http.post(
            gateway.url + CHAT, json=chat_body(tools=[FORECAST], **fields), headers=gateway.headers
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["message"].startswith(f"model '{MODEL}' {message}")
        assert (error["param"], error["code"]) == ("tool_choice", "unsupported_value")
        assert engine.tokens_generated == warmed  # nothing was generated instead
        plain = await http.post(
            gateway.url + CHAT, json=chat_body(tools=[FORECAST], tool_choice="none"), headers=gateway.headers
        )
        assert plain.status_code == 200, plain.text
    finally:
        await server.stop(0)


async def test_auto_lets_the_model_call_a_tool_it_names(start_worker, start_gateway, http) -> None:
    """`auto` (the default with tools): the sim calls the tools the user's message names (its documented rule),
    read out of its output as an engine's tool parser does; its calls reach the client as OpenAI's."""
    worker = await start_worker()
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    asked = {"role": "user", "content": "Use get_forecast for Kyoto, please."}
    response = await http.post(
        gateway.url + CHAT, json=chat_body(messages=[asked], tools=[FORECAST, CLOCK]), headers=gateway.headers
    )
    assert response.status_code == 200, response.text
    [choice] = response.json()["choices"]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert_valid_call(call)
