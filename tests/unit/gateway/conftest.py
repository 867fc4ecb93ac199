"""Fixtures shared by the gateway's unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import pytest

from bailu.common.types import LoadReport, ModelCard
from bailu.gateway.workers import WorkerClient, WorkerPool


@pytest.fixture
async def pool() -> AsyncIterator[WorkerPool]:
    """A pool with no configured workers: tests add workers by hand (no worker is contacted)."""
    pool = WorkerPool([])
    yield pool
    for worker in pool.workers.values():
        await worker.close()


def put_worker(
    pool: WorkerPool, address: str, report: LoadReport | None, models: Iterable[ModelCard], inflight: int = 0
) -> WorkerClient:
    """Put a worker with this load report and model list into the pool, as a poll would (no RPC is made)."""
    worker = WorkerClient(address, pool.update_cards)
    worker.load = report
    worker.models = list(models)
    worker.inflight = inflight
    pool.workers[address] = worker
    pool.update_cards()
    return worker
