"""Fixtures shared by the gateway's unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bailu.gateway.workers import WorkerPool


@pytest.fixture
async def pool() -> AsyncIterator[WorkerPool]:
    """A pool with no configured workers: tests add workers by hand (no worker is contacted)."""
    pool = WorkerPool([])
    yield pool
    for worker in pool.workers.values():
        await worker.close()
