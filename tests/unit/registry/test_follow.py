"""The registry's event follower without Redis: parsing of stream entries (a missing kind), catching up on
each connection, resuming, and bounded backoff while the index cannot be read."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from bailu.registry.events import RegistryEvent
from bailu.registry.follow import EventFollower
from bailu.registry.index import RegistryIndex


def test_an_entry_without_a_kind_parses_as_a_vague_event_about_anything() -> None:
    event = RegistryEvent.from_fields({"name": "poet", "what": "alias", "alias": "canary"})
    assert (event.kind, event.name, event.version, event.what) == ("", "poet", "", "alias")
    assert event.details == {"alias": "canary"}
    assert event.vague
    assert event.may_concern("adapter")
    assert event.may_concern("export")
    assert RegistryEvent.from_fields({"kind": "adapter", "what": "published"}).vague  # no name


def test_a_complete_entry_concerns_its_kind_only() -> None:
    event = RegistryEvent.from_fields(RegistryEvent("export", "poet-merged", "v0001", "published").to_fields())
    assert not event.vague
    assert event.may_concern("export")
    assert not event.may_concern("adapter")


class FakeIndex:
    """The two index reads the follower makes; `down` makes them fail as an unreachable Redis would."""

    def __init__(self, latest: str = "5-0") -> None:
        self.latest = latest
        self.down = False
        self.batches: list[list[tuple[str, RegistryEvent]]] = []
        self.reads: list[str] = []

    async def last_event_id(self) -> str:
        if self.down:
            raise ConnectionError("redis is down")
        return self.latest

    async def wait_events(self, after: str, *, block_s: float, count: int) -> list[tuple[str, RegistryEvent]]:
        self.reads.append(after)
        if self.down:
            raise ConnectionError("redis is down")
        await asyncio.sleep(0)
        return self.batches.pop(0) if self.batches else []


def event(name: str, what: str = "alias") -> RegistryEvent:
    return RegistryEvent("adapter", name, "v0001", what)


def follower(index: FakeIndex, **kwargs: Any) -> EventFollower:
    return EventFollower(cast(RegistryIndex, index), **kwargs)


async def test_catches_up_then_yields_batches_resuming_after_the_last_id() -> None:
    index = FakeIndex(latest="5-0")
    index.batches = [[("6-0", event("a")), ("7-0", event("b"))], [], [("8-0", event("c"))]]
    calls: list[str] = []

    async def on_connect() -> None:
        calls.append("connect")

    follow = follower(index, on_connect=on_connect)
    seen: list[list[str]] = []
    async for batch in follow.follow():
        seen.append([e.name for e in batch])
        assert follow.connected
        if len(seen) == 2:
            break
    assert seen == [["a", "b"], ["c"]]
    assert calls == ["connect"]
    assert index.reads == ["5-0", "7-0", "7-0"]  # starts after the newest event, resumes after the last one
    assert follow.last_id == "8-0"


async def test_backs_off_within_bounds_and_catches_up_again_on_reconnection() -> None:
    index = FakeIndex()
    index.down = True
    sleeps: list[float] = []
    states: list[bool] = []
    connects = 0

    async def on_connect() -> None:
        nonlocal connects
        connects += 1

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 7:
            index.down = False  # Redis is back
            index.batches = [[("6-0", event("a"))]]

    follow = follower(
        index, on_connect=on_connect, on_connection=states.append, backoff_min_s=0.1, backoff_max_s=1.0, sleep=sleep
    )
    batches = follow.follow()
    assert [e.name for e in await anext(batches)] == ["a"]
    assert sleeps == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert (connects, states, follow.connected) == (1, [True], True)

    # An outage after the connection: disconnected, retried from the shortest backoff, caught up again.
    index.down = True
    sleeps.clear()

    async def sleep_then_recover(seconds: float) -> None:
        sleeps.append(seconds)
        index.down = False
        index.batches = [[("7-0", event("b"))]]

    follow._sleep = sleep_then_recover
    assert [e.name for e in await anext(batches)] == ["b"]
    assert sleeps == [0.1]
    assert (connects, states) == (2, [True, False, True])
    assert index.reads[-2:] == ["6-0", "6-0"]  # resumed after the last event it yielded, not from the newest
    await batches.aclose()
    assert states[-1] is False
    assert not follow.connected


async def test_a_failing_catch_up_counts_as_a_failed_connection() -> None:
    index = FakeIndex()
    attempts = 0

    async def on_connect() -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError("the index could not be read")

    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    index.batches = [[("6-0", event("a"))]]
    follow = follower(index, on_connect=on_connect, backoff_min_s=0.5, sleep=sleep)
    batches = follow.follow()
    assert [e.name for e in await anext(batches)] == ["a"]
    assert (attempts, sleeps) == (3, [0.5, 1.0])
    assert index.reads == ["5-0"]  # no event is read before the follower has caught up
    await batches.aclose()


async def test_cancelling_the_reader_stops_following() -> None:
    index = FakeIndex()
    states: list[bool] = []
    follow = follower(index, on_connection=states.append)

    async def read() -> None:
        async for _ in follow.follow():
            pass

    task = asyncio.create_task(read())
    for _ in range(100):
        await asyncio.sleep(0)
    assert follow.connected
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert states == [True, False]
