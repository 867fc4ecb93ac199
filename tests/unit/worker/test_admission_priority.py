"""Admission control's ordered wait list: priority classes, first-token deadlines, eviction, service time."""

from __future__ import annotations

import asyncio
import time

import pytest

from bailu.common.errors import DeadlineExceeded, Overloaded
from bailu.common.types import BATCH, INTERACTIVE
from bailu.worker.admission import SERVICE_EWMA_WEIGHT, Admission
from tests.unit.worker.test_admission import ready_admission, settle


class Waiter:
    """A task that asks for a slot, notes when it got it in `order`, and keeps it until released."""

    def __init__(
        self,
        admission: Admission,
        name: str,
        order: list[str],
        priority: str = INTERACTIVE,
        first_token_deadline: float | None = None,
        deadline: float | None = None,
    ) -> None:
        self.name = name
        self.admitted = asyncio.Event()
        self.release = asyncio.Event()
        self.task = asyncio.create_task(self._run(admission, order, priority, first_token_deadline, deadline))

    async def _run(
        self,
        admission: Admission,
        order: list[str],
        priority: str,
        first_token_deadline: float | None,
        deadline: float | None,
    ) -> None:
        async with admission.slot(deadline, priority=priority, first_token_deadline=first_token_deadline):
            order.append(self.name)
            self.admitted.set()
            await self.release.wait()


async def run_one_at_a_time(waiters: list[Waiter]) -> None:
    """Release each admitted waiter in turn until all finished."""
    pending = list(waiters)
    while pending:
        done = [w for w in pending if w.admitted.is_set()]
        assert done, "no waiter was admitted"
        for waiter in done:
            waiter.release.set()
            await waiter.task
            pending.remove(waiter)
        await settle()


async def test_interactive_overtakes_batch_that_queued_first() -> None:
    admission = ready_admission(capacity=1, max_queue=8)
    order: list[str] = []
    holder = Waiter(admission, "holder", order)
    await settle()
    waiters = [
        Waiter(admission, "batch-1", order, BATCH),
        Waiter(admission, "batch-2", order, BATCH),
        Waiter(admission, "interactive-1", order, INTERACTIVE),
        Waiter(admission, "interactive-2", order, INTERACTIVE),
    ]
    await settle()
    assert (admission.queued, admission.queued_batch) == (4, 2)
    await run_one_at_a_time([holder, *waiters])
    assert order == ["holder", "interactive-1", "interactive-2", "batch-1", "batch-2"]


async def test_within_a_class_the_earliest_first_token_deadline_goes_first_and_none_last() -> None:
    admission = ready_admission(capacity=1, max_queue=8)
    order: list[str] = []
    holder = Waiter(admission, "holder", order)
    await settle()
    now = time.time()
    waiters = [
        Waiter(admission, "none-1", order),
        Waiter(admission, "late", order, first_token_deadline=now + 60),
        Waiter(admission, "soon", order, first_token_deadline=now + 5),
        Waiter(admission, "none-2", order),
        Waiter(admission, "batch-soon", order, BATCH, first_token_deadline=now + 1),
        Waiter(admission, "batch-none", order, BATCH),
    ]
    await settle()
    await run_one_at_a_time([holder, *waiters])
    assert order == ["holder", "soon", "late", "none-1", "none-2", "batch-soon", "batch-none"]


async def test_a_full_queue_evicts_its_newest_batch_waiter_for_an_interactive_request() -> None:
    evicted: list[str] = []
    admission = Admission(1, 3, on_evict=evicted.append)
    admission.ready = True
    order: list[str] = []
    holder = Waiter(admission, "holder", order)
    await settle()
    old_batch = Waiter(admission, "old-batch", order, BATCH)
    interactive = Waiter(admission, "interactive", order)
    new_batch = Waiter(admission, "new-batch", order, BATCH)
    await settle()
    assert admission.queued == admission.max_queue
    newcomer = Waiter(admission, "newcomer", order)
    await settle()
    with pytest.raises(Overloaded, match="made room for an interactive"):
        await new_batch.task
    assert evicted == [BATCH]
    assert (admission.queued, admission.queued_batch) == (3, 1)
    await run_one_at_a_time([holder, old_batch, interactive, newcomer])
    assert order == ["holder", "interactive", "newcomer", "old-batch"]
    assert admission.running == admission.queued == 0
    assert await admission.drain(0.5) is True


async def test_a_queue_full_of_interactive_work_refuses_more() -> None:
    evicted: list[str] = []
    admission = Admission(1, 2, on_evict=evicted.append)
    admission.ready = True
    order: list[str] = []
    waiters = [Waiter(admission, f"i{i}", order) for i in range(3)]  # one running, two queued
    await settle()
    with pytest.raises(Overloaded, match="queue is full"):
        async with admission.slot(priority=INTERACTIVE):
            pass
    assert evicted == []
    assert admission.queued == 2
    await run_one_at_a_time(waiters)


async def test_a_batch_request_never_evicts() -> None:
    admission = ready_admission(capacity=1, max_queue=2)
    order: list[str] = []
    waiters = [Waiter(admission, "running", order), Waiter(admission, "b1", order, BATCH)]
    waiters.append(Waiter(admission, "b2", order, BATCH))
    await settle()
    with pytest.raises(Overloaded, match="queue is full"):
        async with admission.slot(priority=BATCH):
            pass
    assert admission.queued_batch == 2
    await run_one_at_a_time(waiters)
    assert order == ["running", "b1", "b2"]


async def test_no_queue_refuses_interactive_work_when_busy_even_with_batch_running() -> None:
    admission = ready_admission(capacity=1, max_queue=0)
    order: list[str] = []
    running = Waiter(admission, "batch", order, BATCH)
    await settle()
    with pytest.raises(Overloaded):
        async with admission.slot(priority=INTERACTIVE):
            pass
    await run_one_at_a_time([running])


async def test_a_batch_waiter_past_its_deadline_leaves_the_list() -> None:
    admission = ready_admission(capacity=1, max_queue=4)
    order: list[str] = []
    holder = Waiter(admission, "holder", order)
    await settle()
    late = Waiter(admission, "late", order, BATCH, deadline=time.time() + 0.05)
    await settle()
    assert admission.queued_batch == 1
    with pytest.raises(DeadlineExceeded):
        await late.task
    assert admission.queued == admission.queued_batch == 0
    await run_one_at_a_time([holder])
    assert await admission.drain(0.5) is True


async def test_report_counts_queued_batch_work() -> None:
    admission = ready_admission(capacity=1, max_queue=4)
    order: list[str] = []
    waiters = [Waiter(admission, "running", order, BATCH), Waiter(admission, "i", order)]
    waiters += [Waiter(admission, "b1", order, BATCH), Waiter(admission, "b2", order, BATCH)]
    await settle()
    report = admission.report()
    assert (report.running, report.queued, report.queued_batch) == (1, 3, 2)
    await run_one_at_a_time(waiters)
    assert admission.report().queued_batch == 0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_service_time_is_a_moving_average_of_slot_hold_times() -> None:
    clock = Clock()
    admission = Admission(2, 2, clock=clock)
    admission.ready = True
    assert admission.report().service_s == 0.0  # nothing measured yet
    async with admission.slot():
        clock.now += 2.0
    assert admission.report().service_s == pytest.approx(2.0)  # the first sample is taken as it is
    async with admission.slot():
        clock.now += 4.0
    assert admission.report().service_s == pytest.approx(2.0 + SERVICE_EWMA_WEIGHT * 2.0)

    async def failing() -> None:
        async with admission.slot():
            clock.now += 1.0
            raise RuntimeError("engine failed")  # a failed request held its slot too

    with pytest.raises(RuntimeError):
        await failing()
    expected = 2.4 + SERVICE_EWMA_WEIGHT * (1.0 - 2.4)
    assert admission.report().service_s == pytest.approx(expected)


async def test_slots_are_never_lost_nor_overgranted_under_churn() -> None:
    # Mixed classes, deadlines that pass while queued, cancellations and evictions, all at once.
    admission = ready_admission(capacity=3, max_queue=6)
    peak = 0
    outcomes: dict[str, int] = {}

    async def work(i: int) -> None:
        nonlocal peak
        priority = BATCH if i % 3 else INTERACTIVE
        deadline = time.time() + 0.01 if i % 7 == 0 else None
        try:
            async with admission.slot(deadline, priority=priority, first_token_deadline=time.time() + i % 5):
                peak = max(peak, admission.running)
                assert admission.running <= admission.capacity
                await asyncio.sleep(0.001 * (i % 4))
            outcome = "ok"
        except (Overloaded, DeadlineExceeded) as exc:
            outcome = type(exc).__name__
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    tasks = [asyncio.create_task(work(i)) for i in range(200)]
    await asyncio.sleep(0.002)
    for task in tasks[5::11]:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert peak == 3
    assert outcomes["ok"] > 0
    assert outcomes["Overloaded"] > 0
    assert admission.running == admission.queued == 0
    assert await admission.drain(0.5) is True
