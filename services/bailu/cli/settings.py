"""Where the operator CLI finds the registry, the datasets and Redis (environment prefix `BAILU_`).

The defaults are where `make dev` keeps its state (`.cache/dev`, Redis on 6379), relative to the
repository root, so that `bailu models list` works next to a running `make dev` with no flags.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from bailu.common.settings import ServiceSettings

DEV_STATE = Path(".cache/dev")


class CliSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BAILU_", extra="ignore", frozen=True)

    registry_dir: Path = Field(DEV_STATE / "registry", description="Root of the model registry.")
    dataset_dir: Path = Field(DEV_STATE / "datasets", description="Directory of the collector's dataset versions.")
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis holding the registry's index and change events (empty: change the files only).",
    )
