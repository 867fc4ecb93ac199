"""The Relay RPC over real gRPC: many completions on one stream, as Generate would serve each of them.

Worker side (worker/relay.py) through raw Relay calls, and gateway side (gateway/relay.py) through
`WorkerClient`, both against in-process sim workers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from bailu.common import wire
from bailu.common.errors import DeadlineExceeded, ModelNotFound, Unavailable
from bailu.common.grpc_errors import from_status
from bailu.common.types import ChatMessage, GenerateChunk, GenerateRequest, SamplingParams
from bailu.common.wire import STREAM_WINDOW_BYTES
from bailu.gateway.relay import RelayStream
from bailu.gateway.workers import WorkerClient, WorkerStream
from bailu.v1 import worker_pb2 as pb
from bailu.v1 import worker_pb2_grpc as pb_grpc
from tests.conftest import MODEL, WorkerFactory, eventually


def generate_request(rid: str, max_tokens: int = 8, seed: int = 1, **kwargs: object) -> GenerateRequest:
    values: dict[str, object] = {
        "request_id": rid,
        "model": MODEL,
        "messages": (ChatMessage("user", f"write about dew {rid}"),),
        "sampling": SamplingParams(max_tokens=max_tokens, seed=seed),
    }
    values.update(kwargs)
    return GenerateRequest(**values)  # type: ignore[arg-type]


@pytest.fixture
async def clients() -> AsyncIterator[list[WorkerClient]]:
    made: list[WorkerClient] = []
    yield made
    await asyncio.gather(*(c.close() for c in made))


async def client_for(port: int, made: list[WorkerClient], *, relay: bool = True) -> WorkerClient:
    client = WorkerClient(f"127.0.0.1:{port}", relay=relay)
    made.append(client)
    await client.refresh(5)
    assert client.ready
    return client


async def read_all(stream: WorkerStream | RelayStream) -> list[GenerateChunk]:
    try:
        return [chunk async for chunk in stream]
    finally:
        await stream.aclose()


def summary(chunks: list[GenerateChunk]) -> tuple[str, int, object, object]:
    return (
        "".join(c.text for c in chunks),
        sum(c.token_count for c in chunks),
        chunks[-1].finish_reason,
        chunks[-1].usage,
    )


async def test_relay_streams_carry_what_generate_calls_do(
    start_worker: WorkerFactory, clients: list[WorkerClient]
) -> None:
    worker = await start_worker()
    relayed = await client_for(worker.port, clients)
    called = await client_for(worker.port, clients, relay=False)
    assert relayed.relay_supported
    requests = [generate_request(f"r{i}", max_tokens=6 + i, seed=i) for i in range(12)]

    via_relay = await asyncio.gather(*(read_all(relayed.generate(r, 30)) for r in requests))
    via_calls = await asyncio.gather(*(read_all(called.generate(r, 30)) for r in requests))

    assert [summary(c) for c in via_relay] == [summary(c) for c in via_calls]
    assert all(summary(c)[1] == 6 + i for i, c in enumerate(via_relay))
    assert relayed.relay.calls == 1  # twelve completions, one Relay call
    assert relayed.inflight == 0
    assert not relayed.relay.streams
    assert worker.admission.running == 0


async def test_chunks_of_many_streams_share_messages(start_worker: WorkerFactory) -> None:
    """A raw Relay call: 16 streams opened at once, whose tokens become ready together, come back in fewer
    messages than chunks, each stream's chunks in order and ended once with OK."""
    worker = await start_worker(sim_ttft_ms=5, sim_itl_ms=5)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{worker.port}") as channel:
        call = pb_grpc.InferenceWorkerStub(channel).Relay()
        opens = [
            pb.RelayOpen(id=i, request=wire.request_to_pb(generate_request(f"m{i}", max_tokens=10)), timeout_s=30)
            for i in range(1, 17)
        ]
        await call.write(pb.RelayRequest(open=opens))
        texts: dict[int, list[str]] = {i: [] for i in range(1, 17)}
        ends: dict[int, pb.RelayEnd] = {}
        messages = items = 0
        while len(ends) < 16:
            response = await call.read()
            assert response is not grpc.aio.EOF
            messages += 1
            for item in response.items:
                items += 1
                assert item.id not in ends, "nothing after a stream's end"
                if item.HasField("end"):
                    ends[item.id] = item.end
                else:
                    texts[item.id].append(item.chunk.text_delta)
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF  # the caller closed its side with no stream open: the call ends
    assert all(end.code == 0 for end in ends.values())
    assert all(texts[i] for i in texts)
    assert messages < items, f"{items} items in {messages} messages: nothing coalesced"


async def test_an_error_ends_only_its_stream(start_worker: WorkerFactory, clients: list[WorkerClient]) -> None:
    worker = await start_worker()
    client = await client_for(worker.port, clients)
    good = client.generate(generate_request("ok", max_tokens=20), 30)
    bad = client.generate(generate_request("bad", model="no-such-model"), 30)
    with pytest.raises(ModelNotFound) as caught:
        await read_all(bad)
    assert "no-such-model" in caught.value.message
    assert summary(await read_all(good))[1] == 20
    assert client.relay.calls == 1  # the error did not end the call


async def test_raw_relay_end_carries_the_generate_status(start_worker: WorkerFactory) -> None:
    worker = await start_worker()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{worker.port}") as channel:
        stub = pb_grpc.InferenceWorkerStub(channel)
        bad = wire.request_to_pb(generate_request("bad", model="no-such-model"))
        with pytest.raises(grpc.aio.AioRpcError) as by_call:
            async for _ in stub.Generate(bad):
                pass
        call = stub.Relay()
        await call.write(pb.RelayRequest(open=[pb.RelayOpen(id=7, request=bad)]))
        response = await call.read()
        call.cancel()
    (item,) = response.items
    assert item.id == 7
    assert item.HasField("end")
    assert item.end.code == by_call.value.code().value[0]
    assert item.end.details == by_call.value.details()
    assert dict(item.end.metadata) == dict(by_call.value.trailing_metadata() or ())
    code = by_call.value.code()
    assert isinstance(from_status(code, item.end.details, list(item.end.metadata.items())), ModelNotFound)


async def test_closing_a_stream_cancels_its_generation(
    start_worker: WorkerFactory, clients: list[WorkerClient]
) -> None:
    worker = await start_worker(sim_itl_ms=20, sim_output_tokens=500)
    client = await client_for(worker.port, clients)
    left = client.generate(generate_request("left", max_tokens=500), 30)
    stays = client.generate(generate_request("stays", max_tokens=10), 30)
    await anext(left)
    await left.aclose()
    assert client.inflight == 1
    assert summary(await read_all(stays))[1] == 10
    await eventually(lambda: worker.admission.running == 0, timeout=5)
    assert client.relay.calls == 1


async def test_a_stream_nobody_reads_holds_back_only_itself(
    start_worker: WorkerFactory, clients: list[WorkerClient]
) -> None:
    """Per-stream credit: the worker stops generating an unread stream after about a window of bytes, while
    another stream on the same call runs to its end."""
    worker = await start_worker(sim_ttft_ms=1, sim_itl_ms=0, sim_output_tokens=4_000)
    client = await client_for(worker.port, clients)
    unread = client.generate(generate_request("unread", max_tokens=4_000), 60)
    first = await anext(unread)
    assert first.token_count >= 1
    (session,) = worker.servicer.relays
    (held,) = session.streams.values()
    await eventually(lambda: held.unacked > STREAM_WINDOW_BYTES, timeout=10)
    sent = held.unacked
    assert summary(await read_all(client.generate(generate_request("read", max_tokens=50), 30)))[1] == 50
    await asyncio.sleep(0.3)
    assert held.unacked == sent, "the worker went on generating a stream nobody reads"
    assert sent < 2 * STREAM_WINDOW_BYTES
    chunks = [first]
    async for chunk in unread:  # reading returns credit: the stream goes on to its end
        chunks.append(chunk)
    assert summary(chunks)[1] == 4_000


async def test_the_deadline_bounds_a_relay_stream(start_worker: WorkerFactory, clients: list[WorkerClient]) -> None:
    worker = await start_worker(sim_ttft_ms=3_000)
    client = await client_for(worker.port, clients)
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await read_all(client.generate(generate_request("late"), 0.3))
    assert time.monotonic() - start < 2.5
    await eventually(lambda: worker.admission.running == 0, timeout=5)  # the worker stopped it too


async def test_streams_fail_over_when_the_worker_goes_away(
    start_worker: WorkerFactory, clients: list[WorkerClient]
) -> None:
    worker = await start_worker(sim_itl_ms=20, sim_output_tokens=500)
    client = await client_for(worker.port, clients)
    streams = [client.generate(generate_request(f"s{i}", max_tokens=500), 30) for i in range(3)]
    for stream in streams:
        await anext(stream)
    await worker.server.stop(0)  # the process's gRPC server goes, with every call it serves
    for stream in streams:
        with pytest.raises(Unavailable):
            await read_all(stream)
    assert client.inflight == 0


async def test_draining_finishes_streams_then_ends_the_call(
    start_worker: WorkerFactory, clients: list[WorkerClient]
) -> None:
    worker = await start_worker(sim_itl_ms=10, sim_output_tokens=40)
    client = await client_for(worker.port, clients)
    running = client.generate(generate_request("running", max_tokens=40), 30)
    await anext(running)
    stopping = asyncio.create_task(worker.stop(10))
    await eventually(lambda: worker.admission.draining, timeout=5)
    with pytest.raises(Unavailable):  # refused like a new call: another worker takes it
        await read_all(client.generate(generate_request("new"), 30))
    rest = await read_all(running)
    assert sum(c.token_count for c in rest) == 39
    assert rest[-1].finish_reason is not None
    await asyncio.wait_for(stopping, 10)


async def test_without_relay_each_completion_is_a_generate_call(
    start_worker: WorkerFactory, clients: list[WorkerClient]
) -> None:
    worker = await start_worker()
    client = await client_for(worker.port, clients, relay=False)
    stream = client.generate(generate_request("call"), 30)
    assert isinstance(stream, WorkerStream)
    assert summary(await read_all(stream))[1] == 8
    assert client.relay.calls == 0
