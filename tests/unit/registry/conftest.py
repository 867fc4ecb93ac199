from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bailu.registry import Registry

ArtifactFactory = Callable[..., Path]


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


@pytest.fixture
def artifact(tmp_path: Path) -> ArtifactFactory:
    """Make a source directory with an adapter-like artifact whose content depends on `weights`."""
    counter = iter(range(1_000_000))

    def make(weights: str = "w1") -> Path:
        folder = tmp_path / f"src-{next(counter)}"
        (folder / "sub").mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_text(weights)
        (folder / "sub" / "adapter_config.json").write_text('{"r": 8}')
        return folder

    return make
