"""Shared fixtures: real servers on free ports, waited for with a timeout, logs shown on failure."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from redis.asyncio import Redis

from bailu.gateway.app import create_app
from bailu.gateway.auth import KeyStore
from bailu.gateway.settings import GatewaySettings
from bailu.keys.model import hash_key
from bailu.worker.server import WorkerServer
from bailu.worker.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL_DIR = REPO / ".cache" / "models" / "tiny-llama"
SMOLLM2_DIR = REPO / ".cache" / "models" / "smollm2-135m-instruct"
TEST_KEY = "bailu-test-key"
OTHER_KEY = "bailu-other-test-key"
MODEL = "test-model"


@pytest.fixture
def clean_bailu_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No BAILU_* variable of the developer's shell leaks into the test."""
    for name in list(os.environ):
        if name.startswith("BAILU_"):
            monkeypatch.delenv(name)


async def eventually(condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> None:
    """Wait until `condition()` holds; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, never one this test process handed out before: the kernel may give the
    same free port to two back-to-back calls (a worker's gRPC and HTTP port once came out equal, and the
    readiness probe then read the gRPC server's HTTP/2 preface)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The tiny random Llama with SmolLM2's tokenizer (`make tiny-model` builds it; built here if missing)."""
    from bailu.dev.checkpoints import build_tiny_llama

    return build_tiny_llama(TINY_MODEL_DIR)


def make_lora_adapter(model_dir: Path, out_dir: Path, seed: int) -> Path:
    """A real PEFT LoRA adapter for the model at `model_dir`, saved to `out_dir`, with random non-zero weights
    (no training) drawn from `seed`, so that it visibly changes the output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(out_dir)
    return out_dir


WorkerFactory = Callable[..., Awaitable[WorkerServer]]


@pytest.fixture
async def start_worker() -> AsyncIterator[WorkerFactory]:
    """Start in-process workers (real gRPC servers on free ports); `engine="sim"` unless overridden."""
    servers: list[WorkerServer] = []

    async def start(**overrides: Any) -> WorkerServer:
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "http_port": 0,
            "engine": "sim",
            "model_name": MODEL,
            "sim_ttft_ms": 5,
            "sim_itl_ms": 2,
            "drain_grace_s": 5,
        }
        values.update(overrides)
        server = WorkerServer(WorkerSettings(**values))
        await server.start()
        servers.append(server)
        await server.wait_ready(120)
        return server

    yield start
    await asyncio.gather(*(s.stop(0) for s in servers))


@dataclass
class RunningGateway:
    url: str
    app: Any
    server: uvicorn.Server
    task: asyncio.Task[None]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TEST_KEY}"}

    async def wait_workers_ready(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.app.state.pool.ready_workers()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {count} workers ready after {timeout}s")
            await asyncio.sleep(0.05)


GatewayFactory = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the tests' gateways (generous timeout: the machine may be busy)."""
    async with httpx.AsyncClient(timeout=60) as client:
        yield client


@pytest.fixture
async def start_gateway() -> AsyncIterator[GatewayFactory]:
    """Start the gateway app under a real uvicorn server on a free port, in this event loop."""
    running: list[RunningGateway] = []

    async def start(workers: list[str], *, wait_ready: bool = True, **overrides: Any) -> RunningGateway:
        port = free_port()
        values: dict[str, Any] = {"host": "127.0.0.1", "port": port, "workers": workers, "load_poll_interval_s": 0.1}
        values.update(overrides)
        settings = GatewaySettings(**values)
        app = create_app(settings, keys=KeyStore([hash_key(TEST_KEY), hash_key(OTHER_KEY)]))
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on")
        )
        task = asyncio.create_task(server.serve())
        deadline = time.monotonic() + 10
        while not server.started:
            if task.done():
                task.result()
            if time.monotonic() > deadline:
                raise TimeoutError("gateway did not start")
            await asyncio.sleep(0.02)
        gateway = RunningGateway(f"http://127.0.0.1:{port}", app, server, task)
        running.append(gateway)
        if workers and wait_ready:
            await gateway.wait_workers_ready(len(workers))
        return gateway

    yield start
    for gateway in running:
        gateway.server.should_exit = True
    await asyncio.gather(*(g.task for g in running), return_exceptions=True)


@dataclass
class ServiceProcess:
    """A service in its own process, for tests that signal it: its port and its log."""

    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Kill it if it still runs (also when stopped by SIGSTOP) and reap it."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()


@dataclass
class WorkerProcess(ServiceProcess):
    """A worker in its own process (`python -m bailu.worker`), for tests that kill it."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def spawn_worker(tmp_path: Path, name: str, **env: str) -> WorkerProcess:
    port, http_port = free_port(), free_port()
    log_path = tmp_path / f"{name}.log"
    environ = {
        **os.environ,
        "BAILU_WORKER_HOST": "127.0.0.1",
        "BAILU_WORKER_PORT": str(port),
        "BAILU_WORKER_HTTP_PORT": str(http_port),
        "BAILU_WORKER_ENGINE": "sim",
        "BAILU_WORKER_MODEL_NAME": MODEL,
        **{f"BAILU_WORKER_{k.upper()}": v for k, v in env.items()},
    }
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "bailu.worker"], env=environ, stdout=log, stderr=subprocess.STDOUT
        )
    process = WorkerProcess(popen, port, log_path)
    wait_until_ready(popen, f"http://127.0.0.1:{http_port}/readyz", f"worker process {name}", process.log)
    return process


def wait_until_ready(
    popen: subprocess.Popen[bytes], readyz: str, what: str, log: Callable[[], str], timeout: float = 60.0
) -> None:
    """Poll `readyz` until it answers 200; a process that exits or takes longer than `timeout` is killed and
    the test fails with its log."""
    import http.client
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(readyz, timeout=1) as response:
                if response.status == 200:
                    return
        except (OSError, http.client.HTTPException):  # not listening yet, or something else answers there
            pass
        if popen.poll() is not None or time.monotonic() > deadline:
            popen.kill()
            raise RuntimeError(f"{what} did not become ready:\n{log()}")
        time.sleep(0.1)


@pytest.fixture
def worker_processes(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def spawn(name: str, **env: str) -> WorkerProcess:
        process = spawn_worker(tmp_path, name, **env)
        started.append(process)
        return process

    yield spawn
    for process in started:
        process.stop()


@dataclass
class RedisServer:
    """A real redis-server on a free port, with AOF persistence in a temporary directory."""

    port: int
    data_dir: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run `make setup` (it installs it)")
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
                "--appendonly", "yes", "--save", "", "--logfile", str(self.data_dir / "redis.log")]  # fmt: skip
        self.popen = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.popen.poll() is not None or time.monotonic() > deadline:
                log = (
                    (self.data_dir / "redis.log").read_text(errors="replace")
                    if (self.data_dir / "redis.log").exists()
                    else ""
                )
                raise RuntimeError(f"redis-server did not start:\n{log}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            self.popen.wait(10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """An async client of the test's redis-server."""
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()
