"""Validation of the domain types shared by the gateway and the worker."""

from __future__ import annotations

import math
from typing import Any

import pytest

from bailu.common.errors import InvalidRequest
from bailu.common.types import (
    MAX_STOP_SEQUENCES,
    ChatMessage,
    GenerateRequest,
    LoadReport,
    SamplingParams,
    Tool,
    ToolCall,
    ToolUse,
    Usage,
)

# (parameter, values just outside its range, values on or just inside its bounds)
RANGES: list[tuple[str, list[Any], list[Any]]] = [
    ("max_tokens", [0, -1, (1 << 20) + 1], [1, 1 << 20]),
    ("temperature", [-0.001, 2.001], [0.0, 2.0]),
    ("top_p", [0.0, -0.1, 1.0001], [1e-9, 1.0]),
    ("top_k", [-1, (1 << 20) + 1], [0, 1 << 20]),
    ("presence_penalty", [-2.01, 2.01], [-2.0, 2.0]),
    ("frequency_penalty", [-2.01, 2.01], [-2.0, 2.0]),
    ("repetition_penalty", [0.0, -1.0, 10.01], [1e-9, 10.0]),
    ("seed", [-(1 << 63) - 1, 1 << 63], [-(1 << 63), (1 << 63) - 1, 0]),
]


@pytest.mark.parametrize(
    ("param", "value"), [(param, value) for param, bad, _ in RANGES for value in bad], ids=lambda v: str(v)
)
def test_out_of_range_sampling_parameter_names_the_parameter(param: str, value: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        SamplingParams(**{param: value}).validate()
    assert info.value.param == param
    assert param in info.value.message
    assert str(value) in info.value.message


@pytest.mark.parametrize(
    ("param", "value"), [(param, value) for param, _, good in RANGES for value in good], ids=lambda v: str(v)
)
def test_sampling_parameter_bounds_are_accepted(param: str, value: Any) -> None:
    SamplingParams(**{param: value}).validate()


FLOAT_PARAMS = ["temperature", "top_p", "presence_penalty", "frequency_penalty", "repetition_penalty"]


@pytest.mark.parametrize("param", FLOAT_PARAMS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_rejected(param: str, value: float) -> None:
    fields: dict[str, Any] = {param: value}
    with pytest.raises(InvalidRequest) as info:
        SamplingParams(**fields).validate()
    assert info.value.param == param
    assert "finite" in info.value.message


def test_unset_sampling_parameters_are_valid() -> None:
    SamplingParams().validate()


def test_first_bad_parameter_is_reported() -> None:
    with pytest.raises(InvalidRequest) as info:
        SamplingParams(max_tokens=0, temperature=5.0).validate()
    assert info.value.param == "max_tokens"


def test_too_many_stop_sequences() -> None:
    SamplingParams(stop=tuple("abcd"[:MAX_STOP_SEQUENCES])).validate()
    with pytest.raises(InvalidRequest) as info:
        SamplingParams(stop=tuple(f"s{i}" for i in range(MAX_STOP_SEQUENCES + 1))).validate()
    assert info.value.param == "stop"
    assert str(MAX_STOP_SEQUENCES) in info.value.message


def test_empty_stop_sequence_is_rejected() -> None:
    with pytest.raises(InvalidRequest) as info:
        SamplingParams(stop=("ok", "")).validate()
    assert info.value.param == "stop"


def _request(**kwargs: Any) -> GenerateRequest:
    values: dict[str, Any] = {"request_id": "r1", "model": "m"}
    values.update(kwargs)
    return GenerateRequest(**values)


def test_chat_request_is_valid() -> None:
    _request(messages=(ChatMessage("system", "be brief"), ChatMessage("user", "hi"))).validate()


def test_prompt_request_is_valid() -> None:
    _request(prompt="Once upon a time").validate()


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"messages": (ChatMessage("user", "hi"),), "prompt": "hi"}],
    ids=["neither", "both"],
)
def test_messages_and_prompt_are_exclusive(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as info:
        _request(**kwargs).validate()
    assert info.value.param == "messages"


def test_empty_messages_rejected() -> None:
    with pytest.raises(InvalidRequest) as info:
        _request(messages=()).validate()
    assert info.value.param == "messages"


def test_empty_prompt_rejected() -> None:
    with pytest.raises(InvalidRequest) as info:
        _request(prompt="").validate()
    assert info.value.param == "prompt"


def test_unknown_role_names_the_message() -> None:
    with pytest.raises(InvalidRequest) as info:
        _request(messages=(ChatMessage("user", "hi"), ChatMessage("function", "x"))).validate()
    assert info.value.param == "messages[1].role"


def test_a_tool_message_needs_the_id_of_the_call_it_answers() -> None:
    with pytest.raises(InvalidRequest) as info:
        _request(messages=(ChatMessage("user", "hi"), ChatMessage("tool", "x"))).validate()
    assert info.value.param == "messages[1].tool_call_id"


def test_a_last_message_from_the_assistant_is_a_prefix_to_continue() -> None:
    prefix = _request(messages=(ChatMessage("user", "hi"), ChatMessage("assistant", "hello")))
    prefix.validate()
    assert prefix.continues_assistant
    assert not _request(messages=(ChatMessage("user", "hi"),)).continues_assistant
    assert not _request(messages=None, prompt="hi").continues_assistant


def test_a_last_message_holding_tool_calls_or_a_prefix_with_forced_calls_is_rejected() -> None:
    calls = (ToolCall("call_1", "ping", "{}"),)
    with pytest.raises(InvalidRequest) as info:
        _request(messages=(ChatMessage("user", "hi"), ChatMessage("assistant", "", calls))).validate()
    assert info.value.param == "messages[1].tool_calls"
    forced = ToolUse((Tool("ping"),), "required")
    with pytest.raises(InvalidRequest) as info:
        _request(messages=(ChatMessage("user", "hi"), ChatMessage("assistant", "Sure")), tools=forced).validate()
    assert info.value.param == "tool_choice"
    assert "trailing assistant message" in info.value.message


def test_assistant_message_before_the_last_is_fine() -> None:
    _request(
        messages=(ChatMessage("user", "hi"), ChatMessage("assistant", "hello"), ChatMessage("user", "again"))
    ).validate()


def test_request_validation_checks_sampling() -> None:
    with pytest.raises(InvalidRequest) as info:
        _request(prompt="x", sampling=SamplingParams(top_p=0.0)).validate()
    assert info.value.param == "top_p"


def test_request_says_whether_it_is_chat() -> None:
    chat = _request(messages=(ChatMessage("user", "hi"),))
    raw = _request(prompt="Once upon")
    assert chat.is_chat
    assert chat.input_param == "messages"
    assert chat.as_messages() == (ChatMessage("user", "hi"),)
    assert not raw.is_chat
    assert raw.input_param == "prompt"
    assert raw.as_messages() == (ChatMessage("user", "Once upon"),)  # a raw prompt is one user turn


def test_reported_model_names_the_adapter() -> None:
    assert _request(prompt="x").reported_model == "m"
    assert _request(prompt="x", adapter="poet").reported_model == "m:poet"


def test_usage_total_and_free_slots() -> None:
    assert Usage(prompt_tokens=7, completion_tokens=5).total_tokens == 12
    assert LoadReport(queued=1, running=2, capacity=2, max_queue=4, ready=True).free_slots == 3


def test_a_request_has_a_known_priority_class() -> None:
    GenerateRequest("r", "m", prompt="hi", priority="batch").validate()
    with pytest.raises(InvalidRequest) as info:
        GenerateRequest("r", "m", prompt="hi", priority="urgent").validate()
    assert info.value.param == "priority"
