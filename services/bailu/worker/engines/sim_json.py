"""The sim engine's structured outputs: a deterministic JSON instance of a schema, and its tokens.

The sim does not decode under a grammar; it builds one instance of the schema directly, the same for the
same schema and words: every declared property (required or not, in the schema's order), `const` and the first
`enum` value, the first branch of `anyOf`/`oneOf`, the subschemas of `allOf` merged, local `$ref`s (a JSON
pointer into the document: `#/$defs/...`, `#/items/anyOf/0/...`), the first non-null type of a list, arrays of
`minItems` items (at least one, at most `maxItems`; up to 64), strings of words within `minLength`/`maxLength`
(up to 4096 characters) and in the common `format`s (date, date-time, time, email, uuid, uri), numbers within
`minimum`/`maximum` (exclusive too) and on `multipleOf`. Keywords it does not honour (`pattern`, `not`,
`if`/`then`/`else`, `uniqueItems` beyond distinct words, ...) may yield an instance that does not validate, and
any JSON object is taken without an error (the worker does not check a schema against its metaschema; the
gateway does). The sim is a tool for
the platform around the model; the `transformers` engine is the one that guarantees validity. `json_object`
gets `{"answer": "<words>"}`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

# Tokens of a JSON text: runs of letters and digits, runs of spaces, single other characters.
_TOKEN = re.compile(r"[A-Za-z0-9]+|\s+|[^A-Za-z0-9\s]")
# Deeper than this, a schema's recursion ($ref to itself) ends at the shortest value its type allows.
_MAX_DEPTH = 8
# The most nested steps (properties, items, branches) one instance takes, and the largest counts it honours.
_MAX_STEPS = 64
_MAX_ITEMS = 64
_MAX_CHARS = 4096
_FORMATS = {
    "date": "2026-01-01",
    "date-time": "2026-01-01T06:00:00Z",
    "time": "06:00:00Z",
    "email": "dew@example.com",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "uri": "https://example.com/dew",
}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _number(value: object) -> float | int | None:
    """A finite JSON number, else None (`true` is not one)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def _count(value: object, default: int, limit: int) -> int:
    """A count keyword (`minItems`, `maxLength`, ...): a non-negative integer up to `limit`, else `default`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return default
    return min(value, limit)


def json_object_instance(words: Sequence[str]) -> dict[str, Any]:
    """The sim's reply to `response_format: json_object`."""
    return {"answer": " ".join(words[:3])}


def json_instance(schema: dict[str, Any], words: Sequence[str]) -> Any:
    """One instance of `schema` (see the module docstring), its strings made of `words`."""
    return _Builder(schema, words).build(schema, 0)


def json_tokens(value: Any) -> list[str]:
    """`value` as JSON text (OpenAI's spacing: `, ` and `: `), cut into the pieces the sim streams as tokens."""
    return _TOKEN.findall(json.dumps(value, ensure_ascii=False, separators=(", ", ": ")))


class _Builder:
    def __init__(self, root: dict[str, Any], words: Sequence[str]) -> None:
        self.root = root
        self.words = list(words) or ["dew"]
        self.used = 0

    def _resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        seen = 0
        while isinstance(schema.get("$ref"), str) and schema["$ref"].startswith("#") and seen < _MAX_DEPTH:
            target: Any = self.root
            for part in schema["$ref"][1:].split("/")[1:]:
                target = _step(target, part.replace("~1", "/").replace("~0", "~"))
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **rest} if isinstance(target, dict) else rest
            seen += 1
        return schema

    def build(self, schema: Any, depth: int) -> Any:
        if depth > _MAX_STEPS:  # a schema that only refers to itself (anyOf/allOf through $ref) has no instance
            return None
        if not isinstance(schema, dict):
            return None if schema is False else "dew"
        schema = self._resolve(schema)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return schema["enum"][0]
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list) and schema[key]:
                branches = [self._resolve(b) for b in schema[key] if isinstance(b, dict)]
                # The first branch that is not `null`, unless all are.
                branch = next((b for b in branches if b.get("type") != "null"), branches[0] if branches else {})
                rest = {k: v for k, v in schema.items() if k != key}
                return self.build({**rest, **branch}, depth + 1)
        if isinstance(schema.get("allOf"), list):
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                part = self._resolve(part) if isinstance(part, dict) else {}
                properties = {**_mapping(merged.get("properties")), **_mapping(part.get("properties"))}
                required = [*_sequence(merged.get("required")), *_sequence(part.get("required"))]
                merged = {**merged, **part, "properties": properties, "required": required}
            return self.build(merged, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
        if not isinstance(kind, str) or kind not in self._BY_TYPE:
            kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
        return self._BY_TYPE[kind](self, schema, depth)

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties", {}) if isinstance(schema.get("properties"), dict) else {}
        required = [r for r in _list(schema.get("required")) if isinstance(r, str)]
        names = list(properties) if depth < _MAX_DEPTH else []
        names += [r for r in required if r not in names]
        return {name: self.build(properties.get(name, {}), depth + 1) for name in names}

    def _array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        prefix = _list(schema.get("prefixItems"))
        low = _count(schema.get("minItems"), 0, _MAX_ITEMS)
        high = _count(schema.get("maxItems"), max(low, 1), _MAX_ITEMS)
        count = max(low, len(prefix), 0 if depth >= _MAX_DEPTH else 1)
        count = min(count, high)
        items = schema.get("items", {})
        return [self.build(prefix[i] if i < len(prefix) else items, depth + 1) for i in range(count)]

    def _string(self, schema: dict[str, Any], depth: int) -> str:
        fmt = schema.get("format")
        if isinstance(fmt, str) and fmt in _FORMATS:
            return _FORMATS[fmt]
        low, high = _count(schema.get("minLength"), 0, _MAX_CHARS), _count(schema.get("maxLength"), 40, _MAX_CHARS)
        text = ""
        while len(text) < max(low, 1):
            word = self.words[self.used % len(self.words)]
            self.used += 1
            text = f"{text} {word}" if text else word
        text = text[: max(high, 0)]
        return text + "x" * (low - len(text)) if len(text) < low else text

    def _integer(self, schema: dict[str, Any], depth: int) -> int:
        return int(self._number_in(schema, integer=True))

    def _number(self, schema: dict[str, Any], depth: int) -> float | int:
        return self._number_in(schema, integer=False)

    @staticmethod
    def _number_in(schema: dict[str, Any], *, integer: bool) -> float | int:
        step = _number(schema.get("multipleOf")) or 1
        step = step if step > 0 else 1
        low, high = _number(schema.get("minimum")), _number(schema.get("maximum"))
        above, below = _number(schema.get("exclusiveMinimum")), _number(schema.get("exclusiveMaximum"))
        try:
            start = low if low is not None else above if above is not None else 0
            value = math.ceil(start / step) * step
            if above is not None and value <= above:
                value += step
            top = high if high is not None else below
            if top is not None and (value > top or (below is not None and value >= below)):
                value = math.floor(top / step) * step
                if below is not None and value >= below:
                    value -= step
        except (OverflowError, ValueError):
            return 0
        if integer or (isinstance(value, float) and value.is_integer() and isinstance(step, int)):
            return int(value)
        return value

    def _boolean(self, schema: dict[str, Any], depth: int) -> bool:
        return True

    def _null(self, schema: dict[str, Any], depth: int) -> None:
        return None

    _BY_TYPE: ClassVar[dict[str, Callable[[_Builder, dict[str, Any], int], Any]]] = {
        "object": _object,
        "array": _array,
        "string": _string,
        "integer": _integer,
        "number": _number,
        "boolean": _boolean,
        "null": _null,
    }


def _step(target: Any, part: str) -> Any:
    """One step of a JSON pointer: a member of an object, an item of an array (by index), else nothing."""
    if isinstance(target, dict):
        return target.get(part, {})
    if isinstance(target, list) and part.isdigit() and int(part) < len(target):
        return target[int(part)]
    return {}


def _mapping(value: object) -> dict[str, Any]:
    """`value` if it is a JSON object, else empty (a schema need not be valid to reach the simulator)."""
    return value if isinstance(value, dict) else {}


def _sequence(value: object) -> list[Any]:
    """`value` if it is a JSON array, else empty."""
    return value if isinstance(value, list) else []
