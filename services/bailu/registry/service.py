"""`ModelRegistry`: the file registry and its Redis index together, for async callers.

Each change runs the blocking file operation in a thread, then mirrors the name's new state
into the index and appends the change events (computed by comparing the name's state before
and after) in one Redis transaction. If Redis is down the files still changed: `rebuild` repairs.
Without an index (no Redis configured) it changes the files only: workers notice at their next
registry poll, the gateway once the index is rebuilt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from bailu.registry.errors import InvalidRegistryOperation
from bailu.registry.events import diff
from bailu.registry.index import RegistryIndex
from bailu.registry.model import Alias, Aliases, Manifest, Status, Version
from bailu.registry.store import Registry

T = TypeVar("T")


class ModelRegistry:
    def __init__(self, registry: Registry, index: RegistryIndex | None = None) -> None:
        self.registry = registry
        self.index = index

    @property
    def indexed(self) -> bool:
        """Whether changes reach the Redis index and the change-event stream."""
        return self.index is not None

    async def publish(self, kind: str, name: str, source_dir: Path, **fields: Any) -> Version:
        """`Registry.publish`, then index and announce the version (nothing is announced for a duplicate)."""
        return await self._change(kind, name, partial(self.registry.publish, kind, name, source_dir, **fields))

    async def set_status(self, kind: str, name: str, version: str, status: Status) -> Manifest:
        return await self._change(kind, name, partial(self.registry.set_status, kind, name, version, status))

    async def set_alias(self, kind: str, name: str, alias: Alias, version: str | None) -> Aliases:
        return await self._change(kind, name, partial(self.registry.set_alias, kind, name, alias, version))

    async def set_canary(self, kind: str, name: str, version: str | None, weight: float) -> Aliases:
        return await self._change(kind, name, partial(self.registry.set_canary, kind, name, version, weight))

    async def promote(self, kind: str, name: str) -> Aliases:
        return await self._change(kind, name, partial(self.registry.promote, kind, name))

    async def rollback(self, kind: str, name: str) -> Aliases:
        return await self._change(kind, name, partial(self.registry.rollback, kind, name))

    async def rebuild(self) -> int:
        if self.index is None:
            raise InvalidRegistryOperation("rebuilding the registry index needs Redis")
        return await self.index.rebuild(self.registry)

    async def _change(self, kind: str, name: str, operation: Callable[[], T]) -> T:
        if self.index is None:
            return await asyncio.to_thread(operation)
        before = await asyncio.to_thread(self.registry.state, kind, name)
        result = await asyncio.to_thread(operation)
        after = await asyncio.to_thread(self.registry.state, kind, name)
        events = diff(before, after)
        if events:
            await self.index.sync(after, events)
        return result
