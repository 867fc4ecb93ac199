"""Routing by tool capability: forced calls only to engines that can force them, `auto` only to engines with a
tool parser, and a 400 naming the model (never free text instead) when no worker can."""

from __future__ import annotations

import pytest

from bailu.common.errors import UnsupportedValue
from bailu.common.types import (
    TOOL_AUTO,
    TOOL_FUNCTION,
    TOOL_NONE,
    TOOL_REQUIRED,
    EngineCapabilities,
    LoadReport,
    ModelCard,
    Tool,
    ToolUse,
)
from bailu.gateway.workers import WorkerPool
from tests.unit.gateway.conftest import put_worker

BASE = ModelCard("base", "base", "", 4096)
ADAPTER = ModelCard("poet", "adapter", "base", 4096)
IDLE = LoadReport(queued=0, running=0, capacity=4, max_queue=8, ready=True)
BUSY = LoadReport(queued=0, running=4, capacity=4, max_queue=8, ready=True)
TOOLS = (Tool("get_forecast"),)
FORCED = ToolUse(TOOLS, TOOL_REQUIRED)
NAMED = ToolUse(TOOLS, TOOL_FUNCTION, "get_forecast")
AUTO = ToolUse(TOOLS, TOOL_AUTO)


def capable(pool: WorkerPool, address: str, report: LoadReport, *, forced: bool, auto: bool) -> None:
    worker = put_worker(pool, address, report, (BASE, ADAPTER))
    worker.capabilities = EngineCapabilities(tool_calls=forced, auto_tool_choice=auto)


async def test_forced_calls_go_only_to_engines_that_force_them(pool: WorkerPool) -> None:
    capable(pool, "parser-only:1", IDLE, forced=False, auto=True)
    capable(pool, "forcing:1", BUSY, forced=True, auto=False)
    for _ in range(10):
        assert pool.pick("base", "", set(), tools=FORCED).address == "forcing:1"
        assert pool.pick("base", "", set(), tools=NAMED).address == "forcing:1"
        assert pool.pick("base", "", set(), tools=AUTO).address == "parser-only:1"


async def test_without_tool_use_the_load_decides(pool: WorkerPool) -> None:
    capable(pool, "neither:1", IDLE, forced=False, auto=False)
    capable(pool, "both:1", BUSY, forced=True, auto=True)
    for tools in (None, ToolUse(), ToolUse(TOOLS, TOOL_NONE)):
        assert pool.pick("base", "", set(), tools=tools).address == "neither:1"


@pytest.mark.parametrize(
    ("tools", "words"),
    [
        (FORCED, "does not support tool_choice required: its engine cannot force tool calls"),
        (NAMED, "does not support tool_choice function 'get_forecast': its engine cannot force tool calls"),
        (AUTO, "does not support tool_choice auto: its engine has no tool parser"),
    ],
)
async def test_no_able_worker_is_a_400_naming_the_model(pool: WorkerPool, tools: ToolUse, words: str) -> None:
    # Each worker can do the other half only.
    capable(pool, "w:1", IDLE, forced=tools is AUTO, auto=tools is not AUTO)
    with pytest.raises(UnsupportedValue) as info:
        pool.pick("base", "poet", set(), tools=tools)
    assert info.value.http_status == 400
    assert info.value.param == "tool_choice"
    assert info.value.message.startswith(f"model 'base:poet' {words}")


async def test_a_worker_predating_tool_capabilities_is_not_trusted_with_tools(pool: WorkerPool) -> None:
    put_worker(pool, "old:1", IDLE, (BASE,))  # never reported capabilities
    for tools in (FORCED, AUTO):
        with pytest.raises(UnsupportedValue):
            pool.pick("base", "", set(), tools=tools)
    assert pool.pick("base", "", set(), tools=ToolUse()).address == "old:1"


async def test_tools_and_a_json_format_need_both_capabilities(pool: WorkerPool) -> None:
    capable(pool, "tools-only:1", IDLE, forced=True, auto=True)
    pool.workers["tools-only:1"].capabilities = EngineCapabilities(structured_outputs=False)
    capable(pool, "both:1", BUSY, forced=True, auto=True)
    for _ in range(10):
        assert pool.pick("base", "", set(), response_format="json_object", tools=AUTO).address == "both:1"
