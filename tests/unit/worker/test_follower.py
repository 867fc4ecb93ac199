"""The registry follower's reconcile logic on a registry in a temporary directory and the sim engine
(no Redis: the event path is covered by the integration tests in tests/integration/test_rollout.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from bailu.common.metrics import WorkerMetrics
from bailu.registry import Registry
from bailu.worker.engines.sim import SimEngine
from bailu.worker.follower import RegistryFollower
from tests.conftest import eventually

BASE = "base"
Publish = Callable[..., str]


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


@pytest.fixture
def publish(tmp_path: Path, registry: Registry) -> Publish:
    """Publish a fake adapter (adapter_config.json with a marker) as the next version of `name`."""
    counter = iter(range(1_000_000))

    def make(name: str = "poet", base_model: str = BASE) -> str:
        folder = tmp_path / f"src-{next(counter)}"
        folder.mkdir()
        (folder / "adapter_config.json").write_text(f'{{"r": 8, "marker": "{folder.name}"}}')
        return registry.publish("adapter", name, folder, base_model=base_model).version

    return make


@pytest.fixture
def metrics() -> WorkerMetrics:
    return WorkerMetrics(CollectorRegistry())


@pytest.fixture
def engine() -> SimEngine:
    return SimEngine(BASE, ttft_s=0, itl_s=0, output_tokens=4, capacity=2)


@pytest.fixture
async def follow(
    registry: Registry, engine: SimEngine, metrics: WorkerMetrics
) -> AsyncIterator[Callable[..., RegistryFollower]]:
    followers: list[RegistryFollower] = []

    def make(**kwargs: object) -> RegistryFollower:
        values: dict[str, object] = {"poll_s": 3600.0, "unload_grace_s": 0.05, **kwargs}
        follower = RegistryFollower(engine, registry, BASE, metrics, **values)  # type: ignore[arg-type]
        followers.append(follower)
        return follower

    yield make
    for follower in followers:
        await follower.close()


def count(metric: object, *labels: str) -> float:
    return metric.labels(*labels)._value.get()  # type: ignore[attr-defined]


async def test_production_and_canary_of_this_base_model_are_loaded(registry, publish, follow, engine) -> None:
    v1, v2, v3 = publish(), publish(), publish()
    registry.set_alias("adapter", "poet", "production", v1)
    registry.set_canary("adapter", "poet", v2, 0.2)
    other = publish("legal", base_model="another-base")
    registry.set_alias("adapter", "legal", "production", other)
    follower = follow()
    assert await follower.reconcile("start")
    assert engine.adapters == {
        "poet@v0001": str(registry.version_dir("adapter", "poet", v1)),
        "poet@v0002": str(registry.version_dir("adapter", "poet", v2)),
    }
    assert v3 not in " ".join(engine.adapters)  # a version without an alias is not served


async def test_a_version_that_leaves_the_aliases_is_unloaded_after_the_grace(
    registry, publish, follow, engine, metrics
) -> None:
    v1, v2 = publish(), publish()
    registry.set_alias("adapter", "poet", "production", v1)
    follower = follow(unload_grace_s=0.3)
    await follower.reconcile("start")
    registry.set_alias("adapter", "poet", "production", v2)
    await follower.reconcile("poll")
    # Still loaded during the grace, for requests already routed to it.
    assert set(engine.adapters) == {"poet@v0001", "poet@v0002"}
    assert follower.retiring == {"poet@v0001"}
    await eventually(lambda: "poet@v0001" not in engine.adapters)
    assert set(engine.adapters) == {"poet@v0002"}
    assert follower.retiring == set()
    assert count(metrics.adapter_unloads, "ok") == 1
    assert count(metrics.adapter_loads, "ok") == 2


async def test_rollback_during_the_grace_keeps_the_version(registry, publish, follow, engine) -> None:
    v1, v2 = publish(), publish()
    registry.set_alias("adapter", "poet", "production", v1)
    follower = follow(unload_grace_s=0.2)
    await follower.reconcile("start")
    registry.set_alias("adapter", "poet", "production", v2)
    await follower.reconcile("event")
    registry.rollback("adapter", "poet")  # v0001 is production again; v0002 leaves
    await follower.reconcile("event")
    assert follower.retiring == {"poet@v0002"}
    await eventually(lambda: "poet@v0002" not in engine.adapters)
    await asyncio.sleep(0.3)  # past v0001's original unload time
    assert set(engine.adapters) == {"poet@v0001"}


async def test_a_failed_load_is_logged_and_retried(registry, publish, follow, engine, metrics, caplog) -> None:
    v1 = publish()
    registry.set_alias("adapter", "poet", "production", v1)
    config = registry.version_dir("adapter", "poet", v1) / "adapter_config.json"
    saved = config.read_text()
    config.unlink()  # e.g. shared storage that has not caught up
    follower = follow()
    assert not await follower.reconcile("start")
    assert engine.adapters == {}
    assert "adapter_config.json missing" in follower.failed["poet@v0001"]
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and getattr(r, "adapter", "") == "poet@v0001"]
    assert "adapter_config.json missing" in warnings[0].reason  # type: ignore[attr-defined]
    assert count(metrics.adapter_loads, "ModelNotFound") == 1
    assert count(metrics.registry_reconciles, "start", "partial") == 1
    config.write_text(saved)
    assert await follower.reconcile("poll")
    assert set(engine.adapters) == {"poet@v0001"}
    assert follower.failed == {}


async def test_static_adapters_are_never_touched(tmp_path, registry, publish, follow, engine) -> None:
    static_dir = tmp_path / "static"
    static_dir.mkdir()
    (static_dir / "adapter_config.json").write_text("{}")
    await engine.load_adapter("house-style", str(static_dir))
    await engine.load_adapter("poet@v0001", str(static_dir))  # the same name as a registry version
    v1 = publish()
    registry.set_alias("adapter", "poet", "production", v1)
    follower = follow(static={"house-style", "poet@v0001"})
    await follower.reconcile("start")
    assert engine.adapters["poet@v0001"] == str(static_dir)  # not replaced by the registry's
    registry.set_alias("adapter", "poet", "production", publish())
    await follower.reconcile("poll")
    await asyncio.sleep(0.2)  # past the grace
    assert engine.adapters["house-style"] == str(static_dir)
    assert engine.adapters["poet@v0001"] == str(static_dir)
    assert "poet@v0002" in engine.adapters


async def test_an_unreadable_registry_keeps_what_is_loaded(registry, publish, follow, engine, metrics) -> None:
    v1 = publish()
    registry.set_alias("adapter", "poet", "production", v1)
    follower = follow()
    await follower.reconcile("start")
    (registry.root / "adapter" / "poet" / "aliases.json").write_text("{half a file")
    assert not await follower.reconcile("poll")
    await asyncio.sleep(0.1)
    assert set(engine.adapters) == {"poet@v0001"}
    assert count(metrics.registry_reconciles, "poll", "error") == 1


async def test_an_adapter_unloaded_by_hand_is_loaded_again(registry, publish, follow, engine) -> None:
    registry.set_alias("adapter", "poet", "production", publish())
    follower = follow()
    await follower.reconcile("start")
    await engine.unload_adapter("poet@v0001")
    await follower.reconcile("poll")
    assert "poet@v0001" in engine.adapters


async def test_start_reconciles_then_polls(registry, publish, follow, engine) -> None:
    registry.set_alias("adapter", "poet", "production", publish())
    follower = follow(poll_s=0.05)
    await follower.start()
    assert set(engine.adapters) == {"poet@v0001"}  # loaded before start() returns
    registry.set_canary("adapter", "poet", publish(), 0.5)
    await eventually(lambda: "poet@v0002" in engine.adapters)
