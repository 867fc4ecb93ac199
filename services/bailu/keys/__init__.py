"""API keys, the contract between the CLI (which creates, updates and revokes them) and the gateway (which
checks every request against them): the record (`model`) and its one store in Redis (`store`)."""

from bailu.keys.model import (
    ACTIVE,
    ADMIN,
    BATCH,
    DEFAULT_SCOPES,
    EXPIRED,
    FEEDBACK,
    GENERATE,
    INTERACTIVE,
    PRIORITIES,
    REVOKED,
    SCOPES,
    ApiKey,
    Limits,
    hash_key,
    new_key,
    parse_duration,
    parse_scopes,
)
from bailu.keys.store import UNCHANGED, KeyNotFound, KeyRegistry, RevokedKeyImmutable, Unchanged

__all__ = [
    "ACTIVE",
    "ADMIN",
    "BATCH",
    "DEFAULT_SCOPES",
    "EXPIRED",
    "FEEDBACK",
    "GENERATE",
    "INTERACTIVE",
    "PRIORITIES",
    "REVOKED",
    "SCOPES",
    "UNCHANGED",
    "ApiKey",
    "KeyNotFound",
    "KeyRegistry",
    "Limits",
    "RevokedKeyImmutable",
    "Unchanged",
    "hash_key",
    "new_key",
    "parse_duration",
    "parse_scopes",
]
