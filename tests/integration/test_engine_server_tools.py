"""Tool use through a worker's gRPC API with an engine server: a worker on the vLLM dialect whose engine is the
stand-in server (tests/fixtures/engines/child_server.py, which streams tool calls as vLLM does and refuses
tool_choice auto unless launched with a tool-call parser). The worker launches it with the parser's flags, sends
the tools and the tool turns of the history, and delivers the calls as ToolCallDelta pieces with
FINISH_REASON_TOOL_CALLS."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import grpc
import pytest

from bailu.common import wire
from bailu.common.types import (
    TOOL_AUTO,
    TOOL_FUNCTION,
    TOOL_REQUIRED,
    ChatMessage,
    GenerateChunk,
    GenerateRequest,
    SamplingParams,
    Tool,
    ToolCall,
    ToolUse,
)
from bailu.v1 import worker_pb2 as pb
from bailu.v1 import worker_pb2_grpc as pb_grpc
from tests.conftest import MODEL

CHILD = Path(__file__).resolve().parents[1] / "fixtures" / "engines" / "child_server.py"
WEATHER = Tool(
    "get_weather",
    "The weather in a city.",
    json.dumps({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
)
POEM_PARAMETERS = {"type": "object", "properties": {"title": {"type": "string"}, "lines": {"type": "integer"}}}
POEM = Tool("save_poem", parameters=json.dumps(POEM_PARAMETERS))


async def engine_worker(start_worker, tmp_path: Path, **settings: object):
    """A worker whose vLLM-dialect engine server is the stand-in child server."""
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    return await start_worker(
        engine="vllm",
        model_path=str(model),
        engine_executable=f"{sys.executable} {CHILD}",
        max_loras=0,
        engine_start_timeout_s=30,
        **settings,
    )


def request(use: ToolUse, *history: ChatMessage) -> GenerateRequest:
    return GenerateRequest(
        request_id=f"tools-{time.monotonic_ns()}",
        model=MODEL,
        messages=history or (ChatMessage("user", "Weather in Hangzhou?"),),
        sampling=SamplingParams(max_tokens=32),
        deadline=time.time() + 60,
        tools=use,
    )


async def generate(port: int, req: GenerateRequest) -> list[GenerateChunk]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.InferenceWorkerStub(channel)
        return [wire.chunk_from_pb(m) async for m in stub.Generate(wire.request_to_pb(req), timeout=60)]


def calls_of(chunks: list[GenerateChunk]) -> list[ToolCall]:
    """The calls the pieces make; a call's first piece has its id and name, later pieces only arguments."""
    calls: list[ToolCall] = []
    for delta in (d for c in chunks for d in c.tool_calls):
        if delta.index == len(calls):
            assert delta.id.startswith("chatcmpl-tool-")  # the engine's own id
            assert delta.name
            calls.append(ToolCall(delta.id, delta.name, delta.arguments))
        else:
            assert not delta.id
            assert not delta.name
            call = calls[delta.index]
            calls[delta.index] = ToolCall(call.id, call.name, call.arguments + delta.arguments)
    return calls


@pytest.fixture
async def tool_worker(start_worker, tmp_path: Path):
    return await engine_worker(start_worker, tmp_path, tool_call_parser="hermes")


async def test_worker_with_a_parser_declares_tool_use(tool_worker) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tool_worker.port}") as channel:
        listed = await pb_grpc.InferenceWorkerStub(channel).ListModels(pb.ListModelsRequest())
    assert listed.engine == "vllm"
    assert listed.capabilities.auto_tool_choice
    assert listed.capabilities.tool_calls


async def test_auto_tool_choice_streams_call_pieces_and_finishes_with_tool_calls(tool_worker) -> None:
    chunks = await generate(tool_worker.port, request(ToolUse((WEATHER, POEM), TOOL_AUTO)))
    *body, last = chunks
    # Served at all only because the worker passed --enable-auto-tool-choice --tool-call-parser: the stand-in
    # refuses auto without them, as vLLM does.
    (call,) = calls_of(chunks)
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "white dew"})
    assert len([d for c in chunks for d in c.tool_calls]) == 4  # streamed: the start, then three pieces
    assert "".join(c.text for c in chunks) == ""
    assert last.finish_reason == "tool_calls"
    assert last.usage is not None
    assert all(c.finish_reason is None for c in body)
    assert sum(c.token_count for c in chunks) == last.usage.completion_tokens == 4


async def test_required_calls_with_and_without_parallel_calls(tool_worker) -> None:
    calls = calls_of(await generate(tool_worker.port, request(ToolUse((WEATHER, POEM), TOOL_REQUIRED))))
    assert [c.name for c in calls] == ["get_weather", "save_poem"]
    assert json.loads(calls[1].arguments) == {"title": "white dew"}
    assert len({c.id for c in calls}) == 2
    single = await generate(tool_worker.port, request(ToolUse((WEATHER, POEM), TOOL_REQUIRED, parallel=False)))
    assert [c.name for c in calls_of(single)] == ["get_weather"]
    assert single[-1].finish_reason == "tool_calls"


async def test_a_named_call_finishes_with_tool_calls_though_the_engine_said_stop(tool_worker) -> None:
    chunks = await generate(tool_worker.port, request(ToolUse((WEATHER, POEM), TOOL_FUNCTION, "save_poem")))
    assert [c.name for c in calls_of(chunks)] == ["save_poem"]
    assert chunks[-1].finish_reason == "tool_calls"


async def test_the_history_of_calls_and_results_reaches_the_engine(tool_worker) -> None:
    history = (
        ChatMessage("user", "Weather in Hangzhou?"),
        ChatMessage("assistant", "", tool_calls=(ToolCall("call_0123456789abcdef01234567", "get_weather", "{}"),)),
        ChatMessage("tool", "sunny", tool_call_id="call_0123456789abcdef01234567"),
    )
    # tool_choice none: the tools are not sent, and the model answers in text.
    chunks = await generate(tool_worker.port, request(ToolUse((WEATHER,)), *history))
    # The stand-in names the function of the call the tool message answers: the ids linked up.
    assert "".join(c.text for c in chunks) == "get_weather said sunny"
    assert chunks[-1].finish_reason == "stop"
    assert not [d for c in chunks for d in c.tool_calls]


async def test_without_a_parser_the_worker_declares_and_serves_no_tool_use(start_worker, tmp_path: Path) -> None:
    worker = await engine_worker(start_worker, tmp_path)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{worker.port}") as channel:
        listed = await pb_grpc.InferenceWorkerStub(channel).ListModels(pb.ListModelsRequest())
    assert not listed.capabilities.auto_tool_choice
    assert not listed.capabilities.tool_calls
    for use in (ToolUse((WEATHER,), TOOL_AUTO), ToolUse((WEATHER,), TOOL_REQUIRED)):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await generate(worker.port, request(use))
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "needs a tool-call parser" in (refused.value.details() or "")
    # Plain chat is served as before.
    chunks = await generate(worker.port, request(ToolUse()))
    assert "".join(c.text for c in chunks) == "white dew at dawn"
