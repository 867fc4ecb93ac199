"""Engine servers: vLLM, SGLang, LmDeploy or ms-swift's `swift deploy`, behind the same `Engine` contract.

The worker starts the engine's own OpenAI-compatible server on localhost as a supervised child process
(`process.py`, `supervisor.py`) with flags derived from the worker's settings (`dialects.py`), and streams
every request through its /v1/chat/completions or /v1/completions (`openai_http.py`). Closing a
`generate()` iterator closes the HTTP stream, which is how these servers learn that a client went away
and abort the request. Adapters are loaded as `adapters.py` describes.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import time
from collections.abc import AsyncGenerator
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from bailu.common.checkpoint import require_checkpoint
from bailu.common.errors import DeadlineExceeded, Stalled, Unavailable, UnsupportedValue
from bailu.common.types import EngineCapabilities, GenerateChunk, GenerateRequest, ModelCard, ToolUse
from bailu.worker.engines.base import Engine
from bailu.worker.engines.server import openai_http as oai
from bailu.worker.engines.server.adapters import AdapterLifecycle
from bailu.worker.engines.server.dialects import DIALECTS, Dialect, LaunchConfig
from bailu.worker.engines.server.engine_metrics import EngineLoad
from bailu.worker.engines.server.openai_tools import ToolCallReader
from bailu.worker.engines.server.process import EngineServer, ServerOptions, free_port
from bailu.worker.engines.server.sse_client import ConnectTimedOut, EngineHTTPError, SseResponse
from bailu.worker.settings import WorkerSettings

log = logging.getLogger(__name__)


def _within(bound: float, deadline: float | None) -> tuple[float, bool]:
    """The seconds to wait: `bound`, or less if the request's `deadline` (epoch seconds) comes first, and
    whether it is the deadline that limits the wait."""
    if deadline is None:
        return bound, False
    left = max(0.001, deadline - time.time())
    return (left, True) if left < bound else (bound, False)


class HttpEngine(Engine):
    """Streams requests through an engine server (`server`) whose adapters `adapter_lifecycle` manages."""

    def __init__(
        self,
        dialect: Dialect,
        config: LaunchConfig,
        *,
        default_max_tokens: int,
        options: ServerOptions | None = None,
    ) -> None:
        super().__init__(config.served_name, config.max_model_len, default_max_tokens)
        self.dialect = dialect
        # Adapters named at start are launched with the engine; their LoadAdapter calls are then no-ops.
        self.adapters.update(config.adapters)
        self.server = EngineServer(dialect, config, self.adapters, options or ServerOptions())
        self.adapter_lifecycle = AdapterLifecycle(self.server, self.adapters)

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
            tool_call_parser=settings.tool_call_parser,
            agent_template=settings.agent_template,
        )
        return cls(
            dialect,
            config,
            default_max_tokens=settings.default_max_tokens,
            options=ServerOptions(
                executable=tuple(shlex.split(settings.engine_executable)),
                extra_args=tuple(shlex.split(settings.engine_args)),
                fixed_port=settings.engine_port != 0,
                start_timeout_s=settings.engine_start_timeout_s,
                restart_limit=settings.engine_restart_limit,
                restart_backoff_s=settings.engine_restart_backoff_s,
                stop_grace_s=settings.engine_stop_grace_s,
                metrics_interval_s=settings.engine_metrics_interval_s,
                first_token_timeout_s=settings.engine_first_token_timeout_s,
                idle_timeout_s=settings.engine_idle_timeout_s,
                control_timeout_s=settings.engine_control_timeout_s,
            ),
        )

    # --- Engine contract -------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return self.dialect.kind

    @property
    def config(self) -> LaunchConfig:
        """The launch configuration of the engine server (its port changes when it restarts)."""
        return self.server.config

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def capacity(self) -> int:
        return self.config.max_batch_size

    @property
    def capabilities(self) -> EngineCapabilities:
        return self.dialect.launched_capabilities(self.config)

    @property
    def ready(self) -> bool:
        return self.server.ready

    @property
    def alive(self) -> bool:
        return self.server.alive

    @property
    def engine_load(self) -> EngineLoad | None:
        """The engine's last scraped load (None before the first scrape, after a failed one, or without metrics)."""
        return self.server.load

    async def start(self) -> None:
        require_checkpoint(self.config.model_path)
        await self.server.start()

    async def close(self) -> None:
        await self.server.close()

    def register_metrics(self, metrics_registry: CollectorRegistry) -> None:
        self.server.register_metrics(metrics_registry)

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerateChunk, None]:
        response_format = request.sampling.response_format
        if response_format != "text" and not self.dialect.serves_response_format(chat=request.is_chat):
            where = "" if request.is_chat else " on /v1/completions"
            raise UnsupportedValue(
                f"the {self.dialect.kind} engine does not support response_format {response_format}{where}",
                param="response_format",
            )
        self._check_tool_use(request.tools)
        await self.server.wait_serving(request.deadline)
        # Checked again: the adapter may have been unloaded while the request waited.
        self.check_target(request)
        engine_adapter = self.adapter_lifecycle.engine_name(request.adapter) if request.adapter else ""
        model = self.dialect.request_model(self.model_name, engine_adapter)
        body = oai.request_body(
            request,
            model,
            self.default_max_tokens,
            self.dialect.stream_options,
            legacy_completion_logprobs=self.dialect.legacy_completion_logprobs,
            null_call_content=self.dialect.null_call_content,
        )
        param = request.input_param
        assembler = oai.StreamAssembler(
            request.reported_model,
            top_logprobs=request.sampling.top_logprobs,
            tools=ToolCallReader(accept=request.tools.active, parallel=request.tools.parallel),
        )
        payload = oai.encode_body(body)
        path = oai.endpoint(request)
        options = self.server.options
        started = False
        with self.server.in_flight():
            for attempt in (1, 2):
                try:
                    response = await self._open(path, payload, request.deadline)
                    try:
                        if response.status != 200:
                            message = oai.error_message(await response.read_body())
                            raise oai.map_error(response.status, message, param=param)
                        bound, stalled = options.first_token_timeout_s, "sent no first token within"
                        while (payloads := await self._next(response, bound, stalled, request.deadline)) is not None:
                            bound, stalled = options.idle_timeout_s, "sent nothing for"
                            chunks, done = assembler.feed_events(payloads)
                            for chunk in chunks:
                                started = True
                                yield chunk
                            if done:
                                break
                    finally:
                        response.close()
                    yield assembler.last()
                    return
                except ConnectTimedOut as exc:
                    raise Unavailable(f"the {self.kind} engine did not accept the connection") from exc
                except EngineHTTPError as exc:
                    lost = f"lost the connection to the {self.kind} engine: {exc}"
                    if started:
                        raise Unavailable(lost) from exc
                    # Nothing reached the client: if the engine just died, wait for its restart and send the
                    # request again, once; if it is up, ask it what went wrong.
                    if attempt == 1 and await self.server.supervisor.confirm_dead():
                        log.warning("the engine died before answering a request; waiting for its restart")
                        await self.server.wait_serving(request.deadline)
                        continue
                    await self._explain_broken_stream(body, path, param)
                    raise Unavailable(lost) from exc

    def _check_tool_use(self, use: ToolUse) -> None:
        """Refuse tool use the engine does not serve as launched, before anything is sent (the gateway routes
        such requests to other workers; this is the worker's own guard)."""
        if not use.active:
            return
        capabilities = self.capabilities
        if capabilities.tool_calls if use.forced else capabilities.auto_tool_choice:
            return
        support = self.dialect.tool_support
        if support.forced if use.forced else support.auto:
            message = f"tool_choice {use.choice} needs a tool-call parser, and this worker has none"
        elif use.forced:
            message = f"the {self.kind} engine cannot force tool calls (tool_choice {use.choice})"
        else:
            message = f"the {self.kind} engine does not serve tool_choice {use.choice}"
        raise UnsupportedValue(message, param="tool_choice")

    async def _open(self, path: str, payload: bytes, deadline: float | None) -> SseResponse:
        """The streamed response to a request, its head awaited within the first-token bound (an engine that
        accepts the connection and then says nothing is `Stalled`) and the request's deadline."""
        bound = self.server.options.first_token_timeout_s
        limit, by_deadline = _within(bound, deadline)
        try:
            async with asyncio.timeout(limit):
                return await self.server.streams.open_stream(path, payload)
        except TimeoutError:
            if by_deadline:
                raise DeadlineExceeded("the request's deadline passed while the engine generated") from None
            raise Stalled(f"the {self.kind} engine did not answer within {bound:g}s") from None

    async def _next(
        self, response: SseResponse, bound: float, stalled: str, deadline: float | None
    ) -> list[bytes] | None:
        """The SSE payloads that arrived since the last call, at least one (None at the end of the stream),
        within `bound` seconds (`Stalled` past it) and the request's deadline (`DeadlineExceeded`)."""
        if response.has_events:  # the common case under load: no timer to arm
            return await response.events()
        limit, by_deadline = _within(bound, deadline)
        try:
            async with asyncio.timeout(limit):
                return await response.events()
        except TimeoutError:
            if by_deadline:
                raise DeadlineExceeded("the request's deadline passed while the engine generated") from None
            log.warning("engine stream stalled", extra={"engine": self.kind, "bound_s": bound})
            raise Stalled(f"the {self.kind} engine {stalled} {bound:g}s") from None

    async def _explain_broken_stream(self, body: dict[str, Any], path: str, param: str) -> None:
        """A stream that broke before its first event: if the engine is still up, ask for the same request
        without streaming, to report the engine's own error (ms-swift reports a prompt longer than the
        context only so; a streamed request just breaks off)."""
        if not self.server.ready:
            return
        probe = {**body, "stream": False, "max_tokens": 1}
        probe.pop("stream_options", None)
        try:
            response = await self.server.client.post(path, json=probe, timeout=httpx.Timeout(30.0, connect=5.0))
        except httpx.HTTPError:
            return
        if response.status_code != 200:
            raise oai.map_error(response.status_code, oai.error_message(response.content), param=param)

    async def load_adapter(self, name: str, path: str) -> ModelCard:
        await self.adapter_lifecycle.load(name, path)
        return self._card(name)

    async def unload_adapter(self, name: str) -> None:
        await self.adapter_lifecycle.unload(name, super().unload_adapter)
