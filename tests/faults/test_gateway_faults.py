"""A gateway stopped with SIGTERM while streams are in flight: they finish, and the gateway stops accepting
connections at once, so that new requests go to another gateway (two gateway processes over one worker)."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import pytest

from tests.integration.test_gateway import CHAT, chat_body

pytestmark = pytest.mark.faults

TOKENS = 150


async def read_stream(http: httpx.AsyncClient, gateway, started: asyncio.Event) -> list[object]:
    events: list[object] = []
    body = chat_body(stream=True, max_tokens=TOKENS, stream_options={"include_usage": True})
    async with http.stream("POST", gateway.url + CHAT, json=body, headers=gateway.headers) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                events.append(data if data == "[DONE]" else json.loads(data))
                started.set()
    return events


async def refused(url: str) -> bool:
    """Whether a new connection to `url` is refused."""
    async with httpx.AsyncClient(timeout=2) as fresh:
        try:
            await fresh.get(url + "/healthz")
        except httpx.ConnectError:
            return True
    return False


async def test_sigterm_drains_streams_in_flight_and_refuses_new_connections(
    worker_processes, gateway_processes, http
) -> None:
    # Every server a process: the gateways' start-up wait blocks this event loop.
    address = worker_processes("worker", sim_output_tokens=str(TOKENS), sim_itl_ms="20", max_batch_size="8").address
    a = gateway_processes("gateway-a", [address])
    b = gateway_processes("gateway-b", [address])
    started = [asyncio.Event() for _ in range(3)]
    streams = [asyncio.create_task(read_stream(http, a, s)) for s in started]
    await asyncio.wait_for(asyncio.gather(*(s.wait() for s in started)), 30)

    a.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while not await refused(a.url):
        assert time.monotonic() < deadline, "the draining gateway still accepts connections"
        await asyncio.sleep(0.05)
    # A client's retry goes elsewhere, and is served, while the first gateway drains.
    response = await http.post(b.url + CHAT, json=chat_body(max_tokens=4), headers=b.headers)
    assert response.status_code == 200, response.text
    assert not all(s.done() for s in streams), "the streams ended before the drain was observed"

    for events in await asyncio.gather(*streams):
        assert events[-1] == "[DONE]"
        assert not [e for e in events if isinstance(e, dict) and "error" in e]
        usage = [e["usage"] for e in events if isinstance(e, dict) and e.get("usage")]
        assert usage[-1]["completion_tokens"] == TOKENS
    # Drained, then gone: uvicorn re-raises the SIGTERM it handled once it has shut down.
    assert await asyncio.to_thread(a.popen.wait, 30) in (0, -signal.SIGTERM), a.log()[-3000:]
    assert "Application shutdown complete" in a.log()
