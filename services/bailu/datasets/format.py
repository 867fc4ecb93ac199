"""The records of a dataset, in ms-swift's dataset formats.

- SFT (`sft.jsonl`): `{"messages": [...prompt, {"role": "assistant", "content": answer}]}`;
- preference pairs (`preference.jsonl`): the same, ending with the chosen answer, plus
  `"rejected_response": rejected`.

Each record's provenance (kind, source, feedback event id, time, content hash, and the `metadata` its
completion request was tagged with) is kept beside it in the batch's `meta.json` (see
`bailu.datasets.store`), not in the ms-swift record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bailu.common.records import content_hash

SFT = "sft"
PREFERENCE = "preference"
KINDS = (SFT, PREFERENCE)


def file_name(kind: str) -> str:
    """The JSONL file a kind of record is stored in, in shards and versions alike (`sft.jsonl`)."""
    return f"{kind}.jsonl"


SFT_FILE = file_name(SFT)
PREFERENCE_FILE = file_name(PREFERENCE)


@dataclass(frozen=True, slots=True)
class Example:
    kind: str  # SFT or PREFERENCE
    source: str  # the feedback kind it came from ("rating", "ratings", "comparison", "edit")
    event_id: str
    created: float
    prompt: list[dict[str, str]]
    answer: str  # the (chosen) answer
    rejected: str | None = None
    # The OpenAI `metadata` of the completion the prompt came from: tags to filter a dataset by. Not part of
    # the identity: the same prompt and answer tagged differently is still a duplicate.
    metadata: dict[str, str] = field(default_factory=dict)
    # Identity for near-duplicate removal: the same prompt and answer(s), up to case and punctuation.
    # Computed once: it is read several times per example on the collector's hot path.
    hash: str = field(init=False)

    def __post_init__(self) -> None:
        parts = [f"{m['role']}:{m['content']}" for m in self.prompt] + [self.kind, self.answer, self.rejected or ""]
        object.__setattr__(self, "hash", content_hash(*parts))

    def to_swift(self) -> dict[str, Any]:
        record: dict[str, Any] = {"messages": [*self.prompt, {"role": "assistant", "content": self.answer}]}
        if self.rejected is not None:
            record["rejected_response"] = self.rejected
        return record
