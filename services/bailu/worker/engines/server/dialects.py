"""How to drive each engine's own OpenAI-compatible server: one frozen `Dialect` per engine.

Everything engine-specific is here, as data where possible: the launch command line (built from one
`LaunchConfig`), the health and metrics endpoints, how a request selects an adapter, how adapters are
loaded at run time (or that they cannot be, so a load restarts the engine), the child's environment,
the names of its metrics, and what it can do. `HttpEngine` drives any of them the same way.

Sources, for the versions pinned in `versions.py`:
- vLLM: `vllm serve` CLI, /health, /v1/load_lora_adapter and /v1/unload_lora_adapter (enabled by
  VLLM_ALLOW_RUNTIME_LORA_UPDATING=True), `model` = LoRA name, metrics `vllm:*` (docs.vllm.ai, metrics
  and LoRA pages).
- SGLang: `python -m sglang.launch_server` server arguments, /health, /load_lora_adapter and
  /unload_lora_adapter, `model` = "<served>:<adapter>", metrics `sglang:*` with --enable-metrics
  (docs.sglang.io, server arguments, LoRA serving, production metrics).
- LmDeploy: `lmdeploy serve api_server` (PyTorch backend for LoRA), adapters only through --adapters at
  start, `model` = adapter name, /health, metrics `lmdeploy:*` (on by default since 0.16; lmdeploy
  sources at tag v0.16.0: cli/serve.py, cli/utils.py, serve/openai/*, metrics/loggers.py).
- ms-swift (`swift deploy`, the version pinned in pyproject.toml): adapters only through
  `--adapters name=path` at start, `model` = adapter name, /health, no /metrics, and /v1/completions
  serves the prompt as one user turn (swift/pipelines/infer/deploy.py).

Structured outputs (OpenAI's `response_format` `json_object` / `json_schema` with `name`, `schema`, `strict`):
- vLLM: on /v1/chat/completions and /v1/completions alike (`response_format` on both request models, turned
  into `StructuredOutputsParams` by `structured_outputs_from_response_format`; xgrammar by default),
  vllm/entrypoints/openai/{chat_completion,completion}/protocol.py;
- SGLang: on both (`ResponseFormat` on `ChatCompletionRequest` and `CompletionRequest`; `json_object` becomes
  the schema `{"type": "object"}`), python/sglang/srt/entrypoints/openai/{protocol,serving_completions}.py;
- LmDeploy 0.16: on /v1/chat/completions only (`ResponseFormat`, `json_schema.name` required; decoded with
  xgrammar by the PyTorch backend, lmdeploy/pytorch/engine/guided_process.py); its `CompletionRequest` has no
  such field, so a constrained raw prompt is refused rather than sent;
- ms-swift: none through `swift deploy` with the transformers backend (only `structured_outputs_regex`, and
  only on its vLLM backend: swift/infer_engine/vllm_engine.py), so the worker declares none.

Tool use (OpenAI's `tools`, `tool_choice`, `parallel_tool_calls`; the worker's `tool_call_parser` names the
engine's parser for the model's call format, and without one vLLM, SGLang and LmDeploy are sent no tools; ms-swift
takes the worker's `agent_template` instead). Read from vLLM's
and SGLang's main branches (their pinned tags were not available to read), LmDeploy's tag v0.16.0 and the
installed ms-swift:
- vLLM: `--enable-auto-tool-choice --tool-call-parser X` (docs/features/tool_calling.md: auto needs both);
  required and named calls are constrained (a JSON schema of the calls through structured outputs, or the
  parser's structural tag), but the streamed response turns output into `tool_calls` deltas only through the
  parser that those flags build (vllm/entrypoints/openai/chat_completion/serving.py,
  `chat_completion_stream_generator`; vllm/parser/parser_manager.py builds none without a parser name), so
  forced calls are declared only with a parser too. Named calls finish with "stop", as OpenAI's do;
- SGLang: `--tool-call-parser X`; without it tool output streams as plain text
  (python/sglang/srt/entrypoints/openai/serving_chat.py, `_generate_stream_content`); with it required and
  named calls are constrained (`get_structure_constraint`, or the JSON schema of `get_json_schema_constraint`)
  and stream through `_process_tool_call_stream`;
- LmDeploy 0.16: `--tool-call-parser X` (cli/utils.py); tools without one are refused
  (serve/openai/chat_completions/validation.py), and a required or named call is only asked for in the prompt
  (serve/parsers/response_parser.py, `dump_tools`: no constrained decoding), so only auto is declared;
- ms-swift: `--agent_template X` renders the tools and tool turns (swift/template/base.py) and reads calls out
  of the output only once generation ended, streaming their markup as text too and finishing with "stop"
  (swift/infer_engine/transformers_engine.py), so the worker declares no tool use; the flag still lets
  histories with tool turns render (ran here: tests/integration/test_engine_server_swift.py), the content of an
  assistant turn with calls sent as "", not null.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from bailu.common.types import EngineCapabilities
from bailu.worker.engines.server.engine_metrics import MetricNames

PYTHON = "{python}"  # replaced by the worker's own interpreter in a dialect's command


@dataclass(frozen=True, slots=True)
class LaunchConfig:
    """What the worker's settings say about the engine to launch; every dialect builds its flags from it."""

    model_path: Path
    served_name: str
    host: str
    port: int
    max_model_len: int
    max_batch_size: int
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_loras: int = 4
    max_lora_rank: int = 64
    # Engine-side adapter name -> path, loaded at start.
    adapters: Mapping[str, str] = field(default_factory=dict)
    # ms-swift only: the checkpoint's model_type and chat template.
    model_type: str = ""
    template: str = ""
    # The engine's tool-call parser for the model's call format (vLLM, SGLang, LmDeploy); "" for none.
    tool_call_parser: str = ""
    # ms-swift only: its agent template (the tool-call format tool turns render in); "" for the template's own.
    agent_template: str = ""

    @property
    def lora(self) -> bool:
        return self.max_loras > 0


class AdapterSelection(enum.StrEnum):
    """How a request names the adapter it wants."""

    MODEL_IS_ADAPTER = "model=adapter"  # `model` is the adapter's name
    MODEL_COLON_ADAPTER = "model=served:adapter"  # `model` is "<served name>:<adapter>"


@dataclass(frozen=True, slots=True)
class ToolSupport:
    """What an engine server does with OpenAI tool use once launched with a tool-call parser (without one, no
    engine server is sent tools): read calls out of free output (`auto`), and force them by constrained
    decoding (`forced`: tool_choice required or a named function)."""

    auto: bool = False
    forced: bool = False


@dataclass(frozen=True, slots=True)
class Dialect:
    kind: str
    # Default command; PYTHON stands for the worker's interpreter. BAILU_WORKER_ENGINE_EXECUTABLE replaces it.
    command: tuple[str, ...]
    build_args: Callable[[LaunchConfig], list[str]]
    health_path: str
    metrics_path: str | None
    adapter_selection: AdapterSelection
    # Runtime adapter endpoints (POST, JSON {"lora_name", "lora_path"} / {"lora_name"}); None: restart to load.
    load_adapter_path: str | None
    unload_adapter_path: str | None
    capabilities: EngineCapabilities
    metric_names: MetricNames = field(default_factory=MetricNames)
    env: Mapping[str, str] = field(default_factory=dict)
    # Extra stream_options keys (vLLM and SGLang report usage on every chunk when asked).
    stream_options: Mapping[str, bool] = field(default_factory=dict)
    # /v1/completions takes OpenAI's legacy `logprobs: <count>` (vLLM, SGLang, LmDeploy); False: the chat fields
    # `logprobs: true, top_logprobs: <count>` (ms-swift's CompletionRequest shares its RequestConfig).
    legacy_completion_logprobs: bool = True
    # /v1/completions takes `response_format` too (vLLM, SGLang); chat's is `capabilities.structured_outputs`.
    completions_response_format: bool = True
    # Tool use with a tool-call parser; `capabilities` are those without one (no tool use).
    tool_support: ToolSupport = field(default_factory=ToolSupport)
    # An assistant turn with calls and no text is sent with `content` null, as OpenAI sends it; False: "" (ms-swift
    # 4.6 fails with a 500 on null: its ChatCompletionRequest.convert_to_base64 iterates the content).
    null_call_content: bool = True

    def launched_capabilities(self, config: LaunchConfig) -> EngineCapabilities:
        """What the server can do as launched with `config`: no adapters without LoRA support, tool use as its
        tool-call parser allows."""
        c = self.capabilities
        if not config.lora:
            c = replace(
                c,
                adapters=False,
                runtime_adapter_loading=False,
                adapter_load_restarts_engine=False,
                mixed_adapter_batches=False,
            )
        parser = bool(config.tool_call_parser)
        return replace(
            c, tool_calls=parser and self.tool_support.forced, auto_tool_choice=parser and self.tool_support.auto
        )

    def serves_response_format(self, *, chat: bool) -> bool:
        """Whether a request to /v1/chat/completions (`chat`) or /v1/completions may carry `response_format`."""
        return self.capabilities.structured_outputs and (chat or self.completions_response_format)

    def argv(self, config: LaunchConfig, executable: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> list[str]:
        """The engine's full command line: command (or `executable`), flags from `config`, then `extra`."""
        command = executable or tuple(sys.executable if part == PYTHON else part for part in self.command)
        return [*command, *self.build_args(config), *extra]

    def request_model(self, served_name: str, engine_adapter: str) -> str:
        """The `model` field selecting `engine_adapter` (or the base model when it is empty)."""
        if not engine_adapter:
            return served_name
        if self.adapter_selection is AdapterSelection.MODEL_COLON_ADAPTER:
            return f"{served_name}:{engine_adapter}"
        return engine_adapter

    @property
    def runtime_adapters(self) -> bool:
        return self.load_adapter_path is not None


def _vllm_args(c: LaunchConfig) -> list[str]:
    args = [
        str(c.model_path),
        "--served-model-name", c.served_name,
        "--host", c.host,
        "--port", str(c.port),
        "--tensor-parallel-size", str(c.tensor_parallel_size),
        "--gpu-memory-utilization", str(c.gpu_memory_utilization),
        "--max-model-len", str(c.max_model_len),
        "--max-num-seqs", str(c.max_batch_size),
    ]  # fmt: skip
    if c.tool_call_parser:
        args += ["--enable-auto-tool-choice", "--tool-call-parser", c.tool_call_parser]
    if c.lora:
        args += ["--enable-lora", "--max-loras", str(c.max_loras), "--max-lora-rank", str(c.max_lora_rank)]
        if c.adapters:
            args += ["--lora-modules", *(f"{name}={path}" for name, path in c.adapters.items())]
    return args


def _sglang_args(c: LaunchConfig) -> list[str]:
    args = [
        "--model-path", str(c.model_path),
        "--served-model-name", c.served_name,
        "--host", c.host,
        "--port", str(c.port),
        "--tp-size", str(c.tensor_parallel_size),
        "--mem-fraction-static", str(c.gpu_memory_utilization),
        "--context-length", str(c.max_model_len),
        "--max-running-requests", str(c.max_batch_size),
        "--enable-metrics",
    ]  # fmt: skip
    if c.tool_call_parser:
        args += ["--tool-call-parser", c.tool_call_parser]
    if c.lora:
        # Target modules `all` and a fixed rank, so that adapters loaded later need no restart.
        args += [
            "--enable-lora",
            "--max-loras-per-batch", str(c.max_loras),
            "--max-lora-rank", str(c.max_lora_rank),
            "--lora-target-modules", "all",
        ]  # fmt: skip
        if c.adapters:
            args += ["--lora-paths", *(f"{name}={path}" for name, path in c.adapters.items())]
    return args


def _lmdeploy_args(c: LaunchConfig) -> list[str]:
    # The PyTorch backend: TurboMind serves no LoRA adapters.
    args = [
        str(c.model_path),
        "--backend", "pytorch",
        "--model-name", c.served_name,
        "--server-name", c.host,
        "--server-port", str(c.port),
        "--tp", str(c.tensor_parallel_size),
        "--cache-max-entry-count", str(c.gpu_memory_utilization),
        "--session-len", str(c.max_model_len),
        "--max-batch-size", str(c.max_batch_size),
    ]  # fmt: skip
    if c.tool_call_parser:
        args += ["--tool-call-parser", c.tool_call_parser]
    if c.lora and c.adapters:
        args += ["--adapters", *(f"{name}={path}" for name, path in c.adapters.items())]
    return args


def _swift_args(c: LaunchConfig) -> list[str]:
    args = [
        "--model", str(c.model_path),
        "--infer_backend", "transformers",
        "--served_model_name", c.served_name,
        "--host", c.host,
        "--port", str(c.port),
        "--max_length", str(c.max_model_len),
        "--max_batch_size", str(c.max_batch_size),
        "--use_hf", "true",
        "--log_interval", "-1",
        "--verbose", "false",
    ]  # fmt: skip
    if c.model_type:
        args += ["--model_type", c.model_type]
    if c.template:
        args += ["--template", c.template]
    if c.agent_template:
        args += ["--agent_template", c.agent_template]
    if c.lora and c.adapters:
        args += ["--adapters", *(f"{name}={path}" for name, path in c.adapters.items())]
    return args


# An engine server that loads and unloads LoRA adapters at run time over HTTP, batches requests for different
# adapters together, exports its own metrics, takes raw prompts verbatim and constrains outputs to JSON (vLLM,
# SGLang); with a tool-call parser it serves tool use, forced calls included.
RUNTIME_LORA_SERVER = EngineCapabilities(
    adapters=True,
    runtime_adapter_loading=True,
    adapter_load_restarts_engine=False,
    mixed_adapter_batches=True,
    native_metrics=True,
    raw_completions=True,
    structured_outputs=True,
    tool_calls=False,
    auto_tool_choice=False,
)
PARSED_AND_FORCED_TOOL_CALLS = ToolSupport(auto=True, forced=True)

VLLM = Dialect(
    kind="vllm",
    command=("vllm", "serve"),
    build_args=_vllm_args,
    health_path="/health",
    metrics_path="/metrics",
    adapter_selection=AdapterSelection.MODEL_IS_ADAPTER,
    load_adapter_path="/v1/load_lora_adapter",
    unload_adapter_path="/v1/unload_lora_adapter",
    capabilities=RUNTIME_LORA_SERVER,
    metric_names=MetricNames(
        queued=("vllm:num_requests_waiting",),
        running=("vllm:num_requests_running",),
        # kv_cache_usage_perc since the V1 engine; gpu_cache_usage_perc in older releases.
        cache_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        ttft=("vllm:time_to_first_token_seconds",),
    ),
    env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"},
    stream_options={"continuous_usage_stats": True},
    tool_support=PARSED_AND_FORCED_TOOL_CALLS,
)

SGLANG = Dialect(
    kind="sglang",
    command=("python3", "-m", "sglang.launch_server"),
    build_args=_sglang_args,
    health_path="/health",
    metrics_path="/metrics",
    adapter_selection=AdapterSelection.MODEL_COLON_ADAPTER,
    load_adapter_path="/load_lora_adapter",
    unload_adapter_path="/unload_lora_adapter",
    capabilities=RUNTIME_LORA_SERVER,
    metric_names=MetricNames(
        queued=("sglang:num_queue_reqs",),
        running=("sglang:num_running_reqs",),
        cache_usage=("sglang:token_usage",),
        ttft=("sglang:time_to_first_token_seconds",),
    ),
    stream_options={"continuous_usage_stats": True},
    tool_support=PARSED_AND_FORCED_TOOL_CALLS,
)

LMDEPLOY = Dialect(
    kind="lmdeploy",
    command=("lmdeploy", "serve", "api_server"),
    build_args=_lmdeploy_args,
    health_path="/health",
    metrics_path="/metrics",
    adapter_selection=AdapterSelection.MODEL_IS_ADAPTER,
    load_adapter_path=None,
    unload_adapter_path=None,
    capabilities=EngineCapabilities(
        adapters=True,
        runtime_adapter_loading=False,
        adapter_load_restarts_engine=True,
        mixed_adapter_batches=True,
        native_metrics=True,
        raw_completions=True,
        structured_outputs=True,
        tool_calls=False,
        auto_tool_choice=False,
    ),
    metric_names=MetricNames(
        queued=("lmdeploy:num_requests_waiting",),
        running=("lmdeploy:num_requests_running",),
        cache_usage=("lmdeploy:gpu_cache_usage_perc",),
        ttft=("lmdeploy:time_to_first_token_seconds",),
    ),
    completions_response_format=False,
    tool_support=ToolSupport(auto=True),
)

SWIFT = Dialect(
    kind="swift",
    command=(PYTHON, "-m", "swift.cli.deploy"),
    build_args=_swift_args,
    health_path="/health",
    metrics_path=None,
    adapter_selection=AdapterSelection.MODEL_IS_ADAPTER,
    load_adapter_path=None,
    unload_adapter_path=None,
    capabilities=EngineCapabilities(
        adapters=True,
        runtime_adapter_loading=False,
        adapter_load_restarts_engine=True,
        mixed_adapter_batches=False,
        native_metrics=False,
        raw_completions=False,
        structured_outputs=False,
        tool_calls=False,
        auto_tool_choice=False,
    ),
    # Local files only: ms-swift never contacts a hub.
    env={"HF_HUB_OFFLINE": "1", "USE_HF": "1"},
    legacy_completion_logprobs=False,
    completions_response_format=False,
    null_call_content=False,
)

DIALECTS: dict[str, Dialect] = {d.kind: d for d in (VLLM, SGLANG, LMDEPLOY, SWIFT)}
