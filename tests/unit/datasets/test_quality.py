"""The quality rules (`bailu.datasets.quality`): each rejection reason, and text that passes."""

from __future__ import annotations

import pytest

from bailu.datasets import quality
from bailu.datasets.quality import QualityFilter


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("   \n", quality.EMPTY),
        ("Short.", quality.TOO_SHORT),
        ("Light \x00 on the wall, slowly.", quality.CHARSET),
        ("🍂🍂🍂🍂🍂🍂🍂🍂🍂🍂🍂🍂 autumn light", quality.CHARSET),
        ("a moment's light, a moment's light, a moment's light", quality.REPETITION),
        ("The gate is a forbidden phrase here.", quality.BLOCKED),
        ("Low sun on the wall; the maples hold it.", None),
    ],
)
def test_reject_names_the_first_problem(text: str, reason: str | None) -> None:
    check = QualityFilter.create(min_chars=8, max_repeats=3, min_letter_share=0.6, blocked=["Forbidden  PHRASE"])
    assert check.reject(text) == reason


def test_blocked_phrases_are_normalised_and_match_whole_words_only() -> None:
    check = QualityFilter.create(min_chars=1, max_repeats=3, min_letter_share=0.6, blocked=["Grey!", "  "])
    assert check.blocked == ("grey",)
    assert check.reject("A grey morning.") == quality.BLOCKED
    assert check.reject("A greyish morning.") is None


def bad_characters_by_the_rule(text: str, min_letter_share: float) -> bool:
    """The charset rule written out character by character (what `_bad_characters` computes faster)."""
    import unicodedata

    letters = visible = 0
    for char in text:
        category = unicodedata.category(char)
        if category in ("Cc", "Cf") and char not in "\n\t\r":
            return True
        if category in ("Co", "Cn", "Cs") or char == "\ufffd":
            return True
        if category.startswith("Z") or char in "\n\t\r":
            continue
        visible += 1
        letters += category[0] in "LM"
    return visible > 0 and letters / visible < min_letter_share


def test_the_charset_rule_is_the_same_on_every_path() -> None:
    import random

    rng = random.Random(20241111)
    ascii_chars = [chr(c) for c in range(128)]
    wide = [*ascii_chars, *(chr(c) for c in range(0x80, 0x3100)), "\ufffd", "\ue000", "\U0001f342", "\u0301", "\u3000"]
    samples = [*ascii_chars, "", "Low sun on the wall.", "白露为霜\uff0c所谓伊人\u3002", "e\u0301t\u00e9"]
    samples += ["".join(rng.choice(ascii_chars) for _ in range(rng.randint(1, 40))) for _ in range(3000)]
    samples += ["".join(rng.choice(wide) for _ in range(rng.randint(1, 40))) for _ in range(3000)]
    for text in samples:
        for share in (0.0, 0.6, 1.0):
            assert quality._bad_characters(text, share) == bad_characters_by_the_rule(text, share), (text, share)
