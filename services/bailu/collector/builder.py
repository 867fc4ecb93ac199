"""Turn feedback events, joined with the completions they refer to, into training examples.

- rating: a well-rated answer (thumbs up, or a score >= `sft_min_score`) is an SFT example; two
  ratings of different candidates for the same prompt make a preference pair (higher over lower);
- comparison: a preference pair (chosen over rejected);
- edit: the edited text is an SFT example (the gold answer) and a pair (edited over original).

Examples are in the dataset format of `bailu.datasets.format` (ms-swift's: `messages` for SFT, `messages`
ending with the chosen answer plus `rejected_response` for preference pairs). Each carries the `metadata` of
the completion whose prompt it answers (for a comparison, the chosen response's).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from bailu.common.records import CompletionRecord, FeedbackEvent, ResponseRef, normalise
from bailu.datasets import quality
from bailu.datasets.format import PREFERENCE, SFT, Example

THUMB_SCORES = {"up": 5, "down": 1}


@dataclass(frozen=True, slots=True)
class Rating:
    """A rating remembered per prompt, to pair it with later ratings of other candidates."""

    ref: str
    score: int
    text: str

    def to_json(self) -> str:
        return json.dumps({"score": self.score, "text": self.text}, ensure_ascii=False)


def prompt_of(record: CompletionRecord) -> list[dict[str, str]]:
    if record.messages is not None:
        return list(record.messages)
    # A raw prompt is trained on as one user turn, as the transformers engine serves it.
    return [{"role": "user", "content": record.prompt or ""}]


def ref_key(ref: ResponseRef) -> str:
    return f"{ref.response_id}#{ref.choice_index}"


def text_of(records: dict[str, CompletionRecord], ref: ResponseRef) -> str:
    choice = records[ref.response_id].choice(ref.choice_index)
    if choice is None:
        raise KeyError(f"{ref.response_id} has no candidate {ref.choice_index}")
    return choice.text


@dataclass
class Built:
    examples: list[Example]
    rejected: list[str]  # reasons, one per example that was dropped
    rating: Rating | None = None  # to remember for this prompt


def build(
    event: FeedbackEvent,
    records: dict[str, CompletionRecord],
    earlier_ratings: list[Rating],
    *,
    sft_min_score: int,
    check: quality.QualityFilter,
) -> Built:
    """The examples one event yields (before deduplication), and the quality rejections."""
    candidates: list[Example] = []
    rating = None

    def example(kind: str, source: str, record: CompletionRecord, answer: str, rejected: str | None = None) -> Example:
        """An example answering `record`'s prompt, tagged with its request's metadata."""
        return Example(
            kind, source, event.id, event.created, prompt_of(record), answer, rejected, metadata=dict(record.metadata)
        )

    if event.kind == "rating":
        assert event.target is not None
        record = records[event.target.response_id]
        text = text_of(records, event.target)
        score = event.score if event.score is not None else THUMB_SCORES[event.thumb or "down"]
        rating = Rating(ref_key(event.target), score, text)
        if score >= sft_min_score:
            candidates.append(example(SFT, "rating", record, text))
        others = [r for r in earlier_ratings if r.ref != rating.ref and r.score != score]
        if others:
            # Pair with the rating furthest from this one: the clearest preference.
            other = max(others, key=lambda r: abs(r.score - score))
            high, low = (rating, other) if score > other.score else (other, rating)
            candidates.append(example(PREFERENCE, "ratings", record, high.text, low.text))
    elif event.kind == "comparison":
        assert event.chosen is not None
        assert event.rejected is not None
        record = records[event.chosen.response_id]
        chosen, rejected = text_of(records, event.chosen), text_of(records, event.rejected)
        candidates.append(example(PREFERENCE, "comparison", record, chosen, rejected))
    elif event.kind == "edit":
        assert event.target is not None
        assert event.edited_text is not None
        record = records[event.target.response_id]
        original = text_of(records, event.target)
        candidates.append(example(SFT, "edit", record, event.edited_text))
        candidates.append(example(PREFERENCE, "edit", record, event.edited_text, original))
    else:
        raise ValueError(f"unknown feedback kind {event.kind!r}")

    verdicts: dict[str, str | None] = {}  # an edit's text is both an SFT answer and a chosen answer

    def verdict(text: str) -> str | None:
        if text not in verdicts:
            verdicts[text] = check.reject(text)
        return verdicts[text]

    kept, dropped = [], []
    for candidate in candidates:
        reason = verdict(candidate.answer)
        if reason is None and candidate.rejected is not None:
            reason = verdict(candidate.rejected)
            if reason is None and normalise(candidate.answer) == normalise(candidate.rejected):
                reason = quality.IDENTICAL_PAIR
        if reason is None:
            kept.append(candidate)
        else:
            dropped.append(reason)
    return Built(kept, dropped, rating)
