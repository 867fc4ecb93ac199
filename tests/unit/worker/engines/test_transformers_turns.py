"""Which chat turns the transformers engine accepts: what ms-swift's templates can render, refused before them."""

from __future__ import annotations

import pytest

from bailu.common.errors import InvalidRequest
from bailu.common.types import ChatMessage, ToolCall
from bailu.worker.engines.transformers import check_turns


def turns(*roles: str) -> tuple[ChatMessage, ...]:
    return tuple(ChatMessage(role, "hi") for role in roles)


@pytest.mark.parametrize(
    "roles",
    [
        ("user",),
        ("system", "user"),
        ("user", "assistant", "user"),
        ("system", "user", "assistant", "user"),
        ("assistant", "user"),  # ms-swift puts an empty user turn before an opening assistant one
        ("system", "assistant", "user"),
    ],
)
def test_renderable_turns_pass(roles: tuple[str, ...]) -> None:
    check_turns(turns(*roles), system_allowed=True)


@pytest.mark.parametrize(
    ("roles", "param"),
    [
        (("user", "system"), "messages[1].role"),
        (("system",), "messages"),
        (("system", "system", "user"), "messages[1].role"),
        (("user", "user"), "messages[1].role"),
        (("user", "assistant", "assistant", "user"), "messages[2].role"),
        (("system", "user", "assistant", "system", "user"), "messages[3].role"),
    ],
)
def test_unrenderable_turns_name_the_first_bad_message(roles: tuple[str, ...], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_turns(turns(*roles), system_allowed=True)
    assert info.value.param == param
    assert "alternating" in info.value.message or "after the system message" in info.value.message


def test_a_system_message_needs_a_template_with_a_system_slot() -> None:
    check_turns(turns("user"), system_allowed=False)
    with pytest.raises(InvalidRequest) as info:
        check_turns(turns("system", "user"), system_allowed=False)
    assert info.value.param == "messages[0].role"


CALL = (ToolCall("call_a", "get_weather", '{"city": "Kyoto"}'),)


def chat(*specs: str) -> tuple[ChatMessage, ...]:
    """Turns by role, "calls" for an assistant message with tool calls."""
    return tuple(
        ChatMessage("assistant", "", CALL)
        if spec == "calls"
        else ChatMessage(spec, "sunny", tool_call_id="call_a")
        if spec == "tool"
        else ChatMessage(spec, "hi")
        for spec in specs
    )


@pytest.mark.parametrize(
    "specs",
    [
        ("user", "calls", "tool"),
        ("system", "user", "calls", "tool", "tool"),
        ("user", "calls", "tool", "assistant", "user"),
        ("user", "calls", "tool", "calls", "tool"),
        ("user", "calls", "user"),  # calls whose results were never sent
        ("user", "assistant"),  # a trailing assistant message: a prefix to continue
        ("user", "calls", "tool", "assistant"),
    ],
)
def test_tool_turns_ms_swift_renders_pass(specs: tuple[str, ...]) -> None:
    check_turns(chat(*specs), system_allowed=True)


@pytest.mark.parametrize(
    ("specs", "param", "says"),
    [
        (("user", "tool"), "messages[1].role", "tool result without a call"),
        (("tool", "user"), "messages[0].role", "tool result without a call"),
        (("user", "assistant", "tool"), "messages[2].role", "tool result without a call"),
        (("user", "calls", "tool", "user"), "messages[3].role", "renders tool results as the query"),
        (("user", "calls", "assistant"), "messages[2].role", "must be 'tool'"),
        (("user", "calls", "tool", "calls"), "messages[3].tool_calls", "send their results"),
    ],
)
def test_tool_turns_ms_swift_cannot_render_are_refused_saying_why(
    specs: tuple[str, ...], param: str, says: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_turns(chat(*specs), system_allowed=True)
    assert info.value.param == param
    assert says in info.value.message
