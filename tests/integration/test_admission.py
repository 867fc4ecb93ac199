"""Priority and deadline-aware admission end to end: real in-process sim workers (gRPC servers), the gateway's
WorkerPool polling them and its Router, with requests built as the completion handler builds them.

Each worker has one engine slot and a request holds it for about a second, so a few requests saturate it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from bailu.common.errors import DeadlineUnmeetable, Shed
from bailu.common.metrics import GATEWAY_SHED, WORKER_EVICTED, WORKER_QUEUED_BATCH, WORKER_REQUESTS, GatewayMetrics
from bailu.common.types import BATCH, INTERACTIVE, ChatMessage, GenerateRequest, SamplingParams
from bailu.gateway.priority import AdmissionPolicy
from bailu.gateway.routing import Router
from bailu.gateway.workers import WorkerPool
from bailu.worker.server import WorkerServer
from tests.conftest import MODEL, WorkerFactory, eventually

# One slot, held for about 50 ms + 24 x 40 ms = 1 s per request.
SLOW = {"max_batch_size": 1, "sim_ttft_ms": 50, "sim_itl_ms": 40, "sim_output_tokens": 24, "warmup": False}


def make_request(priority: str = INTERACTIVE, first_token_in_s: float | None = None) -> GenerateRequest:
    now = time.time()
    return GenerateRequest(
        request_id=uuid.uuid4().hex,
        model=MODEL,
        messages=(ChatMessage("user", "hello"),),
        sampling=SamplingParams(max_tokens=24),
        deadline=now + 60,
        priority=priority,
        first_token_deadline=None if first_token_in_s is None else now + first_token_in_s,
    )


class Gateway:
    """A pool polling the workers and a Router on it, as the gateway app builds them."""

    def __init__(self, addresses: list[str], admission: AdmissionPolicy | None) -> None:
        self.pool = WorkerPool(addresses, poll_interval_s=0.05)
        self.registry = CollectorRegistry()
        self.router = Router(self.pool, GatewayMetrics(self.registry), max_attempts=3, admission=admission)
        self.first_tokens: list[str] = []  # request ids, in the order their first token arrived
        self.tasks: list[asyncio.Task[None]] = []

    async def complete(self, request: GenerateRequest) -> None:
        first = True
        async for _ in self.router.stream(request):
            if first:
                self.first_tokens.append(request.request_id)
                first = False

    def start(self, request: GenerateRequest) -> asyncio.Task[None]:
        task = asyncio.create_task(self.complete(request))
        self.tasks.append(task)
        return task

    def shed(self, priority: str, reason: str) -> float:
        value = self.registry.get_sample_value(GATEWAY_SHED, {"priority": priority, "reason": reason})
        return value or 0.0

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.pool.close()


@contextlib.asynccontextmanager
async def gateway(workers: list[WorkerServer], admission: AdmissionPolicy | None) -> AsyncIterator[Gateway]:
    gw = Gateway([f"127.0.0.1:{w.port}" for w in workers], admission)
    await gw.pool.start()
    try:
        await eventually(lambda: len(gw.pool.ready_workers()) == len(workers))
        yield gw
    finally:
        await gw.close()


def worker_requests(worker: WorkerServer) -> float:
    """Generate calls the worker finished, whatever their outcome."""
    return sum(
        sample.value
        for metric in worker.metrics_registry.collect()
        for sample in metric.samples
        if sample.name == WORKER_REQUESTS
    )


async def measured(gw: Gateway, worker: WorkerServer) -> None:
    """Run one request to its end, so that the worker has measured its service time and the pool has seen it."""
    await gw.complete(make_request())
    client = gw.pool.workers[f"127.0.0.1:{worker.port}"]
    await eventually(lambda: client.load is not None and client.load.service_s > 0)


async def test_interactive_overtakes_batch_queued_before_it(start_worker: WorkerFactory) -> None:
    worker = await start_worker(**SLOW, max_queue=8)
    async with gateway([worker], AdmissionPolicy(batch_queue_share=1.0)) as gw:
        running = make_request(BATCH)
        gw.start(running)
        await eventually(lambda: worker.admission.running == 1)
        batch = [make_request(BATCH) for _ in range(3)]
        for request in batch:
            gw.start(request)
        await eventually(lambda: worker.admission.queued_batch == 3)
        assert worker.metrics_registry.get_sample_value(WORKER_QUEUED_BATCH) == 3
        interactive = make_request(INTERACTIVE)
        done = gw.start(interactive)
        await eventually(lambda: worker.admission.queued == 4)
        await asyncio.wait_for(done, 10)
        # It queued last, behind three batch requests, and was served first once the slot freed.
        assert gw.first_tokens[:2] == [running.request_id, interactive.request_id]
        await eventually(lambda: worker.admission.queued_batch == 2)  # then the batch requests, in turn


async def test_an_unmeetable_first_token_deadline_fails_at_once_and_never_reaches_a_worker(
    start_worker: WorkerFactory,
) -> None:
    worker = await start_worker(**SLOW, max_queue=8)
    async with gateway([worker], AdmissionPolicy(batch_queue_share=1.0)) as gw:
        await measured(gw, worker)
        for _ in range(4):  # one running, three queued: about 4 s before a new interactive request starts
            gw.start(make_request(INTERACTIVE))
        await eventually(lambda: worker.admission.queued == 3)
        sent = worker_requests(worker) + worker.admission.running + worker.admission.queued
        with pytest.raises(DeadlineUnmeetable, match="shortest estimated wait") as info:
            await gw.complete(make_request(INTERACTIVE, first_token_in_s=0.5))
        assert info.value.retry_after_s is not None
        assert info.value.retry_after_s >= 1
        assert gw.shed(INTERACTIVE, "deadline_unmeetable") == 1
        # The worker never saw it: nothing joined its queue, and only the requests sent before finish there.
        assert worker.admission.queued == 3
        await asyncio.gather(*gw.tasks)
        await eventually(lambda: worker_requests(worker) == sent)
        # A deadline the estimate can meet is served.
        await gw.complete(make_request(INTERACTIVE, first_token_in_s=5.0))


async def test_without_admission_control_the_same_request_waits_at_the_worker(start_worker: WorkerFactory) -> None:
    worker = await start_worker(**SLOW, max_queue=8)
    async with gateway([worker], None) as gw:
        await measured(gw, worker)
        for _ in range(4):
            gw.start(make_request(INTERACTIVE))
        await eventually(lambda: worker.admission.queued == 3)
        late = gw.start(make_request(INTERACTIVE, first_token_in_s=0.5))
        await eventually(lambda: worker.admission.queued == 4)  # it joined the queue: the baseline
        assert not late.done()
        assert gw.shed(INTERACTIVE, "deadline_unmeetable") == 0


async def test_batch_is_shed_when_every_queue_holds_its_share(start_worker: WorkerFactory) -> None:
    workers = [await start_worker(**SLOW, max_queue=4) for _ in range(2)]
    async with gateway(workers, AdmissionPolicy(batch_queue_share=0.5)) as gw:
        for _ in range(6):  # 1 running + 2 queued on each: half of each queue
            gw.start(make_request(BATCH))
        await eventually(lambda: all(w.admission.queued == 2 for w in workers))
        with pytest.raises(Shed, match="50% full"):
            await gw.complete(make_request(BATCH))
        assert gw.shed(BATCH, "batch_shed") == 1
        assert sum(w.admission.queued for w in workers) == 4  # the shed request reached no worker
        # Interactive work still has room, and goes first.
        interactive = make_request(INTERACTIVE)
        done = gw.start(interactive)
        await eventually(lambda: sum(w.admission.queued for w in workers) == 5)
        await asyncio.wait_for(done, 10)
        # On its worker it went right after the batch request running there, ahead of the two queued ones (a
        # batch request queued on the other worker may start at the same moment).
        assert gw.first_tokens.index(interactive.request_id) in (2, 3)


async def test_an_interactive_request_evicts_batch_from_a_full_worker_queue(start_worker: WorkerFactory) -> None:
    worker = await start_worker(**SLOW, max_queue=2)
    # batch_queue_share 1: the gateway does not shed batch, so the worker's queue fills with it.
    async with gateway([worker], AdmissionPolicy(batch_queue_share=1.0)) as gw:
        gw.start(make_request(BATCH))
        await eventually(lambda: worker.admission.running == 1)
        # One after the other, so that which one is the newest is known.
        waiting = [gw.start(make_request(BATCH))]
        await eventually(lambda: worker.admission.queued_batch == 1)
        waiting.append(gw.start(make_request(BATCH)))
        await eventually(lambda: worker.admission.queued_batch == 2)
        interactive = gw.start(make_request(INTERACTIVE))
        await asyncio.wait_for(interactive, 10)
        evicted = await asyncio.gather(*waiting, return_exceptions=True)
        # The newest batch request made room; with no other worker, the gateway reports the worker's refusal.
        assert [type(e).__name__ for e in evicted] == ["NoneType", "Overloaded"]
        assert worker.metrics_registry.get_sample_value(WORKER_EVICTED, {"priority": BATCH}) == 1
