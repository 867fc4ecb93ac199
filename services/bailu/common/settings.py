"""Base class of the per-service settings classes.

Each service has exactly one settings class, read from environment variables
with the service's prefix (`BAILU_GATEWAY_`, `BAILU_WORKER_`, ...). Nothing
else in the code reads the environment. `bailu.dev.settings_doc` renders
the README's configuration reference from these classes.
"""

from __future__ import annotations

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Fields every service has."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    log_level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING or ERROR.")


def describe_errors(exc: ValidationError) -> str:
    """A settings validation error as one line naming each field and its problem (for command lines)."""
    return "; ".join(f"{'.'.join(str(part) for part in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors())
