"""Settings of the feedback collector (environment prefix `BAILU_COLLECTOR_`)."""

from __future__ import annotations

import enum
import socket
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from bailu.common.settings import ServiceSettings


class RunnerKind(enum.StrEnum):
    """How a training run is started."""

    NONE = "none"  # never start one (the policy is still evaluated and logged)
    LOCAL = "local"  # a local process (make dev)
    KUBERNETES = "kubernetes"  # a Job created from the trainer CronJob's template


class CollectorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BAILU_COLLECTOR_", extra="ignore", frozen=True)

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis holding the feedback stream.")
    consumer_name: str = Field(
        default_factory=socket.gethostname,
        description="This replica's consumer name in the group (default: the host name, i.e. the pod name).",
    )
    host: str = Field(
        "0.0.0.0",  # nosec B104 # in a pod: probes and Prometheus come from outside it
        description="Address of the HTTP server for /healthz, /readyz and /metrics.",
    )
    http_port: int = Field(9092, ge=0, le=65535, description="Port of that HTTP server.")
    dataset_dir: Path = Field(Path("datasets"), description="Directory of the dataset shards and versions.")
    batch_size: int = Field(256, ge=1, description="Feedback events read and committed together.")
    block_ms: int = Field(1000, ge=1, description="How long one read waits for new events.")
    claim_idle_ms: int = Field(
        60_000,
        ge=1000,
        description="Events pending this long with a consumer (a dead one) are reclaimed by another.",
    )
    max_deliveries: int = Field(
        5, ge=1, description="An event that failed this many times goes to the dead-letter stream."
    )
    min_chars: int = Field(8, ge=1, description="Shorter answers (after normalisation) are rejected.")
    max_repeats: int = Field(
        3, ge=2, description="An answer in which one word 3-gram occurs this many times is degenerate."
    )
    min_letter_share: float = Field(
        0.6,
        ge=0,
        le=1,
        description="Answers in which letters make up a smaller share of the non-space characters are rejected.",
    )
    block_list: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Words or phrases that reject an answer, comma-separated."
    )
    block_list_file: Path | None = Field(None, description="A file of blocked words or phrases, one per line.")
    sft_min_score: int = Field(4, ge=1, le=5, description="Ratings at or above this score (thumbs up = 5) are SFT.")
    ratings_ttl_s: int = Field(
        7 * 24 * 3600, ge=60, description="How long ratings of a prompt are kept to pair higher with lower."
    )
    trim_every_batches: int = Field(
        50, ge=1, description="Every this many batches, trim acknowledged events from the feedback stream."
    )
    # Retraining trigger.
    runner: RunnerKind = Field(RunnerKind.NONE, description="How training runs are started: none, local or kubernetes.")
    trigger_interval_s: float = Field(60.0, gt=0, description="How often the retraining policy is evaluated.")
    trigger_min_new_pairs: int = Field(
        200, ge=1, description="Preference pairs written since the last run needed to start another."
    )
    trigger_cooldown_s: float = Field(6 * 3600, ge=0, description="Minimum time between two training runs.")
    trigger_daily_cap: int = Field(2, ge=0, description="At most this many runs per (local) day.")
    trigger_peak_window: str = Field(
        "06:00-09:30",
        description="Local time window in which no run starts (HH:MM-HH:MM; empty: none).",
    )
    trigger_timezone: str = Field("UTC", description="IANA time zone of the peak window and of days.")
    local_command: str = Field(
        "",
        description="local runner: the command that trains, with {dataset_version} and {dataset_dir} filled in.",
    )
    kubernetes_namespace: str = Field(
        "", description="kubernetes runner: the namespace (default: the pod's own, from the service account)."
    )
    kubernetes_cronjob: str = Field("", description="kubernetes runner: the trainer CronJob whose template is used.")

    @field_validator("block_list", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value
