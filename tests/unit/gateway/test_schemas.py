"""OpenAI request bodies: strict parsing, and the 400 each mistake turns into."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from bailu.common.errors import InvalidRequest
from bailu.common.types import INT64_MAX, INT64_MIN, MAX_TOKENS_LIMIT, TOP_K_LIMIT, ChatMessage, SamplingParams
from bailu.gateway.errors import from_validation_error
from bailu.gateway.schemas import MAX_CANDIDATES, ChatCompletionRequest, CompletionRequest

USER = {"role": "user", "content": "hi"}


def chat(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "messages": [USER]}
    body.update(fields)
    return body


def completion(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "prompt": "Once upon a time"}
    body.update(fields)
    return body


def rejection(cls: type[ChatCompletionRequest | CompletionRequest], body: dict[str, Any]) -> InvalidRequest:
    """The InvalidRequest the gateway answers `body` with."""
    with pytest.raises(pydantic.ValidationError) as info:
        cls.model_validate(body)
    return from_validation_error(info.value.errors())


def test_minimal_chat_request() -> None:
    body = ChatCompletionRequest.model_validate(chat())
    assert body.messages_domain() == (ChatMessage("user", "hi"),)
    assert body.effective_max_tokens() is None
    assert not body.stream
    assert not body.include_usage


def test_unknown_field() -> None:
    # `tools` was the example once; it is an OpenAI field now known (accepted as [], see test_field_policy.py).
    error = rejection(ChatCompletionRequest, chat(frobnicate=[]))
    assert error.param == "frobnicate"
    assert error.message == "unrecognized request argument supplied: frobnicate"


def test_unknown_field_in_a_message() -> None:
    error = rejection(ChatCompletionRequest, chat(messages=[{**USER, "mood": {}}]))
    assert error.param == "messages[0].mood"
    assert "unrecognized request argument" in error.message


def test_missing_model() -> None:
    error = rejection(ChatCompletionRequest, {"messages": [USER]})
    assert error.param == "model"
    assert error.message == "missing required parameter: model"


def test_string_temperature_is_not_coerced() -> None:
    error = rejection(ChatCompletionRequest, chat(temperature="0.5"))
    assert error.param == "temperature"
    assert error.message.startswith("invalid value for temperature:")
    assert "number" in error.message


def test_integer_temperature_is_accepted() -> None:
    assert ChatCompletionRequest.model_validate(chat(temperature=1)).temperature == 1.0


def test_string_max_tokens_is_not_coerced() -> None:
    assert rejection(ChatCompletionRequest, chat(max_tokens="16")).param == "max_tokens"


def test_number_content() -> None:
    error = rejection(ChatCompletionRequest, chat(messages=[{"role": "user", "content": 42}]))
    assert error.param == "messages[0].content"
    assert error.message.startswith("invalid value for messages[0].content:")


def test_bad_content_part_names_the_part() -> None:
    error = rejection(
        ChatCompletionRequest, chat(messages=[{"role": "user", "content": [{"type": "image_url", "text": "x"}]}])
    )
    assert error.param == "messages[0].content[0].type"
    assert "'text'" in error.message


def test_empty_messages() -> None:
    error = rejection(ChatCompletionRequest, chat(messages=[]))
    assert error.param == "messages"
    assert "at least 1" in error.message


@pytest.mark.parametrize("role", ["User", "", "robot"])
def test_bad_role(role: str) -> None:
    error = rejection(ChatCompletionRequest, chat(messages=[USER, {"role": role, "content": "x"}]))
    assert error.param == "messages[1].role"
    assert "'user'" in error.message


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [0, -5])
def test_non_positive_max_tokens(field: str, value: int) -> None:
    error = rejection(ChatCompletionRequest, chat(**{field: value}))
    assert error.param == field
    assert "greater than or equal to 1" in error.message


def test_negative_max_tokens_on_completions() -> None:
    assert rejection(CompletionRequest, completion(max_tokens=-1)).param == "max_tokens"


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", 2.5), ("top_p", 0), ("top_k", -1), ("presence_penalty", -3), ("repetition_penalty", 0)],
)
def test_out_of_range_sampling(field: str, value: float) -> None:
    assert rejection(ChatCompletionRequest, chat(**{field: value})).param == field


def test_n_candidates_are_bounded() -> None:
    assert ChatCompletionRequest.model_validate(chat(n=MAX_CANDIDATES)).n == MAX_CANDIDATES
    for n in (0, MAX_CANDIDATES + 1):
        error = rejection(ChatCompletionRequest, chat(n=n))
        assert error.param == "n"


def test_stop_list_too_long() -> None:
    error = rejection(ChatCompletionRequest, chat(stop=["a", "b", "c", "d", "e"]))
    assert error.param == "stop"
    # The list branch's problem, not the str branch's "Input should be a valid string".
    assert "at most 4 items" in error.message


def test_stop_of_wrong_type() -> None:
    error = rejection(ChatCompletionRequest, chat(stop=7))
    assert error.param == "stop"
    assert error.message.startswith("invalid value for stop:")


def test_stop_list_with_a_number_names_the_item() -> None:
    assert rejection(ChatCompletionRequest, chat(stop=["ok", 3])).param == "stop[1]"


@pytest.mark.parametrize(("stop", "expected"), [("\n", ("\n",)), (["a", "b"], ("a", "b")), (None, ())])
def test_stop_string_or_list(stop: Any, expected: tuple[str, ...]) -> None:
    assert ChatCompletionRequest.model_validate(chat(stop=stop)).sampling(None).stop == expected


def test_max_tokens_and_max_completion_tokens_together() -> None:
    body = ChatCompletionRequest.model_validate(chat(max_tokens=5, max_completion_tokens=6))
    with pytest.raises(InvalidRequest) as info:
        body.effective_max_tokens()
    assert info.value.param == "max_tokens"
    assert "not both" in info.value.message


@pytest.mark.parametrize(
    ("fields", "expected"), [({"max_tokens": 5}, 5), ({"max_completion_tokens": 6}, 6), ({}, None)]
)
def test_effective_max_tokens(fields: dict[str, Any], expected: int | None) -> None:
    assert ChatCompletionRequest.model_validate(chat(**fields)).effective_max_tokens() == expected


def test_text_parts_are_concatenated() -> None:
    parts = [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]
    body = ChatCompletionRequest.model_validate(chat(messages=[{"role": "user", "content": parts}]))
    assert body.messages_domain() == (ChatMessage("user", "Hello, world"),)


def test_developer_role_is_system() -> None:
    body = ChatCompletionRequest.model_validate(chat(messages=[{"role": "developer", "content": "be brief"}, USER]))
    assert body.messages_domain()[0] == ChatMessage("system", "be brief")


def test_sampling_carries_every_parameter() -> None:
    body = ChatCompletionRequest.model_validate(
        chat(
            temperature=0.3,
            top_p=0.9,
            top_k=5,
            presence_penalty=0.1,
            frequency_penalty=-0.1,
            repetition_penalty=1.2,
            stop="END",
            seed=7,
        )
    )
    assert body.sampling(42) == SamplingParams(
        max_tokens=42,
        temperature=0.3,
        top_p=0.9,
        top_k=5,
        presence_penalty=0.1,
        frequency_penalty=-0.1,
        repetition_penalty=1.2,
        stop=("END",),
        seed=7,
    )


def test_include_usage() -> None:
    body = ChatCompletionRequest.model_validate(chat(stream=True, stream_options={"include_usage": True}))
    assert body.include_usage
    assert not ChatCompletionRequest.model_validate(chat(stream=True, stream_options={})).include_usage


def test_prompt_string() -> None:
    assert CompletionRequest.model_validate(completion()).prompt_text() == "Once upon a time"


def test_prompt_as_one_element_list() -> None:
    assert CompletionRequest.model_validate(completion(prompt=["Once"])).prompt_text() == "Once"


@pytest.mark.parametrize(("prompt", "words"), [(["a", "b"], "at most 1 item"), ([], "at least 1 item")])
def test_prompt_list_of_other_length(prompt: list[str], words: str) -> None:
    error = rejection(CompletionRequest, completion(prompt=prompt))
    assert error.param == "prompt"
    assert words in error.message


def test_token_prompt_is_rejected() -> None:
    assert rejection(CompletionRequest, completion(prompt=[[1, 2, 3]])).param == "prompt[0]"


def test_echo_is_not_supported() -> None:
    assert rejection(CompletionRequest, completion(echo=True)).param == "echo"


def test_completion_has_no_messages() -> None:
    error = rejection(CompletionRequest, completion(messages=[USER]))
    assert error.param == "messages"
    assert "unrecognized" in error.message


LONE = "\ud800"

SURROGATE_FIELDS = [
    (ChatCompletionRequest, chat(messages=[{"role": "user", "content": "ab" + LONE}]), "messages[0].content", 2),
    (
        ChatCompletionRequest,
        chat(messages=[{"role": "user", "content": [{"type": "text", "text": LONE}]}]),
        "messages[0].content[0].text",
        0,
    ),
    (ChatCompletionRequest, chat(messages=[{**USER, "name": "n" + LONE}]), "messages[0].name", 1),
    (ChatCompletionRequest, chat(model="m" + LONE), "model", 1),
    (ChatCompletionRequest, chat(stop="\udfff"), "stop", 0),
    (ChatCompletionRequest, chat(stop=["a", "b" + LONE]), "stop[1]", 1),
    (ChatCompletionRequest, chat(user=LONE), "user", 0),
    (CompletionRequest, completion(prompt="x" + LONE + "y"), "prompt", 1),
    (CompletionRequest, completion(prompt=[LONE]), "prompt[0]", 0),
]


@pytest.mark.parametrize(
    ("cls", "body", "param", "position"), SURROGATE_FIELDS, ids=[f"{c[0].__name__}:{c[2]}" for c in SURROGATE_FIELDS]
)
def test_lone_surrogate_names_the_field_and_position(
    cls: type[ChatCompletionRequest | CompletionRequest], body: dict[str, Any], param: str, position: int
) -> None:
    error = rejection(cls, body)
    assert error.param == param
    assert error.message == f"{param} is not valid Unicode text (lone surrogate at position {position})"


def test_astral_characters_nul_and_separators_are_fine() -> None:
    text = "白露 \U0001f343 \x00 \u2028"
    body = ChatCompletionRequest.model_validate(chat(messages=[{"role": "user", "content": text}], stop=[text]))
    assert body.messages_domain()[0].content == text


def test_lone_surrogate_in_a_field_name() -> None:
    error = rejection(ChatCompletionRequest, {**chat(), LONE: 1})
    assert error.param is None
    assert error.message == "a field name in the request body is not valid Unicode text"


@pytest.mark.parametrize(
    ("field", "good", "bad"),
    [
        ("seed", [INT64_MIN, INT64_MAX, 0], [INT64_MIN - 1, INT64_MAX + 1]),
        ("max_tokens", [1, MAX_TOKENS_LIMIT], [MAX_TOKENS_LIMIT + 1, 1 << 32]),
        ("max_completion_tokens", [MAX_TOKENS_LIMIT], [MAX_TOKENS_LIMIT + 1]),
        ("top_k", [0, TOP_K_LIMIT], [TOP_K_LIMIT + 1, 1 << 32]),
    ],
)
def test_integers_fit_the_wire(field: str, good: list[int], bad: list[int]) -> None:
    for value in good:
        assert getattr(ChatCompletionRequest.model_validate(chat(**{field: value})), field) == value
    for value in bad:
        assert rejection(ChatCompletionRequest, chat(**{field: value})).param == field


@pytest.mark.parametrize("stop", ["", ["ok", ""]])
def test_empty_stop_sequence_is_rejected_by_the_schema(stop: Any) -> None:
    assert (rejection(ChatCompletionRequest, chat(stop=stop)).param or "").startswith("stop")


def test_empty_prompt_is_rejected_by_the_schema() -> None:
    assert rejection(CompletionRequest, completion(prompt="")).param == "prompt"


@pytest.mark.parametrize("echo", [0, "false"])
def test_echo_takes_only_the_boolean_false(echo: Any) -> None:
    # 0 == False in Python, not in JSON; the schema says `const: false`. (`null` is accepted: no echo.)
    assert rejection(CompletionRequest, completion(echo=echo)).param == "echo"


def test_model_name_is_bounded() -> None:
    assert rejection(ChatCompletionRequest, chat(model="m" * 257)).param == "model"
