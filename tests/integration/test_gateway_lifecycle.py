"""A completion's lifecycle when the client leaves early, on a real gateway and a real gRPC worker (sim
engine): the in-flight gauge returns to 0 and the worker's stream is cancelled at once, never at garbage
collection."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httpx
import pytest

from bailu.worker.server import WorkerServer
from tests.conftest import TEST_KEY, RunningGateway, eventually
from tests.integration.test_gateway import CHAT, chat_body


def inflight(gateway: RunningGateway) -> float:
    return float(gateway.app.state.metrics.inflight._value.get())


def worker_busy(worker: WorkerServer) -> int:
    return worker.admission.running + worker.admission.queued


async def test_a_client_that_leaves_while_the_worker_is_slow_to_start(start_worker, start_gateway) -> None:
    worker = await start_worker(sim_ttft_ms=3000)  # (its warm-up generation takes that long too)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    async with httpx.AsyncClient(timeout=60) as client:

        async def ask() -> None:
            body = chat_body(stream=True)
            async with client.stream("POST", gateway.url + CHAT, json=body, headers=gateway.headers) as response:
                await response.aread()

        request = asyncio.create_task(ask())
        await eventually(lambda: worker_busy(worker) == 1 and inflight(gateway) == 1, 5.0)
        request.cancel()  # the client closes its connection before any byte of the response
        with contextlib.suppress(asyncio.CancelledError):
            await request
    # Well before the first token would come.
    await eventually(lambda: inflight(gateway) == 0 and worker_busy(worker) == 0, 1.5)


async def test_a_client_that_leaves_before_the_stream_starts(start_worker, start_gateway) -> None:
    """The first tokens are in, and the client is gone before the response starts: Starlette never
    iterates the response body then, so whatever a body's `finally` would do never happens."""
    worker = await start_worker(sim_ttft_ms=5, sim_itl_ms=50, sim_output_tokens=100_000)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    body = json.dumps(chat_body(stream=True, max_tokens=100_000)).encode()
    received = 0

    async def receive() -> dict[str, Any]:
        nonlocal received
        received += 1
        if received == 1:
            return {"type": "http.request", "body": body, "more_body": False}
        if received == 2:  # while the gateway waits for the first tokens, the client is still there
            await asyncio.Event().wait()
        return {"type": "http.disconnect"}  # ... and then it is gone

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": CHAT,
        "raw_path": CHAT.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"gateway"),
            (b"authorization", f"Bearer {TEST_KEY}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
    }
    await gateway.app(scope, receive, send)
    assert received >= 3, "the response never listened for the disconnect"
    assert not any(m["type"] == "http.response.body" and m.get("body") for m in sent), "a byte was sent"
    # Closed by the time the app returns: nothing is left for garbage collection to finish.
    assert inflight(gateway) == 0
    await eventually(lambda: worker_busy(worker) == 0, 2.0)


@pytest.mark.parametrize("n", [1, 2])
async def test_a_worker_that_leaves_the_pool_mid_stream_ends_the_stream_with_an_error(
    start_worker, start_gateway, n: int
) -> None:
    """The pool closes a removed worker's channel, which cancels its calls under their readers: the client
    gets an error event and `[DONE]` (for n > 1 too, where the merge used to wait forever)."""
    worker = await start_worker(sim_itl_ms=20, sim_output_tokens=100_000)
    address = f"127.0.0.1:{worker.port}"
    gateway = await start_gateway([address])
    events: list[str] = []
    async with httpx.AsyncClient(timeout=30) as client:
        body = chat_body(stream=True, max_tokens=100_000, n=n)
        async with client.stream("POST", gateway.url + CHAT, json=body, headers=gateway.headers) as response:
            async with asyncio.timeout(20):
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    events.append(line[len("data: ") :])
                    if len(events) == 3:
                        await gateway.app.state.pool.workers[address].channel.close()
    errors = [json.loads(e)["error"] for e in events if e.startswith('{"error"')]
    assert len(errors) == 1, events[-3:]
    assert errors[0]["code"] == "service_unavailable"
    assert events[-1] == "[DONE]"
    await eventually(lambda: inflight(gateway) == 0 and worker_busy(worker) == 0, 5.0)
