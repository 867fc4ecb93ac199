"""Which chat turns the transformers engine accepts: what ms-swift's templates can render, refused before them."""

from __future__ import annotations

import pytest

from bailu.common.errors import InvalidRequest
from bailu.common.types import ChatMessage
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
