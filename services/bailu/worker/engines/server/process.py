"""One engine server as the worker sees it: a supervised process at an address that can move, and its metrics.

Address: every restart launches the server on a fresh port unless one was configured (a restarted server
cannot always bind its old port at once: ms-swift then silently takes another one); the health URL and
the HTTP client follow the move. Each launch reads the current adapters, so a restart applies them.

Requests in flight are counted, so that a controlled restart waits for them to finish (up to the stop
grace period) while new requests wait for the restarted server.

Metrics: while the server is ready its metrics endpoint (when the dialect has one) is scraped every
`metrics_interval_s` into an `EngineLoad`, exported with the supervisor's state as `bailu_worker_engine_*`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from bailu.common.errors import Unavailable
from bailu.worker.engines.adapters import engine_adapter_name
from bailu.worker.engines.server.dialects import Dialect, LaunchConfig
from bailu.worker.engines.server.engine_metrics import EngineLoad, EngineMetricsCollector, parse_engine_metrics
from bailu.worker.engines.server.sse_client import SseConnectionPool
from bailu.worker.engines.server.supervisor import EngineState, EngineSupervisor

log = logging.getLogger(__name__)


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass(frozen=True, slots=True)
class ServerOptions:
    """How an engine server is launched, supervised and waited on (from the worker's `engine_*` settings)."""

    executable: tuple[str, ...] = ()  # the server's command (default: the dialect's)
    extra_args: tuple[str, ...] = ()  # appended to the dialect's flags
    fixed_port: bool = False  # keep the configured port across restarts
    start_timeout_s: float = 1800.0
    restart_limit: int = 3
    restart_backoff_s: float = 2.0
    stop_grace_s: float = 30.0
    metrics_interval_s: float = 5.0
    # Bounds on waiting for the server (`HttpEngine.generate`, `EngineServer.control`).
    first_token_timeout_s: float = 30.0  # response headers and first event of a request
    idle_timeout_s: float = 8.0  # each later event
    control_timeout_s: float = 300.0  # an adapter load or unload


class EngineServer:
    """The engine server process of one `HttpEngine`, its address, the HTTP client to it and its load.

    `adapters` (adapter name -> path) is read at every launch: the server starts with those adapters.
    """

    def __init__(
        self, dialect: Dialect, config: LaunchConfig, adapters: Mapping[str, str], options: ServerOptions
    ) -> None:
        self.dialect = dialect
        self.config = config
        self.adapters = adapters
        self.options = options
        # The engine-side adapter names the running server was launched with.
        self.launched: set[str] = set()
        self._spawned = False
        self.supervisor = EngineSupervisor(
            dialect.kind,
            self.argv,
            self.base_url + dialect.health_path,
            env={**os.environ, **dialect.env},
            start_timeout_s=options.start_timeout_s,
            restart_limit=options.restart_limit,
            restart_backoff_s=options.restart_backoff_s,
            stop_grace_s=options.stop_grace_s,
        )
        self._client: httpx.AsyncClient | None = None
        # Generation streams (the per-token path) on their own lean client, at the server's current address.
        self.streams = SseConnectionPool(
            lambda: (self.config.host, self.config.port), max_idle=config.max_batch_size + 8
        )
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._load: EngineLoad | None = None
        self.scrape_errors = 0
        self._scraper: asyncio.Task[None] | None = None

    @property
    def kind(self) -> str:
        return self.dialect.kind

    @property
    def base_url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    @property
    def client(self) -> httpx.AsyncClient:
        """The HTTP client to the server, at its current address."""
        assert self._client is not None, "start() first"
        return self._client

    @property
    def ready(self) -> bool:
        return self.supervisor.ready

    @property
    def alive(self) -> bool:
        return self.supervisor.state is not EngineState.FAILED

    @property
    def load(self) -> EngineLoad | None:
        """The server's last scraped load (None before the first scrape, after a failed one, or without metrics)."""
        return self._load

    @property
    def inflight(self) -> int:
        """Requests streaming from the server now."""
        return self._inflight

    # --- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Launch the server and wait for its health; raises `EngineStartError` if it does not come up."""
        connections = self.config.max_batch_size + 8
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(connect=5.0, read=None, write=30.0, pool=None),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )
        await self.supervisor.start()
        if self.dialect.metrics_path is not None:
            self._scraper = asyncio.create_task(self._scrape_forever())

    async def close(self) -> None:
        if self._scraper is not None:
            self._scraper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scraper
        await self.supervisor.stop()
        self.streams.close_idle()
        if self._client is not None:
            await self._client.aclose()

    def argv(self) -> list[str]:
        """The command line of the next (re)start: the current adapters, and a fresh port unless one was
        configured."""
        if self._spawned and not self.options.fixed_port:
            self._move_to(free_port(self.config.host))
        self._spawned = True
        adapters = {engine_adapter_name(name, path): path for name, path in self.adapters.items()}
        self.launched = set(adapters)
        config = dataclasses.replace(self.config, adapters=adapters)
        return self.dialect.argv(config, self.options.executable, self.options.extra_args)

    def _move_to(self, port: int) -> None:
        self.config = dataclasses.replace(self.config, port=port)
        self.supervisor.health_url = self.base_url + self.dialect.health_path
        if self._client is not None:
            self._client.base_url = httpx.URL(self.base_url)

    async def restart_when_idle(self, reason: str) -> None:
        """Restart the server (with the current adapters) once the requests in flight have finished, or the
        stop grace period has passed; new requests wait from now on. Raises `EngineStartError`."""
        log.info("restarting engine", extra={"engine": self.kind, "reason": reason, "inflight": self._inflight})
        self.supervisor.hold()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.supervisor.stop_grace_s)
        await self.supervisor.restart()

    # --- requests ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        """Count a request as in flight while the block runs."""
        self._inflight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    async def wait_serving(self, deadline: float | None) -> None:
        """Wait until the server takes requests, at most until `deadline` (Unix time); `Unavailable` if it
        does not or failed for good."""
        if self.supervisor.ready:
            return
        if self.supervisor.state is EngineState.FAILED:
            raise Unavailable(f"the {self.kind} engine failed and was not restarted")
        timeout = self.supervisor.start_timeout_s
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline - time.time()))
        if not await self.supervisor.wait_ready(timeout):
            raise Unavailable(f"the {self.kind} engine is not ready ({self.supervisor.state})")

    async def wait_until_ready(self) -> None:
        """Wait (up to the start timeout) until the server is ready for a control call; `Unavailable` if not."""
        if not await self.supervisor.wait_ready(self.supervisor.start_timeout_s):
            raise Unavailable(f"the {self.kind} engine is not running")

    async def control(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """POST a control call (load or unload an adapter); `Unavailable` if the server cannot be reached or does
        not answer within the control timeout."""
        limit = self.options.control_timeout_s
        try:
            return await self.client.post(path, json=body, timeout=httpx.Timeout(limit, connect=5.0))
        except httpx.TimeoutException as exc:
            raise Unavailable(f"the {self.kind} engine did not answer {path} within {limit:g}s") from exc
        except httpx.TransportError as exc:
            raise Unavailable(f"cannot reach the {self.kind} engine: {exc or type(exc).__name__}") from exc

    # --- metrics -------------------------------------------------------------------------------------

    def register_metrics(self, metrics_registry: CollectorRegistry) -> None:
        metrics_registry.register(
            EngineMetricsCollector(
                self.kind,
                load=lambda: self._load,
                up=lambda: self.supervisor.ready,
                restarts=lambda: self.supervisor.restarts,
                scrape_errors=lambda: self.scrape_errors,
            )
        )

    async def _scrape_forever(self) -> None:
        assert self.dialect.metrics_path is not None
        while True:
            if self.supervisor.ready:
                try:
                    response = await self.client.get(self.dialect.metrics_path, timeout=httpx.Timeout(5.0))
                    response.raise_for_status()
                    self._load = parse_engine_metrics(response.text, self.dialect.metric_names)
                except (httpx.HTTPError, ValueError) as exc:
                    self.scrape_errors += 1
                    self._load = None
                    log.debug("engine metrics scrape failed", extra={"error": str(exc)})
            else:
                self._load = None
            await asyncio.sleep(self.options.metrics_interval_s)
