"""Model name resolution: base models, static adapters, registry aliases (production/canary by the draw),
explicit versions, fallback when the chosen version is not served, unknown names. Workers' model lists and
the registry view are set by hand (no worker or Redis is contacted)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from bailu.common.errors import ModelNotFound, Unavailable
from bailu.common.metrics import GatewayMetrics
from bailu.common.types import LoadReport, ModelCard
from bailu.gateway.model_names import ModelResolver, RegisteredAdapter
from bailu.gateway.workers import WorkerClient, WorkerPool
from bailu.registry.model import Aliases, Manifest
from tests.unit.gateway.conftest import put_worker

BASE = "base"
STATIC = ModelCard("poet", "adapter", BASE, 4096)


def manifest(version: str, base_model: str = BASE) -> Manifest:
    return Manifest(
        name="bailu-poet", kind="adapter", version=version, created="", content_sha256=version, base_model=base_model
    )


def registered(production: str | None, canary: str | None = None, weight: float = 0.0, versions: int = 3):
    manifests = {f"v{i:04d}": manifest(f"v{i:04d}") for i in range(1, versions + 1)}
    return RegisteredAdapter("bailu-poet", Aliases(production, canary, weight if canary else 0.0), manifests)


def card(name: str, max_model_len: int = 4096) -> ModelCard:
    return ModelCard(name, "adapter", BASE, max_model_len)


class Draws:
    """The resolver's random draw, set by the test."""

    def __init__(self) -> None:
        self.value = 0.5

    def __call__(self) -> float:
        return self.value


AddWorker = Callable[..., WorkerClient]


@pytest.fixture
def add(pool: WorkerPool) -> AddWorker:
    def add_worker(address: str, *models: ModelCard, ready: bool = True) -> WorkerClient:
        report = LoadReport(queued=0, running=0, capacity=4, max_queue=8, ready=ready)
        return put_worker(pool, address, report, [ModelCard(BASE, "base", "", 4096), *models])

    return add_worker


@pytest.fixture
def metrics() -> GatewayMetrics:
    return GatewayMetrics(CollectorRegistry())


@pytest.fixture
def draws() -> Draws:
    return Draws()


@pytest.fixture
def resolver(pool: WorkerPool, metrics: GatewayMetrics, draws: Draws) -> ModelResolver:
    return ModelResolver(pool, metrics, draw=draws)


def fallbacks(metrics: GatewayMetrics, alias: str) -> float:
    return metrics.version_fallbacks.labels("bailu-poet", alias)._value.get()


async def test_base_model_and_static_adapter_resolve_as_workers_serve_them(resolver, add) -> None:
    add("w1:1", STATIC)
    base = resolver.resolve(BASE)
    assert (base.model, base.adapter, base.resolved) == (BASE, "", BASE)
    static = resolver.resolve("poet")
    assert (static.model, static.adapter, static.resolved) == (BASE, "poet", "poet")


async def test_alias_goes_to_production_or_canary_by_the_draw(resolver, add, draws) -> None:
    add("w1:1", card("bailu-poet@v0001"), card("bailu-poet@v0002"))
    resolver.replace_view({"bailu-poet": registered("v0001", "v0002", 0.3)})
    draws.value = 0.29
    canary = resolver.resolve("bailu-poet")
    assert (canary.requested, canary.model, canary.adapter) == ("bailu-poet", BASE, "bailu-poet@v0002")
    draws.value = 0.3
    assert resolver.resolve("bailu-poet").resolved == "bailu-poet@v0001"
    draws.value = 0.99
    assert resolver.resolve("bailu-poet").resolved == "bailu-poet@v0001"
    assert resolver.resolve("bailu-poet").fallback_from is None


async def test_explicit_version_served_by_a_worker(resolver, add) -> None:
    add("w1:1", card("bailu-poet@v0001"), card("bailu-poet@v0002"))
    resolver.replace_view({"bailu-poet": registered("v0001", "v0002", 0.3)})
    assert resolver.resolve("bailu-poet@v0002").adapter == "bailu-poet@v0002"
    # Without any registry view, a served name still resolves: it is what a worker reports.
    resolver.replace_view({})
    assert resolver.resolve("bailu-poet@v0001").adapter == "bailu-poet@v0001"


async def test_canary_not_served_yet_falls_back_to_production(resolver, add, draws, metrics) -> None:
    add("w1:1", card("bailu-poet@v0001"))  # the canary v0002 is still loading
    resolver.replace_view({"bailu-poet": registered("v0001", "v0002", 0.5)})
    draws.value = 0.1  # chooses the canary
    target = resolver.resolve("bailu-poet")
    assert target.resolved == "bailu-poet@v0001"
    assert target.fallback_from == "canary"
    assert fallbacks(metrics, "canary") == 1
    draws.value = 0.9  # chooses production: no fallback
    assert resolver.resolve("bailu-poet").fallback_from is None
    assert fallbacks(metrics, "canary") == 1


async def test_production_not_served_falls_back_to_canary(resolver, add, draws, metrics) -> None:
    add("w1:1", card("bailu-poet@v0002"))
    resolver.replace_view({"bailu-poet": registered("v0003", "v0002", 0.1)})
    draws.value = 0.9
    assert resolver.resolve("bailu-poet").resolved == "bailu-poet@v0002"
    assert fallbacks(metrics, "production") == 1


async def test_no_aliased_version_served_is_503_naming_the_versions(resolver, add) -> None:
    add("w1:1", card("bailu-poet@v0001"))  # a retired version, still in its grace period
    resolver.replace_view({"bailu-poet": registered("v0002", "v0003", 0.2)})
    with pytest.raises(Unavailable) as info:
        resolver.resolve("bailu-poet")
    assert "bailu-poet@v0002" in info.value.message
    assert "bailu-poet@v0003" in info.value.message
    assert info.value.retry_after_s


async def test_name_without_aliases_is_404(resolver, add) -> None:
    add("w1:1")
    resolver.replace_view({"bailu-poet": registered(None)})
    with pytest.raises(ModelNotFound) as info:
        resolver.resolve("bailu-poet")
    assert "no production or canary version" in info.value.message
    assert info.value.param == "model"


async def test_explicit_version_not_loaded(resolver, add) -> None:
    add("w1:1", card("bailu-poet@v0001"))
    resolver.replace_view({"bailu-poet": registered("v0001", "v0002", 0.3, versions=3)})
    # Aliased but not loaded yet: a retry will succeed.
    with pytest.raises(Unavailable) as loading:
        resolver.resolve("bailu-poet@v0002")
    assert "not loaded" in loading.value.message
    # Not aliased: no worker will ever load it.
    with pytest.raises(ModelNotFound) as never:
        resolver.resolve("bailu-poet@v0003")
    assert "not loaded" in never.value.message
    # Not in the registry at all.
    with pytest.raises(ModelNotFound) as unknown:
        resolver.resolve("bailu-poet@v0009")
    assert unknown.value.message == "the model 'bailu-poet@v0009' does not exist"


@pytest.mark.parametrize("name", ["gpt-4", "bailu-poet@", "other@v0001", "@v0001"])
async def test_unknown_names_are_404(resolver, add, name) -> None:
    add("w1:1", card("bailu-poet@v0001"))
    resolver.replace_view({"bailu-poet": registered("v0001")})
    with pytest.raises(ModelNotFound) as info:
        resolver.resolve(name)
    assert info.value.message == f"the model '{name}' does not exist"


async def test_with_no_ready_worker_everything_is_503(resolver, add) -> None:
    add("w1:1", card("bailu-poet@v0001"), ready=False)
    resolver.replace_view({"bailu-poet": registered("v0001", "v0002", 0.5)})
    for name in (BASE, "bailu-poet", "bailu-poet@v0001", "gpt-4"):
        with pytest.raises(Unavailable):
            resolver.resolve(name)


async def test_with_no_worker_at_all_is_503(resolver) -> None:
    with pytest.raises(Unavailable) as info:
        resolver.resolve(BASE)
    assert info.value.retryable


async def test_models_of_workers_that_are_not_ready_do_not_resolve(resolver, add) -> None:
    add("w1:1")
    add("w2:1", ModelCard("other", "base", "", 2048), ready=False)
    with pytest.raises(ModelNotFound):
        resolver.resolve("other")


async def test_a_name_a_worker_serves_wins_over_a_registry_name(resolver, add) -> None:
    add("w1:1", ModelCard("bailu-poet", "adapter", BASE, 4096), card("bailu-poet@v0001"))
    resolver.replace_view({"bailu-poet": registered("v0001")})
    assert resolver.resolve("bailu-poet").adapter == "bailu-poet"
    assert [c.name for c in resolver.listed()] == []


async def test_listed_names_are_those_a_worker_can_serve(resolver, add) -> None:
    add("w1:1", card("bailu-poet@v0002", max_model_len=2048))
    resolver.replace_view(
        {
            "bailu-poet": registered("v0001", "v0002", 0.1),  # the canary is served: listed
            "bailu-editor": RegisteredAdapter("bailu-editor", Aliases("v0001"), {"v0001": manifest("v0001")}),
        }
    )
    assert resolver.listed() == [ModelCard("bailu-poet", "adapter", BASE, 2048)]


async def test_update_view_replaces_or_drops_one_name(resolver, add) -> None:
    add("w1:1", card("bailu-poet@v0001"), card("bailu-poet@v0002"))
    resolver.replace_view({"bailu-poet": registered("v0001")})
    resolver.update_view("bailu-poet", registered("v0002"))
    assert resolver.resolve("bailu-poet").resolved == "bailu-poet@v0002"
    resolver.update_view("bailu-poet", None)
    with pytest.raises(ModelNotFound):
        resolver.resolve("bailu-poet")
