"""The snapshot stage: pin a sealed dataset version, split its preference pairs into train and held-out
sets, and write the files ms-swift trains on.

The split is by a seeded hash of the prompt (normalised as the collector's duplicate check does), so
one prompt never lands on both sides, a prompt stays on its side as later dataset versions (which hold
every earlier batch) grow, and SFT examples for a held-out prompt are left out of training too: an edit
yields both an SFT example and a pair with the same chosen text, which would otherwise leak.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bailu.common.records import content_hash
from bailu.datasets.format import PREFERENCE_FILE, SFT_FILE
from bailu.datasets.store import DatasetStore
from bailu.trainer.errors import NotEnoughData

_VERSION = re.compile(r"^v\d+$")
_ROLES = frozenset({"system", "user", "assistant", "tool"})

Messages = list[dict[str, str]]


@dataclass(frozen=True, slots=True)
class Pair:
    """One preference pair: a prompt (every message before the answer), the chosen and the rejected answer."""

    prompt: tuple[tuple[str, str], ...]
    chosen: str
    rejected: str

    @property
    def messages(self) -> Messages:
        return [{"role": role, "content": content} for role, content in self.prompt]

    @property
    def prompt_key(self) -> str:
        return prompt_key(self.prompt)

    def to_swift(self) -> dict[str, Any]:
        """ms-swift's preference format (what DPO/ORPO/SimPO read)."""
        return {
            "messages": [*self.messages, {"role": "assistant", "content": self.chosen}],
            "rejected_response": self.rejected,
        }

    def chosen_example(self) -> dict[str, Any]:
        return {"messages": [*self.messages, {"role": "assistant", "content": self.chosen}]}

    def swapped(self) -> Pair:
        return Pair(self.prompt, self.rejected, self.chosen)


@dataclass(frozen=True, slots=True)
class SftExample:
    prompt: tuple[tuple[str, str], ...]
    answer: str

    def to_swift(self) -> dict[str, Any]:
        messages = [{"role": role, "content": content} for role, content in self.prompt]
        return {"messages": [*messages, {"role": "assistant", "content": self.answer}]}


@dataclass(frozen=True, slots=True)
class Split:
    train: list[Pair]
    held_out: list[Pair]


@dataclass(slots=True)
class Snapshot:
    """What one run trains and evaluates on."""

    version: str
    pairs: list[Pair]
    sft: list[SftExample]
    dropped_identical: int = 0
    split: Split = field(default_factory=lambda: Split([], []))

    def counts(self) -> dict[str, int]:
        return {
            "pairs": len(self.pairs),
            "train_pairs": len(self.split.train),
            "held_out_pairs": len(self.split.held_out),
            "sft_examples": len(self.sft),
            "dropped_identical_pairs": self.dropped_identical,
        }


def prompt_key(prompt: Iterable[tuple[str, str]]) -> str:
    """A prompt's identity up to case, punctuation and spacing (as the collector de-duplicates)."""
    return content_hash(*(f"{role}:{content}" for role, content in prompt))


def resolve_version(dataset_dir: Path, wanted: str) -> str:
    """The pinned version (`wanted`), or the newest sealed one; NotEnoughData names what is missing."""
    store = DatasetStore(dataset_dir)
    if wanted and not _VERSION.match(wanted):
        raise NotEnoughData(f"invalid dataset version {wanted!r}: expected a name like v000001")
    sealed = store.versions()
    if wanted:
        if wanted not in sealed:
            raise NotEnoughData(f"dataset version {wanted} is not sealed under {store.versions_dir}")
        return wanted
    if not sealed:
        raise NotEnoughData(f"no sealed dataset version under {store.versions_dir} (the collector seals them)")
    return sealed[-1]


def load(dataset_dir: Path, version: str) -> Snapshot:
    """Read a sealed version; a malformed record stops the run (NotEnoughData naming file and line), pairs
    whose two answers are equal carry no preference and are dropped (counted)."""
    folder = DatasetStore(dataset_dir).versions_dir / version
    pairs: list[Pair] = []
    dropped = 0
    for where, record in _records(folder / PREFERENCE_FILE):
        prompt, chosen = _conversation(record, where)
        rejected = record.get("rejected_response")
        if not isinstance(rejected, str) or not rejected.strip():
            raise NotEnoughData(f"{where}: rejected_response must be a non-empty string")
        if rejected == chosen:
            dropped += 1
            continue
        pairs.append(Pair(prompt, chosen, rejected))
    sft = [SftExample(*_conversation(record, where)) for where, record in _records(folder / SFT_FILE)]
    return Snapshot(version, pairs, sft, dropped)


def _records(path: Path) -> Iterable[tuple[str, dict[str, Any]]]:
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path.parent.name}/{path.name} line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise NotEnoughData(f"{where}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise NotEnoughData(f"{where}: expected a JSON object")
            yield where, record


def _conversation(record: dict[str, Any], where: str) -> tuple[tuple[tuple[str, str], ...], str]:
    messages = record.get("messages")
    if not isinstance(messages, list) or len(messages) < 2:
        raise NotEnoughData(f"{where}: messages must be a list of at least a prompt and an answer")
    turns: list[tuple[str, str]] = []
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in _ROLES or not isinstance(content, str):
            raise NotEnoughData(f"{where}: each message needs a role ({'/'.join(sorted(_ROLES))}) and text content")
        turns.append((role, content))
    if turns[-1][0] != "assistant" or not turns[-1][1].strip():
        raise NotEnoughData(f"{where}: the last message must be a non-empty assistant answer")
    return tuple(turns[:-1]), turns[-1][1]


def check_enough(snapshot: Snapshot, min_pairs: int) -> None:
    if len(snapshot.pairs) < min_pairs:
        dropped = f" ({snapshot.dropped_identical} more had identical answers)" if snapshot.dropped_identical else ""
        raise NotEnoughData(
            f"dataset {snapshot.version} has {len(snapshot.pairs)} usable preference pairs{dropped}; "
            f"at least {min_pairs} are needed (min_pairs)"
        )
    prompts = {p.prompt_key for p in snapshot.pairs}
    if len(prompts) < 2:
        raise NotEnoughData(
            f"dataset {snapshot.version} has pairs for {len(prompts)} distinct prompt(s); at least 2 are needed "
            "to hold one out for evaluation"
        )


def bucket(key: str, seed: int) -> float:
    """A prompt's place in [0, 1): uniform, stable for a seed."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_pairs(pairs: list[Pair], *, fraction: float, max_pairs: int, seed: int) -> Split:
    """Hold out the prompts whose bucket is below `fraction`, capped at `max_pairs` pairs (lowest buckets
    first; a prompt's pairs stay together). At least one prompt is held out and one trained on."""
    groups: dict[str, list[Pair]] = {}
    for pair in pairs:
        groups.setdefault(pair.prompt_key, []).append(pair)
    if len(groups) < 2:
        raise NotEnoughData(f"{len(groups)} distinct prompt(s): cannot hold one out and train on another")
    order = sorted(groups, key=lambda key: (bucket(key, seed), key))
    held: list[str] = []
    count = 0
    for key in order[:-1]:  # the highest bucket always trains
        if bucket(key, seed) >= fraction and held:
            break
        if held and count + len(groups[key]) > max_pairs:
            break
        held.append(key)
        count += len(groups[key])
    held_set = set(held)
    return Split(
        train=[p for p in pairs if p.prompt_key not in held_set],
        held_out=[p for p in pairs if p.prompt_key in held_set],
    )


def sft_training_set(snapshot: Snapshot) -> list[dict[str, Any]]:
    """SFT examples plus the chosen side of the training pairs, without held-out prompts and without
    duplicates (up to case and punctuation), in a stable order."""
    held = {p.prompt_key for p in snapshot.split.held_out}
    seen: set[str] = set()
    records: list[dict[str, Any]] = []
    candidates = [(e.prompt, e.answer) for e in snapshot.sft] + [(p.prompt, p.chosen) for p in snapshot.split.train]
    for prompt, answer in candidates:
        if prompt_key(prompt) in held:
            continue
        identity = content_hash(prompt_key(prompt), answer)
        if identity in seen:
            continue
        seen.add(identity)
        records.append(SftExample(prompt, answer).to_swift())
    return records


def kto_records(pairs: Iterable[Pair]) -> list[dict[str, Any]]:
    """KTO's unpaired format from pairs: the chosen answer labelled desirable, the rejected one not."""
    records: list[dict[str, Any]] = []
    for pair in pairs:
        records.append({"messages": [*pair.messages, {"role": "assistant", "content": pair.chosen}], "label": True})
        records.append({"messages": [*pair.messages, {"role": "assistant", "content": pair.rejected}], "label": False})
    return records


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> int:
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return len(lines)


def read_pairs(path: Path) -> list[Pair]:
    """Pairs from a preference JSONL file (ms-swift's format), e.g. a run's held-out set for a benchmark."""
    pairs: list[Pair] = []
    for where, record in _records(path):
        prompt, chosen = _conversation(record, where)
        rejected = record.get("rejected_response")
        if not isinstance(rejected, str):
            raise NotEnoughData(f"{where}: rejected_response must be a string")
        pairs.append(Pair(prompt, chosen, rejected))
    return pairs
