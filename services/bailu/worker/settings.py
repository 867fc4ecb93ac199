"""Settings of the inference worker (environment prefix `BAILU_WORKER_`)."""

from __future__ import annotations

import enum
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from bailu.common.settings import ServiceSettings


class EngineKind(enum.StrEnum):
    """The engines a worker can run."""

    TRANSFORMERS = "transformers"
    SIM = "sim"
    # Engine servers: the engine's own OpenAI-compatible server, supervised as a child process.
    VLLM = "vllm"
    SGLANG = "sglang"
    LMDEPLOY = "lmdeploy"
    SWIFT = "swift"


class WorkerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BAILU_WORKER_", extra="ignore", frozen=True)

    host: str = Field(
        "0.0.0.0",  # nosec B104 # in a pod: the gateway comes through its Service
        description="Address the gRPC server binds to.",
    )
    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 picks a free one).")
    http_port: int = Field(
        9091, ge=0, le=65535, description="Port of the HTTP server for /healthz, /readyz and /metrics."
    )
    engine: EngineKind = Field(
        EngineKind.TRANSFORMERS,
        description="Generation engine: transformers or sim (in process), or an engine server run as a child "
        "process: vllm, sglang, lmdeploy, or swift (ms-swift's `swift deploy`, transformers backend; runs on CPU).",
    )
    model_name: str = Field(
        "smollm2-135m-instruct", min_length=1, description="Name clients use to select the base model."
    )
    model_path: Path | None = Field(
        None,
        description="Local Hugging Face checkpoint directory of the base model (every engine but sim).",
    )
    model_type: str = Field("llama", description="ms-swift model_type of the checkpoint (transformers and swift).")
    template: str = Field("chatml", description="ms-swift chat template of the model (transformers and swift).")
    agent_template: str = Field(
        "",
        pattern=r"^[A-Za-z0-9_.\-]*$",
        description="transformers and swift engines: ms-swift's agent template (the tool-call format: how tools are "
        "written into the system prompt, calls and results into the chat, and calls read out of the output), one of "
        "ms-swift's agent_template_map, e.g. hermes, react_en, qwen_en. transformers: it fills in for a chat "
        "template that has none of its own, such as chatml (SmolLM2's); empty: the template's own, hermes where "
        "it has none. swift: passed as --agent_template (it only lets tool turns render: swift deploy serves no "
        "tool calls); empty: not passed.",
    )
    max_model_len: int = Field(
        4096, ge=16, description="Context length in tokens (prompt plus output) the worker accepts."
    )
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request gives none.")
    max_batch_size: int = Field(
        4,
        ge=1,
        description="Requests the engine generates at once (transformers: one batch; engine servers: their "
        "running-request limit, e.g. vLLM's --max-num-seqs, and the requests the worker forwards at once).",
    )
    batch_wait_ms: float = Field(
        10.0,
        ge=0,
        description="transformers engine: when it is idle, how long a request waits for others to start in its "
        "batch (a batch runs to completion, so a request that misses it waits for all of it).",
    )
    max_queue: int = Field(32, ge=0, description="Requests that may wait for a slot; more are refused.")
    torch_threads: int = Field(0, ge=0, description="CPU threads for torch (0: torch's default).")
    adapters: dict[str, Path] = Field(
        default_factory=dict,
        description='LoRA adapters to load at start, as JSON: {"name": "/path/to/adapter"}.',
    )
    registry_dir: Path | None = Field(
        None,
        description="Model registry root (shared storage): the worker loads the production and canary versions of "
        "every adapter trained on its base model, and unloads versions that leave those aliases (empty: off).",
    )
    registry_redis_url: str = Field(
        "",
        description="Redis with the registry's change events, so that new versions load within a second "
        "(empty: only the registry poll notices them).",
    )
    registry_poll_s: float = Field(
        30.0, gt=0, description="How often the registry files are re-read, with or without change events."
    )
    adapter_unload_grace_s: float = Field(
        30.0, ge=0, description="How long a version that left the aliases stays loaded, for requests already routed."
    )
    warmup: bool = Field(True, description="Run one generation before reporting ready.")
    drain_grace_s: float = Field(30.0, ge=0, description="On SIGTERM, how long in-flight requests may take to finish.")
    sim_ttft_ms: float = Field(50.0, ge=0, description="sim engine: time to first token in milliseconds.")
    sim_itl_ms: float = Field(10.0, ge=0, description="sim engine: time between tokens in milliseconds.")
    sim_output_tokens: int = Field(64, ge=1, description="sim engine: tokens generated when max_tokens allows.")
    sim_load_s: float = Field(0.0, ge=0, description="sim engine: simulated model loading time in seconds.")
    engine_host: str = Field(
        "127.0.0.1", description="Engine servers: address the engine's HTTP server binds to (kept on localhost)."
    )
    engine_port: int = Field(
        0, ge=0, le=65535, description="Engine servers: port of the engine's HTTP server (0 picks a free one)."
    )
    engine_executable: str = Field(
        "",
        description="Engine servers: the command that starts the engine, replacing the default (`vllm serve`, "
        "`python3 -m sglang.launch_server`, `lmdeploy serve api_server`, `python -m swift.cli.deploy`); "
        "split like a shell command line.",
    )
    engine_args: str = Field(
        "",
        description="Engine servers: extra arguments appended to the engine's command line as they are, split like "
        'a shell command line (e.g. "--enforce-eager --dtype bfloat16").',
    )
    tool_call_parser: str = Field(
        "",
        pattern=r"^[A-Za-z0-9_.\-]*$",
        description="Engine servers: the engine's tool-call parser for the model's call format, by the engine's own "
        "name (e.g. hermes or llama3_json on vLLM, qwen25 on SGLang, qwen on LmDeploy): vLLM --enable-auto-tool-choice "
        "--tool-call-parser, SGLang and LmDeploy --tool-call-parser (ms-swift: see agent_template). With one, the "
        "worker serves tool_choice auto (vLLM and SGLang also required and named calls, by constrained decoding); "
        "empty: no tool use.",
    )
    tensor_parallel_size: int = Field(1, ge=1, description="Engine servers: GPUs one engine shards the model over.")
    gpu_memory_utilization: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Engine servers: fraction of GPU memory the engine may take for weights and KV cache "
        "(vLLM --gpu-memory-utilization, SGLang --mem-fraction-static, LmDeploy --cache-max-entry-count).",
    )
    max_loras: int = Field(
        4,
        ge=0,
        description="Engine servers: LoRA adapters one batch may use (vLLM --max-loras, SGLang "
        "--max-loras-per-batch); 0 serves no adapters and starts the engine without LoRA support.",
    )
    max_lora_rank: int = Field(
        64,
        ge=1,
        description="Engine servers: the largest LoRA rank the engine accepts; adapters of a higher rank are "
        "refused before they reach the engine.",
    )
    engine_start_timeout_s: float = Field(
        1800.0, gt=0, description="Engine servers: how long the engine may take to answer its health endpoint."
    )
    engine_restart_limit: int = Field(
        3,
        ge=0,
        description="Engine servers: how often an engine that died is restarted before the worker gives up and "
        "reports not ready for good.",
    )
    engine_restart_backoff_s: float = Field(
        2.0, ge=0, description="Engine servers: wait before the first restart of a dead engine; doubles each time."
    )
    engine_stop_grace_s: float = Field(
        30.0,
        ge=0,
        description="Engine servers: after SIGTERM, how long the engine's process group may take to exit before "
        "SIGKILL.",
    )
    engine_first_token_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Engine servers: how long the engine may take to answer a request and send its first event "
        "before the request fails as upstream_stalled (retried on another worker by the gateway). The worker forwards "
        "at most max_batch_size requests at once, so this is the engine's prefill time, not queueing.",
    )
    engine_idle_timeout_s: float = Field(
        8.0,
        gt=0,
        description="Engine servers: after its first event, how long the engine may send nothing before the request "
        "fails as upstream_stalled. Keep it below the gateway's stream_idle_timeout_s, so that the client gets this "
        "error, which names the engine.",
    )
    engine_control_timeout_s: float = Field(
        300.0, gt=0, description="Engine servers: how long loading or unloading an adapter may take."
    )
    engine_metrics_interval_s: float = Field(
        5.0,
        gt=0,
        description="Engine servers: how often the engine's /metrics is read into the bailu_worker_engine_* metrics.",
    )
