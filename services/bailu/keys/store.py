"""The one store of API keys, in Redis: written by `bailu keys`, read by the gateway on every request.

Layout (names in `bailu.common.redis_keys`):
- `api_key_record_key(id)`: a hash per key, `ApiKey.to_fields()`; never the key itself, only its hash.
- `API_KEY_HASHES`: a hash, key hash -> key id, kept whatever the key's state, so that the gateway can say
  precisely that a key was revoked or has expired rather than that it is unknown.
- `API_KEYS_ZSET`: every key id scored by its `created_at`, for listing in creation order.

Records are never deleted and carry no TTL: a revoked or expired key stays as an audit trail. Writes that
touch several keys are MULTI/EXEC transactions; read-modify-writes (revoke, update) WATCH the record, so
that an update racing a revocation cannot bring the key back.
"""

from __future__ import annotations

import builtins
import enum
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from bailu.common import redis_keys
from bailu.common.errors import InvalidRequest, NotFound
from bailu.common.redis_values import as_text
from bailu.keys.model import DEFAULT_SCOPES, INTERACTIVE, ApiKey, Limits, hash_key, new_key, new_key_id

NO_LIMITS = Limits()

# One round trip for the gateway's hot path: the id for a hash, then that id's record. The record's key is
# built from ARGV (not declared in KEYS): fine on a single Redis, as Bailu runs it, not on Redis Cluster.
_BY_HASH = """
local id = redis.call('HGET', KEYS[1], ARGV[1])
if not id then return false end
return redis.call('HGETALL', ARGV[2] .. id)
"""


class KeyNotFound(NotFound):
    """No API key has this id (`bailu keys revoke|update ID`)."""


class RevokedKeyImmutable(InvalidRequest):
    """A revoked key's record is an audit trail: it cannot be updated (create a new key instead). Not to be
    confused with `bailu.common.errors.KeyRevoked`, the gateway's 401 for a request made with such a key."""


class Unchanged(enum.Enum):
    """The type of `UNCHANGED`, the default of `KeyRegistry.update`'s fields."""

    UNCHANGED = "unchanged"


UNCHANGED = Unchanged.UNCHANGED


class KeyRegistry:
    """API keys in Redis: create, look up by id or by hash, list, update, revoke. `clock` gives Unix seconds."""

    def __init__(self, redis: Redis, *, clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.clock = clock
        self._by_hash = redis.register_script(_BY_HASH)

    async def create(
        self,
        name: str,
        *,
        scopes: frozenset[str] = DEFAULT_SCOPES,
        limits: Limits = NO_LIMITS,
        priority: str = INTERACTIVE,
        expires_in_s: float | None = None,
    ) -> tuple[str, ApiKey]:
        """A new key for `name`: (the secret key, to show once and never again; its stored record).
        ValueError for an invalid name, scope, priority or expiry."""
        now = self.clock()
        secret = new_key()
        record = ApiKey(
            id=new_key_id(),
            name=name.strip(),
            hash=hash_key(secret),
            scopes=scopes,
            limits=limits,
            priority=priority,
            created_at=now,
            expires_at=_expiry(now, expires_in_s),
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(redis_keys.api_key_record_key(record.id), mapping=record.to_fields())  # type: ignore[arg-type]
            pipe.hset(redis_keys.API_KEY_HASHES, record.hash, record.id)
            pipe.zadd(redis_keys.API_KEYS_ZSET, {record.id: now})
            await pipe.execute()
        return secret, record

    async def get(self, key_id: str) -> ApiKey:
        """The record of `key_id`, whatever its state; `KeyNotFound` if there is none."""
        record = _record(await self.redis.hgetall(redis_keys.api_key_record_key(key_id)))
        if record is None:
            raise KeyNotFound(f"no API key with id {key_id!r}")
        return record

    async def by_hash(self, digest: str) -> ApiKey | None:
        """The record of the key whose `hash_key` is `digest`, whatever its state (the caller checks
        `state(now)`); None for an unknown hash. One round trip."""
        reply = await self._by_hash(keys=[redis_keys.API_KEY_HASHES], args=[digest, redis_keys.API_KEY_PREFIX])
        if not reply:
            return None
        return _record(dict(zip(reply[::2], reply[1::2], strict=True)))

    async def list(self) -> builtins.list[ApiKey]:
        """Every key, revoked and expired included, in creation order."""
        ids = await self.redis.zrange(redis_keys.API_KEYS_ZSET, 0, -1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for key_id in ids:
                pipe.hgetall(redis_keys.api_key_record_key(as_text(key_id)))
            replies = await pipe.execute()
        return [record for reply in replies if (record := _record(reply)) is not None]

    async def revoke(self, key_id: str) -> ApiKey:
        """Revoke the key now; revoking it again keeps the first time. Returns the record."""

        async def change(pipe: Pipeline) -> ApiKey:
            record = await self._watched(pipe, key_id)
            if record.revoked_at is not None:
                return record
            revoked = replace(record, revoked_at=self.clock())
            pipe.multi()
            pipe.hset(redis_keys.api_key_record_key(key_id), "revoked_at", revoked.to_fields()["revoked_at"])
            return revoked

        return await self._transaction(key_id, change)

    async def update(
        self,
        key_id: str,
        *,
        rpm: int | Unchanged | None = UNCHANGED,
        tpm: int | Unchanged | None = UNCHANGED,
        concurrency: int | Unchanged | None = UNCHANGED,
        priority: str | Unchanged = UNCHANGED,
        scopes: frozenset[str] | Unchanged = UNCHANGED,
        expires_in_s: float | Unchanged | None = UNCHANGED,
    ) -> ApiKey:
        """Change only the fields given; None clears a limit (no limit) or the expiry (never expires), and
        `expires_in_s` counts from now. `KeyNotFound`, `RevokedKeyImmutable`; ValueError for an invalid value."""
        limits: dict[str, Any] = {
            name: value
            for name, value in (("rpm", rpm), ("tpm", tpm), ("concurrency", concurrency))
            if value is not UNCHANGED
        }

        async def change(pipe: Pipeline) -> ApiKey:
            record = await self._watched(pipe, key_id)
            if record.revoked_at is not None:
                raise RevokedKeyImmutable(f"API key {key_id!r} is revoked: it cannot be updated")
            changed = replace(record, limits=replace(record.limits, **limits))
            if priority is not UNCHANGED:
                changed = replace(changed, priority=priority)
            if scopes is not UNCHANGED:
                changed = replace(changed, scopes=scopes)
            if expires_in_s is not UNCHANGED:
                changed = replace(changed, expires_at=_expiry(self.clock(), expires_in_s))
            pipe.multi()
            pipe.hset(redis_keys.api_key_record_key(key_id), mapping=changed.to_fields())  # type: ignore[arg-type]
            return changed

        return await self._transaction(key_id, change)

    async def _watched(self, pipe: Pipeline, key_id: str) -> ApiKey:
        """The record read in a WATCHed pipeline (immediate mode, before `multi()`)."""
        record = _record(await pipe.hgetall(redis_keys.api_key_record_key(key_id)))
        if record is None:
            raise KeyNotFound(f"no API key with id {key_id!r}")
        return record

    async def _transaction(self, key_id: str, change: Callable[[Pipeline], Any]) -> ApiKey:
        """Run `change` with the record WATCHed, again if another writer changed it meanwhile."""
        result: ApiKey = await self.redis.transaction(
            change, redis_keys.api_key_record_key(key_id), value_from_callable=True
        )
        return result


def _expiry(now: float, expires_in_s: float | None) -> float | None:
    if expires_in_s is None:
        return None
    if not expires_in_s > 0:  # also refuses nan
        raise ValueError(f"an expiry must be a positive number of seconds, got {expires_in_s!r}")
    return now + expires_in_s


def _record(raw: Mapping[Any, Any]) -> ApiKey | None:
    """The record from a reply to HGETALL (fields as bytes); None for an empty reply (no such key)."""
    return ApiKey.from_fields({as_text(k): as_text(v) for k, v in raw.items()}) if raw else None
