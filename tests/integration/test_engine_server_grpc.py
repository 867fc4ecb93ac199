"""A worker with `engine: swift` (a real `swift deploy` child) behind a real gateway: switching the engine
needs no change in the gateway or the client."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import httpx
import pytest

from bailu.common import wire
from bailu.v1 import worker_pb2 as pb
from bailu.v1 import worker_pb2_grpc as pb_grpc
from tests.conftest import MODEL

pytestmark = pytest.mark.slow


async def test_gateway_serves_chat_from_an_engine_server_worker(start_worker, start_gateway, tiny_model: Path) -> None:
    worker = await start_worker(
        engine="swift",
        model_path=str(tiny_model),
        max_model_len=512,
        max_batch_size=2,
        engine_start_timeout_s=120,
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{worker.port}") as channel:
        listed = await pb_grpc.InferenceWorkerStub(channel).ListModels(pb.ListModelsRequest())
    assert listed.engine == "swift"
    assert [m.name for m in listed.models] == [MODEL]
    assert listed.HasField("capabilities")
    assert wire.capabilities_from_pb(listed.capabilities) == worker.engine.capabilities
    assert listed.capabilities.adapter_load_restarts_engine
    assert not listed.capabilities.runtime_adapter_loading

    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write about dew."}],
        "max_tokens": 8,
        "temperature": 0,
    }
    async with httpx.AsyncClient(base_url=gateway.url, headers=gateway.headers, timeout=60) as client:
        reply = await client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        assert answer["object"] == "chat.completion"
        assert answer["choices"][0]["finish_reason"] in ("stop", "length")
        assert 0 < answer["usage"]["completion_tokens"] <= 8

        streamed = ""
        usage = None
        async with client.stream(
            "POST", "/v1/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}
        ) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                for choice in event["choices"]:
                    streamed += choice["delta"].get("content") or ""
                usage = event.get("usage") or usage
        # Greedy: the stream and the single answer agree, token for token.
        assert streamed == answer["choices"][0]["message"]["content"]
        assert usage is not None
        assert usage["completion_tokens"] == answer["usage"]["completion_tokens"]

        unknown = await client.post("/v1/chat/completions", json={**body, "model": "nope"})
        assert unknown.status_code == 404
