"""Following the registry's change events: the one loop behind every follower (the gateway's view of the
aliases, a worker's loaded adapters), which keep only what they do with the events.

`EventFollower.follow()` yields the events appended to `bailu:registry:events`, in batches, oldest first.
It owns what every follower needs:

- catching up: after each (re)connection, and before reading any event, it awaits `on_connect`, where the
  follower reads the whole state: what changed while it was not following is in no event it will see.
  Raising there counts as a failed connection;
- resuming: the first connection starts after the newest event (what came before is covered by
  `on_connect`); every later one resumes after the last event yielded;
- waiting: one XREAD BLOCK waits at most `block_s` (below the Redis client's socket timeout), then asks
  again;
- reconnecting: a Redis error marks the follower disconnected (`connected`, `on_connection`), is logged
  once per outage, and is retried with exponential backoff bounded by `backoff_max_s`. `follow()` never
  ends by itself; cancel the task that iterates it;
- parsing: entries become `RegistryEvent`s (`RegistryEvent.from_fields`); an entry that does not say which
  name changed, or cannot be read at all, is a `vague` event, which followers treat as being about
  anything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable

from bailu.registry.events import RegistryEvent
from bailu.registry.index import RegistryIndex

log = logging.getLogger(__name__)

BLOCK_S = 5.0
BATCH = 100
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 10.0


class EventFollower:
    """Follows the registry's change events through `index` (see the module docstring)."""

    def __init__(
        self,
        index: RegistryIndex,
        *,
        on_connect: Callable[[], Awaitable[object]] | None = None,
        on_connection: Callable[[bool], None] | None = None,
        block_s: float = BLOCK_S,
        batch: int = BATCH,
        backoff_min_s: float = BACKOFF_MIN_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """`on_connect` catches up after each (re)connection; `on_connection` is told when `connected`
        changes (e.g. to set a gauge); `batch` bounds the events of one read."""
        self.index = index
        self.on_connect = on_connect
        self.on_connection = on_connection
        self.block_s = block_s
        self.batch = batch
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self._sleep = sleep
        # The id of the last event yielded (None before the first connection): where reading resumes.
        self.last_id: str | None = None
        # Connected, caught up (`on_connect` returned) and reading events.
        self.connected = False

    async def follow(self) -> AsyncGenerator[list[RegistryEvent], None]:
        """Batches of new events, as they come, for as long as it is iterated."""
        backoff, warned = self.backoff_min_s, False
        try:
            while True:
                try:
                    if not self.connected:
                        await self._connect()
                        backoff, warned = self.backoff_min_s, False
                    events = await self._read()
                except Exception as exc:  # Redis down or unreadable: the follower keeps what it has
                    if self.connected or not warned:
                        log.warning(
                            "registry events unavailable; retrying",
                            extra={"reason": repr(exc), "backoff_s": backoff},
                        )
                        warned = True
                    self._set_connected(False)
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, self.backoff_max_s)
                    continue
                if events:
                    yield events
        finally:
            self._set_connected(False)

    async def _connect(self) -> None:
        latest = await self.index.last_event_id()  # also proves that Redis answers
        if self.last_id is None:
            self.last_id = latest
        if self.on_connect is not None:
            await self.on_connect()
        self._set_connected(True)
        log.info("following registry events", extra={"after": self.last_id})

    async def _read(self) -> list[RegistryEvent]:
        assert self.last_id is not None
        entries = await self.index.wait_events(self.last_id, block_s=self.block_s, count=self.batch)
        if entries:
            self.last_id = entries[-1][0]
        return [event for _, event in entries]

    def _set_connected(self, connected: bool) -> None:
        if connected != self.connected and self.on_connection is not None:
            self.on_connection(connected)
        self.connected = connected
