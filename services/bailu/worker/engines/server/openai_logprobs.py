"""Log probabilities in the engine servers' OpenAI-compatible API: what to ask for, and how to read the answer.

Formats, as the engines' sources define them (field names checked there; see the tests' fixtures):
- chat (`choices[].logprobs` of /v1/chat/completions, streamed or not): `{"content": [{"token", "logprob",
  "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}` — vLLM (`_create_chat_logprobs` in
  entrypoints/openai chat serving; a logprob it lacks is -9999.0, `bytes` is the token's text encoded with
  errors replaced), SGLang and LmDeploy (`ChoiceLogprobs` / `ChatCompletionTokenLogprob` / `TopLogprob` in their
  OpenAI protocol modules), ms-swift (`InferEngine._get_logprobs`, which `swift deploy` also returns from
  /v1/completions).
- legacy completions (`choices[].logprobs` of /v1/completions): `{"tokens", "token_logprobs", "top_logprobs":
  [{token: logprob}], "text_offset"}` — vLLM, SGLang and LmDeploy (`LogProbs` / `CompletionLogProbs`); no bytes,
  so a token's bytes are its text's.

Requests: chat takes `logprobs: true` and `top_logprobs: k`; legacy completions take `logprobs: k` (the number of
alternatives, 0 for the sampled token alone); ms-swift's /v1/completions takes the chat fields.
"""

from __future__ import annotations

import math
from typing import Any

from bailu.common.types import SamplingParams, TokenLogprob, TopLogprob


def request_fields(sampling: SamplingParams, *, chat: bool, legacy_completions: bool) -> dict[str, Any]:
    """The body fields that ask an engine server for `sampling`'s log probabilities (none if not asked)."""
    if not sampling.logprobs:
        return {}
    if chat or not legacy_completions:
        return {"logprobs": True, "top_logprobs": sampling.top_logprobs}
    return {"logprobs": sampling.top_logprobs}


def parse(logprobs: Any, top_logprobs: int) -> list[TokenLogprob]:
    """The entries of one choice's `logprobs` in either format (empty for null or an unknown shape), with at
    most `top_logprobs` alternatives each, most likely first."""
    if not isinstance(logprobs, dict):
        return []
    content = logprobs.get("content")
    if isinstance(content, list):
        return [entry for item in content if (entry := _chat_entry(item, top_logprobs)) is not None]
    tokens = logprobs.get("tokens")
    if isinstance(tokens, list):
        return _legacy_entries(logprobs, tokens, top_logprobs)
    return []


def _number(value: Any) -> float:
    """A log probability as a finite float at most 0 (missing or -inf: vLLM's floor, -9999)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return -9999.0
    return min(0.0, max(float(value), -9999.0))


def _bytes(item: dict[str, Any], token: str) -> bytes:
    raw = item.get("bytes")
    if isinstance(raw, list) and all(isinstance(b, int) and 0 <= b < 256 for b in raw):
        return bytes(raw)
    return token.encode()


def _chat_entry(item: Any, top_logprobs: int) -> TokenLogprob | None:
    if not isinstance(item, dict) or not isinstance(item.get("token"), str):
        return None
    token = item["token"]
    top = []
    for alt in item.get("top_logprobs") or ():
        if isinstance(alt, dict) and isinstance(alt.get("token"), str):
            top.append(TopLogprob(alt["token"], _number(alt.get("logprob")), _bytes(alt, alt["token"])))
    top.sort(key=lambda t: -t.logprob)
    return TokenLogprob(token, _number(item.get("logprob")), _bytes(item, token), tuple(top[:top_logprobs]))


def _legacy_entries(logprobs: dict[str, Any], tokens: list[Any], top_logprobs: int) -> list[TokenLogprob]:
    values = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or []
    entries = []
    for i, token in enumerate(tokens):
        if not isinstance(token, str):
            continue
        alternatives = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        top = sorted(
            (TopLogprob(t, _number(v), t.encode()) for t, v in alternatives.items() if isinstance(t, str)),
            key=lambda t: -t.logprob,
        )
        value = values[i] if i < len(values) else None
        entries.append(TokenLogprob(token, _number(value), token.encode(), tuple(top[:top_logprobs])))
    return entries
