"""Alias transitions as pure functions on `Aliases`: the store validates versions and does the I/O."""

from __future__ import annotations

from dataclasses import replace

from bailu.registry.errors import InvalidRegistryOperation
from bailu.registry.model import Alias, Aliases

HISTORY_LIMIT = 50


def _with_production(aliases: Aliases, version: str | None) -> Aliases:
    if version == aliases.production:
        return aliases
    history = aliases.history
    if aliases.production is not None:
        history = (*history, aliases.production)[-HISTORY_LIMIT:]
    return replace(aliases, production=version, history=history)


def set_alias(aliases: Aliases, alias: Alias, version: str | None) -> Aliases:
    """Point `alias` at `version` (None clears it). A replaced production version goes to the history;
    clearing the canary also sets its weight to 0."""
    if alias == "production":
        result = _with_production(aliases, version)
        if version is not None and version == result.canary:
            result = replace(result, canary=None, canary_weight=0.0)
        return result
    if alias == "canary":
        return set_canary(aliases, version, aliases.canary_weight if version is not None else 0.0)
    raise InvalidRegistryOperation(f"unknown alias {alias!r}: expected production or canary")


def set_canary(aliases: Aliases, version: str | None, weight: float) -> Aliases:
    """Set the canary and the share of traffic (0..1) it gets; a None version needs weight 0."""
    if not 0.0 <= weight <= 1.0:
        raise InvalidRegistryOperation(f"canary weight must be within 0..1, got {weight}")
    if version is None and weight != 0.0:
        raise InvalidRegistryOperation("a canary weight needs a canary version")
    if version is not None and version == aliases.production:
        raise InvalidRegistryOperation(f"{version} is already production")
    return replace(aliases, canary=version, canary_weight=float(weight))


def promote(aliases: Aliases) -> Aliases:
    """The canary becomes production (the old production goes to the history); no canary is left."""
    if aliases.canary is None:
        raise InvalidRegistryOperation("there is no canary to promote")
    return replace(_with_production(aliases, aliases.canary), canary=None, canary_weight=0.0)


def rollback(aliases: Aliases) -> Aliases:
    """Undo the latest rollout step, so that all traffic goes to the version that served it before: a live
    canary is dropped (production keeps serving); without a canary, production returns to the previous
    production version (the rolled-back version does not enter the history)."""
    if aliases.canary is not None:
        return replace(aliases, canary=None, canary_weight=0.0)
    if not aliases.history:
        raise InvalidRegistryOperation("there is no canary and no previous production version to roll back to")
    return replace(aliases, production=aliases.history[-1], history=aliases.history[:-1])
