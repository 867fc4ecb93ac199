"""`langchain-openai`'s `ChatOpenAI` as its users call it, against the sim stack: invoke, stream,
`with_structured_output` (json_schema, the default; function_calling, which forces a tool call; json_mode),
`bind_tools` (auto, a named tool, any) with the tool's result sent back, and the Responses API
(`use_responses_api=True`). The async methods, since the gateway serves in the test's own event loop."""

from __future__ import annotations

import functools
import json
import operator
from typing import Any

import httpx
import jsonschema
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_openai import ChatOpenAI

from tests.compat.conftest import CALL_ID, SIM_TEXT, SIM_TOKENS, Haiku
from tests.conftest import MODEL, TEST_KEY, RunningGateway


def chat_model(gateway: RunningGateway, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(model=MODEL, base_url=gateway.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=30, **kwargs)


@tool
def get_forecast(city: str, days: int) -> str:
    """Tomorrow's weather forecast for a city, `days` days ahead."""
    return f"clear in {city} for {days} days"


@tool
def get_tide(harbour: str) -> str:
    """The next high tide at a harbour."""
    return f"high water at {harbour} at 06:12"


TOOL_PARAMETERS = {t.name: convert_to_openai_tool(t)["function"]["parameters"] for t in (get_forecast, get_tide)}


def merge(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    """Streamed chunks added up, as langchain users assemble them."""
    assert chunks
    return functools.reduce(operator.add, chunks)


def assert_tool_calls(message: AIMessage, names: set[str]) -> list[dict[str, Any]]:
    """The message's calls, each of one of `names`, with an OpenAI id and args that validate against that tool's
    parameters as langchain sent them."""
    assert message.tool_calls, message
    for call in message.tool_calls:
        assert call["name"] in names
        assert CALL_ID.match(call["id"] or ""), call["id"]
        jsonschema.validate(call["args"], TOOL_PARAMETERS[call["name"]])
    assert message.response_metadata["finish_reason"] == "tool_calls"
    return list(message.tool_calls)


async def test_invoke_answers_the_sim_text(gateway: RunningGateway) -> None:
    message = await chat_model(gateway).ainvoke([SystemMessage("Be brief."), HumanMessage("a poem about dew")])
    assert isinstance(message, AIMessage)
    assert message.content == SIM_TEXT
    assert message.response_metadata["finish_reason"] == "stop"
    assert message.response_metadata["model_name"] == MODEL
    assert message.usage_metadata is not None
    assert message.usage_metadata["output_tokens"] == SIM_TOKENS
    assert message.tool_calls == []

    cut = await chat_model(gateway, max_tokens=2).ainvoke("a poem about dew")
    assert cut.content == "white dew"
    assert cut.response_metadata["finish_reason"] == "length"


async def test_stream_chunks_join_to_the_invoked_text(gateway: RunningGateway) -> None:
    chunks = [chunk async for chunk in chat_model(gateway, stream_usage=True).astream("a poem about dew")]
    assert len([c for c in chunks if c.content]) == SIM_TOKENS
    merged = merge(chunks)
    assert merged.content == SIM_TEXT
    assert merged.response_metadata["finish_reason"] == "stop"
    assert merged.usage_metadata is not None
    assert merged.usage_metadata["output_tokens"] == SIM_TOKENS


@pytest.mark.parametrize("method", [None, "json_schema", "function_calling"])
async def test_with_structured_output_gives_a_model_instance(gateway: RunningGateway, method: str | None) -> None:
    llm = chat_model(gateway)
    structured = llm.with_structured_output(Haiku) if method is None else llm.with_structured_output(
        Haiku, method=method, include_raw=True
    )  # fmt: skip
    result = await structured.ainvoke("Write a haiku about dew as JSON with a title, its lines and the season.")
    if method is None:
        assert isinstance(result, Haiku)
        return
    assert isinstance(result, dict)
    assert result["parsing_error"] is None
    assert isinstance(result["parsed"], Haiku)
    assert result["parsed"].lines
    raw = result["raw"]
    assert isinstance(raw, AIMessage)
    if method == "function_calling":
        # Made as a forced call of the tool named after the schema, its arguments the instance.
        [call] = raw.tool_calls
        assert call["name"] == "Haiku"
        assert Haiku.model_validate(call["args"]) == result["parsed"]
    else:
        assert Haiku.model_validate_json(str(raw.content)) == result["parsed"]


async def test_json_mode_parses_a_json_object(gateway: RunningGateway) -> None:
    # json_mode sends no schema (`response_format` json_object): the reply is a JSON object, of any shape.
    structured = chat_model(gateway).with_structured_output(None, method="json_mode", include_raw=True)
    result = await structured.ainvoke("Describe the dew as a JSON object.")
    assert result["parsing_error"] is None
    assert isinstance(result["parsed"], dict)
    assert result["parsed"]
    assert json.loads(str(result["raw"].content)) == result["parsed"]


async def test_bind_tools_auto_calls_a_tool_the_user_names_and_reads_its_result(gateway: RunningGateway) -> None:
    llm = chat_model(gateway).bind_tools([get_forecast, get_tide])
    question = HumanMessage("Ask get_forecast whether there will be dew in Kyoto.")
    reply = await llm.ainvoke([question])
    assert isinstance(reply, AIMessage)
    [call] = assert_tool_calls(reply, {"get_forecast"})
    result = await get_forecast.ainvoke(call)  # the tool run on the call, as an agent loop runs it
    assert isinstance(result, ToolMessage)
    assert result.tool_call_id == call["id"]

    answer = await llm.ainvoke([question, reply, result])
    assert answer.tool_calls == []
    assert answer.content  # after a tool result the sim answers in text
    assert answer.response_metadata["finish_reason"] == "stop"

    chatted = await llm.ainvoke("a poem about dew")
    assert chatted.tool_calls == []
    assert chatted.content == SIM_TEXT


async def test_bind_tools_with_a_forced_choice(gateway: RunningGateway) -> None:
    named = chat_model(gateway).bind_tools([get_forecast, get_tide], tool_choice="get_tide")
    [call] = assert_tool_calls(await named.ainvoke("Plan a walk by the sea."), {"get_tide"})
    assert call["args"]

    anyone = chat_model(gateway).bind_tools([get_forecast, get_tide], tool_choice="any", parallel_tool_calls=False)
    assert len(assert_tool_calls(await anyone.ainvoke("Plan a walk by the sea."), {"get_forecast", "get_tide"})) == 1

    # Streamed, the chunks' call pieces merge into the same valid call.
    chunks = [chunk async for chunk in named.astream("Plan a walk by the sea.")]
    merged = merge(chunks)
    [streamed] = merged.tool_calls
    assert (streamed["name"], streamed["args"]) == ("get_tide", call["args"])
    jsonschema.validate(streamed["args"], TOOL_PARAMETERS["get_tide"])


async def test_the_responses_api_through_chat_openai(gateway: RunningGateway) -> None:
    paths: list[str] = []

    async def record(request: httpx.Request) -> None:
        paths.append(request.url.path)

    async with httpx.AsyncClient(event_hooks={"request": [record]}, timeout=30) as transport:
        llm = chat_model(gateway, use_responses_api=True, http_async_client=transport)
        message = await llm.ainvoke([SystemMessage("Be brief."), HumanMessage("a poem about dew")])
        chunks = [chunk async for chunk in llm.astream("a poem about dew")]
    assert paths == ["/v1/responses", "/v1/responses"]
    assert isinstance(message, AIMessage)
    assert message.text == SIM_TEXT
    assert message.id is not None
    assert message.id.startswith("resp_")
    assert message.usage_metadata is not None
    assert message.usage_metadata["output_tokens"] == SIM_TOKENS
    merged = merge(chunks)
    assert merged.text == SIM_TEXT
