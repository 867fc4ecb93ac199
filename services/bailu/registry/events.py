"""Registry change events: what changed between two states of a name, as Redis stream entries."""

from __future__ import annotations

from dataclasses import dataclass, field

from bailu.registry.store import NameState

PUBLISHED = "published"
STATUS = "status"
ALIAS = "alias"
CANARY_WEIGHT = "canary_weight"


@dataclass(frozen=True, slots=True)
class RegistryEvent:
    """One change: `what` is published | status | alias | canary_weight; `details` depend on it
    (published/status: status [, previous]; alias: alias, previous; canary_weight: weight, previous)."""

    kind: str
    name: str
    version: str
    what: str
    details: dict[str, str] = field(default_factory=dict)

    def to_fields(self) -> dict[str, str]:
        return {**self.details, "kind": self.kind, "name": self.name, "version": self.version, "what": self.what}

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> RegistryEvent:
        details = {k: v for k, v in fields.items() if k not in ("kind", "name", "version", "what")}
        return cls(fields["kind"], fields["name"], fields["version"], fields["what"], details)


def diff(before: NameState, after: NameState) -> list[RegistryEvent]:
    """The events that take a name from `before` to `after`: new versions, status changes, alias moves,
    canary weight changes, in that order."""
    kind, name = after.kind, after.name
    old = {m.version: m for m in before.manifests}
    events: list[RegistryEvent] = []
    for m in after.manifests:
        if m.version not in old:
            events.append(RegistryEvent(kind, name, m.version, PUBLISHED, {"status": str(m.status)}))
    for m in after.manifests:
        if m.version in old and old[m.version].status != m.status:
            details: dict[str, str] = {"status": m.status, "previous": old[m.version].status}
            events.append(RegistryEvent(kind, name, m.version, STATUS, details))
    a, b = before.aliases, after.aliases
    for alias in ("production", "canary"):
        was, now = getattr(a, alias), getattr(b, alias)
        if was != now:
            events.append(RegistryEvent(kind, name, now or "", ALIAS, {"alias": alias, "previous": was or ""}))
    if a.canary_weight != b.canary_weight:
        details = {"weight": repr(b.canary_weight), "previous": repr(a.canary_weight)}
        events.append(RegistryEvent(kind, name, b.canary or "", CANARY_WEIGHT, details))
    return events
