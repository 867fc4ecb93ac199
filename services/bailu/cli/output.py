"""Output for people (aligned plain-text tables) and for scripts (JSON with stable, sorted keys)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, separated by two spaces; the last column is not padded."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = []
    for row in (headers, *rows):
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def dump_json(data: Any, out: TextIO | None = None) -> None:
    (out or sys.stdout).write(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def warn(message: str) -> None:
    print(f"bailu: warning: {message}", file=sys.stderr)


def percent(weight: float) -> str:
    """A canary weight as people read it: 0.1 -> "10%", 0.125 -> "12.5%"."""
    return f"{weight * 100:.4g}%"


def short_value(value: Any) -> str:
    """A metric value in a table cell: floats to 4 significant digits, anything else as JSON-ish text."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int | str):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
