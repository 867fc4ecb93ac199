"""The engine pins (engines/server/versions.py) are the ones the Dockerfiles and docs/engines.md use."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bailu.worker.engines.server.dialects import DIALECTS
from bailu.worker.engines.server.versions import PINS

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("kind", sorted(PINS))
def test_dockerfile_builds_on_the_pinned_image(kind: str) -> None:
    dockerfile = (REPO / "docker" / f"worker-{kind}.Dockerfile").read_text()
    defaults = re.findall(r"^ARG (\w+_IMAGE)=(\S+)$", dockerfile, re.MULTILINE)
    assert defaults == [(f"{kind.upper()}_IMAGE", PINS[kind].image)]
    assert f"FROM ${{{kind.upper()}_IMAGE}}" in dockerfile
    assert f"BAILU_WORKER_ENGINE={kind}" in dockerfile
    assert PINS[kind].version in PINS[kind].image


@pytest.mark.parametrize("kind", sorted(PINS))
def test_docs_name_the_pinned_version(kind: str) -> None:
    docs = (REPO / "docs" / "engines.md").read_text()
    assert PINS[kind].image in docs


def test_every_gpu_engine_is_pinned() -> None:
    assert set(PINS) == set(DIALECTS) - {"swift"}  # ms-swift is pinned in pyproject.toml
