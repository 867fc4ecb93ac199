"""`ModelRegistry` without an index (no Redis configured) changes the files alone, through the same calls."""

from __future__ import annotations

import pytest

from bailu.registry import InvalidRegistryOperation, ModelRegistry, Registry
from tests.unit.registry.conftest import ArtifactFactory


async def test_changes_reach_the_files_without_an_index(registry: Registry, artifact: ArtifactFactory) -> None:
    models = ModelRegistry(registry)
    assert not models.indexed
    v1 = await models.publish("adapter", "poet", artifact("a"), dataset_version="d1")
    v2 = await models.publish("adapter", "poet", artifact("b"), dataset_version="d2")
    await models.set_alias("adapter", "poet", "production", v1.version)
    await models.set_canary("adapter", "poet", v2.version, 0.25)
    aliases = registry.aliases("adapter", "poet")
    assert (aliases.production, aliases.canary, aliases.canary_weight) == ("v0001", "v0002", 0.25)
    await models.rollback("adapter", "poet")
    assert registry.aliases("adapter", "poet").canary is None
    with pytest.raises(InvalidRegistryOperation, match="needs Redis"):
        await models.rebuild()
