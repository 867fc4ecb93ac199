"""Publishing: atomic, idempotent, monotonic versions, manifests, status changes, scan."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bailu.registry import InvalidRegistryOperation, Registry, VersionNotFound, hash_dir
from tests.unit.registry.conftest import ArtifactFactory


def test_publish_writes_files_and_manifest(registry: Registry, artifact: ArtifactFactory, tmp_path: Path) -> None:
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    (base_dir / "model.safetensors").write_text("base weights")
    base = registry.publish("base", "smollm2", base_dir)
    assert base.manifest.base_model == "smollm2"
    assert base.manifest.base_model_sha256 == base.manifest.content_sha256 == hash_dir(base_dir)

    source = artifact()
    version = registry.publish(
        "adapter",
        "bailu-poet",
        source,
        base_model="smollm2",
        base_model_sha256=base.manifest.content_sha256,
        dataset_version="v000003",
        config={"rank": 8},
        metrics={"pref_acc": 0.7},
        parent=None,
    )
    assert version.version == "v0001"
    assert version.path == registry.root / "adapter" / "bailu-poet" / "v0001"
    assert (version.path / "sub" / "adapter_config.json").read_text() == '{"r": 8}'
    on_disk = json.loads((version.path / "manifest.json").read_text())
    assert on_disk["name"] == "bailu-poet"
    assert on_disk["kind"] == "adapter"
    assert on_disk["version"] == "v0001"
    assert on_disk["status"] == "candidate"
    assert on_disk["created"].endswith("+00:00")
    assert on_disk["content_sha256"] == hash_dir(source) == hash_dir(version.path, exclude=("manifest.json",))
    assert on_disk["base_model_sha256"] == base.manifest.content_sha256
    assert on_disk["dataset_version"] == "v000003"
    assert on_disk["config"] == {"rank": 8}
    assert on_disk["metrics"] == {"pref_acc": 0.7}
    assert registry.manifest("adapter", "bailu-poet", "v0001") == version.manifest


def test_versions_are_monotonic_per_name(registry: Registry, artifact: ArtifactFactory) -> None:
    numbers = [registry.publish("adapter", "a", artifact(f"w{i}")).version for i in range(3)]
    assert numbers == ["v0001", "v0002", "v0003"]
    assert registry.publish("adapter", "b", artifact("w0")).version == "v0001"
    shutil.rmtree(registry.root / "adapter" / "a" / "v0002")
    assert registry.publish("adapter", "a", artifact("w9")).version == "v0004"
    assert registry.versions("adapter", "a") == ["v0001", "v0003", "v0004"]


def test_publish_is_idempotent(registry: Registry, artifact: ArtifactFactory) -> None:
    first = registry.publish("adapter", "a", artifact("w"), dataset_version="d1", config={"r": 8, "a": 16})
    again = registry.publish("adapter", "a", artifact("w"), dataset_version="d1", config={"a": 16, "r": 8})
    assert again.existed
    assert not first.existed
    assert again.manifest == first.manifest
    assert registry.versions("adapter", "a") == ["v0001"]
    other_data = registry.publish("adapter", "a", artifact("w"), dataset_version="d2", config={"r": 8, "a": 16})
    other_config = registry.publish("adapter", "a", artifact("w"), dataset_version="d1", config={"r": 4})
    other_content = registry.publish("adapter", "a", artifact("w2"), dataset_version="d1", config={"r": 8, "a": 16})
    assert [v.version for v in (other_data, other_config, other_content)] == ["v0002", "v0003", "v0004"]
    assert list((registry.root / "adapter" / "a").glob(".tmp-*")) == []


def test_a_crashed_publish_is_invisible_and_cleaned(
    registry: Registry, artifact: ArtifactFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.publish("adapter", "a", artifact("w1"))

    def crash(*_: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr("bailu.registry.store.os.rename", crash)
    with pytest.raises(OSError, match="power cut"):
        registry.publish("adapter", "a", artifact("w2"))
    monkeypatch.undo()
    # a process killed mid-copy leaves its temporary directory behind
    leftover = registry.root / "adapter" / "a" / ".tmp-deadbeef"
    shutil.copytree(artifact("w3"), leftover)
    (registry.root / "adapter" / "a" / ".tmp-aliases.json-123").write_text("{")

    assert registry.versions("adapter", "a") == ["v0001"]
    assert [s.name for s in registry.scan()] == ["a"]
    assert [m.version for m in registry.scan()[0].manifests] == ["v0001"]
    assert registry.remove_stale_tmp(older_than_s=3600) == 0
    assert registry.remove_stale_tmp() == 2
    assert not leftover.exists()
    assert registry.publish("adapter", "a", artifact("w2")).version == "v0002"


def test_a_version_directory_without_manifest_is_not_listed(registry: Registry, artifact: ArtifactFactory) -> None:
    registry.publish("adapter", "a", artifact())
    (registry.root / "adapter" / "a" / "v0002").mkdir()
    assert registry.versions("adapter", "a") == ["v0001"]


def test_status_changes_rewrite_the_manifest(registry: Registry, artifact: ArtifactFactory) -> None:
    v = registry.publish("adapter", "a", artifact(), metrics={"x": 1})
    updated = registry.set_status("adapter", "a", "v0001", "rejected")
    assert updated.status == "rejected"
    assert updated.metrics == {"x": 1}
    assert registry.manifest("adapter", "a", "v0001") == v.manifest.with_status("rejected")
    assert list(v.path.glob(".tmp-*")) == []
    with pytest.raises(InvalidRegistryOperation):
        registry.set_status("adapter", "a", "v0001", "bogus")  # type: ignore[arg-type]
    with pytest.raises(VersionNotFound):
        registry.set_status("adapter", "a", "v0009", "retired")


def test_invalid_inputs(registry: Registry, artifact: ArtifactFactory, tmp_path: Path) -> None:
    with pytest.raises(InvalidRegistryOperation):
        registry.publish("lora", "a", artifact())
    with pytest.raises(InvalidRegistryOperation):
        registry.publish("adapter", "../escape", artifact())
    with pytest.raises(InvalidRegistryOperation):
        registry.publish("adapter", "a", tmp_path / "missing")
    with pytest.raises(VersionNotFound):
        registry.manifest("adapter", "a", "v0001")


def test_scan_reads_the_whole_tree_from_files(registry: Registry, artifact: ArtifactFactory) -> None:
    registry.publish("adapter", "a", artifact("1"))
    registry.publish("adapter", "a", artifact("2"))
    registry.publish("export", "a-merged", artifact("3"))
    registry.set_canary("adapter", "a", "v0002", 0.25)
    fresh = Registry(registry.root)  # another process: nothing but the files
    states = {(s.kind, s.name): s for s in fresh.scan()}
    assert set(states) == {("adapter", "a"), ("export", "a-merged")}
    assert [m.version for m in states["adapter", "a"].manifests] == ["v0001", "v0002"]
    assert states["adapter", "a"].aliases.canary == "v0002"
    assert states["adapter", "a"].aliases.canary_weight == 0.25
    assert states["export", "a-merged"].manifests[0].kind == "export"
