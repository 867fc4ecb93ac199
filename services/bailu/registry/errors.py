"""Errors of the model registry, in the shared hierarchy."""

from __future__ import annotations

from bailu.common.errors import InvalidRequest, NotFound


class VersionNotFound(NotFound):
    """The kind, name, version or alias does not exist in the registry."""


class InvalidRegistryOperation(InvalidRequest, ValueError):
    """The operation is not allowed in the registry's current state (e.g. promote without a canary)."""
