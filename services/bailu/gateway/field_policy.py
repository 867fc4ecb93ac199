"""What the gateway does with each OpenAI request field it does not serve: one declarative table per route.

OpenAI refuses fields it does not know, not its own fields sent at their defaults, and many SDKs send every
optional field (`null`, `[]`, `"none"`, ...). So every field of OpenAI's request bodies is known here, as one
of:

- `Unserved`: a feature this deployment does not offer. The values that ask for nothing (`noop`: `null`, an
  empty list, the documented default) are accepted and change nothing; any other value is a 400 that says the
  feature is not supported (`code: unsupported_value`, `param` naming the field), never "unrecognized";
- `Ignored`: a hint that cannot change what is generated (a cache key, an abuse-tracking id): any value of its
  type is accepted and ignored.

Fields nobody defined stay 400 "unrecognized request argument". The request models (`bailu.gateway.schemas`)
get one field per table entry (`policy_model`), so `/openapi.json` documents each with exactly the values it
accepts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, Field, WithJsonSchema, create_model
from pydantic_core import PydanticCustomError

if TYPE_CHECKING:
    from pydantic import BaseModel

# The pydantic error type of a value that asks for a feature this deployment does not serve
# (`bailu.gateway.errors` turns it into an `UnsupportedValue` 400).
NOT_SUPPORTED = "not_supported"


def same_json(a: object, b: object) -> bool:
    """Whether two JSON values are equal as JSON compares them: `false` is not `0`, `1.0` is `1`."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def value_schema(value: object) -> dict[str, Any]:
    """The JSON Schema that takes exactly `value`."""
    if value is None:
        return {"type": "null"}
    if value == [] and isinstance(value, list):
        return {"type": "array", "maxItems": 0}
    if value == {} and isinstance(value, dict):
        return {"type": "object", "maxProperties": 0}
    return {"const": value}


def not_supported(feature: str, accepted: str) -> PydanticCustomError:
    """The validation error of a value that asks for `feature`; `accepted` says what would do instead."""
    return PydanticCustomError(
        NOT_SUPPORTED,
        "this deployment does not support {feature} (accepted: {accepted})",
        {"feature": feature, "accepted": accepted},
    )


@dataclass(frozen=True, slots=True)
class Unserved:
    """A field asking for `feature`, which this deployment does not serve: only its `noop` values pass."""

    feature: str
    noop: tuple[object, ...] = (None,)

    @property
    def accepted(self) -> str:
        return ", ".join(json.dumps(v) for v in self.noop)

    def check(self, value: object) -> object:
        if any(same_json(value, noop) for noop in self.noop):
            return value
        raise not_supported(self.feature, self.accepted)

    def field(self) -> tuple[Any, Any]:
        schema = value_schema(self.noop[0]) if len(self.noop) == 1 else {"anyOf": [value_schema(v) for v in self.noop]}
        annotation = Annotated[Any, AfterValidator(self.check), WithJsonSchema(schema)]
        description = f"Not served ({self.feature}): only values that ask for nothing are accepted: {self.accepted}."
        return annotation, Field(None, description=description)


@dataclass(frozen=True, slots=True)
class Ignored:
    """A field whose values cannot change what is generated (`why`): any value of `annotation` is accepted."""

    annotation: Any
    why: str

    def field(self) -> tuple[Any, Any]:
        return self.annotation | None, Field(None, description=f"Accepted and ignored: {self.why}.")


FieldPolicy = Unserved | Ignored


def policy_model(name: str, base: type[BaseModel], table: Mapping[str, FieldPolicy]) -> type[BaseModel]:
    """A model of `base` with one optional field per entry of `table` (a base class of a request model)."""
    fields: dict[str, Any] = {field: policy.field() for field, policy in table.items()}
    return create_model(name, __base__=base, **fields)
