"""The request id of a streaming handler survives its generator being closed from another context."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from bailu.common.logging import request_id_var, reset_request_id


async def _handler(reset: object, cleaned: list[str]) -> AsyncGenerator[int, None]:
    token = request_id_var.set("rid-1")
    try:
        for i in range(10):
            yield i
    finally:
        reset(token)  # type: ignore[operator]
        cleaned.append(request_id_var.get())


async def _close_elsewhere(reset: object) -> list[str]:
    """Start the handler in one task, then close it from another, as asyncio's finalizer closes an abandoned
    async generator."""
    cleaned: list[str] = []
    stream = _handler(reset, cleaned)

    async def first() -> None:
        await stream.__anext__()

    await asyncio.create_task(first())
    await asyncio.create_task(stream.aclose())
    return cleaned


async def test_a_plain_reset_fails_when_the_generator_is_closed_in_another_context() -> None:
    with pytest.raises(ValueError, match="different Context"):
        await _close_elsewhere(request_id_var.reset)


async def test_reset_request_id_lets_the_cleanup_finish_in_another_context() -> None:
    # The cleanup ran to its end, in the closing task's context (which never held the handler's id).
    assert await _close_elsewhere(reset_request_id) == [""]
    assert request_id_var.get() == ""


async def test_reset_request_id_restores_the_previous_id_in_the_same_context() -> None:
    outer = request_id_var.set("outer")
    try:
        token = request_id_var.set("inner")
        reset_request_id(token)
        assert request_id_var.get() == "outer"
    finally:
        request_id_var.reset(outer)
