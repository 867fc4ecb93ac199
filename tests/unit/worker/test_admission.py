"""Admission control: engine slots, a bounded queue, deadlines and draining."""

from __future__ import annotations

import asyncio
import time

import pytest

from bailu.common.errors import DeadlineExceeded, Overloaded, Unavailable
from bailu.common.types import LoadReport
from bailu.worker.admission import Admission


def ready_admission(capacity: int, max_queue: int) -> Admission:
    admission = Admission(capacity, max_queue)
    admission.ready = True
    return admission


async def settle() -> None:
    """Let every task that can run, run."""
    for _ in range(5):
        await asyncio.sleep(0)


class Holder:
    """A task that takes a slot and keeps it until released."""

    def __init__(self, admission: Admission, deadline: float | None = None) -> None:
        self.admitted = asyncio.Event()
        self.release = asyncio.Event()
        self.task = asyncio.create_task(self._run(admission, deadline))

    async def _run(self, admission: Admission, deadline: float | None) -> None:
        async with admission.slot(deadline):
            self.admitted.set()
            await self.release.wait()


async def test_not_ready_refuses() -> None:
    admission = Admission(2, 2)
    with pytest.raises(Unavailable, match="not ready"):
        async with admission.slot():
            pass
    assert admission.running == admission.queued == 0


async def test_admits_and_frees_a_slot() -> None:
    admission = ready_admission(2, 2)
    async with admission.slot():
        assert admission.running == 1
        assert admission.queued == 0
    assert admission.running == 0


async def test_slot_is_freed_when_the_work_fails() -> None:
    admission = ready_admission(1, 0)
    with pytest.raises(RuntimeError):
        async with admission.slot():
            raise RuntimeError("engine failed")
    assert admission.running == 0
    async with admission.slot():  # the slot is usable again
        assert admission.running == 1


async def test_running_never_exceeds_capacity() -> None:
    admission = ready_admission(capacity=3, max_queue=20)
    peak = 0

    async def work() -> None:
        nonlocal peak
        async with admission.slot():
            peak = max(peak, admission.running)
            assert admission.running <= 3
            await asyncio.sleep(0.001)

    await asyncio.gather(*(work() for _ in range(20)))
    assert peak == 3
    assert admission.running == admission.queued == 0


async def test_requests_beyond_capacity_wait_in_the_queue() -> None:
    admission = ready_admission(1, 2)
    first, second = Holder(admission), Holder(admission)
    await settle()
    assert first.admitted.is_set()
    assert not second.admitted.is_set()
    assert (admission.running, admission.queued) == (1, 1)
    first.release.set()
    await asyncio.wait_for(second.admitted.wait(), 1)
    assert (admission.running, admission.queued) == (1, 0)
    second.release.set()
    await asyncio.gather(first.task, second.task)


async def test_full_queue_is_overloaded() -> None:
    admission = ready_admission(1, 1)
    holders = [Holder(admission), Holder(admission)]  # one running, one queued
    await settle()
    with pytest.raises(Overloaded) as info:
        async with admission.slot():
            pass
    assert info.value.retry_after_s is not None
    assert (admission.running, admission.queued) == (1, 1)
    for holder in holders:
        holder.release.set()
    await asyncio.gather(*(h.task for h in holders))


async def test_no_queue_means_overloaded_when_busy() -> None:
    admission = ready_admission(1, 0)
    holder = Holder(admission)
    await settle()
    with pytest.raises(Overloaded):
        async with admission.slot():
            pass
    holder.release.set()
    await holder.task


async def test_waiting_past_the_deadline() -> None:
    admission = ready_admission(1, 4)
    holder = Holder(admission)
    await settle()
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        async with admission.slot(deadline=time.time() + 0.05):
            pass
    assert time.monotonic() - start < 1
    assert admission.queued == 0
    assert admission.running == 1
    holder.release.set()
    await holder.task
    assert admission.running == 0


async def test_deadline_already_passed() -> None:
    admission = ready_admission(1, 4)
    with pytest.raises(DeadlineExceeded):
        async with admission.slot(deadline=time.time() - 1):
            pass
    assert admission.queued == admission.running == 0


async def test_drain_after_a_request_timed_out_in_the_queue() -> None:
    # A request that gave up while queued must not leave the worker looking busy forever.
    admission = ready_admission(1, 4)
    with pytest.raises(DeadlineExceeded):
        async with admission.slot(deadline=time.time() - 1):
            pass
    assert await admission.drain(0.5) is True


async def test_drain_after_a_queued_request_was_cancelled() -> None:
    admission = ready_admission(1, 4)
    first, second = Holder(admission), Holder(admission)
    await settle()
    first.release.set()
    await asyncio.sleep(0)  # first leaves its slot and hands it to second, which has not run yet
    assert first.task.done()
    assert (admission.running, admission.queued) == (1, 0)
    second.task.cancel()  # the client went away before it could use the slot
    with pytest.raises(asyncio.CancelledError):
        await second.task
    assert admission.queued == admission.running == 0
    # The slot the cancelled waiter was handed is free again.
    async with admission.slot():
        assert admission.running == 1
    assert await admission.drain(0.5) is True


async def test_a_slot_handed_to_a_cancelled_waiter_goes_to_the_next_one() -> None:
    admission = ready_admission(1, 4)
    first, second, third = Holder(admission), Holder(admission), Holder(admission)
    await settle()
    first.release.set()
    await asyncio.sleep(0)  # the slot is handed to second, which has not run yet
    second.task.cancel()
    await asyncio.wait_for(third.admitted.wait(), 1)
    assert (admission.running, admission.queued) == (1, 0)
    third.release.set()
    await asyncio.gather(first.task, third.task)
    assert second.task.cancelled()
    assert admission.running == 0


async def test_drain_refuses_new_work_and_waits_for_running_work() -> None:
    admission = ready_admission(2, 2)
    holder = Holder(admission)
    await settle()
    drain = asyncio.create_task(admission.drain(5))
    await settle()
    assert not drain.done()
    assert admission.report().ready is False
    with pytest.raises(Unavailable, match="draining"):
        async with admission.slot():
            pass
    holder.release.set()
    assert await asyncio.wait_for(drain, 1) is True
    await holder.task


async def test_drain_waits_for_queued_work_too() -> None:
    admission = ready_admission(1, 2)
    first, second = Holder(admission), Holder(admission)
    await settle()
    drain = asyncio.create_task(admission.drain(5))
    first.release.set()
    await asyncio.wait_for(second.admitted.wait(), 1)
    assert not drain.done()
    second.release.set()
    assert await asyncio.wait_for(drain, 1) is True
    await asyncio.gather(first.task, second.task)


async def test_drain_times_out() -> None:
    admission = ready_admission(1, 1)
    holder = Holder(admission)
    await settle()
    start = time.monotonic()
    assert await admission.drain(0.05) is False
    assert 0.04 <= time.monotonic() - start < 1
    holder.release.set()
    await holder.task


async def test_drain_when_idle_returns_at_once() -> None:
    assert await ready_admission(1, 1).drain(0.01) is True


async def test_report() -> None:
    admission = Admission(2, 5)
    assert admission.report() == LoadReport(queued=0, running=0, capacity=2, max_queue=5, ready=False)
    admission.ready = True
    holders = [Holder(admission) for _ in range(3)]
    await settle()
    assert admission.report() == LoadReport(queued=1, running=2, capacity=2, max_queue=5, ready=True)
    for holder in holders:
        holder.release.set()
    await asyncio.gather(*(h.task for h in holders))
    report = admission.report()
    assert report == LoadReport(
        queued=0, running=0, capacity=2, max_queue=5, ready=True, queued_batch=0, service_s=report.service_s
    )
    assert report.service_s > 0  # measured once requests left their slots
