"""Base class of the per-service settings classes.

Each service has exactly one settings class, read from environment variables
with the service's prefix (`BAILU_GATEWAY_`, `BAILU_WORKER_`, ...). Nothing
else in the code reads the environment. `bailu.common.settings_doc` renders
the README's configuration reference from these classes.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Fields every service has."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    log_level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING or ERROR.")
