"""The worker follows its engine's own health after start-up (an engine server that restarts, or gives up):
gRPC health, the load report the gateway routes by, and /readyz all say not ready meanwhile, and a worker
whose engine failed for good asks to be restarted."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bailu.v1 import worker_pb2 as pb
from bailu.v1 import worker_pb2_grpc as pb_grpc
from bailu.worker.engines.sim import SimEngine
from bailu.worker.server import SERVICE_NAME, WorkerServer
from bailu.worker.settings import WorkerSettings
from tests.conftest import MODEL, eventually


class RestartingEngine(SimEngine):
    """The sim engine with the health an engine server has: not ready while it restarts, dead once it gave up."""

    up = True
    gave_up = False

    @property
    def ready(self) -> bool:
        return self.up

    @property
    def alive(self) -> bool:
        return not self.gave_up


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_health_follows_the_engine_and_a_dead_engine_stops_the_worker() -> None:
    settings = WorkerSettings(host="127.0.0.1", port=0, http_port=0, engine="sim", model_name=MODEL, sim_ttft_ms=1)
    engine = RestartingEngine.from_settings(settings)
    server = WorkerServer(settings, engine=engine)
    await server.start()
    try:
        await server.wait_ready(30)
        readyz = f"http://127.0.0.1:{server.probes.port}/readyz"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stub = pb_grpc.InferenceWorkerStub(channel)

            async def serving() -> int:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
                return int(reply.status)

            assert await serving() == health_pb2.HealthCheckResponse.SERVING
            engine.up = False  # the engine server crashed and is being restarted
            assert not (await stub.GetLoad(pb.GetLoadRequest())).ready
            assert await asyncio.to_thread(http_status, readyz) == 503
            deadline = time.monotonic() + 10
            while await serving() != health_pb2.HealthCheckResponse.NOT_SERVING:
                assert time.monotonic() < deadline, "gRPC health never said NOT_SERVING"
                await asyncio.sleep(0.1)

            engine.up = True  # restarted
            while await serving() != health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() < deadline + 10, "gRPC health never recovered"
                await asyncio.sleep(0.1)
            assert (await stub.GetLoad(pb.GetLoadRequest())).ready
            assert await asyncio.to_thread(http_status, readyz) == 200

            engine.gave_up = True
            await eventually(server.engine_failed.is_set)
            assert await serving() == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await server.stop(0)
