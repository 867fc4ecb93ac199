"""`KeyRegistry` on a real redis-server: what is stored (never the key), lookups by hash whatever the key's
state, listing order, revocation as an audit trail, partial updates, and atomic read-modify-writes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from bailu.common import redis_keys
from bailu.keys.model import (
    ACTIVE,
    ADMIN,
    BATCH,
    DEFAULT_SCOPES,
    EXPIRED,
    GENERATE,
    INTERACTIVE,
    REVOKED,
    Limits,
    hash_key,
)
from bailu.keys.store import KeyNotFound, KeyRegistry, RevokedKeyImmutable


class Clock:
    """A settable clock (Unix seconds)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys(redis: Redis, clock: Clock) -> KeyRegistry:
    return KeyRegistry(redis, clock=clock)


async def everything_stored(redis: Redis) -> list[bytes]:
    """Every key name, hash field and value, sorted-set member and string value in the database."""
    found: list[Any] = []
    async for name in redis.scan_iter(count=100):
        found.append(name)
        kind: Any = await redis.type(name)
        if kind == b"hash":
            fields: Any = await redis.hgetall(name)
            found += [*fields.keys(), *fields.values()]
        elif kind == b"zset":
            found += await redis.zrange(name, 0, -1)
        elif kind == b"string":
            found.append(await redis.get(name))
        else:
            pytest.fail(f"unexpected {kind!r} at {name!r}: extend this scan")
    return found


async def test_create_stores_the_record_under_its_hash_and_never_the_key(
    keys: KeyRegistry, redis: Redis, clock: Clock
) -> None:
    secret, record = await keys.create(
        "alice", scopes=frozenset({GENERATE}), limits=Limits(rpm=60, tpm=1000, concurrency=2), priority=BATCH
    )
    assert record.hash == hash_key(secret)
    assert record.name == "alice"
    assert record.scopes == frozenset({GENERATE})
    assert record.limits == Limits(rpm=60, tpm=1000, concurrency=2)
    assert record.priority == BATCH
    assert record.created_at == clock.now
    assert record.expires_at is None
    assert record.state(clock.now) == ACTIVE
    assert await keys.by_hash(hash_key(secret)) == record
    assert await keys.get(record.id) == record

    stored = await everything_stored(redis)
    assert stored, "nothing was stored"
    assert not [item for item in stored if secret.encode() in item]
    assert {
        redis_keys.api_key_record_key(record.id).encode(),
        redis_keys.API_KEY_HASHES.encode(),
        redis_keys.API_KEYS_ZSET.encode(),
    } <= set(stored)


async def test_defaults(keys: KeyRegistry) -> None:
    _, record = await keys.create("bob")
    assert record.scopes == DEFAULT_SCOPES
    assert record.limits.unlimited
    assert record.priority == INTERACTIVE


async def test_by_hash_of_an_unknown_key_is_none(keys: KeyRegistry) -> None:
    await keys.create("alice")
    assert await keys.by_hash(hash_key("bailu-never-issued")) is None


async def test_keys_are_distinct(keys: KeyRegistry) -> None:
    (secret_a, a), (secret_b, b) = await keys.create("alice"), await keys.create("alice")
    assert secret_a != secret_b
    assert a.id != b.id
    assert await keys.by_hash(hash_key(secret_a)) == a
    assert await keys.by_hash(hash_key(secret_b)) == b


async def test_get_unknown_id(keys: KeyRegistry) -> None:
    with pytest.raises(KeyNotFound, match="no API key with id 'key_nope'"):
        await keys.get("key_nope")


async def test_list_is_in_creation_order_with_revoked_and_expired_keys(keys: KeyRegistry, clock: Clock) -> None:
    assert await keys.list() == []
    names = [f"tenant-{n}" for n in range(8)]
    created = []
    for name in names:
        clock.now += 1
        created.append((await keys.create(name, expires_in_s=3 if name == "tenant-2" else None))[1])
    await keys.revoke(created[5].id)
    clock.now += 10
    listed = await keys.list()
    assert [k.name for k in listed] == names
    assert [k.id for k in listed] == [k.id for k in created]
    assert listed[2].state(clock.now) == EXPIRED
    assert listed[5].state(clock.now) == REVOKED


async def test_expiry_counts_from_creation(keys: KeyRegistry, clock: Clock) -> None:
    secret, record = await keys.create("alice", expires_in_s=60)
    assert record.expires_at == clock.now + 60
    found = await keys.by_hash(hash_key(secret))
    assert found is not None
    assert found.state(clock.now + 59.9) == ACTIVE
    assert found.state(clock.now + 60) == EXPIRED


@pytest.mark.parametrize("expires_in_s", [0.0, -5.0, float("nan")])
async def test_an_expiry_must_be_positive(keys: KeyRegistry, redis: Redis, expires_in_s: float) -> None:
    with pytest.raises(ValueError, match="positive number of seconds"):
        await keys.create("alice", expires_in_s=expires_in_s)
    assert await redis.dbsize() == 0


async def test_revoke_keeps_the_record_and_its_hash_mapping(keys: KeyRegistry, clock: Clock) -> None:
    secret, record = await keys.create("alice", limits=Limits(rpm=5))
    clock.now += 100
    revoked = await keys.revoke(record.id)
    assert revoked.revoked_at == clock.now
    assert revoked.state(clock.now) == REVOKED
    found = await keys.by_hash(hash_key(secret))
    assert found == revoked
    assert found is not None
    assert found.state(clock.now) == REVOKED
    assert (found.name, found.limits, found.created_at) == ("alice", Limits(rpm=5), record.created_at)
    assert await keys.list() == [revoked]


async def test_revoking_twice_keeps_the_first_time(keys: KeyRegistry, clock: Clock) -> None:
    _, record = await keys.create("alice")
    clock.now += 1
    first = await keys.revoke(record.id)
    clock.now += 1000
    again = await keys.revoke(record.id)
    assert again.revoked_at == first.revoked_at
    assert await keys.get(record.id) == first


async def test_revoke_unknown_id(keys: KeyRegistry, redis: Redis) -> None:
    with pytest.raises(KeyNotFound):
        await keys.revoke("key_nope")
    assert await redis.dbsize() == 0


async def test_records_have_no_ttl(keys: KeyRegistry, redis: Redis) -> None:
    _, record = await keys.create("alice", expires_in_s=1)
    await keys.revoke(record.id)
    for name in (redis_keys.api_key_record_key(record.id), redis_keys.API_KEY_HASHES, redis_keys.API_KEYS_ZSET):
        assert await redis.ttl(name) == -1


async def test_update_changes_only_what_is_given(keys: KeyRegistry, clock: Clock) -> None:
    secret, record = await keys.create(
        "alice", limits=Limits(rpm=10, tpm=100, concurrency=2), expires_in_s=3600, scopes=frozenset({GENERATE})
    )
    clock.now += 5
    updated = await keys.update(record.id, tpm=500)
    assert updated.limits == Limits(rpm=10, tpm=500, concurrency=2)
    assert (updated.name, updated.hash, updated.scopes, updated.priority) == (
        record.name,
        record.hash,
        record.scopes,
        record.priority,
    )
    assert (updated.created_at, updated.expires_at, updated.revoked_at) == (record.created_at, record.expires_at, None)
    assert await keys.get(record.id) == updated
    assert await keys.by_hash(hash_key(secret)) == updated


async def test_update_clears_a_limit_and_the_expiry(keys: KeyRegistry) -> None:
    _, record = await keys.create("alice", limits=Limits(rpm=10, concurrency=2), expires_in_s=60)
    updated = await keys.update(record.id, rpm=None, expires_in_s=None)
    assert updated.limits == Limits(concurrency=2)
    assert updated.expires_at is None
    assert await keys.get(record.id) == updated


async def test_update_priority_scopes_and_expiry_from_now(keys: KeyRegistry, clock: Clock) -> None:
    _, record = await keys.create("alice", expires_in_s=60)
    clock.now += 120
    assert record.state(clock.now) == EXPIRED
    updated = await keys.update(record.id, priority=BATCH, scopes=frozenset({ADMIN}), expires_in_s=60)
    assert (updated.priority, updated.scopes) == (BATCH, frozenset({ADMIN}))
    assert updated.expires_at == clock.now + 60
    assert updated.state(clock.now) == ACTIVE
    assert await keys.get(record.id) == updated


@pytest.mark.parametrize(
    "changes",
    [{"rpm": 0}, {"concurrency": -1}, {"priority": "urgent"}, {"scopes": frozenset({"bogus"})}, {"expires_in_s": 0}],
    ids=["zero-limit", "negative-limit", "priority", "scopes", "expiry"],
)
async def test_an_invalid_update_changes_nothing(keys: KeyRegistry, changes: dict[str, object]) -> None:
    _, record = await keys.create("alice", limits=Limits(rpm=10))
    with pytest.raises(ValueError):  # noqa: PT011 - each field has its own message
        await keys.update(record.id, **changes)  # type: ignore[arg-type]
    assert await keys.get(record.id) == record


async def test_a_revoked_key_cannot_be_updated(keys: KeyRegistry) -> None:
    _, record = await keys.create("alice", limits=Limits(rpm=10))
    revoked = await keys.revoke(record.id)
    with pytest.raises(RevokedKeyImmutable, match="is revoked"):
        await keys.update(record.id, rpm=1000)
    assert await keys.get(record.id) == revoked


async def test_update_unknown_id(keys: KeyRegistry, redis: Redis) -> None:
    with pytest.raises(KeyNotFound):
        await keys.update("key_nope", rpm=1)
    assert await redis.dbsize() == 0


async def test_an_update_racing_a_revocation_never_brings_the_key_back(keys: KeyRegistry) -> None:
    """Updates and a revocation on separate connections at once: whatever the interleaving, the key ends revoked
    (an update that read the record before the revocation must not write it back unrevoked)."""
    for _ in range(20):
        _, record = await keys.create("alice")
        results = await asyncio.gather(
            *(keys.update(record.id, rpm=n + 1) for n in range(5)),
            keys.revoke(record.id),
            *(keys.update(record.id, tpm=n + 1) for n in range(5)),
            return_exceptions=True,
        )
        assert all(isinstance(r, RevokedKeyImmutable) for r in results if isinstance(r, BaseException))
        final = await keys.get(record.id)
        assert final.revoked_at is not None
