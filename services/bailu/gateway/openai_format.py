"""Build OpenAI response objects and server-sent events from domain chunks."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from bailu.common.types import FinishReason, GenerateChunk, Usage


def new_id(kind: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


def usage_dict(usage: Usage | None) -> dict[str, int] | None:
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


SSE_DONE = sse("[DONE]")
_SPLICE = "\x00"
_SPLICE_JSON = json.dumps(_SPLICE).encode()


@dataclass
class Candidate:
    """One of the `n` completions of a request, as it accumulates."""

    index: int
    parts: list[str] = field(default_factory=list)
    finish: FinishReason | None = None
    usage: Usage | None = None
    tokens: int = 0
    served_model: str = ""

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def add(self, chunk: GenerateChunk) -> None:
        self.parts.append(chunk.text)
        self.tokens += chunk.token_count
        self.finish = chunk.finish_reason or self.finish
        self.usage = chunk.usage or self.usage
        self.served_model = chunk.served_model or self.served_model


def total_usage(candidates: list[Candidate]) -> Usage | None:
    """OpenAI's usage for `n` candidates: the prompt counted once, the completions summed."""
    usages = [c.usage for c in candidates if c.usage is not None]
    if not usages:
        return None
    return Usage(usages[0].prompt_tokens, sum(u.completion_tokens for u in usages))


class ResponseBuilder:
    """Formats one completion (chat or text, with one or more candidates) as OpenAI objects."""

    def __init__(self, kind: str, model: str, response_id: str) -> None:
        self.kind = kind
        self.model = model
        self.id = response_id
        self.created = int(time.time())
        self._templates: dict[int, tuple[bytes, bytes]] = {}

    def text_event(self, text: str, index: int = 0) -> bytes:
        """The SSE event of a chunk that carries only text (same bytes as `sse(chunk(text, None, index=i))`).

        The hot path of streaming: the event is this response's chunk JSON with the text spliced in,
        so that each token costs one string encoding rather than building and encoding a dict."""
        template = self._templates.get(index)
        if template is None:
            prefix, suffix = sse(self.chunk(_SPLICE, None, index=index)).split(_SPLICE_JSON)
            template = self._templates[index] = (prefix, suffix)
        return template[0] + json.dumps(text).encode() + template[1]

    def _envelope(self, chunk: bool) -> dict[str, Any]:
        obj = ("chat.completion.chunk" if chunk else "chat.completion") if self.kind == "chat" else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def chunk(
        self, text: str | None, finish: FinishReason | None, *, index: int = 0, first: bool = False
    ) -> dict[str, Any]:
        body = self._envelope(chunk=True)
        if self.kind == "chat":
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": None}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None}
        choice["finish_reason"] = finish.value if finish else None
        body["choices"] = [choice]
        return body

    def usage_chunk(self, usage: Usage | None) -> dict[str, Any]:
        body = self._envelope(chunk=True)
        body["choices"] = []
        body["usage"] = usage_dict(usage)
        return body

    def full(self, candidates: list[Candidate]) -> dict[str, Any]:
        body = self._envelope(chunk=False)
        choices = []
        for c in candidates:
            reason = (c.finish or FinishReason.STOP).value
            if self.kind == "chat":
                message = {"role": "assistant", "content": c.text}
                choices.append({"index": c.index, "message": message, "logprobs": None, "finish_reason": reason})
            else:
                choices.append({"index": c.index, "text": c.text, "logprobs": None, "finish_reason": reason})
        body["choices"] = choices
        body["usage"] = usage_dict(total_usage(candidates))
        return body
