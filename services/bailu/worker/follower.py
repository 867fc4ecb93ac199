"""The registry follower: keeps a worker's loaded adapters equal to what the model registry says it serves.

What a worker should serve is `wanted_adapters(registry, base_model)`: every production or canary version
of every adapter trained on its base model, under `<name>@<version>`. The files are the truth, so every
trigger does the same thing, a full comparison with the files (`reconcile`):

- at start, before the worker reports ready, so that a restarted worker serves the current versions at once;
- on each change event in the Redis stream `bailu:registry:events` (when a Redis URL is given), so that a
  new version loads within a second; the stream is read with XREAD BLOCK, resuming after the last id seen,
  and reconnected with backoff when Redis goes away (the worker keeps serving meanwhile);
- every `poll_s`, as a safety net for missed events, Redis outages and hand-edited files.

A version that fails to load is logged with the reason and tried again at the next reconcile; it never
stops the worker. A version that leaves the aliases stays loaded for `unload_grace_s`, so that requests
the gateway already routed to it finish, and is then unloaded (unless it came back meanwhile). Only
versions the follower loaded itself are ever unloaded: static adapters and adapters loaded over gRPC by
hand are left alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from typing import Any

from bailu.common import redis_keys
from bailu.common.errors import BailuError, ModelNotFound
from bailu.common.metrics import WorkerMetrics
from bailu.common.tasks import cancel_and_wait
from bailu.registry.serving import wanted_adapters
from bailu.registry.store import Registry
from bailu.worker.engines.base import Engine

log = logging.getLogger(__name__)

# How long one XREAD waits for events before it asks again (the socket timeout is longer).
EVENTS_BLOCK_S = 5.0
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 10.0


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
        # Served name -> adapter directory, for the versions this follower loaded.
        self.owned: dict[str, str] = {}
        # Served name -> why its last load failed, for wanted versions that are not loaded.
        self.failed: dict[str, str] = {}
        self.last_event_id: str | None = None
        self.events_connected = False
        self._retiring: dict[str, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

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
        from redis.asyncio import Redis

        client: Any = Redis.from_url(
            self.redis_url,
            decode_responses=True,
            socket_connect_timeout=2.0,
            socket_timeout=EVENTS_BLOCK_S + 5.0,
        )
        backoff, warned = BACKOFF_MIN_S, False
        try:
            while True:
                try:
                    await self._follow(client)
                except Exception as exc:  # Redis down, or a reply that cannot be read: retry, keep serving
                    if self.events_connected:
                        backoff, warned = BACKOFF_MIN_S, False
                    self._set_connected(False)
                    if not warned:
                        log.warning(
                            "registry events unavailable; following the files only until Redis is back",
                            extra={"reason": repr(exc), "poll_s": self.poll_s},
                        )
                        warned = True
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
        finally:
            self._set_connected(False)
            await client.aclose()

    def _set_connected(self, connected: bool) -> None:
        self.events_connected = connected
        self.metrics.registry_events_connected.set(1 if connected else 0)

    async def _follow(self, client: Any) -> None:
        if self.last_event_id is None:
            latest = await client.xrevrange(redis_keys.REGISTRY_EVENTS_STREAM, count=1)
            self.last_event_id = str(latest[0][0]) if latest else "0-0"
        else:
            await client.ping()
        self._set_connected(True)
        log.info("following registry events", extra={"after": self.last_event_id})
        # Whatever changed while not connected (or since the start) is in the files.
        await self.reconcile("connect")
        while True:
            reply = await client.xread(
                {redis_keys.REGISTRY_EVENTS_STREAM: self.last_event_id}, block=int(EVENTS_BLOCK_S * 1000), count=100
            )
            if not reply:
                continue
            entries = reply[0][1]
            self.last_event_id = str(entries[-1][0])
            # Only adapters are served; an event without a kind is not trusted to be irrelevant.
            if any(fields.get("kind", "adapter") == "adapter" for _, fields in entries):
                await self.reconcile("event")
