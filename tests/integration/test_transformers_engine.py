"""The ms-swift transformers engine on a tiny random Llama, through the real worker and gateway."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import httpx
import pytest

from bailu.common import wire
from bailu.common.errors import ModelNotFound, RequestTooLarge
from bailu.common.grpc_errors import from_status
from bailu.common.types import ChatMessage, GenerateRequest, SamplingParams
from bailu.v1 import worker_pb2 as pb
from bailu.v1 import worker_pb2_grpc as pb_grpc
from tests.conftest import MODEL, eventually, make_lora_adapter

pytestmark = pytest.mark.slow


def greedy(text: str, max_tokens: int, **kwargs: object) -> pb.GenerateRequest:
    return wire.request_to_pb(
        GenerateRequest(
            request_id="t",
            model=MODEL,
            messages=(ChatMessage("user", text),),
            sampling=SamplingParams(max_tokens=max_tokens, temperature=0.0),
            **kwargs,  # type: ignore[arg-type]
        )
    )


@pytest.fixture(scope="module")
def lora_adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter with random (non-zero) weights, so that it visibly changes the output."""
    return make_lora_adapter(tiny_model, tmp_path_factory.mktemp("adapters") / "poet", seed=1)


async def test_generation_streams_and_adapters_apply(start_worker, tiny_model, lora_adapter) -> None:
    server = await start_worker(engine="transformers", model_path=str(tiny_model), max_batch_size=2)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.InferenceWorkerStub(channel)
        base = [r async for r in stub.Generate(greedy("Write about dew.", 12))]
        assert base[-1].finish_reason in (pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_STOP)
        assert base[-1].usage.prompt_tokens > 5
        assert sum(r.token_count for r in base) == base[-1].usage.completion_tokens <= 12
        assert all(r.finish_reason == pb.FINISH_REASON_UNSPECIFIED for r in base[:-1])

        # The same greedy request gives the same text: the engine is deterministic here.
        again = [r async for r in stub.Generate(greedy("Write about dew.", 12))]
        assert "".join(r.text_delta for r in again) == "".join(r.text_delta for r in base)

        card = await stub.LoadAdapter(pb.LoadAdapterRequest(name="poet", path=str(lora_adapter)))
        assert card.model.kind == "adapter"
        assert card.model.base_model == MODEL
        tuned = [r async for r in stub.Generate(greedy("Write about dew.", 12, adapter="poet"))]
        assert tuned[-1].served_model == f"{MODEL}:poet"
        tuned_text = "".join(r.text_delta for r in tuned)
        assert tuned_text != "".join(r.text_delta for r in base)

        # Base requests still get the base model after an adapter was used.
        after = [r async for r in stub.Generate(greedy("Write about dew.", 12))]
        assert "".join(r.text_delta for r in after) == "".join(r.text_delta for r in base)

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.LoadAdapter(pb.LoadAdapterRequest(name="bad", path=str(tiny_model / "nope")))
        assert info.value.code() is grpc.StatusCode.NOT_FOUND

        await stub.UnloadAdapter(pb.UnloadAdapterRequest(name="poet"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            _ = [r async for r in stub.Generate(greedy("Write about dew.", 4, adapter="poet"))]
        error = from_status(info.value.code(), info.value.details(), info.value.trailing_metadata())
        assert isinstance(error, ModelNotFound)


async def test_cancel_stops_generation_in_the_engine(start_worker, tiny_model) -> None:
    server = await start_worker(engine="transformers", model_path=str(tiny_model), max_batch_size=2)
    steps = 0

    def count(*_: object) -> None:
        nonlocal steps
        steps += 1

    model = server.engine._swift.model  # type: ignore[attr-defined]
    hook = model.register_forward_hook(count)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.InferenceWorkerStub(channel)
            # A second request shares the batch and must be unaffected by the first one's cancellation.
            other = asyncio.create_task(_collect(stub, greedy("Another one.", 40)))
            call = stub.Generate(greedy("Write a very long story.", 3000))
            received = 0
            async for _ in call:
                received += 1
                if received == 3:
                    break
            call.cancel()
            await eventually(lambda: server.admission.running <= 1, 5.0)
            survivor = await other
            assert survivor[-1].usage.completion_tokens > 0
        await eventually(lambda: server.admission.running == 0, 5.0)
        await asyncio.sleep(0.3)
        settled = steps
        await asyncio.sleep(0.5)
        assert steps == settled, "the model kept generating after the request was cancelled"
        assert settled < 1000
        assert not server.engine._live  # type: ignore[attr-defined]
    finally:
        hook.remove()


async def _collect(stub: pb_grpc.InferenceWorkerStub, msg: pb.GenerateRequest) -> list[pb.GenerateResponse]:
    return [r async for r in stub.Generate(msg)]


async def test_prompt_longer_than_context_is_413(start_worker, start_gateway, tiny_model) -> None:
    server = await start_worker(engine="transformers", model_path=str(tiny_model), max_model_len=64)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.InferenceWorkerStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _collect(stub, greedy("dew " * 200, 4))
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert isinstance(from_status(info.value.code(), None, info.value.trailing_metadata()), RequestTooLarge)
    gateway = await start_gateway([f"127.0.0.1:{server.port}"])
    async with httpx.AsyncClient(timeout=30) as http:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "dew " * 200}]}
        response = await http.post(gateway.url + "/v1/chat/completions", json=body, headers=gateway.headers)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "context_length_exceeded"
        # max_tokens beyond the context is capped, not an error.
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 500}
        response = await http.post(gateway.url + "/v1/chat/completions", json=body, headers=gateway.headers)
        assert response.status_code == 200
        usage = response.json()["usage"]
        assert usage["prompt_tokens"] + usage["completion_tokens"] <= 64


async def test_gateway_streams_from_the_transformers_engine(start_worker, start_gateway, tiny_model) -> None:
    server = await start_worker(engine="transformers", model_path=str(tiny_model))
    gateway = await start_gateway([f"127.0.0.1:{server.port}"])
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True}
    async with (
        httpx.AsyncClient(timeout=30) as http,
        http.stream("POST", gateway.url + "/v1/chat/completions", json=body, headers=gateway.headers) as response,
    ):
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert '"finish_reason":"length"' in lines[-2] or '"finish_reason":"stop"' in lines[-2]


async def test_requests_arriving_together_share_one_batch(start_worker, tiny_model) -> None:
    server = await start_worker(engine="transformers", model_path=str(tiny_model), max_batch_size=4)
    batch_sizes: list[int] = []

    def record(module: object, args: tuple[object, ...], kwargs: dict[str, object], output: object) -> None:
        ids = kwargs.get("input_ids")
        if ids is not None:
            batch_sizes.append(int(ids.shape[0]))  # type: ignore[attr-defined]

    hook = server.engine._swift.model.register_forward_hook(record, with_kwargs=True)  # type: ignore[attr-defined]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.InferenceWorkerStub(channel)
            prompts = ["dew", "light", "heron", "river"]
            results = await asyncio.gather(*(_collect(stub, greedy(p, 6)) for p in prompts))
    finally:
        hook.remove()
    assert all(r[-1].usage.completion_tokens > 0 for r in results)
    # Four requests sent together ran as one batch of four, not one by one.
    assert max(batch_sizes) == 4
