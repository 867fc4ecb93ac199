"""Recorded engine-server samples (tests/fixtures/engines; see its README for where each comes from)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "engines"


def sample(engine: str, name: str) -> str:
    return (FIXTURES / engine / name).read_text()


def sample_json(engine: str, name: str) -> Any:
    return json.loads(sample(engine, name))


def expected(engine: str) -> dict[str, Any]:
    result: dict[str, Any] = sample_json(engine, "expected.json")
    return result
