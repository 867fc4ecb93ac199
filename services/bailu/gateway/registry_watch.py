"""The gateway's view of the registry: aliases and manifests of every adapter name, read from the
registry's Redis index (the gateway has no registry volume) into a `ModelResolver`.

The view is read at start, again every `refresh_s` (the safety net), in full whenever the registry's
`EventFollower` (re)connects, and one name at a time as soon as a change event for it arrives. When Redis
cannot be reached the last view stays in use while the follower retries: requests keep being routed by the
aliases the gateway last knew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from bailu.common.metrics import GatewayMetrics
from bailu.common.tasks import cancel_and_wait
from bailu.gateway.model_names import ModelResolver, RegisteredAdapter
from bailu.registry.follow import EventFollower
from bailu.registry.index import RegistryIndex

log = logging.getLogger(__name__)

KIND = "adapter"


class RegistryWatcher:
    def __init__(
        self,
        index: RegistryIndex,
        resolver: ModelResolver,
        metrics: GatewayMetrics,
        *,
        refresh_s: float,
        block_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`block_s` is how long one XREAD waits; it must stay below the Redis client's socket timeout."""
        self.index = index
        self.resolver = resolver
        self.metrics = metrics
        self.refresh_s = refresh_s
        self.events = EventFollower(index, on_connect=self._catch_up, block_s=block_s)
        self._clock = clock
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, timeout_s: float = 5.0) -> None:
        """Read the view once (a failure or a Redis slower than `timeout_s` leaves it empty until the next
        try: the gateway starts anyway), then follow events and poll."""
        try:
            await asyncio.wait_for(self.refresh("start"), timeout_s)
        except TimeoutError:
            self._failed("start", TimeoutError(f"no answer within {timeout_s}s"))
        self._tasks = [asyncio.create_task(self._poll_loop()), asyncio.create_task(self._event_loop())]

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks.clear()

    async def refresh(self, trigger: str) -> bool:
        """Re-read every adapter name; on failure the previous view stays. Never raises."""
        async with self._lock:
            try:
                names = [name for kind, name in await self.index.names() if kind == KIND]
                entries = await asyncio.gather(*(self._read(name) for name in names))
            except Exception as exc:
                self._failed(trigger, exc)
                return False
            self.resolver.replace_view({entry.name: entry for entry in entries})
            self._succeeded(trigger)
            return True

    async def refresh_names(self, names: set[str], trigger: str = "event") -> bool:
        """Re-read some names (those an event named). Never raises."""
        async with self._lock:
            try:
                known = {name for kind, name in await self.index.names() if kind == KIND}
                entries = await asyncio.gather(*(self._read(name) for name in sorted(names & known)))
            except Exception as exc:
                self._failed(trigger, exc)
                return False
            by_name = {entry.name: entry for entry in entries}
            for name in names:
                self.resolver.update_view(name, by_name.get(name))
            self._succeeded(trigger)
            return True

    async def _read(self, name: str) -> RegisteredAdapter:
        # Aliases first: versions are never removed, so the manifests read next include every aliased one.
        aliases = await self.index.aliases(KIND, name)
        manifests = await self.index.manifests(KIND, name)
        return RegisteredAdapter(name, aliases, {m.version: m for m in manifests})

    def _succeeded(self, trigger: str) -> None:
        self.metrics.registry_refreshes.labels(trigger, "ok").inc()
        self.metrics.registry_last_refresh.set(self._clock())

    def _failed(self, trigger: str, exc: Exception) -> None:
        self.metrics.registry_refreshes.labels(trigger, "error").inc()
        log.warning(
            "registry index unreadable; the last view of the model aliases stays in use",
            extra={"trigger": trigger, "reason": repr(exc)},
        )

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.refresh("poll")

    async def _catch_up(self) -> None:
        """After (re)connecting to the events: what changed meanwhile is read in full."""
        if not await self.refresh("connect"):
            raise ConnectionError("the registry index could not be read")

    async def _event_loop(self) -> None:
        async with contextlib.aclosing(self.events.follow()) as batches:
            async for events in batches:
                if any(event.vague for event in events):
                    await self.refresh("event")  # an entry that does not say what changed: read everything
                    continue
                names = {event.name for event in events if event.kind == KIND}
                if names:
                    await self.refresh_names(names)
