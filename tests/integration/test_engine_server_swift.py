"""The engine-server path end to end on CPU: ms-swift's real `swift deploy` serving the tiny model.

One server for the module (it takes seconds to start); the tests that restart it (an adapter load, a
crash) come last and leave it serving.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry, generate_latest

from bailu.common.errors import BailuError, ModelNotFound, RequestTooLarge, Unavailable
from bailu.common.types import ChatMessage, FinishReason, GenerateChunk, GenerateRequest, SamplingParams, ToolCall
from bailu.worker.engines.server.http import HttpEngine
from bailu.worker.settings import WorkerSettings
from tests.conftest import MODEL, make_lora_adapter

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

PROMPT = "Write about dew."


def chat(text: str = PROMPT, max_tokens: int = 12, **kwargs: object) -> GenerateRequest:
    return GenerateRequest(
        request_id="t",
        model=MODEL,
        messages=(ChatMessage("user", text),),
        sampling=SamplingParams(max_tokens=max_tokens, temperature=0.0),
        **kwargs,  # type: ignore[arg-type]
    )


async def collect(engine: HttpEngine, request: GenerateRequest) -> list[GenerateChunk]:
    return [chunk async for chunk in engine.generate(request)]


def text_of(chunks: list[GenerateChunk]) -> str:
    return "".join(c.text for c in chunks)


@pytest.fixture(scope="module")
def adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real PEFT LoRA adapter for the tiny model, with random (non-zero) weights so that it shows."""
    return make_lora_adapter(tiny_model, tmp_path_factory.mktemp("adapters") / "poet", seed=1)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(tiny_model: Path, adapter: Path) -> AsyncIterator[HttpEngine]:
    settings = WorkerSettings(
        engine="swift",
        model_name=MODEL,
        model_path=tiny_model,
        adapters={"poet": adapter},
        max_model_len=512,
        max_batch_size=2,
        default_max_tokens=16,
        engine_start_timeout_s=120,
        engine_restart_backoff_s=0.1,
        engine_stop_grace_s=10,
        # ms-swift's agent template: histories with tool turns render (the worker serves no tool use on it).
        agent_template="hermes",
    )
    engine = HttpEngine.from_settings(settings)
    await engine.start()
    yield engine
    await engine.close()


async def test_a_history_with_tool_turns_renders_through_the_agent_template(engine: HttpEngine) -> None:
    assert engine.dialect.argv(engine.config)[-4:-2] == ["--agent_template", "hermes"]  # before --adapters
    assert not engine.capabilities.tool_calls
    assert not engine.capabilities.auto_tool_choice
    call = ToolCall("call_0123456789abcdef01234567", "get_weather", '{"city": "Hangzhou"}')
    history = (
        ChatMessage("user", "Weather in Hangzhou?"),
        ChatMessage("assistant", "", tool_calls=(call,)),
        ChatMessage("tool", "sunny", tool_call_id=call.id),
    )
    sampling = SamplingParams(max_tokens=4, temperature=0.0)
    chunks = await collect(engine, GenerateRequest("t", MODEL, messages=history, sampling=sampling))
    question = await collect(engine, GenerateRequest("t", MODEL, messages=history[:1], sampling=sampling))
    assert chunks[-1].finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    assert chunks[-1].usage is not None
    assert question[-1].usage is not None
    # The call (its name and arguments) and its result were rendered into the prompt.
    assert chunks[-1].usage.prompt_tokens > question[-1].usage.prompt_tokens + 10
    assert not [d for c in chunks for d in c.tool_calls]


async def test_streamed_chat_keeps_the_contract_and_matches_the_engines_own_answer(engine: HttpEngine) -> None:
    chunks = await collect(engine, chat(max_tokens=12))
    *body, last = chunks
    assert body, "no text chunk"
    assert all(c.finish_reason is None for c in body)
    assert last.finish_reason in (FinishReason.LENGTH, FinishReason.STOP)
    assert last.usage is not None
    assert last.usage.prompt_tokens > 5
    assert sum(c.token_count for c in chunks) == last.usage.completion_tokens <= 12
    assert all(c.served_model == MODEL for c in chunks)

    # The engine's own non-streamed answer to the same greedy request: the stream was assembled faithfully.
    async with httpx.AsyncClient(base_url=engine.base_url) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": PROMPT}],
                "max_tokens": 12,
                "temperature": 0,
            },
        )
    reply = response.json()
    assert reply["choices"][0]["message"]["content"] == text_of(chunks)
    assert reply["usage"]["completion_tokens"] == last.usage.completion_tokens


async def test_raw_prompt_goes_to_completions(engine: HttpEngine) -> None:
    raw = GenerateRequest("t", MODEL, prompt=PROMPT, sampling=SamplingParams(max_tokens=6, temperature=0.0))
    chunks = await collect(engine, raw)
    as_chat = await collect(engine, chat(max_tokens=6))
    assert chunks[-1].usage is not None
    assert as_chat[-1].usage is not None
    # ms-swift serves a raw prompt as one user turn, which the capabilities report.
    assert not engine.capabilities.raw_completions
    assert chunks[-1].usage.prompt_tokens == as_chat[-1].usage.prompt_tokens
    assert text_of(chunks) == text_of(as_chat)


async def test_adapter_is_selected_by_name(engine: HttpEngine) -> None:
    assert [c.name for c in engine.models()] == [MODEL, "poet"]
    base = await collect(engine, chat())
    tuned = await collect(engine, chat(adapter="poet"))
    assert text_of(tuned) != text_of(base)
    assert tuned[-1].served_model == f"{MODEL}:poet"
    assert text_of(await collect(engine, chat(adapter="poet"))) == text_of(tuned)
    assert text_of(await collect(engine, chat())) == text_of(base)


async def test_unknown_adapter_is_model_not_found(engine: HttpEngine) -> None:
    with pytest.raises(ModelNotFound):
        engine.check_target(chat(adapter="nope"))
    with pytest.raises(ModelNotFound):
        await collect(engine, chat(adapter="nope"))


async def test_prompt_longer_than_the_context_is_request_too_large(engine: HttpEngine) -> None:
    with pytest.raises(RequestTooLarge, match="max_length"):
        await collect(engine, chat("dew " * 600))


async def test_cancelled_stream_frees_the_request(engine: HttpEngine) -> None:
    stream = engine.generate(chat(max_tokens=400))
    first = await anext(stream)  # type: ignore[call-overload]
    assert first.text or first.token_count
    await stream.aclose()  # type: ignore[attr-defined]
    assert engine.server.inflight == 0
    # The engine is free for the next request (nothing is left holding a slot).
    chunks = await asyncio.wait_for(collect(engine, chat(max_tokens=4)), 60)
    assert chunks[-1].finish_reason is not None


async def test_worker_metrics_report_the_engine(engine: HttpEngine) -> None:
    registry = CollectorRegistry()
    engine.register_metrics(registry)
    text = generate_latest(registry).decode()
    assert 'bailu_worker_engine_up{engine="swift"} 1.0' in text
    # ms-swift exports no metrics of its own: no made-up load.
    assert "bailu_worker_engine_queued_requests" not in text
    assert not engine.capabilities.native_metrics


async def test_bad_adapter_path_is_refused_without_a_restart(engine: HttpEngine, tmp_path: Path) -> None:
    pid = engine.server.supervisor.pid
    with pytest.raises(ModelNotFound, match=r"adapter_config\.json"):
        await engine.load_adapter("ghost", str(tmp_path / "missing"))
    assert engine.server.supervisor.pid == pid
    assert "ghost" not in engine.adapters


async def test_loading_an_adapter_restarts_the_engine_with_it(engine: HttpEngine, adapter: Path) -> None:
    assert engine.capabilities.adapter_load_restarts_engine
    pid = engine.server.supervisor.pid
    expected = text_of(await collect(engine, chat(adapter="poet")))
    card = await engine.load_adapter("poet2", str(adapter))
    assert (card.name, card.kind, card.base_model) == ("poet2", "adapter", MODEL)
    assert engine.server.supervisor.pid != pid
    assert engine.server.supervisor.restarts == 0  # a controlled restart, not a crash
    # The same weights under the new name give the same text; the first adapter is still there.
    assert text_of(await collect(engine, chat(adapter="poet2"))) == expected
    assert text_of(await collect(engine, chat(adapter="poet"))) == expected
    # Loading it again is a no-op.
    pid = engine.server.supervisor.pid
    await engine.load_adapter("poet2", str(adapter))
    assert engine.server.supervisor.pid == pid
    await engine.unload_adapter("poet2")
    with pytest.raises(ModelNotFound):
        await collect(engine, chat(adapter="poet2"))


async def test_engine_dying_mid_stream_is_a_clear_error_then_it_is_restarted(engine: HttpEngine) -> None:
    stream = engine.generate(chat(max_tokens=480))
    await anext(stream)  # type: ignore[call-overload]
    pid = engine.server.supervisor.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(BailuError) as info:
        await asyncio.wait_for(collect_rest(stream), 60)
    assert isinstance(info.value, Unavailable)
    assert "engine" in info.value.message
    assert time.monotonic() - started < 60
    # The supervisor restarts it; requests wait for it instead of failing.
    chunks = await asyncio.wait_for(collect(engine, chat(max_tokens=4)), 240)
    assert chunks[-1].finish_reason is not None
    assert engine.server.supervisor.restarts == 1
    assert engine.server.supervisor.pid != pid


async def collect_rest(stream: AsyncIterator[GenerateChunk]) -> None:
    async for _ in stream:
        pass
