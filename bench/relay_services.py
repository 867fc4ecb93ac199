"""The relay benchmark's processes: a worker on the `vllm` engine whose engine server is the stand-in
(bench/standin_engine.py), a gateway in front of it, and vllm-router in front of the same engine server."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bailu.keys.model import hash_key
from bench import relay_peers
from bench.common import (
    REPO,
    Service,
    ServiceGroup,
    WorkerProcess,
    child_processes,
    free_port,
    start_engine_server_worker,
)

STANDIN = REPO / "bench" / "standin_engine.py"
MODEL = "standin-model"
WORKER_MAX_BATCH_SIZE = 128  # above the highest concurrency: the worker's admission never queues
WORKER_MAX_QUEUE = 256


@dataclass(frozen=True)
class Timing:
    """The stand-in engine's fixed schedule."""

    ttft_ms: float
    itl_ms: float
    tokens: int

    @property
    def ideal_total_s(self) -> float:
        return (self.ttft_ms + (self.tokens - 1) * self.itl_ms) / 1000

    @property
    def flags(self) -> str:
        return f"--ttft-ms {self.ttft_ms:g} --itl-ms {self.itl_ms:g} --output-tokens {self.tokens}"


@dataclass
class RelayServices:
    worker: WorkerProcess
    gateway: Service
    gateway_url: str
    engine_pid: int
    engine_url: str
    engine_argv: list[str]
    router: Service | None = None
    router_url: str | None = None
    router_path: str | None = None

    def pids(self, client: int) -> dict[str, int]:
        """The processes measured: the benchmark client and each service."""
        pids = {
            "client": client,
            "engine": self.engine_pid,
            "worker": self.worker.service.pid,
            "gateway": self.gateway.pid,
        }
        if self.router is not None:
            pids["router"] = self.router.pid
        return pids

    def reports(self, key: str) -> dict[str, Any]:
        out = {"worker": self.worker.service.report(), "gateway": self.gateway.report()}
        # The key hash is a secret of this run only, but keep it out of the results anyway.
        out["gateway"]["command"] = out["gateway"]["command"].replace(hash_key(key), "sha256:<generated>")
        if self.router is not None and self.router_path is not None:
            version = relay_peers.package_version(self.router_path, "vllm-router")
            out["router"] = {**self.router.report(), "version": version}
        return out


def _settings(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"not KEY=VALUE: {pair!r}")
        out[key.upper()] = value
    return out


def start_services(
    group: ServiceGroup,
    name: str,
    timing: Timing,
    key: str,
    model_dir: Path,
    *,
    router: str | None,
    worker_settings: Sequence[str] = (),
    gateway_settings: Sequence[str] = (),
) -> RelayServices:
    """Start the worker (and so its stand-in engine server), the gateway, and the router if given; logs in
    bench/results/<name>-<service>.log. `*_settings` are KEY=VALUE pairs for BAILU_WORKER_* / BAILU_GATEWAY_*."""
    settings = {"MAX_BATCH_SIZE": str(WORKER_MAX_BATCH_SIZE), "MAX_QUEUE": str(WORKER_MAX_QUEUE)}
    settings.update(_settings(worker_settings))
    executable = f"{sys.executable} {STANDIN} {timing.flags}"
    worker = start_engine_server_worker(group, f"{name}-worker", "vllm", MODEL, model_dir, executable, settings)
    engines = [(pid, argv) for pid, argv in child_processes(worker.service.pid) if str(STANDIN) in argv]
    if len(engines) != 1:
        raise RuntimeError(f"expected one stand-in engine server under the worker, found {engines}")
    engine_pid, engine_argv = engines[0]
    engine_url = f"http://127.0.0.1:{engine_argv[engine_argv.index('--port') + 1]}"
    gateway_port = 0
    extra = {f"BAILU_GATEWAY_{k}": v for k, v in _settings(gateway_settings).items()}

    def gateway_env() -> tuple[dict[str, str], str]:
        nonlocal gateway_port
        gateway_port = free_port()
        env = {
            "BAILU_GATEWAY_HOST": "127.0.0.1",
            "BAILU_GATEWAY_PORT": str(gateway_port),
            "BAILU_GATEWAY_WORKERS": worker.address,
            "BAILU_GATEWAY_API_KEY_HASHES": hash_key(key),
            "BAILU_GATEWAY_LOG_LEVEL": "WARNING",
            **extra,
        }
        return env, f"http://127.0.0.1:{gateway_port}/readyz"

    gateway = group.start(f"{name}-gateway", "bailu.gateway", gateway_env, ready_timeout=60)
    services = RelayServices(worker, gateway, f"http://127.0.0.1:{gateway_port}", engine_pid, engine_url, engine_argv)
    if router is not None:
        services.router, services.router_url = relay_peers.start_router(group, router, engine_url, f"{name}-router")
        services.router_path = router
    return services
