"""Function tools in the Responses API, without I/O: every OpenAI field of the tool shapes known; tools, choices and
call items become the chat request's; a stored response's calls become history; the output items and the
stream's events of text followed by calls, checked against OpenAI's own types."""

from __future__ import annotations

import json
from typing import Any

import pydantic
import pytest
from openai.types.responses import Response as OpenAIResponse
from openai.types.responses import (
    ResponseStreamEvent,
    function_tool_param,
    response_function_tool_call_param,
    response_input_item_param,
    response_input_text_content_param,
    tool_choice_function_param,
)
from pydantic import AliasChoices, TypeAdapter

from bailu.common.errors import InvalidRequest, UnsupportedValue
from bailu.common.records import Choice, CompletionRecord
from bailu.common.types import (
    TOOL_FUNCTION,
    ChatMessage,
    GenerateChunk,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    ToolUse,
)
from bailu.gateway.errors import from_validation_error
from bailu.gateway.responses_api import ResponseCreateRequest, history
from bailu.gateway.responses_api_format import (
    EventSequence,
    StreamedOutput,
    call_item_id,
    logprobs_list,
    message_id,
    output_items,
    response_of_record,
)
from bailu.gateway.responses_api_tools import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionChoice,
    OutputTextPart,
    ResponsesFunctionTool,
)
from tests.unit.gateway.test_responses_api import record

OPENAI_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
FORECAST = {"type": "function", "name": "get_forecast", "description": "The forecast", "parameters": PARAMETERS}
CALL = ToolCall("call_" + "a" * 24, "get_forecast", '{"city":"Kyoto"}')
RESPONSE_ID = "resp_" + "0" * 32


def request(**fields: Any) -> ResponseCreateRequest:
    return ResponseCreateRequest.model_validate({"model": "m", "input": "hi", **fields})


def refusal(previous: CompletionRecord | None = None, **fields: Any) -> InvalidRequest:
    """The 400 of a request: a validation error at the edge, or `chat_request`'s own."""
    try:
        request(**fields).chat_request(previous)
    except pydantic.ValidationError as exc:
        return from_validation_error(exc.errors())
    except InvalidRequest as exc:
        return exc
    raise AssertionError("accepted")


def wire_names(model: type[pydantic.BaseModel]) -> set[str]:
    """The names a model takes on the wire (its aliases: `async` for `async_`)."""
    names = set()
    for name, info in model.model_fields.items():
        alias = info.validation_alias
        names.add(alias.choices[0] if isinstance(alias, AliasChoices) else alias or name)
    return {str(name) for name in names}


@pytest.mark.parametrize(("model", "openai_fields"), [
    (ResponsesFunctionTool, function_tool_param.FunctionToolParam.__annotations__),
    (FunctionChoice, tool_choice_function_param.ToolChoiceFunctionParam.__annotations__),
    (FunctionCallItem, response_function_tool_call_param.ResponseFunctionToolCallParam.__annotations__),
    (FunctionCallOutputItem, response_input_item_param.FunctionCallOutput.__annotations__),
    (OutputTextPart, response_input_text_content_param.ResponseInputTextContentParam.__annotations__),
])  # fmt: skip
def test_every_openai_field_of_the_tool_shapes_is_known(model: type[pydantic.BaseModel], openai_fields: Any) -> None:
    assert set(openai_fields) <= wire_names(model), set(openai_fields) - wire_names(model)


# --------------------------------------------------------------------------- the chat request


def test_tools_and_a_named_choice_become_the_chat_requests() -> None:
    clock = {"type": "function", "name": "now", "strict": None, "async": False, "defer_loading": None}
    body = request(tools=[FORECAST, clock], tool_choice={"type": "function", "name": "get_forecast"},
                   parallel_tool_calls=False)  # fmt: skip
    use = body.chat_request(None).tool_use()
    assert use.choice == TOOL_FUNCTION
    assert use.function == "get_forecast"
    assert use.parallel is False
    assert [(t.name, t.description, t.parameters) for t in use.tools] == [
        ("get_forecast", "The forecast", json.dumps(PARAMETERS, separators=(",", ":"))),
        ("now", "", ""),
    ]
    assert body.tool_settings() == {
        "tools": [
            {**FORECAST, "strict": None},
            {"type": "function", "name": "now", "description": None, "parameters": None, "strict": None},
        ],
        "tool_choice": {"type": "function", "name": "get_forecast"},
        "parallel_tool_calls": False,
    }
    assert body.asks_for_tools
    # No tools said: no tool use, OpenAI's defaults echoed.
    assert request().chat_request(None).tool_use() == ToolUse()
    assert not request().asks_for_tools
    assert request().tool_settings() == {"tools": [], "tool_choice": "auto", "parallel_tool_calls": True}
    assert request(tools=[FORECAST]).chat_request(None).tool_use().choice == "auto"


def test_calls_and_their_outputs_become_one_assistant_turn_and_tool_turns() -> None:
    second = {"type": "function_call", "call_id": "call_b", "name": "now", "arguments": "{}", "status": "completed"}
    body = request(
        input=[
            {"role": "user", "content": "forecast and time?"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
            {"type": "function_call", "call_id": CALL.id, "name": CALL.name, "arguments": CALL.arguments},
            second,
            {"type": "function_call_output", "call_id": CALL.id, "output": "dew"},
            {"type": "function_call_output", "call_id": "call_b", "output": [
                {"type": "input_text", "text": "06:"}, {"type": "input_text", "text": "12"}]},
        ]
    )  # fmt: skip
    assert body.chat_request(None).messages_domain() == (
        ChatMessage("user", "forecast and time?"),
        ChatMessage("assistant", "Checking.", (CALL, ToolCall("call_b", "now", "{}"))),
        ChatMessage("tool", "dew", tool_call_id=CALL.id),
        ChatMessage("tool", "06:12", tool_call_id="call_b"),
    )


def test_a_stored_responses_calls_are_history_its_outputs_answer() -> None:
    called = record(
        messages=[{"role": "system", "content": "Be kind."}, {"role": "user", "content": "forecast?"}],
        instructions="Be kind.",
        choices=[Choice(0, "", "tool_calls", (CALL,))],
    )
    assert history(called) == [
        {"role": "user", "content": "forecast?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": CALL.id, "type": "function", "function": {"name": CALL.name, "arguments": CALL.arguments}}]},
    ]  # fmt: skip
    output = {"type": "function_call_output", "call_id": CALL.id, "output": "dew"}
    chat = request(input=[output]).chat_request(called)
    assert chat.messages_domain()[-1] == ChatMessage("tool", "dew", tool_call_id=CALL.id)

    # Stored as the completion record writes them, the turns read back the same way (a chain of follow-ups).
    stored = CompletionRecord.messages_of(chat.messages_domain())
    assert stored is not None
    assert stored[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": CALL.id, "name": CALL.name, "arguments": CALL.arguments}]}  # fmt: skip
    assert stored[2] == {"role": "tool", "content": "dew", "tool_call_id": CALL.id}
    follow_up = record(messages=stored, choices=[Choice(0, "Dew at dawn.", "stop")])
    again = request(input="thanks").chat_request(follow_up).messages_domain()
    assert [m.role for m in again] == ["user", "assistant", "tool", "assistant", "user"]
    assert again[1].tool_calls == (CALL,)

    # The calls must be answered before the model goes on.
    error = refusal(called, input="never mind")
    assert error.param == "input"
    assert CALL.id in error.message


@pytest.mark.parametrize(("fields", "param", "unsupported"), [
    ({"tools": [FORECAST, FORECAST]}, "tools[1].name", False),
    ({"tools": [FORECAST], "tool_choice": {"type": "function", "name": "now"}}, "tool_choice.name", False),
    ({"tool_choice": "required"}, "tool_choice", False),
    ({"tools": [], "tool_choice": {"type": "function", "name": "now"}}, "tool_choice", False),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, "input[0].call_id", False),
    ({"input": [{"role": "user", "content": "x"},
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]}, "input", False),
    ({"tools": [{"type": "web_search_preview_2025_03_11"}]}, "tools[0]", True),
    ({"tools": [{"type": "code_interpreter", "container": "auto"}]}, "tools[0]", True),
    ({"tools": [{"type": "sundial"}]}, "tools[0]", False),
    ({"tools": [{**FORECAST, "allowed_callers": ["programmatic"]}]}, "tools[0].allowed_callers", True),
    ({"tools": [{**FORECAST, "async": True}]}, "tools[0].async", True),
    ({"tools": [FORECAST], "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": []}}, "tool_choice",
     True),
    ({"tool_choice": {"type": "mcp", "server_label": "x"}}, "tool_choice", True),
    ({"tool_choice": 1}, "tool_choice", False),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}", "namespace": "n"}]},
     "input[0].namespace", True),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": [{"type": "input_file", "file_id": "f"}]}]},
     "input[0].output[0]", True),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": [{"type": "input_text"}]}]},
     "input[0].output[0].text", False),
    ({"input": [{"type": "computer_call", "call_id": "c"}]}, "input[0]", True),
])  # fmt: skip
def test_tool_requests_that_are_not_served_or_not_valid(fields: dict[str, Any], param: str, unsupported: bool) -> None:
    error = refusal(**fields)
    assert error.param == param, error.message
    assert isinstance(error, UnsupportedValue) == unsupported, error.message


def test_the_no_op_values_of_unserved_tool_features_change_nothing() -> None:
    noops = {"allowed_callers": ["direct"], "defer_loading": False, "output_schema": None, "async": None}
    assert request(tools=[{**FORECAST, **noops}]).chat_request(None) == request(tools=[FORECAST]).chat_request(None)
    item = {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}", "caller": {"type": "direct"},
            "namespace": None, "async_": None, "id": "fc_1", "status": "completed"}  # fmt: skip
    answer = {"type": "function_call_output", "call_id": "c", "output": "x", "name": "f", "caller": None}
    plain = [{k: item[k] for k in ("type", "call_id", "name", "arguments")}, {**answer, "name": None}]
    assert request(input=[item, answer]).chat_request(None) == request(input=plain).chat_request(None)


# --------------------------------------------------------------------------- output items and events


def test_output_items_are_the_message_then_the_calls_as_openai_lists_them() -> None:
    calls = [CALL, ToolCall("call_b", "now", "{}")]
    items = output_items(RESPONSE_ID, "Checking.", [], calls, "incomplete")
    assert [(i["type"], i["id"], i["status"]) for i in items] == [
        ("message", message_id(RESPONSE_ID), "completed"),
        ("function_call", call_item_id(RESPONSE_ID, 0), "completed"),
        ("function_call", call_item_id(RESPONSE_ID, 1), "incomplete"),  # the last item is cut short
    ]
    assert [i["type"] for i in output_items(RESPONSE_ID, "", [], calls, "completed")] == ["function_call"] * 2
    assert [i["type"] for i in output_items(RESPONSE_ID, "", [], [], "completed")] == ["message"]


def test_a_stored_response_with_calls_is_rebuilt_with_its_tools() -> None:
    settings = request(tools=[FORECAST], tool_choice="required").tool_settings()
    stored = record(id=RESPONSE_ID, choices=[Choice(0, "", "tool_calls", (CALL,))], tool_settings=settings)
    parsed = OpenAIResponse.model_validate(response_of_record(stored))
    [call] = parsed.output
    assert call.type == "function_call"
    assert (call.id, call.call_id, call.name, call.arguments) == (
        call_item_id(RESPONSE_ID, 0), CALL.id, CALL.name, CALL.arguments
    )  # fmt: skip
    assert parsed.tool_choice == "required"
    assert [tool.name for tool in parsed.tools] == ["get_forecast"]  # type: ignore[union-attr]
    # Written before tool settings were stored: OpenAI's defaults.
    old = OpenAIResponse.model_validate(response_of_record(record(id=RESPONSE_ID)))
    assert (old.tools, old.tool_choice, old.parallel_tool_calls) == ([], "auto", True)


def parsed(events: list[bytes]) -> list[dict[str, Any]]:
    found = []
    for raw in events:
        name, data = raw.decode().strip().split("\n")
        payload = json.loads(data.removeprefix("data: "))
        assert name == f"event: {payload['type']}"
        OPENAI_EVENT.validate_python(payload)  # as OpenAI's own types describe it
        found.append(payload)
    return found


def logprob(token: str) -> TokenLogprob:
    return TokenLogprob(token, -0.5, token.encode())


def test_a_stream_of_text_then_calls_in_pieces_closes_each_item_as_the_next_opens() -> None:
    output = StreamedOutput(RESPONSE_ID, EventSequence(), logprobs_list)
    chunks = [
        GenerateChunk("Checking", 1, logprobs=(logprob("Checking"),)),
        GenerateChunk(".", 1, logprobs=(logprob("."),)),
        GenerateChunk("", 1, tool_calls=(ToolCallDelta(0, CALL.id, CALL.name, '{"city":'),)),
        GenerateChunk("", 1, tool_calls=(ToolCallDelta(0, arguments='"Kyoto"}'), ToolCallDelta(1, "call_b", "now"))),
        GenerateChunk(" (late)", 1),  # text after a call has begun: not streamed
        GenerateChunk("", 1, tool_calls=(ToolCallDelta(1, arguments="{}"),)),
    ]
    sent: list[bytes] = []
    for chunk in chunks:
        sent += output.text(chunk, logprobs=True) + output.calls(chunk.tool_calls)
    sent += output.finish("completed")
    events = parsed(sent)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [(e["type"].removeprefix("response."), e["output_index"]) for e in events] == [
        ("output_item.added", 0), ("content_part.added", 0), ("output_text.delta", 0), ("output_text.delta", 0),
        ("output_text.done", 0), ("content_part.done", 0), ("output_item.done", 0),
        ("output_item.added", 1), ("function_call_arguments.delta", 1), ("function_call_arguments.delta", 1),
        ("function_call_arguments.done", 1), ("output_item.done", 1),
        ("output_item.added", 2), ("function_call_arguments.delta", 2),
        ("function_call_arguments.done", 2), ("output_item.done", 2),
    ]  # fmt: skip
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    assert [(i["type"], i["status"], i.get("arguments")) for i in added] == [
        ("message", "in_progress", None), ("function_call", "in_progress", ""), ("function_call", "in_progress", ""),
    ]  # fmt: skip
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    logprobs = logprobs_list([logprob("Checking"), logprob(".")])
    calls = [CALL, ToolCall("call_b", "now", "{}")]
    assert done == output_items(RESPONSE_ID, "Checking.", logprobs, calls, "completed")
    assert [e["arguments"] for e in events if e["type"] == "response.function_call_arguments.done"] == [
        CALL.arguments, "{}",
    ]  # fmt: skip


def test_a_stream_of_calls_alone_has_no_message_and_nothing_said_an_empty_one() -> None:
    output = StreamedOutput(RESPONSE_ID, EventSequence(), logprobs_list)
    chunk = GenerateChunk("", 1, logprobs=(logprob("{"),), tool_calls=(ToolCallDelta(0, CALL.id, CALL.name, "{}"),))
    events = parsed(output.text(chunk, logprobs=True) + output.calls(chunk.tool_calls) + output.finish("completed"))
    assert [e["type"] for e in events] == [
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
    ]  # fmt: skip
    assert events[-1]["item"]["id"] == call_item_id(RESPONSE_ID, 0)

    silent = StreamedOutput(RESPONSE_ID, EventSequence(), logprobs_list)
    quiet = GenerateChunk("", 1, logprobs=(logprob(""),))
    events = parsed(silent.text(quiet, logprobs=True) + silent.finish("incomplete"))
    assert [e["type"] for e in events] == [
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
    ]  # fmt: skip
    assert events[-1]["item"] == output_items(RESPONSE_ID, "", logprobs_list([logprob("")]), [], "incomplete")[0]
