"""The registry follower on the real engine: ms-swift's TransformersEngine on the tiny random Llama hot-loads
real PEFT adapters published to the registry while it serves, and drops a version that leaves the aliases."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from bailu.registry import Registry
from bailu.v1 import worker_pb2_grpc as pb_grpc
from tests.conftest import MODEL, eventually, make_lora_adapter
from tests.integration.test_transformers_engine import greedy

pytestmark = pytest.mark.slow

NAME = "bailu-poet"


async def text(stub: pb_grpc.InferenceWorkerStub, adapter: str = "") -> str:
    responses = [r async for r in stub.Generate(greedy("Write about dew.", 12, adapter=adapter))]
    if adapter:
        assert {r.served_model for r in responses} == {f"{MODEL}:{adapter}"}
    return "".join(r.text_delta for r in responses)


async def test_published_adapters_are_hot_loaded_by_the_real_engine(start_worker, tiny_model, tmp_path) -> None:
    registry = Registry(tmp_path / "registry")
    server = await start_worker(
        engine="transformers",
        model_path=str(tiny_model),
        max_batch_size=2,
        registry_dir=str(registry.root),
        registry_poll_s=0.2,
        adapter_unload_grace_s=0.2,
    )
    assert server.engine.adapters == {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.InferenceWorkerStub(channel)
        base = await text(stub)

        # Built in a thread: the worker shares this event loop and keeps serving meanwhile.
        one = await asyncio.to_thread(make_lora_adapter, tiny_model, tmp_path / "one", 1)
        v1 = registry.publish("adapter", NAME, one, base_model=MODEL).version
        registry.set_alias("adapter", NAME, "production", v1)
        await eventually(lambda: f"{NAME}@{v1}" in server.engine.adapters, timeout=30)
        first = await text(stub, f"{NAME}@{v1}")
        assert first != base
        assert await text(stub) == base  # the base model is unaffected

        two = await asyncio.to_thread(make_lora_adapter, tiny_model, tmp_path / "two", 2)
        v2 = registry.publish("adapter", NAME, two, base_model=MODEL).version
        registry.set_alias("adapter", NAME, "production", v2)
        await eventually(lambda: f"{NAME}@{v2}" in server.engine.adapters, timeout=30)
        second = await text(stub, f"{NAME}@{v2}")
        assert second not in (first, base)
        # v0001 left the aliases: after the grace it is unloaded, and requests for it are refused.
        await eventually(lambda: f"{NAME}@{v1}" not in server.engine.adapters, timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await text(stub, f"{NAME}@{v1}")
        assert info.value.code() is grpc.StatusCode.NOT_FOUND
