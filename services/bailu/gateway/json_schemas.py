"""The check of a `response_format` JSON Schema at the edge: a valid JSON Schema, within the wire's bounds.

A schema that passes is sent to the worker as compact JSON text (`SamplingParams.json_schema`), properties in
the order the client gave them (the order the constrained output follows). Whether an engine's grammar library
supports every keyword of it is the engine's check, when it compiles the schema (a 400 naming the same field).
"""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator, SchemaError
from jsonschema.validators import validator_for
from pydantic_core import PydanticCustomError

from bailu.common.types import MAX_JSON_SCHEMA_CHARS, MAX_JSON_SCHEMA_DEPTH, json_depth

# The pydantic error type of a schema that is not a valid JSON Schema, or too large.
INVALID_JSON_SCHEMA = "invalid_json_schema"


def schema_text(schema: dict[str, Any]) -> str:
    """`schema` as the compact JSON text the worker gets (key order kept)."""
    return json.dumps(schema, ensure_ascii=False, separators=(",", ":"))


def check_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema`, unless it is not a valid JSON Schema (by the metaschema its `$schema` names, Draft 2020-12 by
    default), holds text UTF-8 cannot encode, is longer than `MAX_JSON_SCHEMA_CHARS` as JSON text, or nests
    deeper than `MAX_JSON_SCHEMA_DEPTH`: then a validation error saying which."""
    depth = json_depth(schema)
    if depth > MAX_JSON_SCHEMA_DEPTH:
        raise PydanticCustomError(
            INVALID_JSON_SCHEMA, "the schema nests {depth} levels deep; at most {limit} are accepted",
            {"depth": depth, "limit": MAX_JSON_SCHEMA_DEPTH},
        )  # fmt: skip
    text = schema_text(schema)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PydanticCustomError(
            INVALID_JSON_SCHEMA, "the schema holds text that is not valid Unicode (a lone surrogate at position "
            "{position} of its JSON)", {"position": exc.start},
        ) from None  # fmt: skip
    if len(text) > MAX_JSON_SCHEMA_CHARS:
        raise PydanticCustomError(
            INVALID_JSON_SCHEMA, "the schema is {size} characters long as JSON; at most {limit} are accepted",
            {"size": len(text), "limit": MAX_JSON_SCHEMA_CHARS},
        )  # fmt: skip
    if not isinstance(schema.get("$schema", ""), str):
        raise PydanticCustomError(INVALID_JSON_SCHEMA, "not a valid JSON Schema: $schema must be a metaschema's URI")
    try:
        validator_for(schema, default=Draft202012Validator).check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(part) for part in exc.path) or "the top level"
        raise PydanticCustomError(
            INVALID_JSON_SCHEMA, "not a valid JSON Schema: {reason} (at {where})",
            {"reason": _short(exc.message), "where": where},
        ) from None  # fmt: skip
    return schema


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
