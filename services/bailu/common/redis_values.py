"""Values read back from Redis: this project's clients do not decode responses, so names, ids and fields
arrive as bytes."""

from __future__ import annotations


def as_text(value: object) -> str:
    """A Redis reply value (bytes, or already text, or a number) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def fields_text(fields: dict[bytes, bytes] | dict[str, str]) -> dict[str, str]:
    """A hash or stream entry's fields as text."""
    return {as_text(k): as_text(v) for k, v in fields.items()}
