"""Tools on the in-process engines through the worker's real gRPC API: the sim's documented calls, the
transformers engine's prompt (tools, calls and results rendered by ms-swift's agent template), forced calls by
constrained decoding on the real SmolLM2 checkpoint (20 tries of 20 validate), auto calls read out of its
output, and a trailing assistant message continued."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest

from bailu.common import wire
from bailu.common.errors import InvalidRequest, UnsupportedValue
from bailu.common.grpc_errors import from_status
from bailu.common.types import (
    ChatMessage,
    FinishReason,
    GenerateChunk,
    GenerateRequest,
    SamplingParams,
    Tool,
    ToolCall,
    ToolUse,
)
from bailu.v1 import worker_pb2 as pb
from bailu.v1 import worker_pb2_grpc as pb_grpc
from bailu.worker.engines.sim import SimEngine
from bailu.worker.engines.transformers import TransformersEngine, check_turns
from bailu.worker.server import WorkerServer
from bailu.worker.settings import WorkerSettings
from tests.conftest import MODEL, SMOLLM2_DIR

FORECAST = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}}, "required": ["city"]}
GET_FORECAST = Tool("get_forecast", "A city's weather forecast", json.dumps(FORECAST))
GET_TIME = Tool("get_time", "The local time in a city", json.dumps(CITY))
GET_WEATHER = Tool("get_weather", "The weather in a city now", json.dumps(CITY))
SCHEMAS = {"get_forecast": FORECAST, "get_time": CITY, "get_weather": CITY}
ASK = ChatMessage("user", "What will the weather be in Paris for the next 3 days?")


def generate_request(messages: tuple[ChatMessage, ...], use: ToolUse, **sampling: Any) -> GenerateRequest:
    return GenerateRequest("t", MODEL, messages=messages, tools=use, sampling=SamplingParams(**sampling))


async def generate(server: WorkerServer, req: GenerateRequest) -> list[GenerateChunk]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.InferenceWorkerStub(channel)
        return [wire.chunk_from_pb(r) async for r in stub.Generate(wire.request_to_pb(req), timeout=600)]


async def refusal(server: WorkerServer, req: GenerateRequest) -> Exception:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await generate(server, req)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    return from_status(info.value.code(), info.value.details(), info.value.trailing_metadata())


def calls_of(chunks: list[GenerateChunk]) -> list[tuple[str, dict[str, Any]]]:
    """The calls of a reply that must hold calls, each checked: the contract's pieces, arguments that validate."""
    last = chunks[-1]
    assert last.finish_reason is FinishReason.TOOL_CALLS, chunks
    assert "".join(c.text for c in chunks) == ""  # forced calls never stream as text
    assert last.usage is not None
    assert last.usage.completion_tokens == sum(c.token_count for c in chunks)
    calls = []
    for index, delta in enumerate(last.tool_calls):
        assert delta.index == index
        assert re.fullmatch(r"call_[0-9a-f]{24}", delta.id)
        arguments = json.loads(delta.arguments)
        jsonschema.validate(arguments, SCHEMAS[delta.name])
        calls.append((delta.name, arguments))
    assert calls
    return calls


# The sim: every path through the real gRPC servicer and wire.


async def test_sim_calls_over_grpc_forced_auto_and_text(start_worker) -> None:
    server = await start_worker()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        listed = await pb_grpc.InferenceWorkerStub(channel).ListModels(pb.ListModelsRequest())
    capabilities = wire.capabilities_from_pb(listed.capabilities)
    assert capabilities.tool_calls
    assert capabilities.auto_tool_choice
    tools = (GET_FORECAST, GET_TIME)
    named = calls_of(await generate(server, generate_request((ASK,), ToolUse(tools, "function", "get_time"))))
    assert [name for name, _ in named] == ["get_time"]
    required = calls_of(await generate(server, generate_request((ASK,), ToolUse(tools, "required"))))
    assert [name for name, _ in required] == ["get_forecast"]
    asked = ChatMessage("user", "Use get_forecast for Paris.")
    auto = calls_of(await generate(server, generate_request((asked,), ToolUse(tools, "auto"))))
    assert [name for name, _ in auto] == ["get_forecast"]
    text = await generate(server, generate_request((ASK,), ToolUse(tools, "auto")))
    assert text[-1].finish_reason is FinishReason.STOP
    assert "".join(c.text for c in text)


class NoContinuationSim(SimEngine):
    """A sim that, like the engine servers for now, cannot continue a trailing assistant message."""

    @property
    def continues_assistant(self) -> bool:
        return False


async def test_an_engine_that_cannot_continue_refuses_a_trailing_assistant_message() -> None:
    settings = WorkerSettings(host="127.0.0.1", port=0, http_port=0, engine="sim", model_name=MODEL)
    engine = NoContinuationSim(MODEL, ttft_s=0.001, itl_s=0.001, output_tokens=4, capacity=2)
    server = WorkerServer(settings, engine=engine)
    await server.start()
    try:
        await server.wait_ready(60)
        warmed = engine.tokens_generated
        prefix = (ASK, ChatMessage("assistant", "In Paris it"))
        error = await refusal(server, generate_request(prefix, ToolUse()))
        assert isinstance(error, UnsupportedValue)
        assert error.param == "messages[1].role"
        assert "does not continue a trailing assistant message" in error.message
        assert engine.tokens_generated == warmed
    finally:
        await server.stop(0)


# The transformers engine on the tiny random Llama (SmolLM2's tokenizer and chatml): the prompt and the checks.


@pytest.fixture
async def tiny_worker(start_worker, tiny_model: Path) -> WorkerServer:
    return await start_worker(engine="transformers", model_path=str(tiny_model), max_batch_size=2)


def rendered_prompt(server: WorkerServer, req: GenerateRequest) -> str:
    """The prompt the engine's ms-swift template builds for `req`, as text."""
    engine = server.engine
    assert isinstance(engine, TransformersEngine)
    template = engine._swift.template
    encoded = template.encode(engine._infer_request(req, "render"))
    return str(template.tokenizer.decode(encoded["input_ids"]))


@pytest.mark.slow
async def test_tools_calls_and_results_are_rendered_by_the_agent_template(tiny_worker: WorkerServer) -> None:
    calls = (ToolCall("call_a", "get_weather", '{"city": "Kyoto"}'), ToolCall("call_b", "get_time", '{"city": "Oslo"}'))
    history = (
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Weather in Kyoto, time in Oslo?"),
        ChatMessage("assistant", "Checking.", calls),
        ChatMessage("tool", "06:10", tool_call_id="call_b"),  # out of order: placed by the call's id
        ChatMessage("tool", "sunny, 21 C", tool_call_id="call_a"),
    )
    req = generate_request(history, ToolUse((GET_WEATHER, GET_TIME), "auto"), max_tokens=4, temperature=0.0)
    prompt = rendered_prompt(tiny_worker, req)
    # The tools in the system prompt (hermes, the configured agent template for chatml), after the system text.
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert '"name": "get_weather", "description": "The weather in a city now"' in prompt
    # The calls after the assistant's text, then the results in the order of the calls, then the next turn.
    assert (
        "<|im_start|>assistant\nChecking.<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Kyoto"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nsunny, 21 C\n</tool_response>\n"
        "<tool_response>\n06:10\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    ) in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    # tool_choice none: the model is not shown the tools (the history still shows the calls).
    plain = rendered_prompt(tiny_worker, generate_request(history, ToolUse((GET_WEATHER,), "none")))
    assert "# Tools" not in plain
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in plain
    # And the engine generates from it.
    chunks = await generate(tiny_worker, req)
    assert chunks[-1].finish_reason in (FinishReason.STOP, FinishReason.LENGTH, FinishReason.TOOL_CALLS)


@pytest.mark.slow
async def test_the_agent_template_setting_applies_only_where_the_chat_template_has_none(
    tiny_worker: WorkerServer, tiny_model: Path
) -> None:
    engine = tiny_worker.engine
    assert isinstance(engine, TransformersEngine)
    template = engine._swift.template
    assert template._agent_template == "hermes"  # chatml has none of its own: the setting's default
    other = TransformersEngine(
        MODEL, tiny_model, model_type="llama", template="chatml", agent_template="react_en",
        max_model_len=64, default_max_tokens=4, max_batch_size=1,
    )  # fmt: skip
    other._use_agent_template(template)
    assert template._agent_template == "hermes"  # set already: kept
    unknown = TransformersEngine(
        MODEL, tiny_model, model_type="llama", template="chatml", agent_template="nope",
        max_model_len=64, default_max_tokens=4, max_batch_size=1,
    )  # fmt: skip
    with pytest.raises(ValueError, match="BAILU_WORKER_AGENT_TEMPLATE 'nope' is not one of ms-swift's"):
        unknown._use_agent_template(template)


@pytest.mark.slow
async def test_every_turn_order_check_turns_accepts_renders(tiny_worker: WorkerServer) -> None:
    """ms-swift's template asserts on turn orders it cannot render (an internal error): every order of up to five
    turns that `check_turns` lets through must encode, with the tools shown."""
    engine = tiny_worker.engine
    assert isinstance(engine, TransformersEngine)
    call = ToolCall("call_a", "get_weather", '{"city": "Kyoto"}')
    turns = {
        "system": ChatMessage("system", "Be brief."),
        "user": ChatMessage("user", "Weather?"),
        "assistant": ChatMessage("assistant", "Sunny."),
        "calls": ChatMessage("assistant", "Checking.", (call,)),
        "bare_calls": ChatMessage("assistant", "", (call,)),
        "tool": ChatMessage("tool", "sunny", tool_call_id="call_a"),
    }
    rendered = 0
    for length in range(1, 6):
        for order in itertools.product(turns, repeat=length):
            req = generate_request(tuple(turns[t] for t in order), ToolUse((GET_WEATHER,), "auto"))
            try:
                req.validate()
                check_turns(req.as_messages(), system_allowed=True)
            except InvalidRequest:
                continue
            assert "# Tools" in rendered_prompt(tiny_worker, req), order
            rendered += 1
    assert rendered > 100


@pytest.mark.slow
async def test_a_trailing_assistant_message_is_continued_not_closed(tiny_worker: WorkerServer) -> None:
    history = (ChatMessage("user", "Write about dew."), ChatMessage("assistant", "White dew"))
    req = generate_request(history, ToolUse(), max_tokens=6, temperature=0.0)
    prompt = rendered_prompt(tiny_worker, req)
    assert prompt.endswith("<|im_start|>user\nWrite about dew.<|im_end|>\n<|im_start|>assistant\nWhite dew")
    chunks = await generate(tiny_worker, req)
    assert chunks[-1].finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == sum(c.token_count for c in chunks) > 0


@pytest.mark.slow
async def test_tool_turns_the_template_cannot_render_are_invalid_argument(tiny_worker: WorkerServer) -> None:
    asked = ChatMessage("assistant", "", (ToolCall("call_a", "get_weather", "{not json"),))
    result = ChatMessage("tool", "sunny", tool_call_id="call_a")
    use = ToolUse((GET_WEATHER,), "auto")
    bad_arguments = await refusal(tiny_worker, generate_request((ASK, asked, result), use))
    assert isinstance(bad_arguments, InvalidRequest)
    assert bad_arguments.param == "messages[1].tool_calls[0].function.arguments"
    good = ChatMessage("assistant", "", (ToolCall("call_a", "get_weather", '{"city": "Paris"}'),))
    user_after_results = await refusal(tiny_worker, generate_request((ASK, good, result, ASK), use))
    assert isinstance(user_after_results, InvalidRequest)
    assert user_after_results.param == "messages[3].role"
    orphan = await refusal(tiny_worker, generate_request((ASK, result), use))
    assert isinstance(orphan, InvalidRequest)
    assert orphan.param == "messages[1].role"
    unknown = Tool("broken", parameters=json.dumps({"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}}))
    uncompilable = await refusal(tiny_worker, generate_request((ASK,), ToolUse((GET_WEATHER, unknown), "required")))
    assert isinstance(uncompilable, InvalidRequest)
    assert uncompilable.param == "tools[1].function.parameters"


# The real SmolLM2-135M-Instruct checkpoint.

TRIES = 20


@pytest.mark.e2e
@pytest.mark.slow
async def test_smollm2_named_function_arguments_validate_in_20_of_20_tries(start_worker) -> None:
    """The acceptance check: tool_choice naming a function, sampled (temperature 1), 20 requests at once through
    the worker's gRPC API, each call's arguments parsed and validated against the function's parameters."""
    server = await start_worker(
        engine="transformers", model_path=str(SMOLLM2_DIR), max_batch_size=TRIES, batch_wait_ms=500, max_model_len=768
    )
    # One tool, so that the prompt (the tools are written into it) stays short: 20 rows of it are prefilled.
    use = ToolUse((GET_FORECAST,), "function", "get_forecast")
    # No seed: equal sampling parameters, so that ms-swift runs the 20 as one batch (a seed each would make 20).
    req = generate_request((ASK,), use, temperature=1.0, max_tokens=48)
    replies = await asyncio.gather(*(generate(server, req) for _ in range(TRIES)))
    arguments = []
    for chunks in replies:
        (call,) = calls_of(chunks)
        assert call[0] == "get_forecast"
        arguments.append(json.dumps(call[1], sort_keys=True))
    assert len(set(arguments)) > 1  # sampled, not one answer repeated


@pytest.mark.slow
async def test_smollm2_required_calls_and_auto_calls_read_from_its_output(start_worker) -> None:
    """tool_choice required (one call, and parallel) by constrained decoding; auto, where the model writes the
    hermes markup itself: greedy decoding after two earlier calls in the history makes SmolLM2 call again, and
    after a tool result it answers in text."""
    server = await start_worker(engine="transformers", model_path=str(SMOLLM2_DIR), max_batch_size=2, max_model_len=768)
    tools = (GET_FORECAST, GET_TIME)
    one = await generate(server, generate_request((ASK,), ToolUse(tools, "required", parallel=False), max_tokens=64))
    assert len(calls_of(one)) == 1
    # Greedy decoding repeats a call without end; a mild repetition penalty lets it close the array.
    sampling = {"temperature": 0.0, "max_tokens": 200, "repetition_penalty": 1.2}
    many = await generate(server, generate_request((ASK,), ToolUse(tools, "required"), **sampling))
    assert calls_of(many)

    def called(city: str, i: int) -> ChatMessage:
        return ChatMessage("assistant", "", (ToolCall(f"call_{i}", "get_weather", json.dumps({"city": city})),))

    history = (
        ChatMessage("user", "Weather in Paris?"),
        called("Paris", 1),
        ChatMessage("user", "Weather in Rome?"),
        called("Rome", 2),
        ChatMessage("user", "Weather in Oslo?"),
    )
    auto = ToolUse((GET_WEATHER,), "auto")
    chunks = await generate(server, generate_request(history, auto, temperature=0.0, max_tokens=40))
    last = chunks[-1]
    assert last.finish_reason is FinishReason.TOOL_CALLS
    assert "".join(c.text for c in chunks) == ""  # the call markup never reaches the client as text
    assert [(d.name, json.loads(d.arguments)) for d in last.tool_calls] == [("get_weather", {"city": "Oslo"})]
    answered = (*history, called("Oslo", 3), ChatMessage("tool", "snow, -2 C", tool_call_id="call_3"))
    reply = await generate(server, generate_request(answered, auto, temperature=0.0, max_tokens=40))
    assert reply[-1].finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    assert not reply[-1].tool_calls
    text = "".join(c.text for c in reply)
    assert text
    assert "<tool_call>" not in text
