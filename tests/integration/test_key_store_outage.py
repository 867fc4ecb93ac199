"""The gateway's key check while the key store (Redis) does not answer: a key seen before keeps working up to
`stale_s`, a hung Redis is asked at most once per retry interval (not once per request), and a key never seen
gets a 503, never a 401."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from bailu.common.errors import Unavailable
from bailu.common.metrics import GatewayMetrics
from bailu.gateway.auth import Authenticator, KeyStore
from bailu.keys.store import KeyRegistry
from tests.conftest import RedisServer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class HungRedis:
    """A TCP server that accepts connections and reads, but never answers: what a frozen Redis looks like."""

    def __init__(self) -> None:
        self.received = 0
        self.port = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                self.received += len(data)

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()


@pytest.fixture
async def hung() -> AsyncIterator[HungRedis]:
    server = HungRedis()
    await server.start()
    yield server
    await server.close()


def authenticator(redis: Redis, clock: Clock, **kwargs: float) -> Authenticator:
    return Authenticator(KeyStore([]), KeyRegistry(redis), GatewayMetrics(CollectorRegistry()), clock=clock, **kwargs)


async def test_a_seen_key_works_while_redis_is_down_until_it_is_too_old(redis_server: RedisServer) -> None:
    redis = Redis.from_url(redis_server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    secret, record = await KeyRegistry(redis).create("writer")
    clock = Clock()
    auth = authenticator(redis, clock, cache_s=2.0, stale_s=60.0)
    assert (await auth.authenticate(f"Bearer {secret}")).id == record.id
    redis_server.stop()
    clock.now += 5  # past cache_s: Redis would be asked, and does not answer
    assert (await auth.authenticate(f"Bearer {secret}")).id == record.id
    clock.now += 2  # past the retry interval: asked again, still down, still the stale record
    assert (await auth.authenticate(f"Bearer {secret}")).id == record.id
    clock.now += 60  # the record is now older than stale_s
    with pytest.raises(Unavailable, match="key store"):
        await auth.authenticate(f"Bearer {secret}")
    with pytest.raises(Unavailable):
        await auth.authenticate("Bearer bailu-never-seen")
    await redis.aclose()


async def test_a_hung_redis_is_asked_once_per_retry_interval(redis_server: RedisServer, hung: HungRedis) -> None:
    live = Redis.from_url(redis_server.url)
    secret, record = await KeyRegistry(live).create("writer")
    await live.aclose()
    clock = Clock()
    # The record as this replica read it before Redis hung: through the live Redis, same cache.
    auth = authenticator(Redis.from_url(redis_server.url), clock, cache_s=2.0, stale_s=600.0)
    assert (await auth.authenticate(f"Bearer {secret}")).id == record.id
    hung_redis = Redis.from_url(f"redis://127.0.0.1:{hung.port}/0", socket_timeout=0.3, socket_connect_timeout=0.3)
    auth.registry = KeyRegistry(hung_redis)
    clock.now += 5
    assert (await auth.authenticate(f"Bearer {secret}")).id == record.id  # asked, timed out, stale record
    asked = hung.received
    assert asked > 0
    for _ in range(20):  # within the retry interval: no further question to the hung Redis
        assert (await auth.authenticate(f"Bearer {secret}")).id == record.id
    assert hung.received == asked
    clock.now += 1.5  # past the retry interval: asked once more
    assert (await auth.authenticate(f"Bearer {secret}")).id == record.id
    assert hung.received > asked
    await hung_redis.aclose()
