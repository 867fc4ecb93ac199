"""Admission control as a client meets it, over HTTP: a real gateway (uvicorn) in front of a real sim worker
(gRPC) with one engine slot, saturated by streaming completions that would run for minutes. An interactive
request whose first-token deadline no worker can meet gets a 503 `ttft_deadline_unmeetable` at once, a batch
request while the worker's queue holds its batch share a 503 `shed_under_load`; neither reaches the worker.
(`test_admission.py` tests the same decisions at the router, without HTTP.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bailu.common import metrics as metric_names
from bailu.worker.server import WorkerServer
from tests.conftest import GatewayFactory, RunningGateway, WorkerFactory, eventually
from tests.integration.test_admission import worker_requests
from tests.integration.test_gateway import CHAT, chat_body

pytestmark = pytest.mark.usefixtures("clean_bailu_env")

# One engine slot; a request holds it for 50 ms + 50 ms per token: 20 tokens about 1 s, 2,000 tokens 100 s.
SATURABLE = {
    "max_batch_size": 1,
    "max_queue": 4,
    "sim_ttft_ms": 50,
    "sim_itl_ms": 50,
    "sim_output_tokens": 2000,
    "warmup": False,
}
SHORT = 20  # max_tokens of a request that runs to its end (about 1 s)
LONG = 2000  # max_tokens of a request that holds its slot or queue place until the test closes it


class Streams:
    """Streaming completions held open in the background; closing them disconnects their clients, which
    cancels their worker calls."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.tasks: list[asyncio.Task[int]] = []

    def open(self, gateway: RunningGateway, headers: dict[str, str]) -> asyncio.Task[int]:
        """Start a long streaming completion; the task ends with its status if it is ever answered."""

        async def run() -> int:
            body = chat_body(max_tokens=LONG, stream=True)
            async with self.http.stream("POST", gateway.url + CHAT, json=body, headers=headers) as response:
                async for _ in response.aiter_raw():
                    pass
                return response.status_code

        task = asyncio.create_task(run())
        self.tasks.append(task)
        return task

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()


@pytest.fixture
async def streams(
    start_worker: WorkerFactory, start_gateway: GatewayFactory, http: httpx.AsyncClient
) -> AsyncIterator[Streams]:
    """Held streams, closed before the gateway and the worker stop (uvicorn waits for open connections)."""
    held = Streams(http)
    yield held
    await held.close()


def busy(worker: WorkerServer) -> int:
    return worker.admission.running + worker.admission.queued


def shed_count(metrics_text: str, priority: str, reason: str) -> float:
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == metric_names.GATEWAY_SHED and sample.labels == {"priority": priority, "reason": reason}:
                return float(sample.value)
    return 0.0


def assert_refused(response: httpx.Response, code: str) -> dict[str, Any]:
    """A 503 with OpenAI's error body, a whole number of seconds to wait and the request's id; the error."""
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"], error["param"]) == ("server_error", code, None)
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit(), retry_after
    assert int(retry_after) >= 1
    assert response.headers.get("x-request-id"), response.headers
    return error


async def until_busy(worker: WorkerServer, count: int) -> None:
    await eventually(lambda: busy(worker) == count)


async def saturate(worker: WorkerServer, gateway: RunningGateway, streams: Streams, headers: dict[str, str]) -> None:
    """One long completion in the worker's slot and two in its queue, seen by the gateway's load poll too."""
    for count in (1, 2, 3):
        streams.open(gateway, headers)
        await until_busy(worker, count)
    assert (worker.admission.running, worker.admission.queued) == (1, 2)
    client = gateway.app.state.pool.workers[f"127.0.0.1:{worker.port}"]
    await eventually(lambda: client.load.queued == 2)


async def test_an_unmeetable_ttft_deadline_gets_503_at_once_and_never_reaches_the_worker(
    start_worker: WorkerFactory, start_gateway: GatewayFactory, http: httpx.AsyncClient, streams: Streams
) -> None:
    worker = await start_worker(**SATURABLE)
    address = f"127.0.0.1:{worker.port}"
    gateway = await start_gateway([address], admission_control=True)
    headers = gateway.headers
    # One completion run to its end: the worker measures its service time (about 1 s) and reports it.
    done = await http.post(gateway.url + CHAT, json=chat_body(max_tokens=SHORT), headers=headers)
    assert done.status_code == 200, done.text
    client = gateway.app.state.pool.workers[address]
    await eventually(lambda: client.load.service_s > 0)
    await saturate(worker, gateway, streams, headers)  # a new interactive request would wait about 3 s
    sent = worker_requests(worker) + busy(worker)

    deadline = {**headers, "X-Bailu-TTFT-Deadline-Ms": "500"}
    for stream in (False, True):  # a streaming request is refused the same way, before any event
        started = time.monotonic()
        body = chat_body(max_tokens=SHORT, stream=stream)
        refused = await http.post(gateway.url + CHAT, json=body, headers=deadline, timeout=5)
        elapsed = time.monotonic() - started
        error = assert_refused(refused, "ttft_deadline_unmeetable")
        assert "shortest estimated wait" in error["message"]
        # The estimate is about three service times, so it says to come back after more than the deadline.
        assert int(refused.headers["Retry-After"]) >= 2
        # Refused before its deadline would have passed, not after waiting for it.
        assert elapsed < 0.5, elapsed
    assert (worker.admission.running, worker.admission.queued) == (1, 2)  # neither joined the queue
    metrics = (await http.get(gateway.url + "/metrics")).text
    assert shed_count(metrics, "interactive", "deadline_unmeetable") == 2

    # A deadline the estimate can meet is admitted: it joins the worker's queue.
    streams.open(gateway, {**headers, "X-Bailu-TTFT-Deadline-Ms": "20000"})
    await eventually(lambda: worker.admission.queued == 3)

    await streams.close()
    await until_busy(worker, 0)
    # Every generate call the worker ever had: the measured one, the three held, the meetable one.
    await eventually(lambda: worker_requests(worker) == sent + 1)


async def test_batch_is_shed_while_the_queue_holds_its_share_and_interactive_still_gets_in(
    start_worker: WorkerFactory, start_gateway: GatewayFactory, http: httpx.AsyncClient, streams: Streams
) -> None:
    worker = await start_worker(**SATURABLE)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"], admission_control=True, batch_queue_share=0.5)
    # The test keys are interactive; a request lowers its own priority with the header.
    batch = {**gateway.headers, "X-Bailu-Priority": "batch"}
    await saturate(worker, gateway, streams, batch)  # two of max_queue 4 waiting: the batch share, 0.5
    assert worker.admission.queued_batch == 2

    refused = await http.post(gateway.url + CHAT, json=chat_body(max_tokens=SHORT), headers=batch, timeout=5)
    error = assert_refused(refused, "shed_under_load")
    assert "50% full" in error["message"]
    assert worker.admission.queued == 2  # it reached no worker
    metrics = (await http.get(gateway.url + "/metrics")).text
    assert shed_count(metrics, "batch", "batch_shed") == 1
    assert shed_count(metrics, "interactive", "batch_shed") == 0

    # The same key without the header is interactive: it still finds room in the queue.
    streams.open(gateway, gateway.headers)
    await eventually(lambda: worker.admission.queued == 3)
    assert worker.admission.queued_batch == 2

    await streams.close()
    await until_busy(worker, 0)
    await eventually(lambda: worker_requests(worker) == 4)  # the three batch streams and the interactive one
