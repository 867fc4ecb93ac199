"""The worker over real gRPC (sim engine): streaming contract, admission, errors, health, draining."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bailu.common import wire
from bailu.common.errors import DeadlineExceeded, InvalidRequest, ModelNotFound, Overloaded, Unavailable
from bailu.common.grpc_errors import from_status
from bailu.common.types import ChatMessage, GenerateChunk, GenerateRequest, ModelCard, SamplingParams
from bailu.v1 import worker_pb2 as pb
from bailu.v1 import worker_pb2_grpc as pb_grpc
from bailu.worker.engines.sim import SimEngine
from bailu.worker.server import SERVICE_NAME, WorkerServer
from bailu.worker.settings import WorkerSettings
from tests.conftest import MODEL, eventually


def request(max_tokens: int | None = 8, **kwargs: object) -> pb.GenerateRequest:
    values: dict[str, object] = {
        "request_id": "req-1",
        "model": MODEL,
        "messages": (ChatMessage("user", "write about dew"),),
        "sampling": SamplingParams(max_tokens=max_tokens),
    }
    values.update(kwargs)
    return wire.request_to_pb(GenerateRequest(**values))  # type: ignore[arg-type]


async def collect(
    stub: pb_grpc.InferenceWorkerStub, msg: pb.GenerateRequest, **kw: object
) -> list[pb.GenerateResponse]:
    return [r async for r in stub.Generate(msg, **kw)]


async def error_of(coro: object) -> Exception:
    try:
        await coro  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return from_status(exc.code(), exc.details(), exc.trailing_metadata())
    raise AssertionError("the call succeeded")


@pytest.fixture
async def channel_to():
    channels: list[grpc.aio.Channel] = []

    def open_channel(port: int) -> pb_grpc.InferenceWorkerStub:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        return pb_grpc.InferenceWorkerStub(channel)

    yield open_channel
    for channel in channels:
        await channel.close()


async def test_stream_is_ordered_and_ends_with_usage(start_worker, channel_to) -> None:
    server = await start_worker(sim_output_tokens=6)
    stub = channel_to(server.port)
    responses = await collect(stub, request(max_tokens=10))
    assert [r.finish_reason for r in responses[:-1]] == [pb.FINISH_REASON_UNSPECIFIED] * 6
    last = responses[-1]
    assert last.finish_reason == pb.FINISH_REASON_STOP
    assert last.usage.completion_tokens == 6 == sum(r.token_count for r in responses)
    text = "".join(r.text_delta for r in responses)
    assert text.split() == ["white", "dew", "settles", "on", "the", "grass"]
    assert {r.served_model for r in responses} == {MODEL}


async def test_max_tokens_gives_finish_reason_length(start_worker, channel_to) -> None:
    server = await start_worker(sim_output_tokens=50)
    responses = await collect(channel_to(server.port), request(max_tokens=3))
    assert responses[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert responses[-1].usage.completion_tokens == 3


async def test_unknown_model_and_adapter_are_not_found(start_worker, channel_to) -> None:
    server = await start_worker()
    stub = channel_to(server.port)
    error = await error_of(collect(stub, request(model="nope")))
    assert isinstance(error, ModelNotFound)
    assert error.param == "model"
    error = await error_of(collect(stub, request(adapter="missing")))
    assert isinstance(error, ModelNotFound)


@pytest.mark.parametrize(
    ("sampling", "param"),
    [
        (SamplingParams(temperature=3.0), "temperature"),
        (SamplingParams(top_p=0.0), "top_p"),
        (SamplingParams(max_tokens=0), "max_tokens"),
        (SamplingParams(stop=("a", "b", "c", "d", "e")), "stop"),
    ],
)
async def test_bad_sampling_is_invalid_argument(start_worker, channel_to, sampling, param) -> None:
    server = await start_worker()
    msg = request(sampling=sampling)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(channel_to(server.port), msg)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    error = from_status(info.value.code(), info.value.details(), info.value.trailing_metadata())
    assert isinstance(error, InvalidRequest)
    assert error.param == param


async def test_empty_request_is_invalid_argument(start_worker, channel_to) -> None:
    server = await start_worker()
    error = await error_of(collect(channel_to(server.port), pb.GenerateRequest(model=MODEL)))
    assert isinstance(error, InvalidRequest)


async def test_deadline_exceeded(start_worker, channel_to) -> None:
    server = await start_worker(sim_ttft_ms=2000)
    stub = channel_to(server.port)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(stub, request(), timeout=0.3)
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    engine = server.engine
    assert isinstance(engine, SimEngine)
    await eventually(lambda: engine.active == 0, 2.0)


async def test_queued_past_its_deadline_is_dropped(start_worker, channel_to) -> None:
    server = await start_worker(sim_ttft_ms=1000, max_batch_size=1, max_queue=4)
    stub = channel_to(server.port)
    first = asyncio.create_task(collect(stub, request()))
    await eventually(lambda: server.admission.running == 1, 2.0)
    late = request(deadline=time.time() + 0.2)
    error = await error_of(collect(stub, late))
    assert isinstance(error, DeadlineExceeded)
    assert server.admission.queued == 0
    await first


async def test_full_queue_is_resource_exhausted(start_worker, channel_to) -> None:
    server = await start_worker(sim_ttft_ms=500, max_batch_size=1, max_queue=1)
    stub = channel_to(server.port)
    running = asyncio.create_task(collect(stub, request()))
    await eventually(lambda: server.admission.running == 1, 2.0)
    queued = asyncio.create_task(collect(stub, request()))
    await eventually(lambda: server.admission.queued == 1, 2.0)
    # The queue depth metric (what autoscaling reads) counts requests while they wait.
    assert server.metrics_registry.get_sample_value("bailu_worker_queued_requests") == 1
    assert server.metrics_registry.get_sample_value("bailu_worker_running_requests") == 1
    load = wire.load_from_pb(await stub.GetLoad(pb.GetLoadRequest()))
    assert (load.running, load.queued, load.capacity, load.max_queue, load.ready) == (1, 1, 1, 1, True)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(stub, request())
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert isinstance(from_status(info.value.code(), None, info.value.trailing_metadata()), Overloaded)
    # The admitted requests are unaffected.
    assert (await running)[-1].usage.completion_tokens > 0
    assert (await queued)[-1].usage.completion_tokens > 0


async def test_client_cancel_stops_the_engine(start_worker, channel_to) -> None:
    server = await start_worker(sim_output_tokens=100_000, sim_itl_ms=5)
    engine = server.engine
    assert isinstance(engine, SimEngine)
    call = channel_to(server.port).Generate(request(max_tokens=100_000))
    received = 0
    async for _ in call:
        received += 1
        if received == 5:
            break
    call.cancel()
    await eventually(lambda: engine.active == 0 and server.admission.running == 0, 2.0)
    produced = engine.tokens_generated
    await asyncio.sleep(0.2)
    assert engine.tokens_generated == produced < 1000


async def test_not_ready_until_loaded(start_worker, channel_to) -> None:
    from bailu.worker.server import WorkerServer
    from bailu.worker.settings import WorkerSettings

    server = WorkerServer(
        WorkerSettings(host="127.0.0.1", port=0, http_port=0, engine="sim", model_name=MODEL, sim_load_s=1.0)
    )
    await server.start()
    try:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        health = health_pb2_grpc.HealthStub(channel)
        status = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
        error = await error_of(collect(pb_grpc.InferenceWorkerStub(channel), request()))
        assert isinstance(error, Unavailable)
        await server.wait_ready(10)
        status = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        await channel.close()
    finally:
        await server.stop(0)


async def test_drain_finishes_in_flight_and_refuses_new_work(start_worker, channel_to) -> None:
    server = await start_worker(sim_ttft_ms=300, sim_output_tokens=5)
    stub = channel_to(server.port)
    in_flight = asyncio.create_task(collect(stub, request()))
    await eventually(lambda: server.admission.running == 1, 2.0)
    stopping = asyncio.create_task(server.stop(5))
    await eventually(lambda: server.admission.draining, 1.0)
    error = await error_of(collect(stub, request()))
    assert isinstance(error, Unavailable)
    responses = await in_flight
    assert responses[-1].finish_reason == pb.FINISH_REASON_STOP
    await stopping


async def test_reflection_and_adapters(start_worker, channel_to, tmp_path) -> None:
    server = await start_worker()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask():
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        services = set()
        async for reply in reflection.ServerReflectionInfo(ask()):
            services |= {s.name for s in reply.list_services_response.service}
        assert SERVICE_NAME in services
        assert "grpc.health.v1.Health" in services
    finally:
        await channel.close()

    stub = channel_to(server.port)
    missing = await error_of(stub.LoadAdapter(pb.LoadAdapterRequest(name="poet", path=str(tmp_path / "poet"))))
    assert isinstance(missing, ModelNotFound)
    assert "adapter_config.json missing" in str(missing)
    (tmp_path / "poet").mkdir()
    (tmp_path / "poet" / "adapter_config.json").write_text('{"r": 8}')
    loaded = await stub.LoadAdapter(pb.LoadAdapterRequest(name="poet", path=str(tmp_path / "poet")))
    assert (loaded.model.name, loaded.model.kind, loaded.model.base_model) == ("poet", "adapter", MODEL)
    listing = await stub.ListModels(pb.ListModelsRequest())
    assert [m.name for m in listing.models] == [MODEL, "poet"]
    assert listing.engine == "sim"
    responses = await collect(stub, request(adapter="poet"))
    assert responses[-1].served_model == f"{MODEL}:poet"
    await stub.UnloadAdapter(pb.UnloadAdapterRequest(name="poet"))
    assert isinstance(await error_of(collect(stub, request(adapter="poet"))), ModelNotFound)
    assert isinstance(await error_of(stub.UnloadAdapter(pb.UnloadAdapterRequest(name="poet"))), ModelNotFound)


class FailingEngine(SimEngine):
    """The sim engine, failing on purpose once `failure` is set: `fail_after` chunks into a stream, and on
    every adapter load."""

    fail_after = 0
    failure: Exception | None = None

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerateChunk, None]:
        sent = 0
        async for chunk in super().generate(request):
            if self.failure is not None and sent == self.fail_after:
                raise self.failure
            sent += 1
            yield chunk

    async def load_adapter(self, name: str, path: str) -> ModelCard:
        if self.failure is not None:
            raise self.failure
        return await super().load_adapter(name, path)


@pytest.fixture
async def failing_worker() -> AsyncIterator[tuple[WorkerServer, FailingEngine]]:
    settings = WorkerSettings(host="127.0.0.1", port=0, http_port=0, engine="sim", model_name=MODEL, sim_ttft_ms=1)
    engine = FailingEngine.from_settings(settings)
    server = WorkerServer(settings, engine=engine)
    await server.start()
    await server.wait_ready(30)
    yield server, engine
    await server.stop(0)


async def test_unexpected_error_is_internal_and_not_leaked(failing_worker, channel_to, caplog) -> None:
    server, engine = failing_worker
    engine.failure = RuntimeError("secret engine internals")
    stub = channel_to(server.port)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(stub, request(), metadata=(("x-request-id", "rid-7"),))
    assert info.value.code() is grpc.StatusCode.INTERNAL
    assert "secret" not in (info.value.details() or "")
    logged = [r for r in caplog.records if r.getMessage() == "rpc failed unexpectedly"]
    assert logged
    assert logged[0].exc_info is not None
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.LoadAdapter(pb.LoadAdapterRequest(name="poet", path="/adapters/poet"))
    assert info.value.code() is grpc.StatusCode.INTERNAL
    assert "secret" not in (info.value.details() or "")


async def test_error_in_the_middle_of_a_stream_ends_it_with_its_status(failing_worker, channel_to) -> None:
    server, engine = failing_worker
    engine.fail_after, engine.failure = 2, Unavailable("the engine went away")
    received: list[pb.GenerateResponse] = []

    async def consume() -> None:
        async for response in channel_to(server.port).Generate(request()):
            received.append(response)

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await consume()
    assert len(received) == 2
    error = from_status(info.value.code(), info.value.details(), info.value.trailing_metadata())
    assert isinstance(error, Unavailable)
    assert error.message == "the engine went away"
