"""The registry follower: keeps a worker's loaded adapters equal to what the model registry says it serves.

What a worker should serve is `wanted_adapters(registry, base_model)`: every production or canary version
of every adapter trained on its base model, under `<name>@<version>`. The files are the truth, so every
trigger does the same thing, a full comparison with the files (`reconcile`):

- at start, before the worker reports ready, so that a restarted worker serves the current versions at once;
- on each change event in the Redis stream `bailu:registry:events` (when a Redis URL is given), so that a
  new version loads within a second, and whenever the registry's `EventFollower` (re)connects to it (it
  reconnects with backoff when Redis goes away; the worker keeps serving meanwhile);
- every `poll_s`, as a safety net for missed events, Redis outages and hand-edited files.

A version that fails to load is logged with the reason and tried again at the next reconcile; it never
stops the worker. A version that leaves the aliases stays loaded for `unload_grace_s`, so that requests
the gateway already routed to it finish, and is then unloaded (unless it came back meanwhile). Only
versions the follower loaded itself are ever unloaded: static adapters and adapters loaded over gRPC by
hand are left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection

from redis.asyncio import Redis

from bailu.common.errors import BailuError, ModelNotFound
from bailu.common.metrics import WorkerMetrics
from bailu.common.tasks import cancel_and_wait
from bailu.registry.follow import EventFollower
from bailu.registry.index import RegistryIndex
from bailu.registry.serving import wanted_adapters
from bailu.registry.store import Registry
from bailu.worker.engines.base import Engine

log = logging.getLogger(__name__)

# How long one XREAD waits for events before it asks again (the socket timeout is longer).
EVENTS_BLOCK_S = 5.0


def _outcome(exc: BaseException) -> str:
    return exc.name if isinstance(exc, BailuError) else "error"


class RegistryFollower:
    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        base_model: str,
        metrics: WorkerMetrics,
        *,
        static: Collection[str] = (),
        redis_url: str = "",
        poll_s: float = 30.0,
        unload_grace_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.base_model = base_model
        self.metrics = metrics
        self.static = frozenset(static)
        self.redis_url = redis_url
        self.poll_s = poll_s
        self.unload_grace_s = unload_grace_s
        self._clock = clock
        # Version name -> adapter directory, for the versions this follower loaded.
        self.owned: dict[str, str] = {}
        # Version name -> why its last load failed, for wanted versions that are not loaded.
        self.failed: dict[str, str] = {}
        # Follows the registry's change events while started with a Redis URL.
        self.events: EventFollower | None = None
        self._retiring: dict[str, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def events_connected(self) -> bool:
        return self.events is not None and self.events.connected

    @property
    def last_event_id(self) -> str | None:
        """The id of the last registry event read (None before the first connection)."""
        return None if self.events is None else self.events.last_id

    @property
    def retiring(self) -> set[str]:
        """Versions that left the aliases and wait for their grace period to end."""
        return set(self._retiring)

    async def start(self) -> None:
        """Reconcile once (the caller reports ready afterwards), then follow events and poll."""
        await self.reconcile("start")
        self._tasks.append(asyncio.create_task(self._poll_loop()))
        if self.redis_url:
            self._tasks.append(asyncio.create_task(self._event_loop()))

    async def close(self) -> None:
        await cancel_and_wait([*self._tasks, *self._retiring.values()])
        self._tasks.clear()
        self._retiring.clear()

    async def reconcile(self, trigger: str) -> bool:
        """Load what the registry wants and schedule the unloading of what it no longer wants.
        Never raises: False when the registry could not be read or some version failed to load."""
        async with self._lock:
            try:
                wanted = await asyncio.to_thread(wanted_adapters, self.registry, self.base_model)
            except Exception as exc:  # an unreadable registry must not stop the worker: keep what is loaded
                log.warning(
                    "registry unreadable; loaded adapters kept",
                    extra={"registry": str(self.registry.root), "trigger": trigger, "reason": repr(exc)},
                )
                self.metrics.registry_reconciles.labels(trigger, "error").inc()
                return False
            self.metrics.registry_last_reconcile.set(self._clock())
            complete = True
            for name, path in sorted(wanted.items()):
                if name in self.static:
                    continue  # a static adapter of the same name wins; it is never replaced
                self._keep(name)
                complete &= await self._load(name, str(path))
            for name in sorted(set(self.owned) - set(wanted) - set(self._retiring)):
                self._retire(name)
            for name in set(self.failed) - set(wanted):
                del self.failed[name]
            self.metrics.registry_reconciles.labels(trigger, "ok" if complete else "partial").inc()
            return complete

    async def _load(self, name: str, path: str) -> bool:
        if self.engine.adapters.get(name) == path:
            self.owned[name] = path
            return True
        try:
            await self.engine.load_adapter(name, path)
        except Exception as exc:  # logged and retried at the next reconcile, never fatal
            reason = exc.message if isinstance(exc, BailuError) else repr(exc)
            self.metrics.adapter_loads.labels(_outcome(exc)).inc()
            known = self.failed.get(name) == reason
            self.failed[name] = reason
            log.log(
                logging.INFO if known else logging.WARNING,
                "adapter version failed to load; retried at the next reconcile",
                extra={"adapter": name, "path": path, "reason": reason},
            )
            return False
        self.owned[name] = path
        self.failed.pop(name, None)
        self.metrics.adapter_loads.labels("ok").inc()
        log.info("adapter version loaded", extra={"adapter": name, "path": path})
        return True

    def _keep(self, name: str) -> None:
        """A retiring version is wanted again (e.g. after a rollback): it stays loaded."""
        task = self._retiring.pop(name, None)
        if task is not None:
            task.cancel()
            log.info("adapter version wanted again; unload cancelled", extra={"adapter": name})

    def _retire(self, name: str) -> None:
        log.info("adapter version left the aliases", extra={"adapter": name, "unload_in_s": self.unload_grace_s})
        self._retiring[name] = asyncio.create_task(self._unload_later(name))

    async def _unload_later(self, name: str) -> None:
        await asyncio.sleep(self.unload_grace_s)
        async with self._lock:
            # Under the lock no reconcile runs: nobody can want the version back while it is unloaded.
            self._retiring.pop(name, None)
            try:
                await self.engine.unload_adapter(name)
            except ModelNotFound:
                pass  # unloaded by hand meanwhile: the goal is reached
            except Exception as exc:
                # Still owned: the next reconcile retires it again.
                self.metrics.adapter_unloads.labels(_outcome(exc)).inc()
                log.warning("adapter version failed to unload", extra={"adapter": name, "reason": repr(exc)})
                return
            self.owned.pop(name, None)
            self.metrics.adapter_unloads.labels("ok").inc()
            log.info("adapter version unloaded", extra={"adapter": name})

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            await self.reconcile("poll")

    async def _event_loop(self) -> None:
        client = Redis.from_url(self.redis_url, socket_connect_timeout=2.0, socket_timeout=EVENTS_BLOCK_S + 5.0)
        self.events = EventFollower(
            RegistryIndex(client),
            # Whatever changed while not connected (or since the start) is in the files.
            on_connect=lambda: self.reconcile("connect"),
            on_connection=lambda connected: self.metrics.registry_events_connected.set(1 if connected else 0),
            block_s=EVENTS_BLOCK_S,
        )
        try:
            async with contextlib.aclosing(self.events.follow()) as batches:
                async for events in batches:
                    # Only adapters are served; a vague event is not trusted to be irrelevant.
                    if any(event.may_concern("adapter") for event in events):
                        await self.reconcile("event")
        finally:
            await client.aclose()
