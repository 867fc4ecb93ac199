"""How registry versions are served: the names workers load adapters under, and what a model name means.

One convention, used by the trainer, the workers, the gateway and the CLI:

- an adapter version is served under `<name>@<version>` (e.g. `bailu-poet@v0003`);
- a client's model name is a base model name, an adapter name whose aliases choose the version
  (`bailu-poet`: production, or the canary for `canary_weight` of requests), or an explicit
  `<name>@<version>`;
- a worker serving base model B loads every aliased (production or canary) version of every adapter
  whose manifest names B as its base model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bailu.registry.errors import VersionNotFound
from bailu.registry.model import Aliases, Manifest
from bailu.registry.store import NameState, Registry

SEPARATOR = "@"


def version_name(name: str, version: str) -> str:
    """`<name>@<version>`: the name a registry version is served under (workers load the adapter under
    it, clients may ask for it, responses and the completion log report it)."""
    return f"{name}{SEPARATOR}{version}"


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A client's model name split into the registry name and an explicit version (None: use the aliases)."""

    name: str
    version: str | None = None

    @classmethod
    def parse(cls, ref: str) -> ModelRef:
        name, sep, version = ref.partition(SEPARATOR)
        return cls(name, version if sep and version else None)

    def __str__(self) -> str:
        return version_name(self.name, self.version) if self.version else self.name


def aliased_versions(aliases: Aliases) -> list[str]:
    """The versions that take traffic: production, then the canary."""
    return [v for v in (aliases.production, aliases.canary) if v is not None]


def pick_version(aliases: Aliases, draw: float) -> str:
    """The version one request to the alias name goes to; `draw` is uniform in [0, 1).

    The canary gets the request when `draw < canary_weight`; without a production version the canary
    gets everything. Raises `VersionNotFound` when neither alias is set."""
    if aliases.canary is not None and (aliases.production is None or draw < aliases.canary_weight):
        return aliases.canary
    if aliases.production is None:
        raise VersionNotFound("it has no production or canary version")
    return aliases.production


def wanted_adapters(registry: Registry, base_model: str, states: Iterable[NameState] | None = None) -> dict[str, Path]:
    """What a worker serving `base_model` should have loaded: version name -> adapter directory in its own
    mount of the registry (`states` default to a scan of the files)."""
    wanted: dict[str, Path] = {}
    for state in registry.scan() if states is None else states:
        if state.kind != "adapter":
            continue
        by_version: dict[str, Manifest] = {m.version: m for m in state.manifests}
        for version in aliased_versions(state.aliases):
            manifest = by_version.get(version)
            if manifest is not None and manifest.base_model == base_model:
                wanted[version_name(state.name, version)] = registry.version_dir("adapter", state.name, version)
    return wanted
