"""Aliases: set, promote, rollback with history, canary weight bounds, unservable versions."""

from __future__ import annotations

import json

import pytest

from bailu.registry import Aliases, InvalidRegistryOperation, Registry, VersionNotFound
from bailu.registry.aliases import promote, rollback, set_canary
from tests.unit.registry.conftest import ArtifactFactory


@pytest.fixture
def three(registry: Registry, artifact: ArtifactFactory) -> Registry:
    for i in range(3):
        registry.publish("adapter", "poet", artifact(f"w{i}"))
    return registry


def test_production_canary_promote_rollback(three: Registry) -> None:
    r = three
    r.set_alias("adapter", "poet", "production", "v0001")
    assert r.manifest("adapter", "poet", "v0001").status == "published"
    r.set_canary("adapter", "poet", "v0002", 0.1)
    assert r.aliases("adapter", "poet").canary_weight == 0.1
    assert r.get("adapter", "poet", "canary").version == "v0002"
    assert r.manifest("adapter", "poet", "v0002").status == "candidate"

    promoted = r.promote("adapter", "poet")
    assert (promoted.production, promoted.canary, promoted.canary_weight) == ("v0002", None, 0.0)
    assert promoted.history == ("v0001",)
    assert r.manifest("adapter", "poet", "v0002").status == "published"

    r.set_canary("adapter", "poet", "v0003", 0.5)
    r.promote("adapter", "poet")
    assert r.aliases("adapter", "poet").history == ("v0001", "v0002")

    back = r.rollback("adapter", "poet")
    assert (back.production, back.history) == ("v0002", ("v0001",))
    back = r.rollback("adapter", "poet")
    assert (back.production, back.history) == ("v0001", ())
    with pytest.raises(InvalidRegistryOperation, match="previous"):
        r.rollback("adapter", "poet")
    on_disk = json.loads((r.root / "adapter" / "poet" / "aliases.json").read_text())
    assert on_disk["production"] == "v0001"
    assert on_disk["updated"]


def test_rollback_drops_a_live_canary_first(three: Registry) -> None:
    three.set_alias("adapter", "poet", "production", "v0001")
    three.set_alias("adapter", "poet", "production", "v0002")
    three.set_canary("adapter", "poet", "v0003", 0.3)
    back = three.rollback("adapter", "poet")
    assert (back.production, back.canary, back.canary_weight, back.history) == ("v0002", None, 0.0, ("v0001",))
    back = three.rollback("adapter", "poet")
    assert (back.production, back.canary, back.history) == ("v0001", None, ())


def test_rollback_of_a_first_canary(three: Registry) -> None:
    three.set_canary("adapter", "poet", "v0001", 0.5)
    back = three.rollback("adapter", "poet")
    assert (back.production, back.canary) == (None, None)
    with pytest.raises(InvalidRegistryOperation, match="no canary and no previous"):
        three.rollback("adapter", "poet")


@pytest.mark.parametrize("weight", [-0.01, 1.01, float("nan")])
def test_canary_weight_bounds(three: Registry, weight: float) -> None:
    with pytest.raises(InvalidRegistryOperation, match=r"0\.\.1"):
        three.set_canary("adapter", "poet", "v0002", weight)
    assert three.aliases("adapter", "poet") == Aliases()


def test_canary_weight_edges_and_clearing(three: Registry) -> None:
    assert three.set_canary("adapter", "poet", "v0002", 0.0).canary_weight == 0.0
    assert three.set_canary("adapter", "poet", "v0002", 1.0).canary_weight == 1.0
    cleared = three.set_canary("adapter", "poet", None, 0.0)
    assert (cleared.canary, cleared.canary_weight) == (None, 0.0)
    with pytest.raises(InvalidRegistryOperation):
        three.set_canary("adapter", "poet", None, 0.5)
    with pytest.raises(InvalidRegistryOperation, match="no canary"):
        three.promote("adapter", "poet")


def test_aliases_need_servable_existing_versions(three: Registry) -> None:
    three.set_status("adapter", "poet", "v0003", "rejected")
    with pytest.raises(InvalidRegistryOperation, match="rejected"):
        three.set_canary("adapter", "poet", "v0003", 0.1)
    with pytest.raises(VersionNotFound):
        three.set_alias("adapter", "poet", "production", "v0042")
    with pytest.raises(VersionNotFound):
        three.set_alias("adapter", "nobody", "production", "v0001")
    three.set_alias("adapter", "poet", "production", "v0001")
    with pytest.raises(InvalidRegistryOperation, match="aliased"):
        three.set_status("adapter", "poet", "v0001", "retired")
    with pytest.raises(InvalidRegistryOperation, match="already production"):
        three.set_canary("adapter", "poet", "v0001", 0.1)
    with pytest.raises(VersionNotFound):
        three.get("adapter", "poet", "canary")


def test_pure_transitions() -> None:
    a = Aliases(production="v1")
    assert set_canary(a, "v2", 0.2) == Aliases(production="v1", canary="v2", canary_weight=0.2)
    assert promote(set_canary(a, "v2", 0.2)) == Aliases(production="v2", history=("v1",))
    assert rollback(Aliases(production="v2", history=("v1",))) == Aliases(production="v1")
    assert rollback(Aliases(production="v2", canary="v3", canary_weight=0.4, history=("v1",))) == Aliases(
        production="v2", history=("v1",)
    )
