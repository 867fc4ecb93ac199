"""Engine servers: vLLM, SGLang, LmDeploy or ms-swift's `swift deploy`, behind the same `Engine` contract.

The worker starts the engine's own OpenAI-compatible server on localhost as a supervised child process
(`supervisor.py`) with flags derived from the worker's settings (`dialects.py`), and streams every
request through its /v1/chat/completions or /v1/completions. Closing a `generate()` iterator closes the
HTTP stream, which is how these servers learn that a client went away and abort the request.

Adapters: vLLM and SGLang load and unload them at run time through their HTTP endpoints. LmDeploy and
ms-swift read adapters only at start: loading one restarts the engine with the new adapter list (the
restart waits for requests in flight to finish first, and requests wait while it restarts; a restart
that fails rolls back to the previous list), and unloading only forgets the name until the next
restart. Engine-side adapter names carry a digest of the path, so that a new version under the same
name is loaded next to the old one before the name switches over.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shlex
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from bailu.common.errors import BailuError, DeadlineExceeded, InvalidRequest, Unavailable
from bailu.common.types import EngineCapabilities, GenerateChunk, GenerateRequest, ModelCard
from bailu.worker.engines import openai_http as oai
from bailu.worker.engines.adapters import adapter_error, already_loaded, check_adapter, engine_adapter_name
from bailu.worker.engines.base import Engine
from bailu.worker.engines.dialects import DIALECTS, Dialect, LaunchConfig
from bailu.worker.engines.engine_metrics import EngineLoad, EngineMetricsCollector, parse_engine_metrics
from bailu.worker.engines.supervisor import EngineStartError, EngineState, EngineSupervisor
from bailu.worker.settings import WorkerSettings

log = logging.getLogger(__name__)


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class HttpEngine(Engine):
    def __init__(
        self,
        dialect: Dialect,
        config: LaunchConfig,
        *,
        default_max_tokens: int,
        executable: tuple[str, ...] = (),
        extra_args: tuple[str, ...] = (),
        fixed_port: bool = False,
        start_timeout_s: float = 1800.0,
        restart_limit: int = 3,
        restart_backoff_s: float = 2.0,
        stop_grace_s: float = 30.0,
        metrics_interval_s: float = 5.0,
    ) -> None:
        super().__init__(config.served_name, config.max_model_len, default_max_tokens)
        self.dialect = dialect
        self.config = config
        self.executable = executable
        self.extra_args = extra_args
        self.fixed_port = fixed_port
        self._spawned = False
        self.metrics_interval_s = metrics_interval_s
        self.stop_grace_s = stop_grace_s
        # Adapters named at start are launched with the engine; their LoadAdapter calls are then no-ops.
        self.adapters.update(config.adapters)
        # The engine-side adapter names the running engine was launched with.
        self._launched: set[str] = set()
        self.supervisor = EngineSupervisor(
            dialect.kind,
            self._argv,
            self.base_url + dialect.health_path,
            env=self._child_env(),
            start_timeout_s=start_timeout_s,
            restart_limit=restart_limit,
            restart_backoff_s=restart_backoff_s,
            stop_grace_s=stop_grace_s,
        )
        self._client: httpx.AsyncClient | None = None
        self._adapter_lock = asyncio.Lock()
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._load: EngineLoad | None = None
        self.scrape_errors = 0
        self._scraper: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> HttpEngine:
        if settings.model_path is None:
            raise ValueError(f"BAILU_WORKER_MODEL_PATH must name a model directory for the {settings.engine} engine")
        dialect = DIALECTS[settings.engine.value]
        config = LaunchConfig(
            model_path=settings.model_path,
            served_name=settings.model_name,
            host=settings.engine_host,
            port=settings.engine_port or free_port(settings.engine_host),
            max_model_len=settings.max_model_len,
            max_batch_size=settings.max_batch_size,
            tensor_parallel_size=settings.tensor_parallel_size,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            max_loras=settings.max_loras,
            max_lora_rank=settings.max_lora_rank,
            adapters={name: str(path) for name, path in settings.adapters.items()},
            model_type=settings.model_type,
            template=settings.template,
        )
        return cls(
            dialect,
            config,
            default_max_tokens=settings.default_max_tokens,
            executable=tuple(shlex.split(settings.engine_executable)),
            extra_args=tuple(shlex.split(settings.engine_args)),
            fixed_port=settings.engine_port != 0,
            start_timeout_s=settings.engine_start_timeout_s,
            restart_limit=settings.engine_restart_limit,
            restart_backoff_s=settings.engine_restart_backoff_s,
            stop_grace_s=settings.engine_stop_grace_s,
            metrics_interval_s=settings.engine_metrics_interval_s,
        )

    # --- Engine contract -------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return self.dialect.kind

    @property
    def base_url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    @property
    def capacity(self) -> int:
        return self.config.max_batch_size

    @property
    def capabilities(self) -> EngineCapabilities:
        c = self.dialect.capabilities
        if self.config.lora:
            return c
        return dataclasses.replace(
            c,
            adapters=False,
            runtime_adapter_loading=False,
            adapter_load_restarts_engine=False,
            mixed_adapter_batches=False,
        )

    @property
    def ready(self) -> bool:
        return self.supervisor.ready

    @property
    def alive(self) -> bool:
        return self.supervisor.state is not EngineState.FAILED

    @property
    def engine_load(self) -> EngineLoad | None:
        """The engine's last scraped load (None before the first scrape, after a failed one, or without metrics)."""
        return self._load

    async def start(self) -> None:
        if not (self.config.model_path / "config.json").is_file():
            raise FileNotFoundError(f"no Hugging Face checkpoint at {self.config.model_path} (config.json missing)")
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(connect=5.0, read=None, write=30.0, pool=None),
            limits=httpx.Limits(max_connections=self.capacity + 8, max_keepalive_connections=self.capacity + 8),
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
        if self._client is not None:
            await self._client.aclose()

    def register_metrics(self, registry: CollectorRegistry) -> None:
        registry.register(
            EngineMetricsCollector(
                self.kind,
                load=lambda: self._load,
                up=lambda: self.supervisor.ready,
                restarts=lambda: self.supervisor.restarts,
                scrape_errors=lambda: self.scrape_errors,
            )
        )

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        await self._wait_serving(request)
        # Checked again: the adapter may have been unloaded while the request waited.
        self.check_target(request)
        engine_adapter = self._engine_name(request.adapter) if request.adapter else ""
        model = self.dialect.request_model(self.model_name, engine_adapter)
        body = oai.request_body(request, model, self.default_max_tokens, self.dialect.stream_options)
        param = "messages" if request.messages is not None else "prompt"
        assembler = oai.StreamAssembler(request.served_model)
        timeout = None if request.deadline is None else max(0.001, request.deadline - time.time())
        assert self._client is not None, "start() first"
        started = False
        self._enter()
        try:
            for attempt in (1, 2):
                try:
                    async with self._client.stream(
                        "POST", oai.endpoint(request), json=body, timeout=httpx.Timeout(5.0, read=timeout)
                    ) as response:
                        if response.status_code != 200:
                            message = oai.error_message(await response.aread())
                            raise oai.map_error(response.status_code, message, param=param)
                        async for payload in oai.sse_data(response.aiter_lines()):
                            if payload.strip() == oai.DONE:
                                break
                            chunk = assembler.feed(payload)
                            if chunk is not None:
                                started = True
                                yield chunk
                    yield assembler.last()
                    return
                except httpx.TimeoutException as exc:
                    if isinstance(exc, httpx.ConnectTimeout):
                        raise Unavailable(f"the {self.kind} engine did not accept the connection") from exc
                    raise DeadlineExceeded("the request's deadline passed while the engine generated") from exc
                except httpx.TransportError as exc:
                    lost = f"lost the connection to the {self.kind} engine: {exc or type(exc).__name__}"
                    if started:
                        raise Unavailable(lost) from exc
                    # Nothing reached the client: if the engine just died, wait for its restart and send the
                    # request again, once; if it is up, ask it what went wrong.
                    if attempt == 1 and await self.supervisor.confirm_dead():
                        log.warning("the engine died before answering a request; waiting for its restart")
                        await self._wait_serving(request)
                        continue
                    await self._explain_broken_stream(body, oai.endpoint(request), param)
                    raise Unavailable(lost) from exc
        finally:
            self._leave()

    async def _explain_broken_stream(self, body: dict[str, Any], path: str, param: str) -> None:
        """A stream that broke before its first event: if the engine is still up, ask for the same request
        without streaming, to report the engine's own error (ms-swift reports a prompt longer than the
        context only so; a streamed request just breaks off)."""
        if not self.supervisor.ready or self._client is None:
            return
        probe = {**body, "stream": False, "max_tokens": 1}
        probe.pop("stream_options", None)
        try:
            response = await self._client.post(path, json=probe, timeout=httpx.Timeout(30.0, connect=5.0))
        except httpx.HTTPError:
            return
        if response.status_code != 200:
            raise oai.map_error(response.status_code, oai.error_message(response.content), param=param)

    async def load_adapter(self, name: str, path: str) -> ModelCard:
        if not self.config.lora:
            raise InvalidRequest(
                f"the {self.kind} engine was started without LoRA support (BAILU_WORKER_MAX_LORAS=0)", param="name"
            )
        engine_name = engine_adapter_name(name, path)
        async with self._adapter_lock:
            if self.adapters.get(name) == path and (self.dialect.runtime_adapters or engine_name in self._launched):
                return self._card(name)
            await asyncio.to_thread(check_adapter, path, self.config.max_lora_rank)
            if self.dialect.runtime_adapters:
                await self._load_runtime(name, path, engine_name)
            else:
                await self._load_by_restart(name, path, engine_name)
        return self._card(name)

    async def unload_adapter(self, name: str) -> None:
        async with self._adapter_lock:
            engine_name = self._engine_name(name) if name in self.adapters else ""
            await super().unload_adapter(name)
            if self.dialect.runtime_adapters and engine_name not in self._engine_names():
                await self._unload_runtime(engine_name)
            # Engines that read adapters at start keep it until their next restart; requests no longer reach it.

    # --- adapters ----------------------------------------------------------------------------------

    async def _load_runtime(self, name: str, path: str, engine_name: str) -> None:
        assert self.dialect.load_adapter_path is not None
        if engine_name not in self._engine_names():
            await self._wait_ready_for_control()
            response = await self._control(self.dialect.load_adapter_path, oai.adapter_request(engine_name, path))
            if response.status_code != 200 and not already_loaded(response):
                raise adapter_error(self.kind, name, response)
        old = self._engine_name(name) if name in self.adapters else ""
        self.adapters[name] = path
        if old and old != engine_name and old not in self._engine_names():
            await self._unload_runtime(old)

    async def _unload_runtime(self, engine_name: str) -> None:
        assert self.dialect.unload_adapter_path is not None
        try:
            response = await self._control(self.dialect.unload_adapter_path, oai.adapter_request(engine_name))
        except BailuError as exc:
            log.warning("adapter unload failed", extra={"engine_adapter": engine_name, "error": exc.message})
            return
        if response.status_code != 200:
            log.warning(
                "adapter unload refused",
                extra={"engine_adapter": engine_name, "error": oai.error_message(response.content)},
            )

    async def _load_by_restart(self, name: str, path: str, engine_name: str) -> None:
        previous = dict(self.adapters)
        self.adapters[name] = path
        if engine_name in self._launched:
            return  # the running engine has it already (unloaded, then loaded again)
        try:
            await self._restart("load adapter " + name)
        except EngineStartError as exc:
            self.adapters = previous
            log.error("engine did not start with the new adapter; rolling back", extra={"adapter": name})
            await self._restart("roll back adapter " + name)
            raise InvalidRequest(
                f"the {self.kind} engine did not start with adapter '{name}' ({path}): {str(exc)[-800:]}", param="path"
            ) from exc

    async def _restart(self, reason: str) -> None:
        """Restart the engine with the current adapters once the requests in flight have finished."""
        log.info("restarting engine", extra={"engine": self.kind, "reason": reason, "inflight": self._inflight})
        self.supervisor.hold()  # new requests wait from now on
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.stop_grace_s)
        await self.supervisor.restart()

    async def _control(self, path: str, body: dict[str, Any]) -> httpx.Response:
        assert self._client is not None
        try:
            return await self._client.post(path, json=body, timeout=httpx.Timeout(300.0, connect=5.0))
        except httpx.TransportError as exc:
            raise Unavailable(f"cannot reach the {self.kind} engine: {exc or type(exc).__name__}") from exc

    async def _wait_ready_for_control(self) -> None:
        if not await self.supervisor.wait_ready(self.supervisor.start_timeout_s):
            raise Unavailable(f"the {self.kind} engine is not running")

    # --- helpers -------------------------------------------------------------------------------------

    def _argv(self) -> list[str]:
        """The command line of the next (re)start: the current adapters, and a fresh port unless one was
        configured (a restarted server cannot always bind its old port at once: ms-swift then silently
        takes another one)."""
        if self._spawned and not self.fixed_port:
            self._move_to(free_port(self.config.host))
        self._spawned = True
        adapters = {engine_adapter_name(name, path): path for name, path in self.adapters.items()}
        self._launched = set(adapters)
        config = dataclasses.replace(self.config, adapters=adapters)
        return self.dialect.argv(config, self.executable, self.extra_args)

    def _move_to(self, port: int) -> None:
        self.config = dataclasses.replace(self.config, port=port)
        self.supervisor.health_url = self.base_url + self.dialect.health_path
        if self._client is not None:
            self._client.base_url = httpx.URL(self.base_url)

    def _child_env(self) -> dict[str, str]:
        return {**os.environ, **self.dialect.env}

    async def _wait_serving(self, request: GenerateRequest) -> None:
        if self.supervisor.ready:
            return
        if self.supervisor.state is EngineState.FAILED:
            raise Unavailable(f"the {self.kind} engine failed and was not restarted")
        timeout = self.supervisor.start_timeout_s
        if request.deadline is not None:
            timeout = min(timeout, max(0.0, request.deadline - time.time()))
        if not await self.supervisor.wait_ready(timeout):
            raise Unavailable(f"the {self.kind} engine is not ready ({self.supervisor.state})")

    def _enter(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._inflight -= 1
        if not self._inflight:
            self._idle.set()

    def _engine_name(self, name: str) -> str:
        """The engine-side name of loaded adapter `name`."""
        return engine_adapter_name(name, self.adapters[name])

    def _engine_names(self) -> set[str]:
        """The engine-side names of the loaded adapters (names of different versions may share one)."""
        return {engine_adapter_name(name, path) for name, path in self.adapters.items()}

    async def _scrape_forever(self) -> None:
        assert self.dialect.metrics_path is not None
        assert self._client is not None
        while True:
            if self.supervisor.ready:
                try:
                    response = await self._client.get(self.dialect.metrics_path, timeout=httpx.Timeout(5.0))
                    response.raise_for_status()
                    self._load = parse_engine_metrics(response.text, self.dialect.metric_names)
                except (httpx.HTTPError, ValueError) as exc:
                    self.scrape_errors += 1
                    self._load = None
                    log.debug("engine metrics scrape failed", extra={"error": str(exc)})
            else:
                self._load = None
            await asyncio.sleep(self.metrics_interval_s)
