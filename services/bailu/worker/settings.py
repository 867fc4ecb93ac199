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


class WorkerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BAILU_WORKER_", extra="ignore", frozen=True)

    host: str = Field("0.0.0.0", description="Address the gRPC server binds to.")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 picks a free one).")
    http_port: int = Field(
        9091, ge=0, le=65535, description="Port of the HTTP server for /healthz, /readyz and /metrics."
    )
    engine: EngineKind = Field(EngineKind.TRANSFORMERS, description="Generation engine: transformers or sim.")
    model_name: str = Field(
        "smollm2-135m-instruct", min_length=1, description="Name clients use to select the base model."
    )
    model_path: Path | None = Field(
        None, description="Local Hugging Face checkpoint directory of the base model (transformers engine)."
    )
    model_type: str = Field("llama", description="ms-swift model_type of the checkpoint.")
    template: str = Field("chatml", description="ms-swift chat template of the model.")
    max_model_len: int = Field(
        4096, ge=16, description="Context length in tokens (prompt plus output) the worker accepts."
    )
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request gives none.")
    max_batch_size: int = Field(4, ge=1, description="Requests the engine generates at once (transformers: one batch).")
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
