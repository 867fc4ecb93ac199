"""The registry's records: a version's manifest and a name's aliases, with their JSON forms."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

from bailu.registry.errors import InvalidRegistryOperation

Kind = Literal["base", "adapter", "export"]
Status = Literal["candidate", "rejected", "published", "retired"]
Alias = Literal["production", "canary"]

KINDS: tuple[Kind, ...] = ("base", "adapter", "export")
STATUSES: tuple[Status, ...] = ("candidate", "rejected", "published", "retired")
ALIASES: tuple[Alias, ...] = ("production", "canary")
MANIFEST = "manifest.json"
ALIASES_FILE = "aliases.json"


def dumps(data: Any) -> str:
    """Canonical JSON (sorted keys, no spaces): equal data gives equal text."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a version is and where it came from; `manifest.json` in its directory."""

    name: str
    kind: Kind
    version: str
    created: str
    content_sha256: str
    base_model: str | None = None
    base_model_sha256: str | None = None
    dataset_version: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    status: Status = "candidate"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def with_status(self, status: Status) -> Manifest:
        return replace(self, status=status)

    def same_build(self, content_sha256: str, dataset_version: str | None, config: dict[str, Any]) -> bool:
        """True when another publish of this content, data and config would duplicate this version."""
        return (self.content_sha256, self.dataset_version, dumps(self.config)) == (
            content_sha256,
            dataset_version,
            dumps(config),
        )


@dataclass(frozen=True, slots=True)
class Aliases:
    """A name's aliases; `history` holds earlier production versions, oldest first, for rollback."""

    production: str | None = None
    canary: str | None = None
    canary_weight: float = 0.0
    history: tuple[str, ...] = ()
    updated: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["history"] = list(self.history)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Aliases:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Aliases:
        return cls(
            production=data.get("production"),
            canary=data.get("canary"),
            canary_weight=float(data.get("canary_weight", 0.0)),
            history=tuple(data.get("history", ())),
            updated=data.get("updated"),
        )

    def get(self, alias: Alias) -> str | None:
        return self.production if alias == "production" else self.canary


@dataclass(frozen=True, slots=True)
class Version:
    """One published version: its manifest and directory. `existed` is True when a publish found a duplicate."""

    manifest: Manifest
    path: Path
    existed: bool = False

    @property
    def kind(self) -> Kind:
        return self.manifest.kind

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version


def check_kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise InvalidRegistryOperation(f"unknown kind {kind!r}: expected one of {KINDS}")
    return cast(Kind, kind)


def check_status(status: str) -> Status:
    if status not in STATUSES:
        raise InvalidRegistryOperation(f"unknown status {status!r}: expected one of {STATUSES}")
    return cast(Status, status)
