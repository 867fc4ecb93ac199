"""Build OpenAI response objects and server-sent events from domain chunks."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from bailu.common.types import FinishReason, Usage


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


class ResponseBuilder:
    """Formats one completion (chat or text) as OpenAI objects."""

    def __init__(self, kind: str, model: str, response_id: str) -> None:
        self.kind = kind
        self.model = model
        self.id = response_id
        self.created = int(time.time())
        # The hot path of streaming: a text-only event is this chunk's JSON with the text spliced in,
        # so that each token costs one string encoding rather than building and encoding a dict.
        rendered = sse(self.chunk(_SPLICE, None))
        self._text_prefix, self._text_suffix = rendered.split(_SPLICE_JSON)

    def text_event(self, text: str) -> bytes:
        """The SSE event of a chunk that carries only text (same bytes as `sse(chunk(text, None))`)."""
        return self._text_prefix + json.dumps(text).encode() + self._text_suffix

    def _envelope(self, chunk: bool) -> dict[str, Any]:
        obj = ("chat.completion.chunk" if chunk else "chat.completion") if self.kind == "chat" else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def chunk(self, text: str | None, finish: FinishReason | None, *, first: bool = False) -> dict[str, Any]:
        body = self._envelope(chunk=True)
        if self.kind == "chat":
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None}
        choice["finish_reason"] = finish.value if finish else None
        body["choices"] = [choice]
        return body

    def usage_chunk(self, usage: Usage | None) -> dict[str, Any]:
        body = self._envelope(chunk=True)
        body["choices"] = []
        body["usage"] = usage_dict(usage)
        return body

    def full(self, text: str, finish: FinishReason | None, usage: Usage | None) -> dict[str, Any]:
        body = self._envelope(chunk=False)
        reason = finish.value if finish else FinishReason.STOP.value
        if self.kind == "chat":
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": reason,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        body["choices"] = [choice]
        body["usage"] = usage_dict(usage)
        return body
