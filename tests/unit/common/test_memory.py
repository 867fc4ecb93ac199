"""Giving freed memory back once idle: when `IdleTrimmer` trims, and that glibc's malloc_trim is reachable here."""

from __future__ import annotations

import asyncio

from bailu.common.memory import IdleTrimmer, glibc_malloc_trim, rss_mib
from tests.conftest import eventually


class Process:
    """What the trimmer watches: calls in flight and calls ever started, and the trims it made."""

    def __init__(self) -> None:
        self.inflight = 0
        self.started = 0
        self.trimmed: list[int] = []

    def begin(self) -> None:
        self.inflight += 1
        self.started += 1

    def end(self) -> None:
        self.inflight -= 1

    def trimmer(self, interval_s: float = 30.0) -> IdleTrimmer:
        return IdleTrimmer(lambda: self.inflight, lambda: self.started, interval_s, trim=self._trim)

    def _trim(self, pad: int) -> int:
        self.trimmed.append(pad)
        return 1


def test_it_trims_once_per_idle_stretch_and_never_while_a_call_runs() -> None:
    process = Process()
    trimmer = process.trimmer()
    assert trimmer.check()  # what start-up freed
    assert not trimmer.check()  # idle since: nothing new to give back
    process.begin()
    assert not trimmer.check()  # busy
    process.end()
    assert trimmer.check()
    assert not trimmer.check()
    # A burst that began and ended between two ticks still counts.
    process.begin()
    process.end()
    assert trimmer.check()
    assert process.trimmed == [0, 0, 0]
    assert trimmer.trims == 3


async def test_its_loop_runs_every_interval_and_stops_on_close() -> None:
    process = Process()
    trimmer = process.trimmer(interval_s=0.01)
    trimmer.start()
    await eventually(lambda: bool(process.trimmed))
    await trimmer.close()
    count = len(process.trimmed)
    process.begin()
    process.end()
    await asyncio.sleep(0.05)
    assert len(process.trimmed) == count  # closed: no more trims


async def test_a_zero_interval_disables_it() -> None:
    process = Process()
    trimmer = process.trimmer(interval_s=0)
    trimmer.start()
    await asyncio.sleep(0.02)
    await trimmer.close()
    assert process.trimmed == []


def test_glibc_malloc_trim_answers_on_this_machine() -> None:
    trim = glibc_malloc_trim()
    assert trim is not None, "this test machine runs glibc (Debian): malloc_trim must be found"
    assert trim(0) in (0, 1)


def test_rss_follows_memory_the_process_touches() -> None:
    before = rss_mib()
    assert before is not None
    assert before > 1
    block = bytearray(64 * 2**20)  # zero-filled by the allocator: touch one byte per page to make it resident
    for offset in range(0, len(block), 4096):
        block[offset] = 1
    grown = rss_mib()
    assert grown is not None
    assert grown - before > 48
    del block
