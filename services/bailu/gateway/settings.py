"""Settings of the gateway (environment prefix `BAILU_GATEWAY_`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from bailu.common.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BAILU_GATEWAY_", extra="ignore", frozen=True)

    host: str = Field(
        "0.0.0.0",  # nosec B104 # in a pod: clients come through its Service
        description="Address the HTTP server binds to.",
    )
    port: int = Field(8000, ge=0, le=65535, description="HTTP port.")
    workers: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Static worker gRPC addresses, comma-separated host:port."
    )
    workers_dns: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="DNS names that resolve to workers, comma-separated host:port (e.g. a headless Service); "
        "re-resolved every discovery_interval_s.",
    )
    discovery_interval_s: float = Field(5.0, gt=0, description="How often workers_dns is resolved again.")
    load_poll_interval_s: float = Field(
        0.5, gt=0, description="How often each worker's load, readiness and models are polled."
    )
    worker_relay: bool = Field(
        True,
        description="Send every completion for a worker over one shared Relay stream to it (chunks of many "
        "completions in one gRPC message, flow control per completion), when the worker supports it; false: one "
        "Generate call per completion, as before the Relay RPC.",
    )
    api_keys_file: Path | None = Field(
        None, description="File of API key hashes, one `sha256:<hex>` per line (a mounted Secret)."
    )
    api_key_hashes: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="API key hashes, comma-separated `sha256:<hex>`."
    )
    key_cache_s: float = Field(
        2.0,
        ge=0,
        description="How long a replica trusts its copy of an API key's record from Redis (`bailu keys`) before "
        "reading it again: a revoked or changed key takes effect on every replica within this time. While Redis "
        "does not answer, the last copy read stays in use for up to key_stale_s.",
    )
    key_stale_s: float = Field(
        600.0,
        gt=0,
        description="While Redis does not answer, how old a replica's copy of an API key's record may be and still "
        "be used (a revocation made meanwhile waits at most this long); keys not seen within it get 503.",
    )
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body accepted (413 above).")
    max_prompt_chars: int = Field(
        32_000, ge=1, description="Largest prompt, in characters over all messages, accepted (413 above)."
    )
    request_timeout_s: float = Field(
        120.0, gt=0, description="Deadline of a completion, passed to the worker over gRPC (504 past it)."
    )
    max_attempts: int = Field(
        3, ge=1, description="Workers tried for one request, retrying only before the first token."
    )
    client_write_timeout_s: float = Field(
        30.0,
        gt=0,
        description="How long one write of a streaming response may wait for a client that does not read (its "
        "connection's buffers full); past it the response is abandoned, the connection closed and the worker "
        "streams cancelled (bailu_gateway_client_write_timeouts_total). A client that reads slowly only slows "
        "its own generation.",
    )
    stream_buffer_chunks: int = Field(
        32,
        ge=1,
        description="Chunks of one completion's n > 1 candidates held in the gateway for a client that reads "
        "slower than the workers generate; when full, the gateway stops reading the worker streams and gRPC flow "
        "control holds the workers back.",
    )
    first_token_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Time-to-first-token budget of one attempt: a worker that sends no token within it is "
        "abandoned and the request tried on another (while max_attempts and the deadline allow; else a 504). It "
        "counts the wait in the worker's queue too, so it must exceed the engine's TTFT under load (prefill of the "
        "longest prompt plus queueing behind max_batch_size running requests). A worker that stops answering its "
        "load poll is abandoned sooner, as soon as another worker can take the request.",
    )
    stream_idle_timeout_s: float = Field(
        10.0,
        gt=0,
        description="After the first token: a worker that sends nothing for this long ends the stream with an "
        "error (an SSE error event, or a 504). Must exceed the engine's longest gap between tokens.",
    )
    memory_trim_s: float = Field(
        30.0,
        ge=0,
        description="Every this many seconds, once no request is in flight after some were, return memory freed "
        "by the last burst to the system (glibc's malloc_trim), so that RSS comes back down between bursts; 0 "
        "disables it (nothing happens without glibc).",
    )

    redis_url: str = Field(
        "",
        description="Redis for the completion log and feedback, e.g. redis://:password@redis:6379/0 "
        "(empty: completions are not logged and feedback is refused).",
    )
    redis_timeout_s: float = Field(2.0, gt=0, description="Timeout of one Redis call.")
    store_default: bool = Field(
        True, description="Whether completions are logged for feedback when a request does not say (`store`)."
    )
    completion_log_retention_s: int = Field(
        7 * 24 * 3600, ge=60, description="How long a completion can receive feedback (its record's lifetime)."
    )
    completion_log_max_len: int = Field(
        1_000_000, ge=1000, description="Approximate bound on the completion log stream's length."
    )
    completion_log_queue: int = Field(
        10_000, ge=1, description="Completion records waiting to be written; beyond, new ones are dropped."
    )
    registry_refresh_s: float = Field(
        10.0,
        gt=0,
        description="How often model aliases and canary weights are re-read from the registry's index in Redis "
        "(change events apply them at once; this is the safety net).",
    )
    feedback_idempotency_ttl_s: int = Field(
        24 * 3600, ge=60, description="How long an Idempotency-Key (or feedback_id) is remembered."
    )
    feedback_batch_max_events: int = Field(
        256,
        ge=1,
        le=4096,
        description="Most events one POST /v1/feedback/batch takes (400 above); they are checked and recorded in "
        "one Redis round trip (the body must also fit BAILU_GATEWAY_MAX_BODY_BYTES).",
    )
    admission_control: bool = Field(
        True,
        description="Priority-aware admission: route each request to the worker with the shortest estimated queue "
        "wait for its class, refuse at once (503 ttft_deadline_unmeetable) an interactive request no worker can "
        "start before its time-to-first-token deadline, and shed batch requests (503 shed_under_load) while every "
        "worker's queue holds batch_queue_share of its max_queue. Off, as before: least-loaded routing, and requests "
        "reach the workers without their priority class or deadline, so they wait in arrival order and time out late.",
    )
    batch_queue_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Admission control: batch requests are shed while every worker's queue is at least this "
        "share of its max_queue, so that batch work never fills the room interactive requests need.",
    )
    interactive_ttft_deadline_s: float = Field(
        30.0,
        ge=0,
        description="Time-to-first-token deadline of an interactive request when it gives none "
        "(X-Bailu-TTFT-Deadline-Ms); 0: none. The default equals first_token_timeout_s, so that admission control "
        "refuses early only what would time out anyway; set it to the deployment's TTFT objective (e.g. 2-10 s) to "
        "shed interactive work that would miss it.",
    )
    batch_ttft_deadline_s: float = Field(
        0.0,
        ge=0,
        description="Time-to-first-token deadline of a batch request when it gives none "
        "(X-Bailu-TTFT-Deadline-Ms); 0: none.",
    )

    @field_validator("workers", "workers_dns", "api_key_hashes", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value
