"""The gateway's load poll against a real worker process: a worker that misses one poll (a busy node, a long
pause) stays in routing; one that misses `MISSED_POLLS_UNREACHABLE` in a row, or whose connection is refused,
is out until it answers again."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import pytest

from bailu.gateway.workers import MISSED_POLLS_UNREACHABLE, WorkerClient, WorkerPool
from tests.conftest import WorkerProcess, eventually

pytestmark = pytest.mark.faults

POLL_S = 0.2


@pytest.fixture
async def polled(worker_processes) -> AsyncIterator[tuple[WorkerProcess, WorkerPool, WorkerClient]]:
    process = worker_processes("polled")
    pool = WorkerPool([process.address], poll_interval_s=POLL_S)
    await pool.start()
    try:
        worker = pool.workers[process.address]
        await eventually(lambda: worker.ready, 10.0)
        yield process, pool, worker
    finally:
        if process.popen.poll() is None:
            process.popen.send_signal(signal.SIGCONT)
        await pool.close()


async def watch_ready(worker: WorkerClient, until: asyncio.Event) -> bool:
    """Whether `worker` stayed ready (and not unreachable) until `until` was set."""
    while not until.is_set():
        if not worker.ready or worker.unreachable.is_set():
            return False
        await asyncio.sleep(0.005)
    return True


async def test_one_missed_poll_keeps_the_worker_in_routing(polled) -> None:
    process, pool, worker = polled
    done = asyncio.Event()
    watcher = asyncio.create_task(watch_ready(worker, done))
    process.popen.send_signal(signal.SIGSTOP)
    await eventually(lambda: worker.missed_polls >= 1, 10.0, interval=0.005)
    process.popen.send_signal(signal.SIGCONT)
    await eventually(lambda: worker.missed_polls == 0, 10.0)
    done.set()
    assert await watcher, "a single missed poll took the worker out of routing"
    assert pool.ready_workers() == [worker]


async def test_a_worker_that_misses_polls_in_a_row_is_out_until_it_answers(polled) -> None:
    process, pool, worker = polled
    process.popen.send_signal(signal.SIGSTOP)
    await eventually(lambda: worker.unreachable.is_set(), 10.0)
    assert worker.missed_polls == MISSED_POLLS_UNREACHABLE
    assert not worker.ready
    assert pool.ready_workers() == []
    assert pool.models() == []
    process.popen.send_signal(signal.SIGCONT)
    await eventually(lambda: worker.ready, 10.0)
    assert not worker.unreachable.is_set()
    assert worker.missed_polls == 0
    assert [card.name for card in pool.models()]


async def test_a_refused_connection_takes_the_worker_out_at_the_first_poll(polled) -> None:
    process, pool, worker = polled
    process.popen.send_signal(signal.SIGKILL)
    await eventually(lambda: worker.unreachable.is_set(), 10.0)
    assert worker.missed_polls == 1
    assert pool.ready_workers() == []
