"""The OpenAI-compatible HTTP protocol the engine servers share: request bodies, SSE streams, errors.

Kept apart from the process and connection handling so that recorded samples of each engine's
responses can be replayed through it in unit tests.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from bailu.common.errors import (
    BailuError,
    InternalError,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    RequestTooLarge,
    Unavailable,
)
from bailu.common.types import (
    FinishReason,
    GenerateChunk,
    GenerateRequest,
    SamplingParams,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)
from bailu.worker.engines.server import openai_logprobs, openai_tools

DONE = "[DONE]"
_DONE_BYTES = DONE.encode()


def encode_body(body: Mapping[str, Any]) -> bytes:
    """A request body as JSON bytes (orjson: several times faster than `json.dumps` on these bodies)."""
    return orjson.dumps(body)


def decode_event(payload: str | bytes) -> Any:
    """An event's JSON. orjson, which refuses the non-standard NaN and Infinity that Python's `json` writes;
    an event with them is read by `json` instead, so that no engine's event is refused for that."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return json.loads(payload)


# Messages the engines use when a prompt (plus max_tokens) does not fit the context. vLLM: "This model's
# maximum context length is N tokens" / "... longer than the maximum model length"; SGLang: "... is longer
# than the model's context length"; LmDeploy: "... exceeds session_len"; ms-swift: "Current length of
# row(N) is larger than the max_length(M)".
_CONTEXT_PATTERNS = re.compile(
    r"maximum context length|maximum model length|context length|context window|max_length\(|session_len"
    r"|too long|exceeds? the (?:max|model)",
    re.IGNORECASE,
)
# Unknown model or adapter, as engines that answer 400 instead of 404 word it (ms-swift: "`x` is not in the
# model_list"; vLLM and LmDeploy: "The model `x` does not exist."; SGLang: "LoRA adapter 'x' is not loaded").
_MODEL_PATTERNS = re.compile(
    r"not in the model_list|model .* does not exist|(?:lora|adapter)\b.* not (?:loaded|found)|no such (?:model|lora)",
    re.IGNORECASE,
)


def request_body(
    request: GenerateRequest,
    model: str,
    default_max_tokens: int,
    stream_options: Mapping[str, bool],
    *,
    legacy_completion_logprobs: bool = True,
    null_call_content: bool = True,
) -> dict[str, Any]:
    """The JSON body of a streamed /v1/chat/completions (messages, tools) or /v1/completions (prompt) request;
    `legacy_completion_logprobs` is the dialect's way of asking /v1/completions for log probabilities,
    `null_call_content` how it takes an assistant turn with calls and no text (`openai_tools.message`)."""
    s = request.sampling
    body: dict[str, Any] = {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True, **stream_options},
        "max_tokens": s.max_tokens or default_max_tokens,
    }
    if request.is_chat:
        body["messages"] = [openai_tools.message(m, null_call_content=null_call_content) for m in request.as_messages()]
        body.update(openai_tools.request_fields(request.tools))
    else:
        body["prompt"] = request.prompt or ""
    optional = {
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k or None,  # 0 means off in Bailu's API; leave the engine's default
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "repetition_penalty": s.repetition_penalty,
        "seed": s.seed,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if s.stop:
        body["stop"] = list(s.stop)
    body.update(openai_logprobs.request_fields(s, chat=request.is_chat, legacy_completions=legacy_completion_logprobs))
    response_format = response_format_field(s)
    if response_format is not None:
        body["response_format"] = response_format
    return body


# The `json_schema.name` sent with a schema: SGLang and LmDeploy require one; no engine decodes by it.
RESPONSE_FORMAT_NAME = "response"


def response_format_field(sampling: SamplingParams) -> dict[str, Any] | None:
    """OpenAI's `response_format` for `sampling`'s constraint (None: free text), as vLLM, SGLang and LmDeploy
    take it (see `dialects.py`); the schema goes as an object, its keys in the client's order."""
    if sampling.json_schema:
        schema = json.loads(sampling.json_schema)
        return {"type": "json_schema", "json_schema": {"name": RESPONSE_FORMAT_NAME, "schema": schema, "strict": True}}
    if sampling.json_object:
        return {"type": "json_object"}
    return None


def endpoint(request: GenerateRequest) -> str:
    return "/v1/chat/completions" if request.is_chat else "/v1/completions"


class SseSplitter:
    """Splits a byte stream into server-sent events and returns each event's `data` (multi-line data joined by
    newlines; comments, other fields and events without data skipped). CRLF line ends are taken as LF."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer + data if self._buffer else data
        held = b""
        if b"\r" in buffer:
            if buffer.endswith(b"\r"):  # maybe the first half of a CRLF: decided by the next piece
                buffer, held = buffer[:-1], b"\r"
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if b"\n\n" not in buffer:
            self._buffer = buffer + held
            return []
        *events, rest = buffer.split(b"\n\n")
        self._buffer = rest + held
        payloads: list[bytes] = []
        for event in events:
            if event.startswith(b"data: ") and b"\n" not in event:
                payloads.append(event[6:])  # the engines' shape: one data line per event
            elif event:
                payload = self._data(event)
                if payload is not None:
                    payloads.append(payload)
        return payloads

    def close(self) -> list[bytes]:
        """The data of an event left unterminated at the end of the stream (kept, not dropped: an engine that
        closes the stream right after its last data line still said it)."""
        rest, self._buffer = self._buffer.replace(b"\r", b"\n"), b""
        payload = self._data(rest.rstrip(b"\n")) if rest.strip() else None
        return [payload] if payload is not None else []

    @staticmethod
    def _data(event: bytes) -> bytes | None:
        lines = []
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                value = line[5:]
                lines.append(value[1:] if value.startswith(b" ") else value)
        return b"\n".join(lines) if lines else None


def error_message(body: bytes | str) -> str:
    """The message of an engine's error body: OpenAI's {"error": {...}}, the flat {"message", "object":
    "error"} of vLLM's older releases, LmDeploy and ms-swift, FastAPI's {"detail"}, or the raw text."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:500] or "no message"
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if data.get("message"):
            return str(data["message"])
        if "detail" in data:
            return json.dumps(data["detail"]) if not isinstance(data["detail"], str) else data["detail"]
    return text.strip()[:500]


def map_error(status: int, message: str, *, param: str | None = None) -> BailuError:
    """The `BailuError` for an engine's HTTP error status and message."""
    text = f"the engine refused the request: {message}"
    if status == 404 or (status == 400 and _MODEL_PATTERNS.search(message)):
        return ModelNotFound(text, param="model")
    if status in (400, 413, 422) and _CONTEXT_PATTERNS.search(message):
        return RequestTooLarge(text, param=param)
    if status in (400, 422):
        return InvalidRequest(text, param=param)
    if status == 429:
        return Overloaded("the engine is overloaded: " + message)
    if status in (502, 503, 504):
        return Unavailable("the engine is unavailable: " + message)
    return InternalError(f"the engine failed with HTTP {status}: {message}")


@dataclass
class StreamAssembler:
    """Turns an engine's OpenAI stream events into `GenerateChunk`s that keep Bailu's streaming contract.

    Usage comes from the stream: engines report it on every chunk (continuous usage, ms-swift), in a last
    chunk with no choices (`stream_options.include_usage`), or both; token counts per chunk follow the
    reported completion tokens when present, else one token per text delta, and the last chunk carries what
    the two disagree by, so that the chunks' token counts always add up to the usage.

    Log probabilities (chat or legacy format, `openai_logprobs`) go with the text chunk of their event; those
    of an event without text (an end-of-sequence token, a piece of a character held back) wait for the next
    text chunk or the last one, so that none is lost.

    Tool calls (`openai_tools`) go with their event's chunk like text. A completion with calls finishes with
    `TOOL_CALLS` whether the engine said "tool_calls" or "stop" (vLLM's named calls, ms-swift), unless it ran
    out of tokens.
    """

    served_model: str
    top_logprobs: int = 0
    tools: openai_tools.ToolCallReader = field(default_factory=openai_tools.ToolCallReader)
    counted: int = 0
    reported: int | None = None
    prompt_tokens: int = 0
    finish: str | None = None
    pending: list[TokenLogprob] = field(default_factory=list)

    def feed_events(self, payloads: list[bytes]) -> tuple[list[GenerateChunk], bool]:
        """The events that arrived together (`[DONE]` ends them: True then): their chunks, with consecutive
        chunks of text merged into one, so that tokens that arrived while the worker was busy sending go on
        in one message. Chunks with tool-call pieces are kept apart (a call's pieces stay in order, each in
        the chunk of its event)."""
        chunks: list[GenerateChunk] = []
        for payload in payloads:
            if payload.strip() == _DONE_BYTES:
                return chunks, True
            chunk = self.feed(payload)
            if chunk is None:
                continue
            previous = chunks[-1] if chunks else None
            if previous is not None and not previous.tool_calls and not chunk.tool_calls:
                chunks[-1] = GenerateChunk(
                    previous.text + chunk.text,
                    previous.token_count + chunk.token_count,
                    served_model=self.served_model,
                    logprobs=previous.logprobs + chunk.logprobs,
                )
            else:
                chunks.append(chunk)
        return chunks, False

    def feed(self, payload: str | bytes) -> GenerateChunk | None:
        """One event's data; returns the text chunk to send now, if any. Raises on an error event."""
        try:
            event = decode_event(payload)
        except ValueError as exc:
            raise InternalError(f"the engine sent an event that is not JSON: {_preview(payload)!r}") from exc
        if not isinstance(event, dict):
            raise InternalError(f"the engine sent an unexpected event: {_preview(payload)!r}")
        if "error" in event:
            error = event["error"]
            status = error.get("code") if isinstance(error, dict) else None
            message = error_message(json.dumps(event))
            raise map_error(status if isinstance(status, int) else 500, message)
        usage = event.get("usage")
        has_usage = isinstance(usage, dict) and usage.get("completion_tokens") is not None
        if isinstance(usage, dict):
            self.prompt_tokens = int(usage.get("prompt_tokens") or self.prompt_tokens)
            if has_usage:
                self.reported = int(usage["completion_tokens"])
        text = ""
        calls: list[ToolCallDelta] = []
        for choice in event.get("choices") or ():
            delta = choice.get("delta")
            piece = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            text += piece or ""
            if isinstance(delta, dict):
                calls += self.tools.feed(delta.get("tool_calls"))
            self.pending.extend(openai_logprobs.parse(choice.get("logprobs"), self.top_logprobs))
            if choice.get("finish_reason"):
                self.finish = str(choice["finish_reason"])
        if not text and not calls:
            return None  # tokens without output (or a usage-only chunk) are settled by the last chunk
        # Continuous usage: this chunk covers what the count grew by; otherwise one token per output delta.
        tokens = max(0, (self.reported or 0) - self.counted) if has_usage else 1
        self.counted += tokens
        logprobs, self.pending = tuple(self.pending), []
        return GenerateChunk(text, tokens, served_model=self.served_model, logprobs=logprobs, tool_calls=tuple(calls))

    def last(self) -> GenerateChunk:
        """The final chunk, once the stream has ended; raises if it ended without a finish reason."""
        if self.finish is None:
            raise Unavailable("the engine ended the stream before the completion finished")
        if self.finish == "abort":
            raise Unavailable("the engine aborted the request")
        completion = self.reported if self.reported is not None else self.counted
        if self.finish == "length":
            finish = FinishReason.LENGTH
        elif self.tools.called:
            finish = FinishReason.TOOL_CALLS
        else:
            finish = FinishReason.STOP
        logprobs, self.pending = tuple(self.pending), []
        return GenerateChunk(
            "",
            max(0, completion - self.counted),
            finish,
            Usage(self.prompt_tokens, completion),
            self.served_model,
            logprobs,
        )


def _preview(payload: str | bytes) -> str:
    text = payload.decode(errors="replace") if isinstance(payload, bytes) else payload
    return text[:200]


def adapter_request(name: str, path: str | None = None) -> dict[str, str]:
    """The body of vLLM's and SGLang's load/unload adapter calls (they share the field names)."""
    body = {"lora_name": name}
    if path is not None:
        body["lora_path"] = path
    return body
