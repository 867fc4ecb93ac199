"""Log probabilities of generated tokens for the `transformers` engine, computed from the logits it samples from.

A `LogprobRecorder` joins the logits processors of a batch that holds at least one request with `logprobs`
(batches without one get none, so they pay nothing). At every decoding step it takes the log-softmax of
those rows' scores and their top-k; the token each row then samples reaches it through `TeeStreamer`, which
sits between Hugging Face's `generate()` and ms-swift's own token streamer and hands every step's tokens to
the recorder before ms-swift sees them. So by the time ms-swift reports a token, its entry is in the
request's sink, one entry per generated token (the end-of-sequence token included, as usage counts it).

The scores are those the sampler sees after the repetition and presence penalties and any constraint on
the tokens, before temperature, top-k and top-p: greedy decoding emits the most likely token of the list.
(vLLM's default `raw_logprobs` is taken before the penalties.)

Token text and bytes follow OpenAI: `token` is the token decoded alone (a piece of a multi-byte character
decodes to U+FFFD), `bytes` the token's exact UTF-8 bytes, read from byte-level BPE vocabularies (GPT-2,
Llama 3, Qwen, SmolLM) and SentencePiece byte-fallback tokens (`<0xE4>`).
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor
from transformers.generation.streamers import BaseStreamer

from bailu.common.types import TokenLogprob, TopLogprob

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, character to byte: printable bytes stand for themselves, the others
    for code points from 256 up (the table every byte-level BPE tokenizer shares)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


_BYTE_LEVEL = _byte_level_alphabet()


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    try:
        decoder = json.loads(backend.to_str()).get("decoder")
    except (ValueError, AttributeError):
        return False
    return '"ByteLevel"' in json.dumps(decoder)


class TokenText:
    """A tokenizer's tokens as OpenAI reports them: `(text, utf-8 bytes)` per token id, cached."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.byte_level = _is_byte_level(tokenizer)
        self._cache: dict[int, tuple[str, bytes]] = {}

    def __call__(self, token_id: int) -> tuple[str, bytes]:
        cached = self._cache.get(token_id)
        if cached is not None:
            return cached
        text = self.tokenizer.decode([token_id])
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        raw = text.encode()
        if isinstance(piece, str) and token_id not in self.tokenizer.all_special_ids:
            if (byte := _BYTE_TOKEN.fullmatch(piece)) is not None:
                raw = bytes([int(byte.group(1), 16)])
            elif self.byte_level and piece and all(c in _BYTE_LEVEL for c in piece):
                raw = bytes(_BYTE_LEVEL[c] for c in piece)
        self._cache[token_id] = (text, raw)
        return text, raw


@dataclass(frozen=True)
class LogprobSink:
    """Where one request's entries go: written by the generate thread, read by the event loop."""

    top_logprobs: int
    entries: deque[TokenLogprob] = field(default_factory=deque)

    def take(self, count: int) -> tuple[TokenLogprob, ...]:
        """The next `count` entries (fewer if fewer are there)."""
        return tuple(self.entries.popleft() for _ in range(min(count, len(self.entries))))


class LogprobRecorder(LogitsProcessor):
    """For the rows of a batch that asked (`sinks`, by row), each step's log-softmax and top-k, resolved
    against the sampled tokens that `on_tokens` receives (see the module docstring). Leaves the scores alone."""

    def __init__(self, sinks: dict[int, LogprobSink], token_text: Callable[[int], tuple[str, bytes]]) -> None:
        self.sinks = sinks
        self.token_text = token_text
        self._rows = list(sinks)
        self._top = max(sink.top_logprobs for sink in sinks.values())
        # Steps whose tokens have not arrived yet: one, unless the streamer runs a step behind.
        self._steps: deque[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = deque()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = [r for r in self._rows if r < scores.shape[0]]
        logprobs = torch.log_softmax(scores[rows].float(), dim=-1)
        if self._top:
            values, ids = logprobs.topk(min(self._top, logprobs.shape[-1]), dim=-1)
        else:
            values = ids = torch.empty((len(rows), 0))
        self._steps.append((logprobs, values, ids))
        return scores

    def on_tokens(self, tokens: torch.Tensor) -> None:
        """The tokens sampled at the oldest unresolved step, one per row of the batch."""
        if not self._steps:
            return
        logprobs, values, ids = self._steps.popleft()
        for j, row in enumerate(self._rows[: logprobs.shape[0]]):
            sink = self.sinks[row]
            token_id = int(tokens[row])
            text, raw = self.token_text(token_id)
            k = sink.top_logprobs
            top = tuple(
                _top(self.token_text(i), v) for i, v in zip(ids[j, :k].tolist(), values[j, :k].tolist(), strict=True)
            )
            sink.entries.append(TokenLogprob(text, float(logprobs[j, token_id]), raw, top))


def _top(text_and_bytes: tuple[str, bytes], logprob: float) -> TopLogprob:
    text, raw = text_and_bytes
    return TopLogprob(text, logprob, raw)


class TeeStreamer(BaseStreamer):
    """A Hugging Face streamer that hands each step's tokens to a `LogprobRecorder`, then to `inner`."""

    def __init__(self, inner: Any, recorder: LogprobRecorder) -> None:
        self.inner = inner
        self.recorder = recorder
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen and value.ndim == 2:
            self._prompt_seen = True  # generate() streams the prompt first
        else:
            steps = value[:, None] if value.ndim == 1 else value
            for column in range(steps.shape[1]):
                self.recorder.on_tokens(steps[:, column])
        self.inner.put(value)

    def end(self) -> None:
        self.inner.end()
