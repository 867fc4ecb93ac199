"""A worker killed (SIGKILL) or frozen (SIGSTOP: a stuck GPU, a paused node) under a real gateway: before the
first token the request is answered by the other worker; after it the stream ends with a clean error event,
within the idle timeout. The figures each test measures are printed (`pytest -s`)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

import httpx
import pytest

from bailu.common import metrics as metric_names
from bailu.gateway.settings import GatewaySettings
from tests.conftest import RunningGateway, WorkerProcess, eventually
from tests.integration.test_gateway import CHAT, chat_body

pytestmark = pytest.mark.faults

DEFAULTS = GatewaySettings()
SIGNALS = [pytest.param(signal.SIGKILL, id="SIGKILL"), pytest.param(signal.SIGSTOP, id="SIGSTOP")]
# The code of the error event: a dead worker's connection is refused; a frozen one just stops sending.
LOST_CODE = {signal.SIGKILL: "service_unavailable", signal.SIGSTOP: "upstream_stalled"}


def chosen_worker(gateway: Any, *workers: WorkerProcess) -> WorkerProcess:
    """The worker the gateway sent its one call in flight to."""
    address = next(w.address for w in gateway.app.state.pool.workers.values() if w.inflight)
    return next(w for w in workers if w.address == address)


async def stream_events(response: httpx.Response) -> list[tuple[float, Any]]:
    """The stream's SSE events, each with the monotonic time it arrived."""
    events = []
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append((time.monotonic(), data if data == "[DONE]" else json.loads(data)))
    return events


@pytest.mark.parametrize("sig", SIGNALS)
async def test_worker_lost_before_the_first_token_is_answered_by_the_other(
    sig: signal.Signals, worker_processes, start_gateway, http
) -> None:
    a = worker_processes("a", sim_ttft_ms="2000")
    b = worker_processes("b", sim_ttft_ms="2000")
    # The default timeouts and poll interval: what a deployment gets.
    gateway = await start_gateway([a.address, b.address], load_poll_interval_s=DEFAULTS.load_poll_interval_s)
    pool = gateway.app.state.pool
    task = asyncio.create_task(http.post(gateway.url + CHAT, json=chat_body(), headers=gateway.headers))
    await eventually(lambda: any(w.inflight for w in pool.workers.values()), 10.0)
    victim = chosen_worker(gateway, a, b)
    signalled = time.monotonic()
    victim.popen.send_signal(sig)
    response = await task
    answered_s = time.monotonic() - signalled
    print(f"\n{sig.name} before the first token: answered by the other worker {answered_s:.2f}s after the signal")
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] > 0
    # Within the bound a frozen worker may cost (the other worker's own TTFT of 2 s included).
    assert answered_s < DEFAULTS.stream_idle_timeout_s
    assert victim.address not in {w.address for w in pool.ready_workers()}
    metrics = (await http.get(gateway.url + "/metrics")).text
    assert f"{metric_names.GATEWAY_RETRIES} 1.0" in metrics
    # Out of routing: the next request goes to the healthy worker at once.
    again = await http.post(gateway.url + CHAT, json=chat_body(max_tokens=2), headers=gateway.headers)
    assert again.status_code == 200, again.text


@pytest.mark.parametrize("sig", SIGNALS)
async def test_worker_lost_mid_stream_ends_the_stream_with_an_error_event(
    sig: signal.Signals, worker_processes, start_gateway, http
) -> None:
    idle_s = 3.0
    a = worker_processes("a", sim_output_tokens="100000", sim_itl_ms="20")
    b = worker_processes("b", sim_output_tokens="100000", sim_itl_ms="20")
    gateway = await start_gateway([a.address, b.address], stream_idle_timeout_s=idle_s)
    body = chat_body(stream=True, max_tokens=100_000)
    signalled = 0.0
    events: list[tuple[float, Any]] = []
    async with http.stream("POST", gateway.url + CHAT, json=body, headers=gateway.headers) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            events.append((time.monotonic(), data if data == "[DONE]" else json.loads(data)))
            if len(events) == 3:
                chosen_worker(gateway, a, b).popen.send_signal(sig)
                signalled = time.monotonic()
    errors = [(at, e) for at, e in events if isinstance(e, dict) and "error" in e]
    assert len(errors) == 1, events[-3:]
    at, error = errors[0]
    print(f"\n{sig.name} mid-stream: error event {at - signalled:.2f}s after the signal ({error['error']['code']})")
    assert error["error"]["code"] == LOST_CODE[sig]
    assert error["error"]["type"] in ("timeout", "server_error")
    assert set(error["error"]) == {"message", "type", "param", "code"}
    assert events[-1][1] == "[DONE]"
    assert at - signalled < idle_s + 3.0


async def test_worker_frozen_mid_generation_gives_a_504(worker_processes, start_gateway, http) -> None:
    a = worker_processes("a", sim_output_tokens="400", sim_itl_ms="20")
    gateway = await start_gateway([a.address], stream_idle_timeout_s=3.0)
    task = asyncio.create_task(http.post(gateway.url + CHAT, json=chat_body(max_tokens=400), headers=gateway.headers))
    await eventually(lambda: any(w.inflight for w in gateway.app.state.pool.workers.values()), 10.0)
    await asyncio.sleep(1.0)  # well past the first token (TTFT 50 ms), well before the last (8 s)
    a.popen.send_signal(signal.SIGSTOP)
    signalled = time.monotonic()
    response = await task
    print(f"\nSIGSTOP mid-generation (not streamed): {response.status_code} {time.monotonic() - signalled:.2f}s after")
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "upstream_stalled"
    assert time.monotonic() - signalled < 3.0 + 3.0


@pytest.mark.slow_faults
async def test_frozen_worker_with_the_default_timeouts(worker_processes, start_gateway, http) -> None:
    """The acceptance figure: with every default, a frozen worker costs a streaming client at most the idle
    timeout (the keepalive, 5 s + 5 s, may report it first, as unavailable)."""
    a = worker_processes("a", sim_output_tokens="100000", sim_itl_ms="20")
    gateway = await start_gateway([a.address], load_poll_interval_s=DEFAULTS.load_poll_interval_s)
    elapsed, error, events = await freeze_after_three_events(http, gateway, a)
    print(f"\nSIGSTOP mid-stream, defaults: error event {elapsed:.2f}s after ({error['error']['code']})")
    assert error["error"]["code"] in ("upstream_stalled", "service_unavailable")
    assert elapsed < DEFAULTS.stream_idle_timeout_s + 2.0
    assert events[-1][1] == "[DONE]"


@pytest.mark.slow_faults
async def test_keepalive_alone_detects_a_frozen_worker(worker_processes, start_gateway, http) -> None:
    """With the idle timeout out of the way, gRPC keepalive (common/grpc_keepalive.py) closes the connection
    to a frozen worker within its ping interval plus its timeout: the stream fails as unavailable."""
    from bailu.common.grpc_keepalive import KEEPALIVE_TIME_MS, KEEPALIVE_TIMEOUT_MS

    a = worker_processes("a", sim_output_tokens="100000", sim_itl_ms="20")
    gateway = await start_gateway([a.address], stream_idle_timeout_s=120.0)
    elapsed, error, _events = await freeze_after_three_events(http, gateway, a)
    print(f"\nSIGSTOP mid-stream, keepalive only: error event {elapsed:.2f}s after ({error['error']['code']})")
    assert error["error"]["code"] == "service_unavailable"
    assert elapsed < (KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS) / 1000 + 5.0


async def test_a_worker_past_its_first_token_budget_is_abandoned_for_another(start_worker, start_gateway, http) -> None:
    """A worker that answers its polls but sends no first token within `first_token_timeout_s` (a stuck
    engine) loses the request to another worker; with no other, the client gets a 504 at that bound."""
    stuck = await start_worker(sim_ttft_ms=20_000, warmup=False)
    fine = await start_worker()
    gateway = await start_gateway(
        [f"127.0.0.1:{stuck.port}", f"127.0.0.1:{fine.port}"], first_token_timeout_s=1.0, max_attempts=2
    )
    retried = f"{metric_names.GATEWAY_RETRIES} 1.0"
    for _ in range(20):  # the pick is random between idle workers: go on until one tried the stuck one first
        started = time.monotonic()
        response = await http.post(gateway.url + CHAT, json=chat_body(max_tokens=2), headers=gateway.headers)
        assert response.status_code == 200, response.text
        assert time.monotonic() - started < 10.0  # never the stuck worker's 20 s
        if retried in (await http.get(gateway.url + "/metrics")).text:
            break
    else:
        pytest.fail("no request was retried")
    await eventually(lambda: stuck.admission.running == 0, 5.0)  # the abandoned attempt was cancelled there

    alone = await start_gateway([f"127.0.0.1:{stuck.port}"], first_token_timeout_s=1.0)
    started = time.monotonic()
    response = await http.post(alone.url + CHAT, json=chat_body(max_tokens=2), headers=alone.headers)
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "upstream_stalled"
    assert "no first token within 1s" in response.json()["error"]["message"]
    assert time.monotonic() - started < 10.0


async def freeze_after_three_events(
    http: httpx.AsyncClient, gateway: RunningGateway, worker: WorkerProcess
) -> tuple[float, dict[str, Any], list[tuple[float, str]]]:
    """Stream a long chat, SIGSTOP `worker` after the third event; returns the seconds from the signal to
    the error event, the error, and every (time, data) event."""
    body = chat_body(stream=True, max_tokens=100_000)
    signalled = 0.0
    events: list[tuple[float, str]] = []
    async with http.stream("POST", gateway.url + CHAT, json=body, headers=gateway.headers) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append((time.monotonic(), line[len("data: ") :]))
                if len(events) == 3:
                    worker.popen.send_signal(signal.SIGSTOP)
                    signalled = time.monotonic()
    at, error = next((at, json.loads(d)) for at, d in events if d.startswith('{"error"'))
    return at - signalled, error, events
