"""Registry change events: what changed between two states of a name, as Redis stream entries."""

from __future__ import annotations

from dataclasses import dataclass, field

from bailu.registry.store import NameState

PUBLISHED = "published"
STATUS = "status"
ALIAS = "alias"
CANARY_WEIGHT = "canary_weight"

# The fields every entry has; the others are the event's details.
_HEAD = ("kind", "name", "version", "what")


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
        """Read a stream entry back; a missing `kind`, `name`, `version` or `what` reads as "" (an entry
        written by hand or by another version still parses, and `vague` says whether it names a change)."""
        details = {k: v for k, v in fields.items() if k not in _HEAD}
        kind, name, version, what = (fields.get(k, "") for k in _HEAD)
        return cls(kind, name, version, what, details)

    @property
    def vague(self) -> bool:
        """The entry does not say which name changed (no `kind` or no `name`): a follower cannot tell what
        it is about and treats it as being about anything."""
        return not self.kind or not self.name

    def may_concern(self, kind: str) -> bool:
        """Whether a follower of names of `kind` must act on this event (a vague one is not trusted to be
        irrelevant)."""
        return self.vague or self.kind == kind


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
