"""API keys as the gateway and the CLI see them: who holds a key (its owner or tenant `name`), what it may do
(`scopes`), how much (`Limits`), how urgently (`priority`), and until when.

Only the SHA-256 hash of a key is ever stored (`hash_key`); the key itself is shown once, when it is created.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

from bailu.common.types import BATCH as BATCH
from bailu.common.types import INTERACTIVE, PRIORITIES

HASH_PREFIX = "sha256:"
KEY_PREFIX = "bailu-"
ID_PREFIX = "key_"

GENERATE, FEEDBACK, ADMIN = "generate", "feedback", "admin"
SCOPES = (GENERATE, FEEDBACK, ADMIN)
DEFAULT_SCOPES = frozenset({GENERATE, FEEDBACK})

# INTERACTIVE, BATCH and PRIORITIES, the priority classes, are a request's too (a worker orders its queue by
# them): they are defined in bailu.common.types and re-exported here.

ACTIVE, REVOKED, EXPIRED = "active", "revoked", "expired"

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_DURATION_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def hash_key(key: str) -> str:
    """The stored form of a key: `sha256:<64 hex digits>`."""
    return HASH_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A new secret key (256 random bits, URL-safe)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    """A new key id: safe to log and to show, it names the key in records, metrics and the CLI."""
    return ID_PREFIX + secrets.token_hex(8)


def hash_id(digest: str) -> str:
    """The id of a key known only by its hash (a static key from the keys file): a prefix of the hash."""
    return digest.removeprefix(HASH_PREFIX)[:12]


def parse_duration(text: str) -> float:
    """Seconds in `30d`, `12h`, `90m`, `45s` or `2w`; ValueError otherwise."""
    match = _DURATION.match(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"invalid duration {text!r}: expected a positive number and a unit (s, m, h, d, w), e.g. 30d")
    return float(int(match.group(1)) * _DURATION_S[match.group(2)])


def parse_scopes(text: str) -> frozenset[str]:
    """The scopes in a comma-separated list (`generate,feedback`); ValueError for an unknown or empty one."""
    scopes = frozenset(s.strip() for s in text.split(",") if s.strip())
    unknown = sorted(scopes - set(SCOPES))
    if unknown or not scopes:
        raise ValueError(f"invalid scopes {text!r}: expected a comma-separated list of {', '.join(SCOPES)}")
    return scopes


@dataclass(frozen=True)
class Limits:
    """Per-key quotas, enforced across gateway replicas (None: unlimited). `rpm`: requests per minute;
    `tpm`: prompt plus completion tokens per minute; `concurrency`: completions in progress at once."""

    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "concurrency"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer (or unset for no limit), got {value!r}")

    @property
    def unlimited(self) -> bool:
        return self.rpm is None and self.tpm is None and self.concurrency is None


@dataclass(frozen=True)
class ApiKey:
    """One key's record (never the key itself: `hash` is its `hash_key`). Times are Unix seconds."""

    id: str
    name: str
    hash: str
    scopes: frozenset[str] = DEFAULT_SCOPES
    limits: Limits = field(default_factory=Limits)
    priority: str = INTERACTIVE
    created_at: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("a key needs a name (its owner or tenant)")
        if unknown := sorted(self.scopes - set(SCOPES)):
            raise ValueError(f"unknown scopes {', '.join(unknown)}: expected {', '.join(SCOPES)}")
        if self.priority not in PRIORITIES:
            raise ValueError(f"invalid priority {self.priority!r}: expected {' or '.join(PRIORITIES)}")

    @classmethod
    def static(cls, digest: str) -> ApiKey:
        """A key from the static keys file or env hashes: every scope, no limits, interactive."""
        return cls(id=hash_id(digest), name="static", hash=digest, scopes=frozenset(SCOPES))

    def state(self, now: float) -> str:
        """`active`, `revoked` or `expired` at `now`."""
        if self.revoked_at is not None:
            return REVOKED
        if self.expires_at is not None and now >= self.expires_at:
            return EXPIRED
        return ACTIVE

    def allows(self, scope: str) -> bool:
        return scope in self.scopes

    def with_limits(self, **changes: Any) -> ApiKey:
        """The record with some limits (`rpm`, `tpm`, `concurrency`) or the priority changed."""
        priority = changes.pop("priority", self.priority)
        return replace(self, limits=replace(self.limits, **changes), priority=priority)

    def public(self, now: float) -> dict[str, Any]:
        """What `bailu keys list --json` shows of the key (stable keys; no hash)."""
        return {
            "id": self.id,
            "name": self.name,
            "scopes": sorted(self.scopes),
            "rpm": self.limits.rpm,
            "tpm": self.limits.tpm,
            "concurrency": self.limits.concurrency,
            "priority": self.priority,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "state": self.state(now),
        }

    def to_fields(self) -> dict[str, str]:
        """The key's Redis hash fields (an unset value is an empty string)."""

        def text(value: float | int | None) -> str:
            return "" if value is None else repr(value)

        return {
            "id": self.id,
            "name": self.name,
            "hash": self.hash,
            "scopes": ",".join(sorted(self.scopes)),
            "rpm": text(self.limits.rpm),
            "tpm": text(self.limits.tpm),
            "concurrency": text(self.limits.concurrency),
            "priority": self.priority,
            "created_at": text(self.created_at),
            "expires_at": text(self.expires_at),
            "revoked_at": text(self.revoked_at),
        }

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> ApiKey:
        """The record from its Redis hash fields (text already decoded); ValueError if it is not one."""

        def number(name: str, kind: type[int] | type[float]) -> Any:
            value = fields.get(name, "")
            return kind(value) if value else None

        try:
            return cls(
                id=fields["id"],
                name=fields["name"],
                hash=fields["hash"],
                scopes=frozenset(s for s in fields.get("scopes", "").split(",") if s),
                limits=Limits(number("rpm", int), number("tpm", int), number("concurrency", int)),
                priority=fields.get("priority") or INTERACTIVE,
                created_at=number("created_at", float) or 0.0,
                expires_at=number("expires_at", float),
                revoked_at=number("revoked_at", float),
            )
        except KeyError as exc:
            raise ValueError(f"an API key record lacks its {exc.args[0]!r} field") from None
