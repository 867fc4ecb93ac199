"""The sim engine's tool calls (forced and auto, as its module docstring says) and its continuation of a
trailing assistant message."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from bailu.common.errors import InvalidRequest
from bailu.common.types import (
    ChatMessage,
    FinishReason,
    GenerateChunk,
    GenerateRequest,
    SamplingParams,
    Tool,
    ToolCall,
    ToolUse,
)
from bailu.worker.engines.sim import SimEngine

FORECAST = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "days", "unit"],
    "additionalProperties": False,
}
TIME = {"type": "object", "properties": {"zone": {"type": "string", "format": "uri"}}, "required": ["zone"]}
TOOLS = (Tool("get_forecast", "The forecast", json.dumps(FORECAST)), Tool("get_time", "The time", json.dumps(TIME)))
SCHEMAS = {"get_forecast": FORECAST, "get_time": TIME}


def engine() -> SimEngine:
    return SimEngine("base", ttft_s=0, itl_s=0, output_tokens=8, capacity=2)


def request(text: str, use: ToolUse, *history: ChatMessage, **sampling: object) -> GenerateRequest:
    req = GenerateRequest(
        "r",
        "base",
        messages=(*history, ChatMessage("user", text)) if text else history,
        tools=use,
        sampling=SamplingParams(**sampling),  # type: ignore[arg-type]
    )
    req.validate()
    return req


async def run(req: GenerateRequest) -> list[GenerateChunk]:
    return [chunk async for chunk in engine().generate(req)]


def check_calls(chunks: list[GenerateChunk]) -> list[tuple[str, dict[str, object]]]:
    """The calls of a reply that made some, checked against the contract."""
    last = chunks[-1]
    assert last.finish_reason is FinishReason.TOOL_CALLS
    assert all(chunk.text == "" for chunk in chunks)  # calls do not stream as text
    assert all(not chunk.tool_calls for chunk in chunks[:-1])
    assert last.usage is not None
    assert last.usage.completion_tokens == sum(c.token_count for c in chunks) > 1
    calls = []
    for index, delta in enumerate(last.tool_calls):
        assert delta.index == index
        assert re.fullmatch(r"call_[0-9a-f]{24}", delta.id)
        arguments = json.loads(delta.arguments)
        jsonschema.validate(arguments, SCHEMAS[delta.name])
        calls.append((delta.name, arguments))
    return calls


@pytest.mark.parametrize("name", ["get_forecast", "get_time"])
async def test_a_named_function_is_called_once_with_valid_arguments(name: str) -> None:
    chunks = await run(request("Plan my morning.", ToolUse(TOOLS, "function", name)))
    assert [n for n, _ in check_calls(chunks)] == [name]


@pytest.mark.parametrize("parallel", [True, False])
async def test_required_calls_the_first_tool(parallel: bool) -> None:
    chunks = await run(request("Plan my morning.", ToolUse(TOOLS, "required", parallel=parallel)))
    assert [n for n, _ in check_calls(chunks)] == ["get_forecast"]


async def test_auto_calls_the_tools_the_user_names_else_answers_in_text() -> None:
    text = "Call get_time, then get_forecast."
    both = check_calls(await run(request(text, ToolUse(TOOLS, "auto"))))
    assert [n for n, _ in both] == ["get_forecast", "get_time"]  # in the tools' order
    one = check_calls(await run(request(text, ToolUse(TOOLS, "auto", parallel=False))))
    assert [n for n, _ in one] == ["get_forecast"]
    plain = await run(request("Write about dew.", ToolUse(TOOLS, "auto")))
    assert plain[-1].finish_reason is FinishReason.STOP
    assert "".join(c.text for c in plain).split()[:2] == ["white", "dew"]
    # tool_choice none, or no tools: text, whatever the user says.
    for use in (ToolUse(TOOLS, "none"), ToolUse()):
        chunks = await run(request(text, use))
        assert chunks[-1].finish_reason is FinishReason.STOP
        assert not chunks[-1].tool_calls


async def test_after_a_tool_result_it_answers_in_text() -> None:
    asked = ChatMessage("assistant", "", (ToolCall("call_1", "get_time", '{"zone": "x"}'),))
    result = ChatMessage("tool", "06:00 get_time", tool_call_id="call_1")
    chunks = await run(request("", ToolUse(TOOLS, "auto"), ChatMessage("user", "get_time please"), asked, result))
    assert chunks[-1].finish_reason is FinishReason.STOP
    assert not chunks[-1].tool_calls
    assert "".join(c.text for c in chunks).startswith("white dew")


async def test_max_tokens_cutting_the_calls_gives_length_and_no_calls() -> None:
    chunks = await run(request("Plan.", ToolUse(TOOLS, "function", "get_forecast"), max_tokens=3))
    assert chunks[-1].finish_reason is FinishReason.LENGTH
    assert not chunks[-1].tool_calls
    assert sum(c.token_count for c in chunks) == 3
    assert all(c.text == "" for c in chunks)


async def test_calls_carry_log_probabilities_token_by_token() -> None:
    chunks = await run(request("Plan.", ToolUse(TOOLS, "required"), logprobs=True, top_logprobs=2))
    check_calls(chunks)
    assert all(len(c.logprobs) == c.token_count for c in chunks)


async def test_a_trailing_assistant_message_is_continued() -> None:
    history = (ChatMessage("user", "Write about dew."), ChatMessage("assistant", "white dew"))
    chunks = await run(request("", ToolUse(), *history, max_tokens=3))
    assert "".join(c.text for c in chunks) == " settles on the"
    assert engine().continues_assistant
    spaced = (ChatMessage("user", "Write about dew."), ChatMessage("assistant", "white dew "))
    assert "".join(c.text for c in await run(request("", ToolUse(), *spaced, max_tokens=2))) == "settles on"


def test_a_trailing_assistant_message_with_calls_or_forced_calls_is_refused() -> None:
    asked = ChatMessage("assistant", "", (ToolCall("call_1", "get_time", "{}"),))
    with pytest.raises(InvalidRequest) as info:
        request("", ToolUse(TOOLS, "auto"), ChatMessage("user", "hi"), asked)
    assert info.value.param == "messages[1].tool_calls"
    with pytest.raises(InvalidRequest) as info:
        request("", ToolUse(TOOLS, "required"), ChatMessage("user", "hi"), ChatMessage("assistant", "Sure,"))
    assert info.value.param == "tool_choice"
    assert "trailing assistant message" in info.value.message
