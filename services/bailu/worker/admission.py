"""Admission control: a fixed number of engine slots and a bounded wait list, ordered by priority.

A request takes a free slot at once. Otherwise it waits in the list, which is served by priority class
(interactive before batch), then by first-token deadline (earliest first, none last), then by arrival. A slot
that frees is handed to the first waiter directly, so `running` stays at `capacity` while requests wait and
nothing can overtake the list. When the list is full, an interactive request evicts the newest batch waiter
(refused with `Overloaded`, which the gateway retries elsewhere): batch work is the first shed under pressure.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from bailu.common.errors import DeadlineExceeded, Overloaded, Unavailable
from bailu.common.types import BATCH, INTERACTIVE, LoadReport

# Weight of the newest slot hold time in `service_s`, the moving average the gateway estimates waits with.
SERVICE_EWMA_WEIGHT = 0.2

_RANK = {INTERACTIVE: 0, BATCH: 1}


@dataclass(eq=False)
class _Waiter:
    """A request waiting for a slot; `future` completes when it is handed one (`granted`) or evicted."""

    priority: str
    first_token_deadline: float | None
    seq: int
    future: asyncio.Future[None] = field(repr=False)
    # Set with the future: a waiter granted a slot that leaves anyway (cancelled) passes the slot on.
    granted: bool = False
    evicted: bool = False

    @property
    def order(self) -> tuple[int, float, int]:
        deadline = math.inf if self.first_token_deadline is None else self.first_token_deadline
        return (_RANK.get(self.priority, 0), deadline, self.seq)


class Admission:
    """Grants at most `capacity` running requests; up to `max_queue` more wait, in priority order.

    A request beyond that is refused with `Overloaded` (RESOURCE_EXHAUSTED), unless it is interactive and a
    batch request waits: that one is evicted (`Overloaded` too, `on_evict` called with its priority) and the
    newcomer takes its place. A request that waits past its deadline fails with `DeadlineExceeded`, and any
    new request once draining started with `Unavailable`. `service_s` is the moving average of the time a
    request holds its slot (0 until one finished), measured with `clock`.
    """

    def __init__(
        self,
        capacity: int,
        max_queue: int,
        *,
        on_evict: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity
        self.max_queue = max_queue
        self.running = 0
        self.ready = False
        self.draining = False
        self.service_s = 0.0
        self._on_evict = on_evict
        self._clock = clock
        self._waiting: list[_Waiter] = []  # kept sorted by `_Waiter.order`
        self._arrivals = itertools.count()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def queued(self) -> int:
        """Requests waiting for a slot."""
        return len(self._waiting)

    @property
    def queued_batch(self) -> int:
        """Of `queued`, the batch requests."""
        return sum(1 for w in self._waiting if w.priority == BATCH)

    def report(self) -> LoadReport:
        return LoadReport(
            self.queued,
            self.running,
            self.capacity,
            self.max_queue,
            self.ready and not self.draining,
            queued_batch=self.queued_batch,
            service_s=self.service_s,
        )

    @asynccontextmanager
    async def slot(
        self,
        deadline: float | None = None,
        *,
        priority: str = INTERACTIVE,
        first_token_deadline: float | None = None,
    ) -> AsyncIterator[None]:
        """Hold an engine slot for the body of the `async with`. `deadline` (Unix time) bounds the wait;
        `priority` and `first_token_deadline` (Unix time) place the request in the wait list."""
        if self.draining:
            raise Unavailable("the worker is draining")
        if not self.ready:
            raise Unavailable("the worker is not ready yet")
        if self.running < self.capacity and not self._waiting:
            if deadline is not None and deadline <= time.time():
                raise DeadlineExceeded("the request's deadline passed while it waited in the queue")
            self.running += 1
            self._idle.clear()
        else:
            await self._wait(deadline, priority, first_token_deadline)
        started = self._clock()
        try:
            yield
        finally:
            self._measure(self._clock() - started)
            self._release()

    async def _wait(self, deadline: float | None, priority: str, first_token_deadline: float | None) -> None:
        """Wait in the list until a slot is handed over (the caller then holds it)."""
        victim = None
        if len(self._waiting) >= self.max_queue:
            victim = self._newest_batch() if priority != BATCH else None
            if victim is None:
                raise Overloaded("the worker's queue is full")
        if deadline is not None and deadline <= time.time():
            raise DeadlineExceeded("the request's deadline passed while it waited in the queue")
        if victim is not None:
            self._evict(victim)
        future = asyncio.get_running_loop().create_future()
        waiter = _Waiter(priority, first_token_deadline, next(self._arrivals), future)
        bisect.insort(self._waiting, waiter, key=lambda w: w.order)
        self._idle.clear()
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.time())
            try:
                async with asyncio.timeout(timeout):
                    await waiter.future
            except TimeoutError:
                raise DeadlineExceeded("the request's deadline passed while it waited in the queue") from None
            if waiter.evicted:
                raise Overloaded("the worker's queue is full: this batch request made room for an interactive one")
        except BaseException:
            # Timed out, cancelled or evicted while waiting: it may have been the last request (drain() waits for
            # idle), or it may have been handed a slot in the same moment, which the next waiter then gets.
            if waiter.granted:
                self._release()
            else:
                if waiter in self._waiting:
                    self._waiting.remove(waiter)
                self._set_idle_if_empty()
            raise

    def _newest_batch(self) -> _Waiter | None:
        batch = [w for w in self._waiting if w.priority == BATCH and not w.future.done()]
        return max(batch, key=lambda w: w.seq, default=None)

    def _evict(self, victim: _Waiter) -> None:
        self._waiting.remove(victim)
        victim.evicted = True
        victim.future.set_result(None)
        if self._on_evict is not None:
            self._on_evict(victim.priority)

    def _release(self) -> None:
        """Hand the slot to the first waiter still waiting, or free it."""
        while self._waiting:
            waiter = self._waiting.pop(0)
            if not waiter.future.done():  # a cancelled one is on its way out
                waiter.granted = True
                waiter.future.set_result(None)
                return
        self.running -= 1
        self._set_idle_if_empty()

    def _measure(self, held_s: float) -> None:
        if self.service_s == 0.0:
            self.service_s = held_s
        else:
            self.service_s += SERVICE_EWMA_WEIGHT * (held_s - self.service_s)

    def _set_idle_if_empty(self) -> None:
        if not self.running and not self._waiting:
            self._idle.set()

    async def drain(self, grace_s: float) -> bool:
        """Refuse new work and wait up to `grace_s` for admitted work; True if all finished."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
        except TimeoutError:
            return False
        return True
