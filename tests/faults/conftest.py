"""Fault-suite helpers: gateways as real processes (workers, Redis and the gateway in-process come from
tests/conftest.py), and a reader of SSE streams that timestamps each event."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bailu.keys.model import hash_key
from tests.conftest import TEST_KEY, ServiceProcess, free_port, wait_until_ready


@dataclass
class GatewayProcess(ServiceProcess):
    """A gateway in its own process (`python -m bailu.gateway`), for tests that signal it."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TEST_KEY}"}


def spawn_gateway(tmp_path: Path, name: str, workers: list[str], **env: str) -> GatewayProcess:
    """Start a gateway process over `workers` and wait (up to 60 s) until /readyz says a worker is ready."""
    port = free_port()
    log_path = tmp_path / f"{name}.log"
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BAILU_")},
        "BAILU_GATEWAY_HOST": "127.0.0.1",
        "BAILU_GATEWAY_PORT": str(port),
        "BAILU_GATEWAY_WORKERS": ",".join(workers),
        "BAILU_GATEWAY_API_KEY_HASHES": hash_key(TEST_KEY),
        **{f"BAILU_GATEWAY_{k.upper()}": v for k, v in env.items()},
    }
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "bailu.gateway"], env=environ, stdout=log, stderr=subprocess.STDOUT
        )
    process = GatewayProcess(popen, port, log_path)
    wait_until_ready(popen, f"{process.url}/readyz", f"gateway process {name}", process.log)
    return process


@pytest.fixture
def gateway_processes(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    started: list[GatewayProcess] = []

    def spawn(name: str, workers: list[str], **env: str) -> GatewayProcess:
        process = spawn_gateway(tmp_path, name, workers, **env)
        started.append(process)
        return process

    yield spawn
    for process in started:
        process.stop()
