"""Build and run the worker: gRPC server, health, reflection, probes, model loading, draining."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from bailu.common import grpc_keepalive
from bailu.common.metrics import WorkerMetrics
from bailu.common.probes import ProbeServer
from bailu.v1 import worker_pb2 as pb
from bailu.v1 import worker_pb2_grpc as pb_grpc
from bailu.worker.admission import Admission
from bailu.worker.engines import Engine, create_engine
from bailu.worker.interceptors import ErrorInterceptor
from bailu.worker.servicer import InferenceWorkerServicer
from bailu.worker.settings import WorkerSettings

if TYPE_CHECKING:
    from bailu.worker.follower import RegistryFollower

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InferenceWorker"].full_name


class WorkerServer:
    """The worker process's servers. `start()` listens at once and loads the model in the background;
    health reports SERVING only after the model is loaded, the registry's adapter versions are loaded
    (when `registry_dir` is set) and one warm-up generation ran."""

    def __init__(
        self,
        settings: WorkerSettings,
        engine: Engine | None = None,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine or create_engine(settings)
        self.metrics_registry = metrics_registry or CollectorRegistry()
        self.metrics = WorkerMetrics(self.metrics_registry)
        self.admission = Admission(
            self.engine.capacity, settings.max_queue, on_evict=lambda p: self.metrics.evicted.labels(p).inc()
        )
        self.metrics.capacity.set(self.engine.capacity)
        # Read at scrape time, so that the queue depth autoscaling sees is never stale.
        self.metrics.queued.set_function(lambda: self.admission.queued)
        self.metrics.queued_batch.set_function(lambda: self.admission.queued_batch)
        self.metrics.running.set_function(lambda: self.admission.running)
        self.metrics.adapters_loaded.set_function(lambda: len(self.engine.adapters))
        self.engine.register_metrics(self.metrics_registry)
        self.follower = self._follower(settings)
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(
            interceptors=[ErrorInterceptor()],
            # The keepalive policy admits the gateway's pings (common/grpc_keepalive.py explains both ends).
            options=[("grpc.so_reuseport", 0), *grpc_keepalive.SERVER_OPTIONS],
        )
        self.servicer = InferenceWorkerServicer(self.engine, self.admission, self.metrics)
        pb_grpc.add_InferenceWorkerServicer_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        self.port = 0
        self.probes = ProbeServer(settings.host, settings.http_port, self.is_ready, self.metrics_registry)
        self.loaded: asyncio.Task[None] | None = None
        # Set when the engine failed for good (an engine server that kept crashing): the process should exit
        # so that its supervisor (Kubernetes) restarts it.
        self.engine_failed = asyncio.Event()
        self._watchdog: asyncio.Task[None] | None = None

    def _follower(self, settings: WorkerSettings) -> RegistryFollower | None:
        if settings.registry_dir is None:
            return None
        # Imported only when used: the registry brings its Redis index along.
        from bailu.registry.store import Registry
        from bailu.worker.follower import RegistryFollower

        return RegistryFollower(
            self.engine,
            Registry(settings.registry_dir),
            settings.model_name,
            self.metrics,
            static=settings.adapters.keys(),
            redis_url=settings.registry_redis_url,
            poll_s=settings.registry_poll_s,
            unload_grace_s=settings.adapter_unload_grace_s,
        )

    def is_ready(self) -> bool:
        return self.admission.ready and not self.admission.draining and self.engine.ready

    async def _watch_engine(self, interval_s: float = 1.0) -> None:
        """Follow the engine's own health after start-up: not ready while an engine server restarts (health
        NOT_SERVING, probes 503, load reports not ready, so the gateway routes elsewhere), ready again after it;
        `engine_failed` once it gave up."""
        serving = True
        while True:
            await asyncio.sleep(interval_s)
            if not self.engine.alive:
                log.error("the engine failed for good; the worker stops", extra={"engine": self.engine.kind})
                self.metrics.ready.set(0)
                await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
                self.engine_failed.set()
                return
            ready = self.is_ready()
            if ready != serving:
                serving = ready
                log.warning("engine ready" if ready else "engine not ready", extra={"engine": self.engine.kind})
                self.metrics.ready.set(1 if ready else 0)
                status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
                await self._set_health(status)

    async def start(self) -> None:
        self.port = self.server.add_insecure_port(f"{self.settings.host}:{self.settings.port}")
        if not self.port:
            raise OSError(f"cannot bind gRPC port {self.settings.host}:{self.settings.port}")
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        await self.probes.start()
        log.info("worker listening", extra={"grpc_port": self.port, "http_port": self.probes.port})
        self.loaded = asyncio.create_task(self._load())

    async def _load(self) -> None:
        started = time.monotonic()
        await self.engine.start()
        for name, path in self.settings.adapters.items():
            await self.engine.load_adapter(name, str(path))
        if self.follower is not None:
            await self.follower.start()
        loaded = time.monotonic()
        if self.settings.warmup:
            await self.engine.warmup()
        self.admission.ready = True
        self.metrics.ready.set(1)
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self._watchdog = asyncio.create_task(self._watch_engine())
        log.info(
            "worker ready",
            extra={
                "engine": self.settings.engine.value,
                "model": self.engine.model_name,
                "adapters": sorted(self.engine.adapters),
                "load_s": round(loaded - started, 2),
                "warmup_s": round(time.monotonic() - loaded, 2),
            },
        )

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the model is loaded and warmed up; re-raises a loading failure."""
        assert self.loaded is not None, "start() first"
        await asyncio.wait_for(asyncio.shield(self.loaded), timeout)

    async def _set_health(self, status: int) -> None:
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: refuse new work, let in-flight requests finish within the grace period, then stop."""
        grace = self.settings.drain_grace_s if grace_s is None else grace_s
        log.info("draining", extra={"running": self.admission.running, "queued": self.admission.queued})
        self.metrics.ready.set(0)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.loaded is not None and not self.loaded.done():
            self.loaded.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
        deadline = time.monotonic() + grace
        # Relay calls end as soon as the streams they carry have (new streams are refused as new calls are).
        self.servicer.close_relays()
        finished = await self.admission.drain(grace)
        await self.server.stop(max(0.0, deadline - time.monotonic()) if finished else 0)
        if self.follower is not None:
            await self.follower.close()
        await self.probes.close()
        await self.engine.close()
        log.info("worker stopped", extra={"drained": finished})
