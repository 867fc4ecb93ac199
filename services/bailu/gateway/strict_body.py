"""The base of the request bodies: strict models, and text that can go everywhere the rest of the way goes.

`StrictBody` makes wrong types and unknown fields validation errors (400s naming the field); `WireText` is a
string that UTF-8, hence protobuf and Redis, can encode (no lone surrogate such as the legal JSON `"\\ud800"`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict
from pydantic_core import PydanticCustomError

# The pydantic error type of a string that is not valid Unicode (`bailu.gateway.errors` words its 400).
INVALID_UNICODE = "invalid_unicode"


def unicode_error(exc: UnicodeEncodeError, what: str = "") -> PydanticCustomError:
    """The validation error of text UTF-8 cannot encode (`what` says which part of a value it is)."""
    return PydanticCustomError(
        INVALID_UNICODE, "not valid Unicode text ({what}lone surrogate at position {position})",
        {"what": what, "position": exc.start},
    )  # fmt: skip


def encodable(value: object) -> object:
    """`value` unless it is a string UTF-8 cannot encode: then a validation error giving the position of its
    first lone surrogate. (Run before pydantic's own string checks, which reject such text without saying where.)"""
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise unicode_error(exc) from None
    return value


WireText = Annotated[str, BeforeValidator(encodable)]
"""A string that crosses the gRPC hop or goes to Redis: valid Unicode (a lone surrogate is a 400)."""


class StrictBody(BaseModel):
    """A request body: wrong types and unknown fields are validation errors (400s naming the field)."""

    model_config = ConfigDict(extra="forbid", strict=True)
