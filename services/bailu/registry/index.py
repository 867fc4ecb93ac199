"""The registry's Redis index: a mirror of the files for fast lookups, plus the change-event stream.

The files are the source of truth; `rebuild` repopulates the index from them at any time. Followers read
the event stream through `registry.follow.EventFollower`, never by hand.
Per name: `registry_versions_key` (version -> manifest JSON) and `registry_aliases_key`
(production, canary, canary_weight, history as JSON, updated; "" for none).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from bailu.common import redis_keys
from bailu.common.redis_values import as_text, fields_text
from bailu.registry.events import RegistryEvent
from bailu.registry.model import Aliases, Manifest, dumps
from bailu.registry.store import NameState, Registry

EVENTS_MAXLEN = 10_000


class RegistryIndex:
    """Async mirror of a `Registry` in Redis; writes are MULTI/EXEC transactions."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def sync(self, state: NameState, events: Sequence[RegistryEvent] = ()) -> None:
        """Mirror one name's state and append its change events, in one transaction."""
        async with self.redis.pipeline(transaction=True) as pipe:
            self._write(pipe, state)
            for event in events:
                pipe.xadd(redis_keys.REGISTRY_EVENTS_STREAM, event.to_fields(), maxlen=EVENTS_MAXLEN, approximate=True)  # type: ignore[arg-type]
            await pipe.execute()

    async def rebuild(self, registry: Registry) -> int:
        """Replace the whole index with what the files hold (no events); returns the number of versions."""
        states = await asyncio.to_thread(registry.scan)
        stale = [key async for key in self.redis.scan_iter(match=redis_keys.REGISTRY_KEY_PATTERN, count=500)]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(redis_keys.REGISTRY_NAMES_SET, *stale)
            for state in states:
                self._write(pipe, state)
            await pipe.execute()
        return sum(len(s.manifests) for s in states)

    async def names(self) -> list[tuple[str, str]]:
        members = await self.redis.smembers(redis_keys.REGISTRY_NAMES_SET)
        pairs = (as_text(m).split("/", 1) for m in members)
        return sorted((kind, name) for kind, name in pairs)

    async def manifests(self, kind: str, name: str) -> list[Manifest]:
        """Every version of a name, oldest first."""
        raw = await self.redis.hgetall(redis_keys.registry_versions_key(kind, name))
        manifests = [Manifest.from_json(as_text(v)) for v in raw.values()]
        return sorted(manifests, key=lambda m: (len(m.version), m.version))

    async def manifest(self, kind: str, name: str, ref: str) -> Manifest | None:
        """A version by number or alias (`production`, `canary`); None if unknown."""
        version: str | None = ref
        if ref in ("production", "canary"):
            version = getattr(await self.aliases(kind, name), ref)
        if version is None:
            return None
        raw = await self.redis.hget(redis_keys.registry_versions_key(kind, name), version)
        return None if raw is None else Manifest.from_json(as_text(raw))

    async def aliases(self, kind: str, name: str) -> Aliases:
        raw: Any = await self.redis.hgetall(redis_keys.registry_aliases_key(kind, name))
        fields = fields_text(raw)
        return Aliases(
            production=fields.get("production") or None,
            canary=fields.get("canary") or None,
            canary_weight=float(fields.get("canary_weight") or 0.0),
            history=tuple(json.loads(fields.get("history") or "[]")),
            updated=fields.get("updated") or None,
        )

    async def events(self, after: str = "0-0", count: int | None = None) -> list[tuple[str, RegistryEvent]]:
        """Events after stream id `after`, oldest first, with their ids (for a follower to resume from)."""
        entries: Any = await self.redis.xrange(redis_keys.REGISTRY_EVENTS_STREAM, min=f"({after}", count=count)
        return _parsed(entries)

    async def wait_events(self, after: str, *, block_s: float, count: int) -> list[tuple[str, RegistryEvent]]:
        """Like `events`, but waits up to `block_s` for the first one (XREAD BLOCK); [] when none came.
        `block_s` must stay below the Redis client's socket timeout."""
        stream = redis_keys.REGISTRY_EVENTS_STREAM
        reply: Any = await self.redis.xread({stream: after}, block=max(1, int(block_s * 1000)), count=count)
        return _parsed(reply[0][1]) if reply else []

    async def last_event_id(self) -> str:
        """The id of the newest event, "0-0" when there is none (to follow only what comes next)."""
        latest: Any = await self.redis.xrevrange(redis_keys.REGISTRY_EVENTS_STREAM, count=1)
        return as_text(latest[0][0]) if latest else "0-0"

    async def snapshot(self) -> dict[str, Any]:
        """The whole index as plain data (to compare an index with a rebuilt one)."""
        result: dict[str, Any] = {}
        for kind, name in await self.names():
            aliases = await self.aliases(kind, name)
            manifests = await self.manifests(kind, name)
            result[f"{kind}/{name}"] = {"aliases": aliases.to_dict(), "versions": [m.to_dict() for m in manifests]}
        return result

    @staticmethod
    def _write(pipe: Any, state: NameState) -> None:
        versions = redis_keys.registry_versions_key(state.kind, state.name)
        aliases = redis_keys.registry_aliases_key(state.kind, state.name)
        pipe.sadd(redis_keys.REGISTRY_NAMES_SET, f"{state.kind}/{state.name}")
        pipe.delete(versions, aliases)
        if state.manifests:
            pipe.hset(versions, mapping={m.version: dumps(m.to_dict()) for m in state.manifests})
        a = state.aliases
        pipe.hset(
            aliases,
            mapping={
                "production": a.production or "",
                "canary": a.canary or "",
                "canary_weight": repr(a.canary_weight),
                "history": json.dumps(list(a.history)),
                "updated": a.updated or "",
            },
        )


def _parsed(entries: Any) -> list[tuple[str, RegistryEvent]]:
    parsed = []
    for entry_id, fields in entries:
        try:
            event = RegistryEvent.from_fields(fields_text(fields))
        except UnicodeDecodeError:  # an entry that cannot be read says nothing about what changed
            event = RegistryEvent("", "", "", "")
        parsed.append((as_text(entry_id), event))
    return parsed
