"""Build OpenAI response objects and server-sent events from domain chunks.

Tool calls arrive in pieces (`ToolCallDelta`: the first piece of call `index` carries its id and name, later
pieces more arguments text); a `Candidate` merges them, the full message lists the calls whole, and a stream
passes each piece on in OpenAI's chunk shape (id, type and name on a call's first piece only).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from bailu.common.types import FinishReason, GenerateChunk, TokenLogprob, ToolCall, ToolCallDelta, Usage

# The floor of a reported log probability, as vLLM reports it: JSON has no -Infinity.
LOGPROB_FLOOR = -9999.0
# A candidate's text pieces are joined into one string once there are this many: one `str` per token costs
# ~55 bytes of Python's small-object heap for a few characters, so that long n > 1 streams held megabytes of
# them, and pymalloc keeps the arenas such a peak filled (bench/memory_probe.py).
TEXT_JOIN_EVERY = 256


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
class CallSoFar:
    """A tool call as its pieces arrive: id and name from its first piece, its arguments text in pieces."""

    id: str
    name: str
    arguments: list[str] = field(default_factory=list)

    def call(self) -> ToolCall:
        return ToolCall(self.id, self.name, "".join(self.arguments))


@dataclass
class Candidate:
    """One of the `n` completions of a request, as it accumulates."""

    index: int
    parts: list[str] = field(default_factory=list)  # the text so far, in fewer than TEXT_JOIN_EVERY pieces
    finish: FinishReason | None = None
    usage: Usage | None = None
    tokens: int = 0
    served_model: str = ""
    # Log probabilities of the tokens so far (when asked for), and the characters of their tokens: the legacy
    # format's `text_offset` of the next one.
    logprobs: list[TokenLogprob] = field(default_factory=list)
    logprob_chars: int = 0
    # The tool calls so far, by their `index` (in the order they began).
    calls: dict[int, CallSoFar] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def tool_calls(self) -> list[ToolCall]:
        """The calls made, whole, by index."""
        return [self.calls[i].call() for i in sorted(self.calls)]

    def add(self, chunk: GenerateChunk) -> None:
        self.parts.append(chunk.text)
        if len(self.parts) >= TEXT_JOIN_EVERY:
            self.parts[:] = ["".join(self.parts)]
        self.tokens += chunk.token_count
        self.finish = chunk.finish_reason or self.finish
        self.usage = chunk.usage or self.usage
        self.served_model = chunk.served_model or self.served_model
        self.logprobs.extend(chunk.logprobs)
        self.logprob_chars += sum(len(entry.token) for entry in chunk.logprobs)
        for delta in chunk.tool_calls:
            so_far = self.calls.get(delta.index)
            if so_far is None:
                self.calls[delta.index] = CallSoFar(delta.id, delta.name, [delta.arguments])
            else:
                so_far.id, so_far.name = so_far.id or delta.id, so_far.name or delta.name
                so_far.arguments.append(delta.arguments)

    def delta_shapes(self, deltas: tuple[ToolCallDelta, ...]) -> list[dict[str, Any]]:
        """OpenAI's stream pieces (`delta.tool_calls`) of these deltas, before `add` merges them: a call's first
        piece with its id, type and name, later ones with more arguments only."""
        shapes: list[dict[str, Any]] = []
        begun = set(self.calls)
        for d in deltas:
            if d.index in begun:
                shapes.append({"index": d.index, "function": {"arguments": d.arguments}})
            else:
                begun.add(d.index)
                function = {"name": d.name, "arguments": d.arguments}
                shapes.append({"index": d.index, "id": d.id, "type": "function", "function": function})
        return shapes


def tool_call_dict(call: ToolCall) -> dict[str, Any]:
    """A call in OpenAI's `message.tool_calls[]` shape."""
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _logprob(value: float) -> float:
    return value if value >= LOGPROB_FLOOR else LOGPROB_FLOOR  # -inf and NaN alike


def chat_logprobs(entries: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> dict[str, Any]:
    """OpenAI's chat `choices[].logprobs`: `{"content": [{token, logprob, bytes, top_logprobs}], "refusal": null}`."""
    return {
        "content": [
            {
                "token": e.token,
                "logprob": _logprob(e.logprob),
                "bytes": list(e.token_bytes),
                "top_logprobs": [
                    {"token": t.token, "logprob": _logprob(t.logprob), "bytes": list(t.token_bytes)} for t in e.top
                ],
            }
            for e in entries
        ],
        "refusal": None,
    }


def completion_logprobs(entries: list[TokenLogprob] | tuple[TokenLogprob, ...], text_offset: int) -> dict[str, Any]:
    """OpenAI's legacy completions `choices[].logprobs`: `{"tokens", "token_logprobs", "top_logprobs",
    "text_offset"}`, offsets counted from `text_offset` by the tokens' lengths (as vLLM counts them)."""
    offsets = []
    for e in entries:
        offsets.append(text_offset)
        text_offset += len(e.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [_logprob(e.logprob) for e in entries],
        "top_logprobs": [{t.token: _logprob(t.logprob) for t in e.top} for e in entries],
        "text_offset": offsets,
    }


def total_usage(candidates: list[Candidate]) -> Usage | None:
    """OpenAI's usage for `n` candidates: the prompt counted once, the completions summed."""
    usages = [c.usage for c in candidates if c.usage is not None]
    if not usages:
        return None
    return Usage(usages[0].prompt_tokens, sum(u.completion_tokens for u in usages))


class ResponseBuilder:
    """Formats one completion (chat or text, with one or more candidates) as OpenAI objects."""

    def __init__(self, kind: str, model: str, response_id: str, *, logprobs: bool = False) -> None:
        """`logprobs`: the request asked for log probabilities (`SamplingParams.logprobs`)."""
        self.kind = kind
        self.model = model
        self.id = response_id
        self.logprobs = logprobs
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

    def event(self, candidate: Candidate, chunk: GenerateChunk) -> bytes:
        """Add `chunk` to `candidate` and return its SSE event (empty when there is nothing to send)."""
        offset = candidate.logprob_chars
        if chunk.tool_calls and self.kind == "chat":
            return self._tool_call_event(candidate, chunk, offset)
        candidate.add(chunk)
        if self.logprobs:
            if chunk.finish_reason is None and not chunk.text and not chunk.logprobs:
                return b""
            logprobs = self._choice_logprobs(chunk.logprobs, offset)
            return sse(self.chunk(chunk.text, chunk.finish_reason, index=candidate.index, logprobs=logprobs))
        if chunk.finish_reason is not None:
            return sse(self.chunk(chunk.text, chunk.finish_reason, index=candidate.index))
        if chunk.text:
            return self.text_event(chunk.text, candidate.index)
        return b""

    def _tool_call_event(self, candidate: Candidate, chunk: GenerateChunk, offset: int) -> bytes:
        shapes = candidate.delta_shapes(chunk.tool_calls)
        candidate.add(chunk)
        logprobs = self._choice_logprobs(chunk.logprobs, offset)
        body = self.chunk(chunk.text or None, chunk.finish_reason, index=candidate.index, logprobs=logprobs)
        body["choices"][0]["delta"]["tool_calls"] = shapes
        return sse(body)

    def _choice_logprobs(
        self, entries: list[TokenLogprob] | tuple[TokenLogprob, ...], text_offset: int
    ) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        return chat_logprobs(entries) if self.kind == "chat" else completion_logprobs(entries, text_offset)

    def _envelope(self, chunk: bool) -> dict[str, Any]:
        obj = ("chat.completion.chunk" if chunk else "chat.completion") if self.kind == "chat" else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def chunk(
        self,
        text: str | None,
        finish: FinishReason | None,
        *,
        index: int = 0,
        first: bool = False,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body = self._envelope(chunk=True)
        if self.kind == "chat":
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": logprobs}
        else:
            choice = {"index": index, "text": text or "", "logprobs": logprobs}
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
            logprobs = self._choice_logprobs(c.logprobs, 0)
            if self.kind == "chat":
                message: dict[str, Any] = {"role": "assistant", "content": c.text}
                if c.calls:
                    # As OpenAI: no content but the calls, unless the model wrote text too (`auto`).
                    message["content"] = c.text or None
                    message["tool_calls"] = [tool_call_dict(call) for call in c.tool_calls]
                choices.append({"index": c.index, "message": message, "logprobs": logprobs, "finish_reason": reason})
            else:
                choices.append({"index": c.index, "text": c.text, "logprobs": logprobs, "finish_reason": reason})
        body["choices"] = choices
        body["usage"] = usage_dict(total_usage(candidates))
        return body
