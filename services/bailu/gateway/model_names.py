"""What a client's `model` means: a base model, an adapter a worker serves, or a registry adapter name.

Resolution order (the first that applies wins):

1. a name some ready worker serves as it is: a base model, a static adapter, or a registry version's
   name `<name>@<version>` (`version_name`: workers load versions under it);
2. `<name>@<version>` of a version the registry knows but no ready worker serves: 503 when it is aliased
   (production or canary: workers are loading it, a retry will succeed) and 404 when it is not (no worker
   will load it: only aliased versions are served);
3. a registry adapter name: production, or the canary for `canary_weight` of requests (`pick_version`
   with a uniform draw); when no ready worker serves the chosen version yet (a canary still loading), the
   other aliased version if one is served (counted in `bailu_gateway_version_fallbacks_total`); else 503;
4. anything else: 404 (503 while no worker is ready, as the name may be one a worker will serve).

The registry part comes from a view of the registry's Redis index that `RegistryWatcher` keeps current;
without Redis the view stays empty and only worker-served names resolve.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bailu.common.errors import ModelNotFound, Unavailable
from bailu.common.metrics import GatewayMetrics
from bailu.common.types import ModelCard
from bailu.gateway.workers import WorkerPool
from bailu.registry.errors import VersionNotFound
from bailu.registry.model import Aliases, Manifest
from bailu.registry.serving import SEPARATOR, ModelRef, aliased_versions, pick_version, version_name


@dataclass(frozen=True, slots=True)
class RegisteredAdapter:
    """One adapter name as the registry's index holds it: its aliases and its versions' manifests."""

    name: str
    aliases: Aliases
    manifests: Mapping[str, Manifest] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Target:
    """Where one request goes: the base model and adapter workers are asked for, and the alias that was
    chosen but not served when the request fell back to the other aliased version."""

    requested: str
    model: str
    adapter: str = ""
    fallback_from: str | None = None

    @property
    def resolved(self) -> str:
        """What `requested` resolved to: the adapter workers are asked for, else the base model (e.g.
        `bailu-poet@v0003` for `bailu-poet`). Responses report it as their `model`, and the completion log
        as its `resolved_model`."""
        return self.adapter or self.model


def _unknown(requested: str, pool: WorkerPool) -> Exception:
    if not pool.ready_workers():
        return Unavailable("no inference worker is ready")
    return ModelNotFound(f"the model '{requested}' does not exist", param="model")


class ModelResolver:
    def __init__(
        self,
        pool: WorkerPool,
        metrics: GatewayMetrics,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        self.draw = draw
        self.adapters: dict[str, RegisteredAdapter] = {}

    def replace_view(self, adapters: Mapping[str, RegisteredAdapter]) -> None:
        """Install a new view of every registry adapter name (read elsewhere; never partially applied)."""
        self.adapters = dict(adapters)

    def update_view(self, name: str, adapter: RegisteredAdapter | None) -> None:
        """Replace (or drop, with None) one name's entry in the view."""
        view = dict(self.adapters)
        if adapter is None:
            view.pop(name, None)
        else:
            view[name] = adapter
        self.adapters = view

    def resolve(self, requested: str) -> Target:
        """The target of a request for `requested`; raises `ModelNotFound` (404) or `Unavailable` (503)."""
        cards = self.pool.cards
        card = cards.get(requested)
        if card is not None:
            if card.kind == "adapter":
                return Target(requested, card.base_model, card.name)
            return Target(requested, card.name)
        ref = ModelRef.parse(requested)
        entry = self.adapters.get(ref.name)
        if entry is None or (ref.version is None and SEPARATOR in requested):
            raise _unknown(requested, self.pool)
        if ref.version is not None:
            raise self._not_loaded(entry, ref.version, requested)
        return self._pick(entry, cards, requested)

    def _not_loaded(self, entry: RegisteredAdapter, version: str, requested: str) -> Exception:
        if version not in entry.manifests:
            return _unknown(requested, self.pool)
        if not self.pool.ready_workers():
            return Unavailable("no inference worker is ready")
        if version in aliased_versions(entry.aliases):
            return Unavailable(f"the model '{requested}' is not loaded on any ready worker yet; retry shortly")
        return ModelNotFound(
            f"the model '{requested}' exists but is not loaded: workers serve only the production and canary "
            f"versions of '{entry.name}'",
            param="model",
        )

    def _pick(self, entry: RegisteredAdapter, cards: Mapping[str, ModelCard], requested: str) -> Target:
        try:
            chosen = pick_version(entry.aliases, self.draw())
        except VersionNotFound:
            raise ModelNotFound(f"the model '{requested}' has no production or canary version", param="model") from None
        card = cards.get(version_name(entry.name, chosen))
        if card is not None:
            return Target(requested, card.base_model, card.name)
        alias = "production" if chosen == entry.aliases.production else "canary"
        for other in aliased_versions(entry.aliases):
            card = cards.get(version_name(entry.name, other))
            if other != chosen and card is not None:
                self.metrics.version_fallbacks.labels(entry.name, alias).inc()
                return Target(requested, card.base_model, card.name, fallback_from=alias)
        if not self.pool.ready_workers():
            raise Unavailable("no inference worker is ready")
        versions = ", ".join(version_name(entry.name, v) for v in aliased_versions(entry.aliases))
        raise Unavailable(f"no ready worker serves the model '{requested}' yet ({versions}); retry shortly")

    def listed(self) -> list[ModelCard]:
        """Registry adapter names that some ready worker can serve now (an aliased version is loaded),
        as cards whose base model is the served version's."""
        cards = self.pool.cards
        listed: list[ModelCard] = []
        for name, entry in sorted(self.adapters.items()):
            if name in cards:
                continue  # a worker serves something under this very name: it wins (rule 1)
            for version in aliased_versions(entry.aliases):
                card = cards.get(version_name(name, version))
                if card is not None:
                    listed.append(ModelCard(name, "adapter", card.base_model, card.max_model_len))
                    break
        return listed
