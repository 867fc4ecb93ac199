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
