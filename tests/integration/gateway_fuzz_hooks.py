"""Schemathesis hooks for the gateway fuzz run (loaded by `test_gateway_fuzz.py` through its config file).

Hypothesis draws only text that UTF-8 can encode, yet JSON can carry more: a lone UTF-16 surrogate
(`"\\ud800"`) is legal JSON and reaches the server as a Python string that protobuf, Redis and UTF-8 cannot
encode. This hook lets the fuzzer put one into any string of a body, value or key, so that the whole family
(every field that crosses the gRPC hop or goes to Redis) is searched rather than the fields someone
remembered.
"""

from __future__ import annotations

import copy
from typing import Any

import schemathesis
from hypothesis import strategies as st

LONE_SURROGATES = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"])

Path = tuple[Any, ...]


def string_slots(value: Any, path: Path = ()) -> list[tuple[Path, bool]]:
    """Where a body holds strings: (path, is_key) for every string value and every object key."""
    slots: list[tuple[Path, bool]] = []
    if isinstance(value, str):
        slots.append((path, False))
    elif isinstance(value, dict):
        for key, item in value.items():
            slots.append(((*path, key), True))
            slots.extend(string_slots(item, (*path, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            slots.extend(string_slots(item, (*path, index)))
    return slots


def inject(body: Any, slot: tuple[Path, bool], surrogate: str, at_start: bool) -> Any:
    """A copy of `body` whose string (or key) at `slot` carries `surrogate`."""
    path, is_key = slot
    body = copy.deepcopy(body)
    parent = body
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1] if path else None
    if not path:
        return surrogate + body if at_start else body + surrogate
    if is_key:
        new_key = surrogate + str(last) if at_start else str(last) + surrogate
        parent[new_key] = parent.pop(last)
    else:
        parent[last] = surrogate + parent[last] if at_start else parent[last] + surrogate
    return body


@schemathesis.hook
def flatmap_body(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    slots = string_slots(body) if isinstance(body, dict | list | str) else []
    if not slots:
        return st.just(body)
    mutated = st.builds(inject, st.just(body), st.sampled_from(slots), LONE_SURROGATES, st.booleans())
    return st.one_of(st.just(body), mutated)
