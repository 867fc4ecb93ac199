"""The registry's Redis index against a real redis-server: incremental updates equal a rebuild from the
files, and every change appends an event in order."""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis

from bailu.common import redis_keys
from bailu.registry import ModelRegistry, Registry, RegistryEvent, RegistryIndex


def source(tmp_path: Path, weights: str) -> Path:
    folder = tmp_path / f"src-{weights}"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_text(weights)
    return folder


def summary(event: RegistryEvent) -> tuple[str, ...]:
    return (event.kind, event.name, event.version, event.what, *(f"{k}={v}" for k, v in sorted(event.details.items())))


async def test_changes_are_indexed_and_announced_in_order(tmp_path: Path, redis: Redis) -> None:
    registry = Registry(tmp_path / "registry")
    models = ModelRegistry(registry, RegistryIndex(redis))

    v1 = await models.publish("adapter", "poet", source(tmp_path, "a"), dataset_version="d1", config={"r": 8})
    again = await models.publish("adapter", "poet", v1.path, dataset_version="d1", config={"r": 8})
    assert again.existed
    assert again.version == "v0001"
    await models.set_alias("adapter", "poet", "production", "v0001")
    await models.publish("adapter", "poet", source(tmp_path, "b"), dataset_version="d2", parent="v0001")
    await models.set_canary("adapter", "poet", "v0002", 0.2)
    await models.set_canary("adapter", "poet", "v0002", 0.5)
    await models.promote("adapter", "poet")
    await models.rollback("adapter", "poet")
    await models.set_status("adapter", "poet", "v0002", "retired")

    events = [summary(e) for _, e in await models.index.events()]
    head = ("adapter", "poet")
    assert events == [
        (*head, "v0001", "published", "status=candidate"),
        (*head, "v0001", "status", "previous=candidate", "status=published"),
        (*head, "v0001", "alias", "alias=production", "previous="),
        (*head, "v0002", "published", "status=candidate"),
        (*head, "v0002", "alias", "alias=canary", "previous="),
        (*head, "v0002", "canary_weight", "previous=0.0", "weight=0.2"),
        (*head, "v0002", "canary_weight", "previous=0.2", "weight=0.5"),
        (*head, "v0002", "status", "previous=candidate", "status=published"),
        (*head, "v0002", "alias", "alias=production", "previous=v0001"),
        (*head, "", "alias", "alias=canary", "previous=v0002"),
        (*head, "", "canary_weight", "previous=0.5", "weight=0.0"),
        (*head, "v0001", "alias", "alias=production", "previous=v0002"),
        (*head, "v0002", "status", "previous=published", "status=retired"),
    ]
    raw = await redis.xrange(redis_keys.REGISTRY_EVENTS_STREAM)
    assert set(raw[0][1]) == {b"kind", b"name", b"version", b"what", b"status"}

    # a follower resumes after the last id it saw
    ids = [i for i, _ in await models.index.events()]
    assert [i for i, _ in await models.index.events(after=ids[-3])] == ids[-2:]

    index = models.index
    assert (await index.aliases("adapter", "poet")).production == "v0001"
    production = await index.manifest("adapter", "poet", "production")
    assert production is not None
    assert production.dataset_version == "d1"
    assert production.config == {"r": 8}
    assert await index.manifest("adapter", "poet", "canary") is None
    assert [m.status for m in await index.manifests("adapter", "poet")] == ["published", "retired"]
    assert await index.names() == [("adapter", "poet")]


async def test_rebuild_from_files_equals_incremental_updates(tmp_path: Path, redis: Redis) -> None:
    registry = Registry(tmp_path / "registry")
    models = ModelRegistry(registry, RegistryIndex(redis))
    for weights in ("a", "b", "c"):
        await models.publish("adapter", "poet", source(tmp_path, weights), metrics={"acc": len(weights)})
    await models.publish("export", "poet-merged", source(tmp_path, "m"))
    await models.set_alias("adapter", "poet", "production", "v0001")
    await models.set_canary("adapter", "poet", "v0002", 0.3)
    await models.promote("adapter", "poet")
    await models.set_status("adapter", "poet", "v0003", "rejected")
    incremental = await models.index.snapshot()
    events_before = await redis.xlen(redis_keys.REGISTRY_EVENTS_STREAM)

    # a stale entry that the files do not back disappears on rebuild
    await redis.hset(redis_keys.registry_versions_key("adapter", "ghost"), "v0001", "{}")
    await redis.sadd(redis_keys.REGISTRY_NAMES_SET, "adapter/ghost")
    assert await models.rebuild() == 4
    assert await models.index.snapshot() == incremental
    assert await redis.xlen(redis_keys.REGISTRY_EVENTS_STREAM) == events_before

    # an empty Redis (a new instance) is repopulated from the files alone
    await redis.flushdb()
    other = RegistryIndex(redis)
    assert await other.rebuild(Registry(registry.root)) == 4
    assert await other.snapshot() == incremental
    assert set(incremental) == {"adapter/poet", "export/poet-merged"}
    assert incremental["adapter/poet"]["aliases"]["production"] == "v0002"
    assert incremental["adapter/poet"]["aliases"]["history"] == ["v0001"]
