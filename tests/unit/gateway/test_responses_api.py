"""The Responses API request: every OpenAI field known, no-op values accepted, unserved ones refused as not
supported; input items (as clients write them and as this API's output echoed back) become chat messages; a
stored response continues without its instructions."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest
from openai.types.responses import Response as OpenAIResponse
from openai.types.responses import (
    easy_input_message_param,
    response_create_params,
    response_input_param,
    response_input_text_param,
    response_output_message_param,
    response_output_refusal_param,
    response_output_text_param,
    response_text_config_param,
)
from openai.types.shared_params import reasoning

from bailu.common.errors import InvalidRequest, UnsupportedValue
from bailu.common.records import Choice, CompletionRecord
from bailu.common.types import Usage
from bailu.gateway.errors import from_validation_error
from bailu.gateway.field_policy import Unserved
from bailu.gateway.responses_api import (
    REASONING_FIELD_POLICY,
    RESPONSES_FIELD_POLICY,
    TEXT_FIELD_POLICY,
    ContentPart,
    InputMessage,
    ReasoningConfig,
    ResponseCreateRequest,
    ResponsesStreamOptions,
    TextConfig,
    history,
)
from bailu.gateway.responses_api_format import Echo, message_id, response_object, response_of_record

REQUIRED = {"model": "m", "input": "hi"}
OPENAI_FIELDS = sorted({*response_create_params.ResponseCreateParamsBase.__annotations__, "stream"})


def request(**fields: Any) -> ResponseCreateRequest:
    return ResponseCreateRequest.model_validate({**REQUIRED, **fields})


def rejection(**fields: Any) -> InvalidRequest:
    with pytest.raises(pydantic.ValidationError) as info:
        request(**fields)
    return from_validation_error(info.value.errors())


def record(**fields: Any) -> CompletionRecord:
    values: dict[str, Any] = {
        "id": "resp_1",
        "created": 1700000000.5,
        "key_id": "k",
        "model": "m",
        "served_model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "prompt": None,
        "choices": [Choice(0, "hello", "stop")],
        "sampling": {},
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "ttft_ms": 1.0,
        "total_ms": 2.0,
        "request_id": "r",
    }
    return CompletionRecord(**{**values, **fields})


# --------------------------------------------------------------------------- every field is known


@pytest.mark.parametrize(("model", "openai_fields"), [
    (ResponseCreateRequest, OPENAI_FIELDS),
    (ResponsesStreamOptions, response_create_params.StreamOptions.__annotations__),
    (TextConfig, response_text_config_param.ResponseTextConfigParam.__annotations__),
    (ReasoningConfig, reasoning.Reasoning.__annotations__),
    (InputMessage, easy_input_message_param.EasyInputMessageParam.__annotations__),
    (InputMessage, response_input_param.Message.__annotations__),
    (InputMessage, response_output_message_param.ResponseOutputMessageParam.__annotations__),
    (ContentPart, response_input_text_param.ResponseInputTextParam.__annotations__),
    (ContentPart, response_output_text_param.ResponseOutputTextParam.__annotations__),
    (ContentPart, response_output_refusal_param.ResponseOutputRefusalParam.__annotations__),
])  # fmt: skip
def test_every_openai_field_is_known(model: type[pydantic.BaseModel], openai_fields: Any) -> None:
    assert set(openai_fields) <= set(model.model_fields), set(openai_fields) - set(model.model_fields)


def test_every_optional_field_at_null_is_accepted_and_changes_nothing() -> None:
    nulls = {name: None for name in OPENAI_FIELDS if name not in REQUIRED}
    assert request(**nulls).chat_request(None) == request().chat_request(None)


@pytest.mark.parametrize(("table", "wrap"), [
    (RESPONSES_FIELD_POLICY, lambda name, value: {name: value}),
    (TEXT_FIELD_POLICY, lambda name, value: {"text": {name: value}}),
    (REASONING_FIELD_POLICY, lambda name, value: {"reasoning": {name: value}}),
])  # fmt: skip
def test_unserved_fields_take_their_no_op_values_and_refuse_the_others(table: dict[str, Any], wrap: Any) -> None:
    for name, policy in table.items():
        if not isinstance(policy, Unserved):
            continue
        for noop in policy.noop:
            assert request(**wrap(name, noop)).chat_request(None) == request().chat_request(None), (name, noop)
        error = rejection(**wrap(name, {"asks": "for something"}))
        assert isinstance(error, UnsupportedValue), name
        assert error.param is not None
        assert error.param.endswith(name)
        assert "does not support" in error.message


def test_unknown_fields_stay_unrecognized() -> None:
    error = rejection(frequency_penalty=1)
    assert not isinstance(error, UnsupportedValue)
    assert "unrecognized request argument" in error.message
    assert error.param == "frequency_penalty"


def test_text_format_is_the_chat_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    flat = {"type": "json_schema", "name": "poem", "schema": schema, "strict": True}
    chat = request(text={"format": flat}).chat_request(None)
    assert chat.response_format is not None
    assert chat.response_format.model_dump(by_alias=True, exclude_none=True) == {
        "type": "json_schema",
        "json_schema": {"name": "poem", "schema": schema, "strict": True},
    }
    assert chat.constraint() == (False, '{"type":"object","properties":{"a":{"type":"string"}},"required":["a"]}')
    assert request(text={"format": {"type": "json_object"}}).chat_request(None).constraint() == (True, "")
    assert request(text={"format": {"type": "text"}}).chat_request(None).constraint() == (False, "")


# --------------------------------------------------------------------------- input items


def test_input_items_become_chat_messages_after_the_instructions() -> None:
    body = request(
        instructions="Be brief.",
        input=[
            {"role": "developer", "content": "No rhymes."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a poem"}]},
            {
                "id": "msg_1", "type": "message", "role": "assistant", "status": "completed", "phase": "final_answer",
                "content": [
                    {"type": "output_text", "text": "dew", "annotations": [], "logprobs": []},
                    {"type": "refusal", "refusal": "!"},
                ],
            },
            {"role": "user", "content": "more"},
        ],
    )  # fmt: skip
    chat = body.chat_request(None)
    assert [(m.role, m.content) for m in chat.messages_domain()] == [
        ("system", "Be brief."),
        ("system", "No rhymes."),
        ("user", "a poem"),
        ("assistant", "dew!"),
        ("user", "more"),
    ]


def test_the_request_carries_its_sampling_store_stream_and_metadata() -> None:
    chat = request(
        max_output_tokens=7, temperature=0.3, top_p=0.9, store=False, stream=True, metadata={"a": "b"}, user="u"
    ).chat_request(None)
    assert (chat.effective_max_tokens(), chat.temperature, chat.top_p) == (7, 0.3, 0.9)
    assert (chat.store, chat.stream, chat.metadata, chat.user) == (False, True, {"a": "b"}, "u")
    assert chat.logprobs_wanted() == (False, 0)
    assert request(include=["message.output_text.logprobs"]).chat_request(None).logprobs_wanted() == (True, 0)
    assert request(top_logprobs=3).chat_request(None).logprobs_wanted() == (True, 3)
    # Includes that name outputs this deployment never produces ask for nothing.
    assert request(include=["reasoning.encrypted_content"]).chat_request(None).logprobs_wanted() == (False, 0)


@pytest.mark.parametrize(("item", "param", "unsupported"), [
    ({"type": "custom_tool_call", "call_id": "c", "name": "f", "input": "x"}, "input[0]", True),
    ({"type": "function_call", "name": "f", "arguments": "{}"}, "input[0].call_id", False),
    ({"type": "reasoning", "id": "rs_1", "summary": []}, "input[0]", True),
    ({"type": "web_search_call", "id": "ws_1", "status": "completed"}, "input[0]", True),
    ({"type": "item_reference", "id": "msg_1"}, "input[0]", True),
    ({"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}, "input[0].content[0]", True),
    ({"type": "bogus"}, "input[0]", False),
    ({"role": "user", "content": [{"type": "output_text", "text": "x"}]}, "input[0]", False),
    ({"role": "assistant", "content": [{"type": "refusal", "text": "x"}]}, "input[0].content[0]", False),
    ({"role": "user", "content": [{"type": "input_text", "text": "x", "annotations": []}]}, "input[0].content[0]",
     False),
    ({"role": "tool", "content": "x"}, "input[0].role", False),
])  # fmt: skip
def test_input_items_that_are_not_served_or_not_valid(item: dict[str, Any], param: str, unsupported: bool) -> None:
    error = rejection(input=[item])
    assert isinstance(error, UnsupportedValue) == unsupported, error.message
    assert error.param == param, error.message


# --------------------------------------------------------------------------- previous responses


def test_history_drops_the_instructions_that_led_the_stored_conversation() -> None:
    stored = record(
        messages=[{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"}], instructions="Be kind."
    )
    assert history(stored) == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    # Without instructions, a system message is the client's own input: it stays.
    plain = record(messages=[{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"}])
    assert history(plain)[0] == {"role": "system", "content": "Be kind."}
    chat = request(input="more", instructions="Be brief.").chat_request(stored)
    assert [m.content for m in chat.messages_domain()] == ["Be brief.", "hi", "hello", "more"]


def test_records_of_other_versions_read_without_the_responses_fields() -> None:
    old = record().to_json().replace(',"instructions":null,"previous_response_id":null', "")
    assert "instructions" not in old
    assert CompletionRecord.from_json(old) == record()


# --------------------------------------------------------------------------- the Response object


def test_response_objects_are_what_the_openai_client_parses() -> None:
    built = response_object(
        "resp_1", 1700000000, "m", Echo(instructions="x", metadata={"a": "b"}), status="completed",
        output=[{"id": message_id("resp_1"), "type": "message", "role": "assistant", "status": "completed",
                 "content": [{"type": "output_text", "text": "hi", "annotations": [], "logprobs": []}]}],
        usage=Usage(3, 2),
    )  # fmt: skip
    parsed = OpenAIResponse.model_validate(built)
    assert parsed.output_text == "hi"
    assert parsed.usage is not None
    assert parsed.usage.total_tokens == 5
    assert parsed.output[0].id == "msg_1"


def test_a_stored_record_is_rebuilt_as_its_response() -> None:
    stored = record(
        choices=[Choice(0, "dew on", "length")],
        sampling={"max_tokens": 2, "temperature": 0.5},
        metadata={"a": "b"},
        instructions="Be kind.",
        previous_response_id="resp_0",
        resolved_model="m@v0003",
    )
    parsed = OpenAIResponse.model_validate(response_of_record(stored))
    assert (parsed.id, parsed.model, parsed.output_text) == ("resp_1", "m@v0003", "dew on")
    assert parsed.status == "incomplete"
    assert parsed.incomplete_details is not None
    assert parsed.incomplete_details.reason == "max_output_tokens"
    assert (parsed.max_output_tokens, parsed.temperature) == (2, 0.5)
    assert (parsed.instructions, parsed.previous_response_id, parsed.metadata) == ("Be kind.", "resp_0", {"a": "b"})
