"""Tools on /v1/chat/completions: `tools`, `tool_choice`, `parallel_tool_calls` and tool history, what they turn
into (`ToolUse`, `ChatMessage`), and the 400 of each mistake, field by field and across fields."""

from __future__ import annotations

import json
from typing import Any

import pydantic
import pytest
from openai.types.chat import ChatCompletionMessage, ChatCompletionMessageFunctionToolCall
from openai.types.chat.chat_completion_message_function_tool_call import Function

from bailu.common.errors import InvalidRequest, UnsupportedValue
from bailu.common.types import (
    MAX_TOOLS,
    TOOL_AUTO,
    TOOL_FUNCTION,
    TOOL_NONE,
    TOOL_REQUIRED,
    ChatMessage,
    GenerateRequest,
    Tool,
    ToolCall,
    ToolUse,
)
from bailu.gateway.completions import estimated_prompt_tokens
from bailu.gateway.errors import from_validation_error
from bailu.gateway.schemas import CHAT_FIELD_POLICY, MESSAGE_FIELD_POLICY, UNSERVED_ROLES, ChatCompletionRequest
from tests.unit.gateway.test_openapi import openapi_document, schema_validator

USER: dict[str, Any] = {"role": "user", "content": "Will there be dew in Kyoto tomorrow?"}
CITY: dict[str, Any] = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
FORECAST: dict[str, Any] = {
    "type": "function",
    "function": {"name": "get_forecast", "description": "A forecast", "parameters": CITY},
}
CLOCK: dict[str, Any] = {"type": "function", "function": {"name": "now"}}
NAMED: dict[str, Any] = {"type": "function", "function": {"name": "get_forecast"}}
CALL: dict[str, Any] = {
    "id": "call_0123456789abcdef01234567",
    "type": "function",
    "function": {"name": "get_forecast", "arguments": '{"city": "Kyoto"}'},
}
ASKED: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [CALL]}
ANSWER: dict[str, Any] = {"role": "tool", "tool_call_id": CALL["id"], "content": "dew likely before dawn"}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [USER], **fields}


def parse(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(chat(**fields))


def rejection(body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(pydantic.ValidationError) as info:
        ChatCompletionRequest.model_validate(body)
    return from_validation_error(info.value.errors())


def generation(body: ChatCompletionRequest) -> GenerateRequest:
    """The generation the gateway builds of `body` (as `CompletionHandler.build_request` does)."""
    return GenerateRequest(
        "r", "m", messages=body.messages_domain(), sampling=body.sampling(None), tools=body.tool_use()
    )


def cross_field_error(**fields: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        generation(parse(**fields)).validate()
    return info.value


# --------------------------------------------------------------------------- served, not in the policy tables


def test_tools_left_the_field_policy_for_declarations() -> None:
    for name in ("tools", "tool_choice", "parallel_tool_calls"):
        assert name not in CHAT_FIELD_POLICY
        assert name in ChatCompletionRequest.model_fields
    assert "tool_calls" not in MESSAGE_FIELD_POLICY
    assert "tool" not in UNSERVED_ROLES
    # The legacy API stays unserved.
    assert {"functions", "function_call"} <= set(CHAT_FIELD_POLICY)
    assert "function" in UNSERVED_ROLES


# --------------------------------------------------------------------------- what each choice turns into


def test_tools_default_to_auto_as_openai() -> None:
    use = parse(tools=[FORECAST, CLOCK]).tool_use()
    assert use == ToolUse(
        (Tool("get_forecast", "A forecast", json.dumps(CITY, separators=(",", ":"))), Tool("now", "", "")),
        TOOL_AUTO,
        "",
        True,
    )
    assert use.active
    assert not use.forced
    assert use.tools[0].parameters_schema == CITY
    assert use.tools[1].parameters_schema == {"type": "object", "properties": {}}


@pytest.mark.parametrize(
    ("tool_choice", "choice", "function", "forced"),
    [
        ("none", TOOL_NONE, "", False),
        ("auto", TOOL_AUTO, "", False),
        ("required", TOOL_REQUIRED, "", True),
        (NAMED, TOOL_FUNCTION, "get_forecast", True),
    ],
)
def test_each_tool_choice(tool_choice: Any, choice: str, function: str, forced: bool) -> None:
    use = parse(tools=[FORECAST, CLOCK], tool_choice=tool_choice).tool_use()
    assert (use.choice, use.function, use.forced) == (choice, function, forced)
    assert use.active == (choice != TOOL_NONE)
    generation(parse(tools=[FORECAST, CLOCK], tool_choice=tool_choice)).validate()


@pytest.mark.parametrize(("value", "parallel"), [(None, True), (True, True), (False, False)])
def test_parallel_tool_calls_null_means_true(value: bool | None, parallel: bool) -> None:
    assert parse(tools=[FORECAST], parallel_tool_calls=value).tool_use().parallel is parallel


@pytest.mark.parametrize("tool_choice", [None, "none", "auto"])
def test_no_tools_as_sdks_send_them_is_no_tool_use(tool_choice: str | None) -> None:
    assert parse(tools=[], tool_choice=tool_choice, parallel_tool_calls=False).tool_use() == ToolUse()
    assert parse(tools=None, tool_choice=tool_choice).tool_use() == ToolUse()


def test_the_schema_the_client_gave_reaches_the_worker_in_its_key_order() -> None:
    parameters = {"type": "object", "properties": {"zeta": {"type": "string"}, "alpha": {"type": "integer"}}}
    tool = {"type": "function", "function": {"name": "f", "parameters": parameters, "strict": True}}
    sent = parse(tools=[tool]).tool_use().tools[0].parameters
    assert sent == '{"type":"object","properties":{"zeta":{"type":"string"},"alpha":{"type":"integer"}}}'


def test_the_tools_json_counts_in_the_prompt_estimate() -> None:
    plain = estimated_prompt_tokens(generation(parse()))
    with_tools = estimated_prompt_tokens(generation(parse(tools=[FORECAST])))
    assert with_tools >= plain + len(json.dumps(CITY)) // 4
    # Tools not shown to the model (`none`) are not in the prompt.
    assert estimated_prompt_tokens(generation(parse(tools=[FORECAST], tool_choice="none"))) == plain


# --------------------------------------------------------------------------- history


def test_a_call_and_its_result_in_history_reach_the_domain() -> None:
    body = parse(messages=[USER, ASKED, ANSWER])
    assert body.messages_domain() == (
        ChatMessage("user", USER["content"]),
        ChatMessage("assistant", "", (ToolCall(CALL["id"], "get_forecast", '{"city": "Kyoto"}'),)),
        ChatMessage("tool", "dew likely before dawn", tool_call_id=CALL["id"]),
    )
    generation(body).validate()


def test_a_tool_result_may_be_text_parts() -> None:
    answer = {**ANSWER, "content": [{"type": "text", "text": "dew "}, {"type": "text", "text": "likely"}]}
    assert parse(messages=[USER, ASKED, answer]).messages_domain()[2].content == "dew likely"


def test_the_openai_sdks_dump_of_a_reply_with_calls_is_valid_history() -> None:
    reply = ChatCompletionMessage(
        role="assistant",
        content=None,
        tool_calls=[
            ChatCompletionMessageFunctionToolCall(
                id=CALL["id"], type="function", function=Function(name="get_forecast", arguments='{"city":"Kyoto"}')
            )
        ],
    ).model_dump()
    assert (reply["content"], reply["refusal"], reply["function_call"]) == (None, None, None)
    body = parse(messages=[USER, reply, ANSWER], tools=[FORECAST])
    assert body.messages_domain()[1].tool_calls == (ToolCall(CALL["id"], "get_forecast", '{"city":"Kyoto"}'),)


def test_an_assistant_turn_with_text_and_calls_keeps_both() -> None:
    message = parse(messages=[USER, {**ASKED, "content": "Let me look."}, ANSWER]).messages_domain()[1]
    assert (message.content, len(message.tool_calls)) == ("Let me look.", 1)


@pytest.mark.parametrize(
    ("messages", "param", "words"),
    [
        ([USER, {"role": "tool", "content": "x"}], "messages[1]", "needs the tool_call_id"),
        ([USER, ASKED, {**ANSWER, "content": None}], "messages[2]", "a tool message needs content"),
        ([USER, ASKED, {**ANSWER, "tool_call_id": ""}], "messages[2].tool_call_id", "at least 1 character"),
        ([{**USER, "tool_call_id": "call_1"}], "messages[0]", "tool_call_id is a tool message's field"),
        ([{**USER, "tool_calls": [CALL]}], "messages[0]", "tool_calls is an assistant message's field"),
        ([USER, {"role": "assistant", "content": None, "tool_calls": []}, USER], "messages[1]", "needs content"),
        ([USER, ANSWER], "messages", 'answers the tool call "call_0123456789abcdef01234567", which no earlier'),
        ([USER, {**ASKED, "tool_calls": [{**CALL, "function": {"name": "get_forecast"}}]}, ANSWER],
         "messages[1].tool_calls[0].function.arguments", "missing"),
        ([USER, {**ASKED, "tool_calls": [{**CALL, "type": "custom"}]}, ANSWER],
         "messages[1].tool_calls[0].type", "custom tools"),
        ([USER, {**ASKED, "tool_calls": [{**CALL, "id": ""}]}, ANSWER], "messages[1].tool_calls[0].id", "at least"),
        ([USER, {**ASKED, "tool_calls": [{**CALL, "function": {"name": "a b", "arguments": "{}"}}]}, ANSWER],
         "messages[1].tool_calls[0].function.name", "pattern"),
    ],
)  # fmt: skip
def test_bad_tool_history_is_a_400_naming_the_field(messages: list[Any], param: str, words: str) -> None:
    error = rejection(chat(messages=messages))
    assert error.http_status == 400
    assert error.param == param
    assert words in error.message


def test_a_call_left_last_unanswered_is_a_400() -> None:
    error = cross_field_error(messages=[USER, ASKED])
    assert (error.http_status, error.param) == (400, "messages[1].tool_calls")


# --------------------------------------------------------------------------- the 400s of bad tools


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name", "pattern"),
        ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]}, "tools[0].function.name", "pattern"),
        ({"tools": [{"type": "function"}]}, "tools[0].function", "missing"),
        ({"tools": [{"function": {"name": "f"}}]}, "tools[0].type", "missing"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]},
         "tools[0].function.parameters", "not a valid JSON Schema"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
         "tools[0].function.parameters", 'must describe an object (type "object")'),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
         "tools[0].function.parameters", "valid dictionary"),
        ({"tools": [{"type": "function", "function": {"name": "f", "strict": "yes"}}]},
         "tools[0].function.strict", "boolean"),
        ({"tools": [{"type": "function", "function": {"name": "f", "mode": 1}}]},
         "tools[0].function.mode", "unrecognized"),
        ({"tools": [FORECAST] * (MAX_TOOLS + 1)}, "tools", f"at most {MAX_TOOLS}"),
        ({"tools": {}}, "tools", "valid list"),
        ({"tools": [FORECAST], "tool_choice": "always"}, "tool_choice", "'none', 'auto' or 'required'"),
        ({"tools": [FORECAST], "tool_choice": 1}, "tool_choice", 'must be "none", "auto", "required" or'),
        ({"tools": [FORECAST], "tool_choice": {"type": "function", "function": {}}},
         "tool_choice.function.name", "missing"),
        ({"tools": [FORECAST], "tool_choice": {"type": "function"}}, "tool_choice.function", "missing"),
        ({"tools": [FORECAST], "tool_choice": {"type": "function", "function": {"name": "a b"}}},
         "tool_choice.function.name", "pattern"),
        ({"tools": [FORECAST], "parallel_tool_calls": "yes"}, "parallel_tool_calls", "boolean"),
    ],
)  # fmt: skip
def test_malformed_tools_name_the_field(fields: dict[str, Any], param: str, words: str) -> None:
    error = rejection(chat(**fields))
    assert not isinstance(error, UnsupportedValue)
    assert (error.http_status, error.param) == (400, param)
    assert words in error.message


@pytest.mark.parametrize(
    ("fields", "param", "feature"),
    [
        ({"tools": [{"type": "custom", "custom": {"name": "grammar"}}]}, "tools[0].type", "custom tools"),
        ({"tools": [FORECAST], "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto"}}},
         "tool_choice.type", "allowed_tools"),
        ({"tools": [FORECAST], "tool_choice": {"type": "custom", "custom": {"name": "grammar"}}},
         "tool_choice.type", "custom tools"),
    ],
)  # fmt: skip
def test_openais_other_tool_kinds_are_not_supported(fields: dict[str, Any], param: str, feature: str) -> None:
    error = rejection(chat(**fields))
    assert isinstance(error, UnsupportedValue)
    assert error.param == param
    assert f"does not support {feature}" in error.message


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"tools": [FORECAST], "tool_choice": {"type": "function", "function": {"name": "now"}}},
         "tool_choice.function.name", "names the function 'now', which is not among the tools"),
        ({"tools": [], "tool_choice": "required"}, "tool_choice", "tool_choice required needs tools"),
        ({"tool_choice": NAMED}, "tool_choice", "tool_choice function needs tools"),
        ({"tools": [FORECAST, FORECAST]}, "tools[1].function.name", "two tools are named 'get_forecast'"),
        ({"tools": [FORECAST], "tool_choice": "required", "response_format": {"type": "json_object"}},
         "tool_choice", "not both"),
        ({"tools": [FORECAST], "tool_choice": NAMED,
          "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": CITY}}},
         "tool_choice", "not both"),
    ],
)  # fmt: skip
def test_cross_field_mistakes_are_400s_when_the_generation_is_built(
    fields: dict[str, Any], param: str, words: str
) -> None:
    error = cross_field_error(**fields)
    assert (error.http_status, error.param) == (400, param)
    assert words in error.message


def test_auto_tools_with_a_json_response_format_are_accepted() -> None:
    generation(parse(tools=[FORECAST], response_format={"type": "json_object"})).validate()


# --------------------------------------------------------------------------- the published schema agrees


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi_document()


def test_the_openapi_schema_takes_the_tool_shapes(document: dict[str, Any]) -> None:
    validator = schema_validator(document, {"$ref": "#/components/schemas/ChatCompletionRequest"})
    for body in (
        chat(tools=[FORECAST, CLOCK], tool_choice=NAMED, parallel_tool_calls=False),
        chat(tools=[FORECAST], tool_choice="required"),
        chat(tools=[], tool_choice="none"),
        chat(messages=[USER, ASKED, ANSWER], tools=[FORECAST]),
    ):
        validator.validate(body)
        ChatCompletionRequest.model_validate(body)
    for body in (
        chat(tools=[{"type": "custom", "custom": {"name": "g"}}]),
        chat(tools=[{"type": "function", "function": {"name": "a b"}}]),
        chat(tool_choice="always"),
        chat(tool_choice={"type": "function", "function": {}}),
        chat(messages=[USER, {**ASKED, "tool_calls": [{**CALL, "type": "custom"}]}]),
    ):
        assert not validator.is_valid(body), body
