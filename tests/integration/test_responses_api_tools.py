"""Function tools in the Responses API through the official openai client, against a real gateway, a sim worker
and a real redis-server: a forced call whose arguments validate, its output sent back through
`previous_response_id` and without it (the call echoed in `input`), the stream's function-call events, `auto`,
`required`, `none`, the response's echo of the tools, retrieval, and the 400s of bad shapes."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai.types.responses import Response as OpenAIResponse
from openai.types.responses import ResponseFunctionToolCall
from redis.asyncio import Redis

from tests.conftest import MODEL, TEST_KEY
from tests.integration.test_gateway import schema_validator
from tests.integration.test_responses_api import OPENAI_EVENT, RESPONSES, SIM_TEXT, documented, raw_events, record_of

CALL_ID = re.compile(r"^call_[0-9a-f]{24}$")
FORECAST_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "days", "unit"],
    "additionalProperties": False,
}
FORECAST: dict[str, Any] = {
    "type": "function",
    "name": "get_forecast",
    "description": "Tomorrow's weather forecast for a city",
    "parameters": FORECAST_PARAMETERS,
    "strict": True,
}
CLOCK: dict[str, Any] = {
    "type": "function",
    "name": "now",
    "description": "The time",
    "parameters": None,
    "strict": None,
}
NAMED: dict[str, Any] = {"type": "function", "name": "get_forecast"}
QUESTION = "Will there be dew in Kyoto tomorrow?"
CALL_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    # one `response.function_call_arguments.delta` per piece of the arguments here
    "response.function_call_arguments.done",
    "response.output_item.done",
    "response.completed",
]


@pytest.fixture
async def stack(start_worker, start_gateway, redis_server):
    """A gateway in front of a sim worker, storing responses in a real redis-server; its OpenAPI document."""
    worker = await start_worker(sim_output_tokens=6)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"], redis_url=redis_server.url)
    redis = Redis.from_url(redis_server.url)
    async with httpx.AsyncClient(timeout=30) as http:
        document = (await http.get(gateway.url + "/openapi.json")).json()
        yield gateway, http, redis, document
    await redis.aclose()


_clients: list[openai.AsyncOpenAI] = []


def client(gateway: Any) -> openai.AsyncOpenAI:
    """The official client of `gateway` (closed when the test ends)."""
    sdk = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=30)
    _clients.append(sdk)
    return sdk


@pytest.fixture(autouse=True)
async def close_clients():
    yield
    while _clients:
        await _clients.pop().close()


def assert_valid_call(call: Any, name: str = "get_forecast") -> dict[str, Any]:
    """A `function_call` output item (the SDK's model or its JSON) of `name`: the ids in their shapes, complete,
    its arguments valid against the function's parameters. Returns the arguments."""
    item = call if isinstance(call, dict) else call.model_dump()
    assert item["type"] == "function_call"
    assert item["id"].startswith("fc_")
    assert CALL_ID.match(item["call_id"]), item
    assert item["name"] == name
    assert item["status"] == "completed"
    arguments: dict[str, Any] = json.loads(item["arguments"])
    jsonschema.validate(arguments, FORECAST_PARAMETERS if name == "get_forecast" else {"type": "object"})
    return arguments


def as_sent(item: Any) -> dict[str, Any]:
    """An output item as the gateway sent it (the stream helper adds `parsed_arguments` to a call of a strict
    function)."""
    dumped: dict[str, Any] = item.model_dump(exclude={"parsed_arguments"})
    return dumped


def without_ids(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k not in ("id", "call_id")}


# --------------------------------------------------------------------------- a forced call and its output


async def test_a_named_function_is_called_with_valid_arguments_echoed_stored_and_retrieved(stack) -> None:
    gateway, http, redis, document = stack
    sdk = client(gateway)
    tools: Any = [FORECAST, CLOCK]
    named: Any = NAMED
    response = await sdk.responses.create(model=MODEL, input=QUESTION, tools=tools, tool_choice=named)
    assert response.status == "completed"
    [call] = response.output  # calls alone: no message
    assert isinstance(call, ResponseFunctionToolCall)
    assert_valid_call(call)
    assert response.output_text == ""
    assert response.tool_choice.model_dump() == NAMED  # type: ignore[union-attr]
    assert [t.model_dump(exclude_none=True, by_alias=True) for t in response.tools] == [
        FORECAST, {"type": "function", "name": "now", "description": "The time"}
    ]  # fmt: skip
    assert response.parallel_tool_calls is True

    # As sent and as documented.
    body = {"model": MODEL, "input": QUESTION, "tools": [FORECAST], "tool_choice": NAMED}
    raw = await http.post(gateway.url + RESPONSES, json=body, headers=gateway.headers)
    assert raw.status_code == 200, raw.text
    schema_validator(document, documented(document, "200")["application/json"]["schema"]).validate(raw.json())
    OpenAIResponse.model_validate(raw.json())

    record = await record_of(redis, response.id)
    [stored] = record.choices[0].tool_calls
    assert (stored.id, stored.name, stored.arguments) == (call.call_id, call.name, call.arguments)
    assert record.choices[0].finish_reason == "tool_calls"
    assert record.tool_settings is not None
    assert record.tool_settings["tool_choice"] == NAMED

    retrieved = await sdk.responses.retrieve(response.id)
    assert [item.model_dump() for item in retrieved.output] == [call.model_dump()]
    assert retrieved.tools == response.tools
    assert retrieved.tool_choice == response.tool_choice
    got = await http.get(f"{gateway.url}{RESPONSES}/{response.id}", headers=gateway.headers)
    schema_validator(document, documented(document, "200", RESPONSES + "/{response_id}", "get")[
        "application/json"]["schema"]).validate(got.json())  # fmt: skip


async def test_the_calls_output_continues_through_previous_response_id(stack) -> None:
    # The openai-agents loop: the call, then only its output with `previous_response_id` (the tools sent again).
    gateway, _, redis, _ = stack
    sdk = client(gateway)
    tools: Any = [FORECAST]
    named: Any = NAMED
    first = await sdk.responses.create(model=MODEL, input=QUESTION, tools=tools, tool_choice=named)
    [call] = first.output
    assert isinstance(call, ResponseFunctionToolCall)
    output: Any = [{"type": "function_call_output", "call_id": call.call_id, "output": "42"}]
    second = await sdk.responses.create(model=MODEL, previous_response_id=first.id, input=output, tools=tools)
    assert second.status == "completed"
    assert second.output_text == SIM_TEXT  # after a tool's result the sim answers in text
    assert [item.type for item in second.output] == ["message"]
    assert second.previous_response_id == first.id
    assert first.usage is not None
    assert second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens  # the call and its result are in the prompt
    record = await record_of(redis, second.id)
    assert record.messages == [
        {"role": "user", "content": QUESTION},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": call.call_id, "name": "get_forecast", "arguments": call.arguments}],
        },
        {"role": "tool", "content": "42", "tool_call_id": call.call_id},
    ]

    # A chain of three: the call and its result stay in the history of the next follow-up.
    third = await sdk.responses.create(model=MODEL, previous_response_id=second.id, input="and the day after?")
    assert third.output_text
    third_record = await record_of(redis, third.id)
    assert [m["role"] for m in third_record.messages or []] == ["user", "assistant", "tool", "assistant", "user"]
    assert (third_record.messages or [])[1]["tool_calls"][0]["id"] == call.call_id

    # A follow-up that leaves the call unanswered is refused, as OpenAI refuses it.
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.responses.create(model=MODEL, previous_response_id=first.id, input="never mind")
    assert info.value.param == "input"
    assert call.call_id in info.value.message


async def test_the_call_echoed_in_input_with_its_output_continues_without_a_stored_response(stack) -> None:
    # As LangChain's `use_responses_api` sends a conversation: every item, the call as the client dumped it.
    gateway, _, redis, _ = stack
    sdk = client(gateway)
    tools: Any = [FORECAST]
    first = await sdk.responses.create(model=MODEL, input=QUESTION, tools=tools, tool_choice="required", store=False)
    [call] = first.output
    assert isinstance(call, ResponseFunctionToolCall)
    assert_valid_call(call)
    for dumped in (call.model_dump(exclude_unset=True), call.model_dump()):  # `model_dump()` writes `async_`
        conversation: Any = [
            {"role": "user", "content": QUESTION},
            dumped,
            {"type": "function_call_output", "call_id": call.call_id, "output": [{"type": "input_text", "text": "4"}]},
        ]
        answer = await sdk.responses.create(model=MODEL, input=conversation, tools=tools)
        assert answer.output_text == SIM_TEXT
    record = await record_of(redis, answer.id)
    assert record.messages is not None
    assert record.messages[1]["tool_calls"][0]["arguments"] == call.arguments
    assert record.messages[2] == {"role": "tool", "content": "4", "tool_call_id": call.call_id}


# --------------------------------------------------------------------------- streaming


async def test_a_streamed_call_sends_the_function_call_events_in_order(stack) -> None:
    gateway, http, _, document = stack
    sdk = client(gateway)
    tools: Any = [FORECAST]
    named: Any = NAMED
    plain = await sdk.responses.create(model=MODEL, input=QUESTION, tools=tools, tool_choice=named)
    async with sdk.responses.stream(model=MODEL, input=QUESTION, tools=tools, tool_choice=named) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    kinds = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert deltas
    assert [k for k in kinds if k != "response.function_call_arguments.delta"] == CALL_EVENTS
    assert kinds[3 : 3 + len(deltas)] == ["response.function_call_arguments.delta"] * len(deltas)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    added = events[2]
    assert added.type == "response.output_item.added"
    assert added.item.type == "function_call"
    assert added.item.arguments == ""
    assert added.item.status == "in_progress"
    [call] = final.output
    assert isinstance(call, ResponseFunctionToolCall)
    assert_valid_call(call)
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert "".join(d.delta for d in deltas) == done.arguments == call.arguments
    pieces: list[Any] = [*deltas, done]
    assert {e.item_id for e in pieces} == {call.id} == {added.item.id}
    assert {e.output_index for e in [*pieces, added]} == {0}
    item_done = next(e for e in events if e.type == "response.output_item.done")
    assert as_sent(item_done.item) == as_sent(call)
    assert json.loads(call.arguments) == call.parsed_arguments
    # The final response's call is the one a request without `stream` gets (the sim is deterministic).
    assert without_ids(as_sent(call)) == without_ids(as_sent(plain.output[0]))
    assert final.tool_choice == plain.tool_choice
    assert final.tools == plain.tools

    # As sent: each event as the schema documents it and as OpenAI's own types describe it.
    body = {"model": MODEL, "input": QUESTION, "tools": [FORECAST], "tool_choice": NAMED, "stream": True}
    sent = await raw_events(http, gateway, body)
    payload = documented(document, "200")["text/event-stream"]["schema"]["properties"]["data"]["contentSchema"]
    validator = schema_validator(document, payload)
    for name, data in sent:
        assert name == data["type"]
        validator.validate(data)
        OPENAI_EVENT.validate_python(data)
    assert sent[-1][1]["response"]["output"][0]["type"] == "function_call"


# --------------------------------------------------------------------------- the choices


async def test_required_without_parallel_calls_makes_exactly_one_call(stack) -> None:
    gateway, _, _, _ = stack
    tools: Any = [FORECAST, CLOCK]
    response = await client(gateway).responses.create(
        model=MODEL, input=QUESTION, tools=tools, tool_choice="required", parallel_tool_calls=False
    )
    [call] = response.output
    assert isinstance(call, ResponseFunctionToolCall)
    assert_valid_call(call, call.name)
    assert response.tool_choice == "required"
    assert response.parallel_tool_calls is False


async def test_auto_calls_a_tool_the_user_names_and_answers_in_text_otherwise(stack) -> None:
    gateway, _, _, _ = stack
    sdk = client(gateway)
    tools: Any = [FORECAST, CLOCK]
    called = await sdk.responses.create(model=MODEL, input="Ask get_forecast about Kyoto", tools=tools)
    [call] = called.output
    assert isinstance(call, ResponseFunctionToolCall)
    assert_valid_call(call)
    assert called.tool_choice == "auto"
    plain = await sdk.responses.create(model=MODEL, input="a poem about dew", tools=tools)
    assert plain.output_text == SIM_TEXT
    assert [item.type for item in plain.output] == ["message"]
    # `none`: the tools are not shown, even to a user who names one.
    none = await sdk.responses.create(model=MODEL, input="Ask get_forecast", tools=tools, tool_choice="none")
    assert [item.type for item in none.output] == ["message"]
    assert none.tool_choice == "none"


# --------------------------------------------------------------------------- bad shapes


CALL_ITEM: dict[str, Any] = {"type": "function_call", "call_id": "call_1", "name": "get_forecast", "arguments": "{}"}


@pytest.mark.parametrize(("fields", "param"), [
    ({"tools": [{"type": "function", "function": {"name": "get_forecast"}}]}, "tools[0].name"),
    ({"tools": [{"type": "function", "name": "get forecast"}]}, "tools[0].name"),
    ({"tools": [{**FORECAST, "parameters": {"type": "array"}}]}, "tools[0].parameters"),
    ({"tools": [{**FORECAST, "parameters": {"type": 12}}]}, "tools[0].parameters"),
    ({"tools": [FORECAST, FORECAST]}, "tools[1].name"),
    ({"tools": [{"type": "banana"}]}, "tools[0]"),
    ({"tools": [FORECAST], "tool_choice": {"type": "function", "name": "now"}}, "tool_choice.name"),
    ({"tools": [FORECAST], "tool_choice": {"type": "function", "function": {"name": "get_forecast"}}},
     "tool_choice.name"),
    ({"tools": [FORECAST], "tool_choice": "always"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [FORECAST], "tool_choice": NAMED, "text": {"format": {"type": "json_object"}}}, "tool_choice"),
    ({"tools": [FORECAST], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"input": [{"type": "function_call_output", "call_id": "call_1", "output": "4"}]}, "input[0].call_id"),
    ({"input": [{"role": "user", "content": "hi"}, CALL_ITEM]}, "input"),
    ({"input": [{**CALL_ITEM, "call_id": ""}]}, "input[0].call_id"),
    ({"input": [{**CALL_ITEM, "arguments": {}}]}, "input[0].arguments"),
    ({"input": [CALL_ITEM, {"type": "function_call_output", "call_id": "call_1"}]}, "input[1].output"),
])  # fmt: skip
async def test_bad_tool_shapes_are_400s_naming_the_field(stack, fields: dict[str, Any], param: str) -> None:
    gateway, http, _, _ = stack
    body = {"model": MODEL, "input": QUESTION, **fields}
    response = await http.post(gateway.url + RESPONSES, json=body, headers=gateway.headers)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(("fields", "param"), [
    ({"tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"tools": [{"type": "mcp", "server_label": "x", "server_url": "https://example.com"}]}, "tools[0]"),
    ({"tools": [{"type": "custom", "name": "x"}]}, "tools[0]"),
    ({"tools": [{**FORECAST, "defer_loading": True}]}, "tools[0].defer_loading"),
    ({"input": [CALL_ITEM, {"type": "function_call_output", "call_id": "call_1",
                            "output": [{"type": "input_image", "image_url": "https://example.com/a.png"}]}]},
     "input[1].output[0]"),
    ({"input": [{**CALL_ITEM, "caller": {"type": "program", "caller_id": "p"}}]}, "input[0].caller"),
])  # fmt: skip
async def test_built_in_tools_and_unserved_tool_features_are_not_supported(
    stack, fields: dict[str, Any], param: str
) -> None:
    gateway, _, _, _ = stack
    body: dict[str, Any] = {"model": MODEL, "input": QUESTION, **fields}
    with pytest.raises(openai.BadRequestError) as info:
        await client(gateway).responses.create(**body)
    assert info.value.code == "unsupported_value"
    assert info.value.param == param
    assert "does not support" in info.value.message
