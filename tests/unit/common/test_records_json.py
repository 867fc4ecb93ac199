"""The JSON of the records carried on Redis (`bailu.common.records`): what the fast paths write and read is what
the standard library would."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from bailu.common import records
from bailu.common.records import FeedbackEvent, ResponseRef, loads, normalise

EVENTS = [
    FeedbackEvent("fb-1", 1764000000.123456, "k", "rating", target=ResponseRef("a", 2), score=4, tags=["x", "é"]),
    FeedbackEvent("fb-2", 1.5, "k", "comparison", chosen=ResponseRef("a", 1), rejected=ResponseRef("b")),
    FeedbackEvent("fb-3", 2.0, "k", "edit", target=ResponseRef("a"), edited_text="白露\n\x00\u2028", comment="c"),
]


@pytest.mark.parametrize("event", EVENTS, ids=[e.kind for e in EVENTS])
def test_an_event_is_written_as_its_fields_and_read_back(event: FeedbackEvent) -> None:
    assert json.loads(event.to_json()) == asdict(event)
    assert list(json.loads(event.to_json())) == list(asdict(event))  # the fields in their order
    assert FeedbackEvent.from_json(event.to_json()) == event
    assert FeedbackEvent.from_json(event.to_json().encode()) == event


def test_what_orjson_refuses_is_written_and_read_by_the_standard_library() -> None:
    odd = '{"id":"x","created":1,"key_id":"k","kind":"edit","edited_text":"a\\ud800","tags":[]}'
    event = FeedbackEvent.from_json(odd)
    assert event.edited_text == "a\ud800"
    assert json.loads(event.to_json()) == asdict(event)
    assert loads('{"n": 123456789012345678901234567890, "f": NaN}')["n"] == 123456789012345678901234567890


def test_remembered_and_fresh_normalisation_agree() -> None:
    short = "  Light, on the WALL!  "
    long = "\uff2c\uff49\uff47\uff48\uff54, on the wall. " * 100  # full-width "Light"; longer than remembered
    assert len(long) > records._MEMO_CHARS
    assert normalise(short) == normalise(short) == records._normalise(short) == "light on the wall"
    assert normalise(long) == records._normalise(long)
    assert normalise(long).startswith("light on the wall light")


def test_the_ascii_fast_path_normalises_as_the_general_rule() -> None:
    import random
    import re
    import unicodedata

    def by_the_rule(text: str) -> str:
        text = unicodedata.normalize("NFKC", text).casefold()
        return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text)).strip()

    rng = random.Random(20241111)
    ascii_chars = [chr(c) for c in range(128)]
    samples = [c * 3 for c in ascii_chars] + ["  A  moment's light,\tthe WALL\x1c!  ", ""]
    samples += ["".join(rng.choice(ascii_chars) for _ in range(rng.randint(1, 30))) for _ in range(5000)]
    for text in samples:
        assert records._normalise(text) == by_the_rule(text), repr(text)
