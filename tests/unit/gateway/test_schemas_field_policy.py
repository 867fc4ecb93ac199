"""The OpenAI field policy: every OpenAI request field is known, accepted at its no-op values, refused as "not
supported" otherwise; what SDKs echo back of a reply is valid history; `metadata` has OpenAI's limits."""

from __future__ import annotations

from typing import Any

import jsonschema
import pydantic
import pytest
from openai.types import completion_create_params as openai_completion
from openai.types.chat import ChatCompletionMessage, ChatCompletionStreamOptionsParam
from openai.types.chat import completion_create_params as openai_chat

from bailu.common.errors import InvalidRequest, UnsupportedValue
from bailu.common.types import ChatMessage
from bailu.gateway.errors import error_body, from_validation_error
from bailu.gateway.field_policy import Unserved, same_json
from bailu.gateway.schemas import (
    CHAT_FIELD_POLICY,
    COMPLETION_FIELD_POLICY,
    MAX_METADATA_KEY_CHARS,
    MAX_METADATA_PAIRS,
    MAX_METADATA_VALUE_CHARS,
    ChatCompletionRequest,
    CompletionRequest,
    StreamOptions,
)
from tests.unit.gateway.test_openapi import openapi_document, schema_validator

Request = type[ChatCompletionRequest | CompletionRequest]
USER = {"role": "user", "content": "hi"}
CHAT_REQUIRED = {"model": "m", "messages": [USER]}
COMPLETION_REQUIRED = {"model": "m", "prompt": "Once upon a time"}
# `stream` is declared on OpenAI's streaming and non-streaming subclasses, not on the base.
OPENAI_CHAT_FIELDS = sorted({*openai_chat.CompletionCreateParamsBase.__annotations__, "stream"})
OPENAI_COMPLETION_FIELDS = sorted({*openai_completion.CompletionCreateParamsBase.__annotations__, "stream"})


def rejection(cls: Request, body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(pydantic.ValidationError) as info:
        cls.model_validate(body)
    return from_validation_error(info.value.errors())


def chat(**fields: Any) -> dict[str, Any]:
    return {**CHAT_REQUIRED, **fields}


def completion(**fields: Any) -> dict[str, Any]:
    return {**COMPLETION_REQUIRED, **fields}


# --------------------------------------------------------------------------- every field is known


@pytest.mark.parametrize(
    ("cls", "fields"), [(ChatCompletionRequest, OPENAI_CHAT_FIELDS), (CompletionRequest, OPENAI_COMPLETION_FIELDS)]
)
def test_every_openai_request_field_is_known(cls: Request, fields: list[str]) -> None:
    assert set(fields) <= set(cls.model_fields), set(fields) - set(cls.model_fields)


def test_every_stream_option_is_known() -> None:
    assert set(ChatCompletionStreamOptionsParam.__annotations__) <= set(StreamOptions.model_fields)


@pytest.mark.parametrize(
    ("cls", "required", "fields"),
    [
        (ChatCompletionRequest, CHAT_REQUIRED, OPENAI_CHAT_FIELDS),
        (CompletionRequest, COMPLETION_REQUIRED, OPENAI_COMPLETION_FIELDS),
    ],
)
def test_every_optional_field_at_null_is_accepted_at_once(
    cls: Request, required: dict[str, Any], fields: list[str]
) -> None:
    """As SDKs that serialise every optional field send it: all of them null, and nothing changes."""
    nulls = {name: None for name in fields if name not in required}
    body = cls.model_validate({**required, **nulls})
    plain = cls.model_validate(required)
    assert body.sampling(None) == plain.sampling(None)
    assert (body.n, body.stream, body.include_usage, body.store, body.metadata) == (1, False, False, None, None)


@pytest.mark.parametrize("field", [f for f in OPENAI_CHAT_FIELDS if f not in CHAT_REQUIRED])
def test_each_chat_field_at_null_is_accepted(field: str) -> None:
    ChatCompletionRequest.model_validate(chat(**{field: None}))


@pytest.mark.parametrize("field", [f for f in OPENAI_COMPLETION_FIELDS if f not in COMPLETION_REQUIRED])
def test_each_completion_field_at_null_is_accepted(field: str) -> None:
    CompletionRequest.model_validate(completion(**{field: None}))


# --------------------------------------------------------------------------- no-op values

CHAT_NOOPS = [
    ("logit_bias", {}),
    ("tools", []),
    ("tool_choice", "none"),
    ("tool_choice", "auto"),
    ("response_format", {"type": "text"}),
    ("reasoning_effort", "none"),
    ("stream_options", {"include_obfuscation": False}),
    ("stream_options", {"include_obfuscation": True, "include_usage": None}),
    ("metadata", {}),
    ("modalities", ["text"]),
    ("parallel_tool_calls", True),
    ("parallel_tool_calls", False),
    ("service_tier", "auto"),
    ("service_tier", "default"),
    ("functions", []),
    ("function_call", "none"),
    ("logprobs", False),
    ("top_logprobs", 0),
    ("verbosity", "medium"),
    ("prompt_cache_key", "conversation-42"),
    ("prompt_cache_retention", "24h"),
    ("prompt_cache_options", {"mode": "explicit", "ttl": "30m"}),
    ("safety_identifier", "user-hash-1"),
    ("n", None),
    ("stream", None),
]
COMPLETION_NOOPS = [("echo", False), ("best_of", 1), ("suffix", ""), ("logit_bias", {}), ("n", None)]


@pytest.mark.parametrize(("field", "value"), CHAT_NOOPS, ids=[f"{f}={v!r}" for f, v in CHAT_NOOPS])
def test_chat_no_op_values_change_nothing(field: str, value: Any) -> None:
    body = ChatCompletionRequest.model_validate(chat(**{field: value}))
    plain = ChatCompletionRequest.model_validate(chat())
    assert body.sampling(None) == plain.sampling(None)
    assert body.messages_domain() == plain.messages_domain()
    assert (body.n, body.stream, body.include_usage) == (1, False, False)


@pytest.mark.parametrize(("field", "value"), COMPLETION_NOOPS, ids=[f"{f}={v!r}" for f, v in COMPLETION_NOOPS])
def test_completion_no_op_values_change_nothing(field: str, value: Any) -> None:
    body = CompletionRequest.model_validate(completion(**{field: value}))
    assert body.sampling(16) == CompletionRequest.model_validate(completion()).sampling(16)
    assert body.prompt_text() == "Once upon a time"


def test_null_means_the_default_for_served_fields() -> None:
    body = ChatCompletionRequest.model_validate(chat(n=None, stream=None, stream_options={"include_usage": None}))
    assert (body.n, body.stream, body.include_usage) == (1, False, False)


# --------------------------------------------------------------------------- not supported

# (Tools are served: tests/unit/gateway/test_schemas_tools.py.)
CHAT_UNSUPPORTED = [
    ("logit_bias", {"50256": -100}),
    ("audio", {"voice": "alloy", "format": "mp3"}),
    ("modalities", ["text", "audio"]),
    ("service_tier", "flex"),
    ("reasoning_effort", "low"),
    ("prediction", {"type": "content", "content": "x"}),
    ("web_search_options", {}),
    ("functions", [{"name": "weather"}]),
    ("function_call", {"name": "weather"}),
    ("verbosity", "low"),
    ("moderation", {"model": "omni-moderation-latest"}),
    # JSON is not Python: false is not 0, 0.0 is not false.
    ("reasoning_effort", False),
    ("functions", {}),
    ("service_tier", 0),
]
COMPLETION_UNSUPPORTED = [
    ("echo", True),
    ("best_of", 3),
    ("suffix", "the end"),
    ("logit_bias", {"1": 1}),
]


def assert_not_supported(error: InvalidRequest, param: str) -> None:
    assert isinstance(error, UnsupportedValue)
    assert error.param == param
    assert error.message.startswith(f"unsupported value for {param}: this deployment does not support ")
    assert "unrecognized" not in error.message
    assert error_body(error)["error"]["code"] == "unsupported_value"
    assert error.http_status == 400


@pytest.mark.parametrize(("field", "value"), CHAT_UNSUPPORTED, ids=[f"{f}={v!r}" for f, v in CHAT_UNSUPPORTED])
def test_chat_features_not_served_are_refused_as_not_supported(field: str, value: Any) -> None:
    error = rejection(ChatCompletionRequest, chat(**{field: value}))
    assert_not_supported(error, field)
    policy = CHAT_FIELD_POLICY[field]
    assert isinstance(policy, Unserved)
    assert policy.feature in error.message
    assert f"(accepted: {policy.accepted})" in error.message


@pytest.mark.parametrize(
    ("field", "value"), COMPLETION_UNSUPPORTED, ids=[f"{f}={v!r}" for f, v in COMPLETION_UNSUPPORTED]
)
def test_completion_features_not_served_are_refused_as_not_supported(field: str, value: Any) -> None:
    assert_not_supported(rejection(CompletionRequest, completion(**{field: value})), field)


def test_a_field_of_the_other_api_is_unrecognized() -> None:
    assert rejection(CompletionRequest, completion(tools=[])).message == "unrecognized request argument supplied: tools"
    assert rejection(ChatCompletionRequest, chat(echo=False)).message == "unrecognized request argument supplied: echo"


def test_ignored_fields_still_have_their_types() -> None:
    assert rejection(ChatCompletionRequest, chat(parallel_tool_calls="yes")).param == "parallel_tool_calls"
    assert rejection(ChatCompletionRequest, chat(prompt_cache_retention="1y")).param == "prompt_cache_retention"
    assert rejection(ChatCompletionRequest, chat(safety_identifier="x" * 65)).param == "safety_identifier"
    bad_option = rejection(ChatCompletionRequest, chat(stream_options={"include_obfuscation": 1}))
    assert bad_option.param == "stream_options.include_obfuscation"


def test_same_json_compares_as_json_does() -> None:
    assert same_json(1, 1.0)
    assert not same_json(0, False)
    assert not same_json(False, 0)
    assert same_json({"type": "text"}, {"type": "text"})
    assert not same_json({"type": "text"}, {"type": "text", "x": None})
    assert not same_json([], {})
    assert not same_json(None, [])


# --------------------------------------------------------------------------- the published schema agrees


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi_document()


@pytest.mark.parametrize(
    ("name", "required", "table", "unsupported"),
    [
        ("ChatCompletionRequest", CHAT_REQUIRED, CHAT_FIELD_POLICY, CHAT_UNSUPPORTED),
        ("CompletionRequest", COMPLETION_REQUIRED, COMPLETION_FIELD_POLICY, COMPLETION_UNSUPPORTED),
    ],
)
def test_the_openapi_schema_takes_exactly_the_no_op_values(
    document: dict[str, Any],
    name: str,
    required: dict[str, Any],
    table: dict[str, Any],
    unsupported: list[tuple[str, Any]],
) -> None:
    """What `/openapi.json` says a field takes is what the gateway accepts (schemathesis relies on it)."""
    schema = document["components"]["schemas"][name]
    validator = schema_validator(document, {"$ref": f"#/components/schemas/{name}"})
    assert set(table) <= set(schema["properties"])
    for field, policy in table.items():
        if isinstance(policy, Unserved):
            for value in policy.noop:
                validator.validate({**required, field: value})
            assert "Not served" in schema["properties"][field]["description"]
    for field, value in unsupported:
        assert not validator.is_valid({**required, field: value}), (field, value)


def test_the_openapi_schema_has_metadata_limits(document: dict[str, Any]) -> None:
    validator = schema_validator(document, {"$ref": "#/components/schemas/ChatCompletionRequest"})
    validator.validate(chat(metadata={"k" * MAX_METADATA_KEY_CHARS: "v" * MAX_METADATA_VALUE_CHARS}))
    for metadata in ({"k" * 65: "v"}, {"k": "v" * 513}, {str(i): "v" for i in range(17)}, {"k": 1}):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(chat(metadata=metadata))


# --------------------------------------------------------------------------- messages echoed back


def test_a_reply_dumped_by_the_openai_sdk_is_valid_history() -> None:
    reply = ChatCompletionMessage(role="assistant", content="White dew at dawn.").model_dump()
    assert {"refusal", "annotations", "audio", "function_call", "tool_calls"} <= set(reply)
    body = ChatCompletionRequest.model_validate(chat(messages=[USER, reply, {"role": "user", "content": "more"}]))
    assert body.messages_domain() == (
        ChatMessage("user", "hi"),
        ChatMessage("assistant", "White dew at dawn."),
        ChatMessage("user", "more"),
    )


def test_annotations_and_an_empty_tool_call_list_are_accepted() -> None:
    citation = {"start_index": 0, "end_index": 3, "title": "Dew", "url": "https://example.org/dew"}
    reply = {
        "role": "assistant",
        "content": "Dew.",
        "annotations": [{"type": "url_citation", "url_citation": citation}],
        "tool_calls": [],
        "name": "poet",
    }
    body = ChatCompletionRequest.model_validate(chat(messages=[USER, reply, USER]))
    assert body.messages_domain()[1] == ChatMessage("assistant", "Dew.")


def test_a_refusal_is_the_assistant_turn_text_when_content_is_null() -> None:
    refused = {"role": "assistant", "content": None, "refusal": "I cannot help with that."}
    body = ChatCompletionRequest.model_validate(chat(messages=[USER, refused, USER]))
    assert body.messages_domain()[1] == ChatMessage("assistant", "I cannot help with that.")


def test_an_assistant_turn_without_content_or_refusal() -> None:
    error = rejection(ChatCompletionRequest, chat(messages=[USER, {"role": "assistant", "content": None}, USER]))
    assert error.param == "messages[1]"
    assert "needs content, a refusal or tool_calls" in error.message


@pytest.mark.parametrize("field", ["refusal", "annotations"])
def test_assistant_fields_on_another_role(field: str) -> None:
    error = rejection(ChatCompletionRequest, chat(messages=[{**USER, field: "no" if field == "refusal" else []}]))
    assert error.param == "messages[0]"
    assert f"{field} is an assistant message's field, not a user message's" in error.message


def test_a_user_turn_needs_content() -> None:
    error = rejection(ChatCompletionRequest, chat(messages=[{"role": "user", "content": None}]))
    assert error.param == "messages[0]"
    assert "a user message needs content" in error.message


@pytest.mark.parametrize(
    ("message", "param", "words"),
    [
        ({"role": "function", "content": "21 C", "name": "weather"}, "messages[1].role", "function results"),
        (
            {"role": "assistant", "content": None, "function_call": {"name": "weather", "arguments": "{}"}},
            "messages[1].function_call",
            "function calling",
        ),
        ({"role": "assistant", "content": "x", "audio": {"id": "audio_1"}}, "messages[1].audio", "audio"),
    ],
)
def test_function_and_audio_history_is_not_supported(message: dict[str, Any], param: str, words: str) -> None:
    error = rejection(ChatCompletionRequest, chat(messages=[USER, message]))
    assert_not_supported(error, param)
    assert words in error.message


# --------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("cls", [ChatCompletionRequest, CompletionRequest])
def test_metadata_at_openai_limits_is_kept(cls: Request) -> None:
    metadata = {f"{i:02d}" + "k" * (MAX_METADATA_KEY_CHARS - 2): "v" * MAX_METADATA_VALUE_CHARS for i in range(16)}
    required = CHAT_REQUIRED if cls is ChatCompletionRequest else COMPLETION_REQUIRED
    assert cls.model_validate({**required, "metadata": metadata}).metadata == metadata


@pytest.mark.parametrize(
    ("metadata", "param", "words"),
    [
        ({str(i): "v" for i in range(MAX_METADATA_PAIRS + 1)}, "metadata", "at most 16 key-value pairs, not 17"),
        ({"k" * 65: "v"}, "metadata", "longer than 64 characters"),
        ({"campaign": "v" * 513}, "metadata.campaign", "at most 512 characters"),
        ({"campaign": 7}, "metadata.campaign", "valid string"),
        ({"campaign": None}, "metadata.campaign", "valid string"),
        (["campaign"], "metadata", "valid dictionary"),
        ({"ab\ud800": "v"}, "metadata", "a key has a lone surrogate at position 2"),
        ({"campaign": "\udfff"}, "metadata.campaign", "lone surrogate at position 0"),
    ],
)
def test_metadata_limits(metadata: Any, param: str, words: str) -> None:
    error = rejection(ChatCompletionRequest, chat(metadata=metadata))
    assert error.param == param
    assert words in error.message
