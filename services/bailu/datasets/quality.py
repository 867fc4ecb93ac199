"""Filters that keep low-quality text out of the training data (the collector applies them to feedback,
the trainer's evaluation gate to generated samples)."""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from bailu.common.records import normalise

# Rejection reasons (also the label values of the collector's rejected-examples metric).
EMPTY = "empty"
TOO_SHORT = "too_short"
REPETITION = "repetition"
CHARSET = "charset"
BLOCKED = "blocked"
DUPLICATE = "duplicate"
IDENTICAL_PAIR = "identical_pair"


@dataclass(frozen=True)
class QualityFilter:
    """Decides whether an answer is good enough to train on; `reject()` names the first problem."""

    min_chars: int = 8
    max_repeats: int = 3
    min_letter_share: float = 0.6
    blocked: tuple[str, ...] = ()

    @classmethod
    def create(
        cls, *, min_chars: int, max_repeats: int, min_letter_share: float, blocked: Iterable[str]
    ) -> QualityFilter:
        phrases = tuple(sorted({normalise(b) for b in blocked if normalise(b)}))
        return cls(min_chars, max_repeats, min_letter_share, phrases)

    def reject(self, text: str) -> str | None:
        """The reason to reject `text`, or None if it may be used."""
        if not text.strip():
            return EMPTY
        norm = normalise(text)
        if len(norm) < self.min_chars:
            return TOO_SHORT
        if _bad_characters(text, self.min_letter_share):
            return CHARSET
        if self._degenerate(norm):
            return REPETITION
        padded = f" {norm} "
        if any(f" {phrase} " in padded for phrase in self.blocked):
            return BLOCKED
        return None

    def _degenerate(self, norm: str) -> bool:
        """One word 3-gram repeated `max_repeats` times ("a moment's light, a moment's light, ...")."""
        words = norm.split()
        if len(words) < 3:
            return False
        grams = list(zip(words, words[1:], words[2:], strict=False))
        if self.max_repeats >= 2 and len(set(grams)) == len(grams):
            return False  # no 3-gram occurs twice: the usual answer, decided without counting
        return max(Counter(grams).values()) >= self.max_repeats


_CONTROL_OK = frozenset("\n\t\r")
# Byte tables for ASCII text (`bytes.translate` deletes them in C): the control characters refused, the
# blanks (not visible), and everything but the letters A-Z and a-z.
_ASCII_CONTROL = bytes(c for c in range(128) if chr(c) not in _CONTROL_OK and (c < 0x20 or c == 0x7F))
_ASCII_BLANK = b" \n\t\r"
_ASCII_NON_LETTERS = bytes(c for c in range(256) if not chr(c).isascii() or not chr(c).isalpha())


def _bad_characters(text: str, min_letter_share: float) -> bool:
    """Control characters, unassigned or private-use code points, replacement characters, or too few
    letters among the visible characters (symbol or emoji spam, binary garbage)."""
    if text.isascii():
        # The same rules with C-speed byte operations: in ASCII the letters are A-Z and a-z, the only
        # separator is the space, and every other control character than \n, \t, \r is refused.
        raw = text.encode("ascii")
        if len(raw.translate(None, _ASCII_CONTROL)) != len(raw):
            return True
        visible = len(raw.translate(None, _ASCII_BLANK))
        letters = len(raw.translate(None, _ASCII_NON_LETTERS))
        return visible > 0 and letters / visible < min_letter_share
    letters = visible = 0
    # Each distinct character once (counted in C), weighted by how often it occurs: the same answer as a
    # loop over every character, at a fraction of its cost (the collector checks every answer).
    for char, count in Counter(text).items():
        category = unicodedata.category(char)
        if category in ("Cc", "Cf") and char not in _CONTROL_OK:
            return True
        if category in ("Co", "Cn", "Cs") or char == "\ufffd":
            return True
        if category.startswith("Z") or char in _CONTROL_OK:
            continue
        visible += count
        letters += count if category.startswith(("L", "M")) else 0
    return visible > 0 and letters / visible < min_letter_share
