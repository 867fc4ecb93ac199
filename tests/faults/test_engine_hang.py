"""An engine server that stops answering (tests/fixtures/engines/child_server.py's `hang:N` prompts: its
/health still answers, its generation does not, as with a stuck GPU): the worker bounds its wait and reports
a clean, retryable `upstream_stalled`, before the first token and mid-stream; the gateway maps it (a 504, or
an SSE error event); the worker's slot is freed and it keeps serving."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest

from bailu.common import wire
from bailu.common.grpc_errors import ERROR_KEY
from bailu.common.types import ChatMessage, GenerateRequest, SamplingParams
from bailu.v1 import worker_pb2_grpc as pb_grpc
from tests.conftest import MODEL
from tests.integration.test_gateway import CHAT, chat_body

pytestmark = pytest.mark.faults

CHILD = Path(__file__).resolve().parents[1] / "fixtures" / "engines" / "child_server.py"
BOUND_S = 1.5


@pytest.fixture
async def hanging_engine_worker(start_worker, tmp_path: Path):
    """A worker whose vLLM-dialect engine server is the fake child server, with short engine bounds."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    return await start_worker(
        engine="vllm",
        model_path=str(model),
        engine_executable=f"{sys.executable} {CHILD}",
        max_loras=0,
        engine_start_timeout_s=30,
        engine_first_token_timeout_s=BOUND_S,
        engine_idle_timeout_s=BOUND_S,
    )


def request(text: str) -> GenerateRequest:
    return GenerateRequest(
        request_id=f"hang-{time.monotonic_ns()}",
        model=MODEL,
        messages=(ChatMessage("user", text),),
        sampling=SamplingParams(max_tokens=8),
        deadline=time.time() + 60,
    )


@pytest.mark.parametrize(("prompt", "tokens"), [("hang:0", 0), ("hang:2", 2)], ids=["before-first-token", "mid"])
async def test_hung_engine_is_a_clean_grpc_error(hanging_engine_worker, prompt: str, tokens: int) -> None:
    worker = hanging_engine_worker
    async with grpc.aio.insecure_channel(f"127.0.0.1:{worker.port}") as channel:
        stub = pb_grpc.InferenceWorkerStub(channel)
        received = []

        async def generate() -> None:
            async for message in stub.Generate(wire.request_to_pb(request(prompt)), timeout=60):
                received.append(message)

        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await generate()
        elapsed = time.monotonic() - started
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
        assert dict(failed.value.trailing_metadata() or ())[ERROR_KEY] == "Stalled"
        assert "vllm engine" in (failed.value.details() or "")
        # What the engine sent before it hung was relayed (in one message or several: the worker coalesces
        # tokens that arrive together).
        assert sum(m.token_count for m in received) == tokens
        assert elapsed < BOUND_S + 5.0
        assert worker.admission.running == 0  # the slot is free again
        # The engine's other requests are served as before.
        served = [m async for m in stub.Generate(wire.request_to_pb(request("a poem")), timeout=60)]
        assert "".join(wire.chunk_from_pb(m).text for m in served).split() == ["white", "dew", "at", "dawn"]


async def test_gateway_maps_a_hung_engine(hanging_engine_worker, start_gateway) -> None:
    gateway = await start_gateway([f"127.0.0.1:{hanging_engine_worker.port}"])
    body = chat_body(messages=[{"role": "user", "content": "hang:0"}])
    async with httpx.AsyncClient(timeout=60) as http:
        answer = await http.post(gateway.url + CHAT, json=body, headers=gateway.headers)
        assert answer.status_code == 504, answer.text
        assert answer.json()["error"]["code"] == "upstream_stalled"

        streamed = chat_body(messages=[{"role": "user", "content": "hang:1"}], stream=True)
        async with http.stream("POST", gateway.url + CHAT, json=streamed, headers=gateway.headers) as response:
            assert response.status_code == 200
            lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
        events = [line[len("data: ") :] for line in lines]
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["code"] == "upstream_stalled"
        assert "vllm engine sent nothing" in error["message"]
