"""Backpressure end to end, on a real gateway (uvicorn) and a real gRPC worker (sim engine), with a raw
socket client that stops reading: a slow reader holds its own generation back instead of growing the
gateway's buffers, and a client that stops reading is cut off after `client_write_timeout_s`, its worker
streams cancelled."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from bailu.common import metrics as metric_names
from bailu.worker.server import WorkerServer
from tests.conftest import MODEL, TEST_KEY, RunningGateway, eventually

# A generation far longer than every buffer between the worker and the client together (the kernel's
# socket buffers on loopback included: a few MiB).
LONG = 500_000
LONG_WORKER = {
    "sim_ttft_ms": 5,
    "sim_itl_ms": 0.5,
    "sim_output_tokens": 1_000_000,
    "max_model_len": 2_000_000,
    "max_batch_size": 16,
}


class StalledClient:
    """A streaming completion over a raw TCP socket whose receive buffer is small, so that the client's
    reading (or not reading) sets the pace."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received = bytearray()

    @classmethod
    async def open(cls, gateway: RunningGateway, body: dict[str, object]) -> StalledClient:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        port = int(gateway.url.rsplit(":", 1)[1])
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 10)
        data = json.dumps(body).encode()
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {TEST_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        await loop.sock_sendall(sock, head.encode() + data)
        client = cls(sock)
        await client.read_until(b"\r\n\r\n")  # the response's head; then the client stops reading
        return client

    async def read_until(self, marker: bytes, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while marker not in self.received:
                chunk = await loop.sock_recv(self.sock, 65536)
                if not chunk:
                    raise ConnectionError(f"closed before {marker!r}")
                self.received += chunk

    async def read(self, count: int, timeout: float = 30.0) -> None:
        """Read `count` more bytes."""
        target = len(self.received) + count
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while len(self.received) < target:
                chunk = await loop.sock_recv(self.sock, 65536)
                if not chunk:
                    raise ConnectionError("closed")
                self.received += chunk

    async def read_to_eof(self, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while chunk := await loop.sock_recv(self.sock, 65536):
                self.received += chunk

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
async def clients() -> AsyncIterator[list[StalledClient]]:
    opened: list[StalledClient] = []
    yield opened
    for client in opened:
        client.close()


def stream_body(n: int) -> dict[str, object]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "a poem about dew"}],
        "stream": True,
        "max_tokens": LONG,
        "n": n,
        "temperature": 1.0,
    }


async def settled(read: Callable[[], int], quiet_s: float = 1.5, timeout: float = 60.0) -> int:
    """Wait until `read()` stops changing for `quiet_s` seconds; its value then."""
    deadline = time.monotonic() + timeout
    value, since = read(), time.monotonic()
    while time.monotonic() - since < quiet_s:
        if time.monotonic() > deadline:
            raise TimeoutError(f"still changing after {timeout}s (now {value})")
        await asyncio.sleep(0.1)
        if (now := read()) != value:
            value, since = now, time.monotonic()
    return int(value)


def write_timeouts(gateway: RunningGateway) -> float:
    return float(gateway.app.state.metrics.client_write_timeouts._value.get())


def inflight(gateway: RunningGateway) -> float:
    return float(gateway.app.state.metrics.inflight._value.get())


def worker_busy(worker: WorkerServer) -> int:
    return worker.admission.running + worker.admission.queued


async def test_a_slow_reader_with_n_8_holds_its_generation_back(start_worker, start_gateway, clients) -> None:
    """While the client does not read, the worker stops generating (every buffer on the way is full and
    bounded, the gateway's merge queue included); when it reads again, generation resumes."""
    worker = await start_worker(**LONG_WORKER)
    engine = worker.engine
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"], client_write_timeout_s=120)
    before = engine.tokens_generated  # the worker's warm-up
    clients.append(client := await StalledClient.open(gateway, stream_body(n=8)))

    held = await settled(lambda: engine.tokens_generated) - before
    # 8 candidates of 500,000 tokens: held back after a small part (about 750 tokens per candidate in
    # gRPC's 16 KiB stream window, the gateway's 32-chunk merge queue, and the socket buffers' few MiB).
    assert 0 < held < 150_000, held
    assert engine.active == 8  # suspended, not finished or cancelled
    assert write_timeouts(gateway) == 0

    await client.read(2 << 20)  # the client reads again: generation goes on where it stopped
    await eventually(lambda: engine.tokens_generated - before > held + 5_000, 30)

    client.close()  # and a client that leaves ends it
    await eventually(lambda: engine.active == 0 and inflight(gateway) == 0, 10)


@pytest.mark.parametrize("n", [1, 8])
async def test_a_client_that_stops_reading_is_cut_off(
    start_worker, start_gateway, clients, n: int, caplog: pytest.LogCaptureFixture
) -> None:
    worker = await start_worker(**LONG_WORKER)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"], client_write_timeout_s=1.0)
    clients.append(client := await StalledClient.open(gateway, stream_body(n=n)))
    await eventually(lambda: worker_busy(worker) == n, 10)

    started = time.monotonic()
    await eventually(lambda: write_timeouts(gateway) == 1, 60)
    # The worker's streams are cancelled with the response, and the completion is out of flight.
    await eventually(lambda: worker_busy(worker) == 0 and worker.engine.active == 0 and inflight(gateway) == 0, 5)
    # (The worker's tokens were held back meanwhile, so the cut-off comes well before the generation's end.)
    assert time.monotonic() - started < 60

    # What the client finds when it reads again: what was buffered, then the end of the connection, with
    # neither [DONE] nor the end of the chunked body.
    await client.read_to_eof()
    assert b"data: " in client.received
    assert b"data: [DONE]" not in client.received
    assert not client.received.endswith(b"0\r\n\r\n")

    metrics = (await _metrics(gateway)).splitlines()
    assert f"{metric_names.GATEWAY_CLIENT_WRITE_TIMEOUTS} 1.0" in metrics
    # Said once, as the gateway's warning with the request id, not again as uvicorn's ERROR.
    assert [r.getMessage() for r in caplog.records if r.name == "bailu.gateway.lifecycle"] == [
        "client stopped reading: response abandoned"
    ]
    assert not [r for r in caplog.records if r.name == "uvicorn.error" and r.levelno >= logging.ERROR]


async def _metrics(gateway: RunningGateway) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(gateway.url + "/metrics")
        return response.text
