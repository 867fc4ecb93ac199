"""Following the registry's change events on a real redis-server: what `ModelRegistry` announces arrives in
order, an entry without a kind arrives as a vague event, and a Redis restart is survived with a catch-up
and a resume after the last event seen."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bailu.common import redis_keys
from bailu.registry import ModelRegistry, Registry, RegistryEvent, RegistryIndex
from bailu.registry.follow import EventFollower
from tests.conftest import RedisServer, eventually
from tests.integration.test_registry import source


class Recorder:
    """Runs a follower in a task and records what it sees."""

    def __init__(self, redis: Redis) -> None:
        self.events: list[RegistryEvent] = []
        self.connects = 0
        self.states: list[bool] = []
        self.follower = EventFollower(
            RegistryIndex(redis),
            on_connect=self._on_connect,
            on_connection=self.states.append,
            block_s=0.2,
            backoff_max_s=0.5,
        )
        self.task: asyncio.Task[None] | None = None

    async def _on_connect(self) -> None:
        self.connects += 1

    async def _run(self) -> None:
        async with contextlib.aclosing(self.follower.follow()) as batches:
            async for batch in batches:
                self.events.extend(batch)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())


@pytest.fixture
async def recorder(redis_server: RedisServer) -> AsyncIterator[Recorder]:
    client = Redis.from_url(redis_server.url, socket_timeout=2.0, socket_connect_timeout=1.0)
    recorder = Recorder(client)
    yield recorder
    if recorder.task is not None:
        recorder.task.cancel()
        await asyncio.gather(recorder.task, return_exceptions=True)
    await client.aclose()


async def test_announced_changes_arrive_in_order_after_a_catch_up(tmp_path: Path, redis: Redis, recorder) -> None:
    models = ModelRegistry(Registry(tmp_path / "registry"), RegistryIndex(redis))
    await models.publish("adapter", "poet", source(tmp_path, "a"))  # before the follower: for the catch-up
    recorder.start()
    await eventually(lambda: recorder.follower.connected, 5.0)
    assert recorder.connects == 1
    await models.set_alias("adapter", "poet", "production", "v0001")
    await redis.xadd(redis_keys.REGISTRY_EVENTS_STREAM, {"name": "poet", "what": "alias"})  # no kind
    await eventually(lambda: len(recorder.events) == 3, 5.0)
    whats = [(e.kind, e.name, e.version, e.what) for e in recorder.events]
    assert whats == [
        ("adapter", "poet", "v0001", "status"),
        ("adapter", "poet", "v0001", "alias"),
        ("", "poet", "", "alias"),
    ]
    assert [e.vague for e in recorder.events] == [False, False, True]
    latest = (await redis.xrevrange(redis_keys.REGISTRY_EVENTS_STREAM, count=1))[0][0].decode()
    assert recorder.follower.last_id == latest


async def test_a_redis_restart_is_caught_up_and_followed_from_the_last_event(
    tmp_path: Path, redis_server: RedisServer, recorder
) -> None:
    registry = Registry(tmp_path / "registry")
    recorder.start()
    await eventually(lambda: recorder.follower.connected, 5.0)
    async with Redis.from_url(redis_server.url) as client:
        await ModelRegistry(registry, RegistryIndex(client)).publish("adapter", "poet", source(tmp_path, "a"))
    await eventually(lambda: len(recorder.events) == 1, 5.0)

    redis_server.stop()
    await eventually(lambda: not recorder.follower.connected, 5.0)
    redis_server.start()  # the same data (AOF): the stream and its ids are back
    await eventually(lambda: recorder.follower.connected, 10.0)
    assert recorder.connects == 2
    assert recorder.states[:3] == [True, False, True]
    async with Redis.from_url(redis_server.url) as client:
        await ModelRegistry(registry, RegistryIndex(client)).set_alias("adapter", "poet", "production", "v0001")
    await eventually(lambda: len(recorder.events) == 3, 5.0)
    assert [e.what for e in recorder.events] == ["published", "status", "alias"]
