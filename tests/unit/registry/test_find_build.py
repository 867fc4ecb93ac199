"""find_build: a job sees, before working, whether the registry already holds its build."""

from __future__ import annotations

from bailu.registry import Registry
from tests.unit.registry.conftest import ArtifactFactory


def test_finds_the_newest_version_with_the_same_dataset_and_config(
    registry: Registry, artifact: ArtifactFactory
) -> None:
    config = {"lora_rank": 8, "rlhf_type": "orpo", "extra": ["--a", "1"]}
    registry.publish("adapter", "poet", artifact("w1"), dataset_version="v000001", config=config)
    registry.publish("adapter", "poet", artifact("w2"), dataset_version="v000002", config=config)
    registry.publish("adapter", "poet", artifact("w3"), dataset_version="v000002", config=config, status="rejected")

    found = registry.find_build(
        "adapter", "poet", "v000002", {"extra": ["--a", "1"], "rlhf_type": "orpo", "lora_rank": 8}
    )

    assert found is not None
    assert (found.version, found.status) == ("v0003", "rejected")  # key order does not matter; newest wins


def test_another_dataset_or_config_or_name_is_not_the_same_build(registry: Registry, artifact: ArtifactFactory) -> None:
    registry.publish("adapter", "poet", artifact(), dataset_version="v000001", config={"lora_rank": 8})

    assert registry.find_build("adapter", "poet", "v000002", {"lora_rank": 8}) is None
    assert registry.find_build("adapter", "poet", "v000001", {"lora_rank": 16}) is None
    assert registry.find_build("adapter", "poet", "v000001", {"lora_rank": 8, "seed": 1}) is None
    assert registry.find_build("adapter", "other", "v000001", {"lora_rank": 8}) is None
    assert registry.find_build("export", "poet", "v000001", {"lora_rank": 8}) is None


def test_reading_leaves_no_trace(registry: Registry) -> None:
    assert registry.find_build("adapter", "poet", "v000001", {}) is None
    assert not registry.root.exists()
