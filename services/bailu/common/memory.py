"""Giving memory freed after a burst back to the operating system once a process is idle.

glibc's malloc keeps the pages of freed memory for reuse (per-thread arenas only ever shrink from their top),
so a process's RSS stays at the high-water mark of its last burst: the gateway's after slow n=8 readers, the
memory probe found (`bench/memory_probe.py`), about 3 MiB of it freed native memory that `malloc_trim(0)`
returns. `IdleTrimmer` calls it while the process has nothing in flight, so that RSS comes back down between
bursts and tracks what is held. Elsewhere than glibc (musl, macOS) it does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)


def glibc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim(pad)` (1: memory was returned, 0: none could be), or None without glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda pad: int(trim(pad))


def rss_mib() -> float | None:
    """This process's resident set in MiB (Linux's /proc/self/statm), or None where it cannot be read."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            resident_pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class IdleTrimmer:
    """Every `interval_s`, if nothing is in flight (`inflight()` is 0) and there was activity since the last trim
    (`activity()`, a count of work started, changed), return freed memory to the system (`trim`: glibc's
    `malloc_trim` by default): once per idle stretch, never while requests run."""

    def __init__(
        self,
        inflight: Callable[[], int],
        activity: Callable[[], int],
        interval_s: float,
        trim: Callable[[int], int] | None = None,
    ) -> None:
        self.inflight = inflight
        self.activity = activity
        self.interval_s = interval_s
        self.trim = trim if trim is not None else glibc_malloc_trim()
        self.trims = 0
        self._trimmed_at: int | None = None  # activity() at the last trim; None: start-up's allocations untrimmed
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.interval_s > 0 and self.trim is not None:
            self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def check(self) -> bool:
        """One tick: trim if idle and active since the last trim; True if it trimmed."""
        if self.trim is None or self.inflight():
            return False
        seen = self.activity()
        if seen == self._trimmed_at:
            return False
        self._trimmed_at = seen
        before = rss_mib()
        self.trim(0)
        self.trims += 1
        after = rss_mib()
        if before is not None and after is not None:
            log.info("idle: returned freed memory to the system (RSS %.1f -> %.1f MiB)", before, after)
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.check()
            except Exception:  # a failed trim only costs memory: keep the loop
                log.exception("malloc_trim failed")
