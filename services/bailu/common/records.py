"""Records carried on Redis: the completion log and feedback events (JSON in a `data` field)."""

from __future__ import annotations

import functools
import hashlib
import json
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from bailu.common.types import ChatMessage, ToolCall

DATA_FIELD = "data"
_SPACE = re.compile(r"\s+")
_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)


# Texts up to this long are normalised once and remembered (at most _MEMO_ENTRIES of them, so at most a few
# MiB): the collector normalises each prompt and answer several times per event (quality checks, the
# identical-pair check, every example's hash), and the same prompts and answers recur across events.
_MEMO_CHARS = 1024
_MEMO_ENTRIES = 2048


def loads(data: str | bytes) -> Any:
    """Parsed JSON: orjson's parser (a few times faster), or the standard library's for what orjson refuses
    and `json` takes (integers beyond 64 bits, lone surrogates): both give the same values."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def normalise(text: str) -> str:
    """Case-, width-, punctuation- and whitespace-insensitive form of a text, for near-duplicate checks."""
    return _normalise_remembered(text) if len(text) <= _MEMO_CHARS else _normalise(text)


def _normalise(text: str) -> str:
    if text.isascii():
        # The same with C-speed string methods: NFKC leaves ASCII as it is, casefold is lower, the characters
        # `_PUNCT` matches are the table's, and `\s` is what str.split splits on.
        return " ".join(text.lower().translate(_ASCII_PUNCT).split())
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


_ASCII_PUNCT = {c: " " for c in range(128) if _PUNCT.match(chr(c))}


_normalise_remembered = functools.lru_cache(maxsize=_MEMO_ENTRIES)(_normalise)


def content_hash(*parts: str) -> str:
    """A hash of normalised texts: equal for texts that differ only in case, punctuation or spacing."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(normalise(part).encode())
        digest.update(b"\x1f")
    return digest.hexdigest()


def prompt_hash(messages: list[dict[str, Any]] | None, prompt: str | None) -> str:
    """Identity of a request's input, used to check that two responses answer the same prompt."""
    if messages is not None:
        return content_hash(*(f"{m['role']}:{m['content']}" for m in messages))
    return content_hash(f"prompt:{prompt or ''}")


@dataclass(frozen=True, slots=True)
class Choice:
    """One candidate of a response: its text, why it ended, and the tool calls it made (records written before
    tool calls existed read with none)."""

    index: int
    text: str
    finish_reason: str | None
    tool_calls: tuple[ToolCall, ...] = ()

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Choice:
        """A choice as `CompletionRecord.to_json` wrote it (fields of a newer writer ignored)."""
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        known["tool_calls"] = tuple(ToolCall(c["id"], c["name"], c["arguments"]) for c in known.get("tool_calls") or ())
        return cls(**known)


@dataclass(frozen=True, slots=True)
class CompletionRecord:
    """What was generated, by which model version, with which parameters: one per response.

    `model` is the name the client asked for (e.g. `bailu-poet`); `resolved_model` is the name it was served
    under (e.g. `bailu-poet@v0003`: the registry version that generated it, which feedback is attributed to);
    `served_model` is what the worker reported; `metadata` is the request's OpenAI `metadata` (string pairs
    the collector carries into the dataset). A response of the Responses API (`resp_...`) also keeps its
    `instructions` (the system message that leads `messages`, which a follow-up through
    `previous_response_id` does not carry over), the `previous_response_id` it continued, and its
    `tool_settings` (the request's `tools`, `tool_choice` and `parallel_tool_calls` as the response echoes
    them; None without tools). A turn of `messages` keeps its tool calls and `tool_call_id` (`messages_of`).
    Records written before a field existed read with it empty; fields this code does not know (written by a
    newer version) are ignored on reading."""

    id: str
    created: float
    key_id: str
    model: str
    served_model: str
    messages: list[dict[str, Any]] | None
    prompt: str | None
    choices: list[Choice]
    sampling: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float
    total_ms: float
    request_id: str
    prompt_hash: str = ""
    resolved_model: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    instructions: str | None = None
    previous_response_id: str | None = None
    tool_settings: dict[str, Any] | None = None

    @staticmethod
    def messages_of(messages: tuple[ChatMessage, ...] | None) -> list[dict[str, Any]] | None:
        """The turns as stored: `role` and `content`, and only where a turn has them, its `tool_calls` (each
        `{id, name, arguments}`) and `tool_call_id`."""
        if messages is None:
            return None
        stored: list[dict[str, Any]] = []
        for m in messages:
            turn: dict[str, Any] = {"role": m.role, "content": m.content}
            if m.tool_calls:
                turn["tool_calls"] = [asdict(call) for call in m.tool_calls]
            if m.tool_call_id:
                turn["tool_call_id"] = m.tool_call_id
            stored.append(turn)
        return stored

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, data: str | bytes) -> CompletionRecord:
        raw = loads(data)
        raw["choices"] = [Choice.from_dict(c) for c in raw["choices"]]
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})

    def choice(self, index: int) -> Choice | None:
        return next((c for c in self.choices if c.index == index), None)


@dataclass(frozen=True, slots=True)
class ResponseRef:
    """One candidate of a response: its id and choice index."""

    response_id: str
    choice_index: int = 0


@dataclass(frozen=True, slots=True)
class FeedbackEvent:
    """A user's signal about responses: a rating, a comparison of two, or an edit."""

    id: str
    created: float
    key_id: str
    kind: str  # "rating" | "comparison" | "edit"
    target: ResponseRef | None = None  # rating and edit
    thumb: str | None = None  # rating: "up" | "down"
    score: int | None = None  # rating: 1..5
    chosen: ResponseRef | None = None  # comparison
    rejected: ResponseRef | None = None  # comparison
    edited_text: str | None = None  # edit
    comment: str | None = None
    tags: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        # What `asdict` makes, built by hand: `asdict` was a third of the gateway's CPU per batched event.
        fields = {
            "id": self.id,
            "created": self.created,
            "key_id": self.key_id,
            "kind": self.kind,
            "target": _ref_dict(self.target),
            "thumb": self.thumb,
            "score": self.score,
            "chosen": _ref_dict(self.chosen),
            "rejected": _ref_dict(self.rejected),
            "edited_text": self.edited_text,
            "comment": self.comment,
            "tags": list(self.tags),
        }
        try:
            return orjson.dumps(fields).decode()
        except TypeError:  # what orjson refuses and `json` writes (a lone surrogate read from a stream entry)
            return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, data: str | bytes) -> FeedbackEvent:
        raw = loads(data)
        for name in ("target", "chosen", "rejected"):
            if raw.get(name) is not None:
                raw[name] = ResponseRef(**raw[name])
        return cls(**raw)

    def refs(self) -> list[ResponseRef]:
        return [r for r in (self.target, self.chosen, self.rejected) if r is not None]


def _ref_dict(ref: ResponseRef | None) -> dict[str, Any] | None:
    return None if ref is None else {"response_id": ref.response_id, "choice_index": ref.choice_index}
