"""Admission control: a fixed number of engine slots and a bounded wait queue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bailu.common.errors import DeadlineExceeded, Overloaded, Unavailable
from bailu.common.types import LoadReport


class Admission:
    """Grants at most `capacity` running requests; up to `max_queue` more wait.

    A request beyond that is refused with `Overloaded` (RESOURCE_EXHAUSTED),
    one that waits past its deadline with `DeadlineExceeded`, and any new
    request once draining started with `Unavailable`.
    """

    def __init__(self, capacity: int, max_queue: int) -> None:
        self.capacity = capacity
        self.max_queue = max_queue
        self.running = 0
        self.queued = 0
        self.ready = False
        self.draining = False
        self._slots = asyncio.Semaphore(capacity)
        self._idle = asyncio.Event()
        self._idle.set()

    def report(self) -> LoadReport:
        return LoadReport(self.queued, self.running, self.capacity, self.max_queue, self.ready and not self.draining)

    @asynccontextmanager
    async def slot(self, deadline: float | None = None) -> AsyncIterator[None]:
        if self.draining:
            raise Unavailable("the worker is draining")
        if not self.ready:
            raise Unavailable("the worker is not ready yet")
        if (self._slots.locked() or self.queued) and self.queued >= self.max_queue:
            raise Overloaded("the worker's queue is full")
        self.queued += 1
        self._idle.clear()
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.time())
            try:
                await asyncio.wait_for(self._slots.acquire(), timeout)
            except TimeoutError:
                raise DeadlineExceeded("the request's deadline passed while it waited in the queue") from None
        except BaseException:
            # Timed out or cancelled while queued: it may have been the last request, and drain() waits for idle.
            self.queued -= 1
            self._set_idle_if_empty()
            raise
        self.queued -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()
            self._set_idle_if_empty()

    def _set_idle_if_empty(self) -> None:
        if not self.running and not self.queued:
            self._idle.set()

    async def drain(self, grace_s: float) -> bool:
        """Refuse new work and wait up to `grace_s` for admitted work; True if all finished."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
        except TimeoutError:
            return False
        return True
