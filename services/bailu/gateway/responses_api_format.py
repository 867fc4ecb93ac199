"""The Responses API's objects, built from a completion: the `Response` (also rebuilt from a stored completion
record, for `GET /v1/responses/{id}`) and the server-sent events of a streamed one.

A response has one output item, the assistant's message, whose id derives from the response's (`msg_` and the
same suffix), so that a stored response is retrieved with the ids it was created with. A response cut short by
`max_output_tokens` is `incomplete` (`incomplete_details.reason: max_output_tokens`), as OpenAI reports it.

A stream is OpenAI's sequence of events, each `event: <type>` and `data: <json>` with a `sequence_number` that
counts from 0: `response.created`, `response.in_progress`, `response.output_item.added`,
`response.content_part.added`, one `response.output_text.delta` per chunk of text, `response.output_text.done`,
`response.content_part.done`, `response.output_item.done`, and `response.completed` (or `response.incomplete`).
A stream failing after its first token ends with `response.failed`, its `error` saying why. There is no
`[DONE]`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any

from bailu.common.errors import BailuError
from bailu.common.records import CompletionRecord
from bailu.common.types import FinishReason, GenerateChunk, TokenLogprob, Usage
from bailu.gateway.lifecycle import Completion
from bailu.gateway.openai_format import chat_logprobs
from bailu.gateway.responses_api import RESPONSE_ID_PREFIX, ResponseCreateRequest

log = logging.getLogger(__name__)

MESSAGE_ID_PREFIX = "msg_"
# What a response's `text` says of its format while only plain text is served.
TEXT_FORMAT: dict[str, Any] = {"format": {"type": "text"}, "verbosity": "medium"}


def new_response_id() -> str:
    return f"{RESPONSE_ID_PREFIX}{uuid.uuid4().hex}"


def message_id(response_id: str) -> str:
    """The id of a response's output message: derived from the response's, so stable across retrievals."""
    return MESSAGE_ID_PREFIX + response_id.removeprefix(RESPONSE_ID_PREFIX)


def event(payload: dict[str, Any]) -> bytes:
    """One server-sent event of a Responses stream: its `type` as the event name, the payload as its data."""
    return f"event: {payload['type']}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def usage_object(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def logprobs_list(entries: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> list[dict[str, Any]]:
    """Output tokens' log probabilities as the Responses API lists them (the chat format's `content` entries)."""
    content: list[dict[str, Any]] = chat_logprobs(entries)["content"]
    return content


def error_object(exc: BailuError) -> dict[str, Any]:
    """A failed response's `error`: OpenAI's codes for a response (`rate_limit_exceeded`, else `server_error`),
    with the gateway's own code in `type` when it has one."""
    return {
        "code": "rate_limit_exceeded" if exc.http_status == 429 else "server_error",
        "message": exc.message,
        "param": exc.param,
        "type": exc.openai_code or exc.openai_type,
    }


@dataclass(frozen=True, slots=True)
class Echo:
    """What a `Response` repeats of its request."""

    instructions: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    previous_response_id: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    top_logprobs: int | None = None
    user: str | None = None

    @classmethod
    def of_request(cls, body: ResponseCreateRequest) -> Echo:
        return cls(
            instructions=body.instructions,
            metadata=dict(body.metadata or {}),
            previous_response_id=body.previous_response_id,
            temperature=body.temperature,
            top_p=body.top_p,
            max_output_tokens=body.max_output_tokens,
            top_logprobs=body.top_logprobs,
            user=body.user,
        )

    @classmethod
    def of_record(cls, record: CompletionRecord) -> Echo:
        sampling = record.sampling
        return cls(
            instructions=record.instructions,
            metadata=dict(record.metadata),
            previous_response_id=record.previous_response_id,
            temperature=sampling.get("temperature"),
            top_p=sampling.get("top_p"),
            max_output_tokens=sampling.get("max_tokens"),
            top_logprobs=sampling.get("top_logprobs"),
        )


def status_of(finish: FinishReason | str | None) -> str:
    return "incomplete" if finish == FinishReason.LENGTH else "completed"


def text_part(text: str, logprobs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}


def message_item(response_id: str, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": message_id(response_id), "type": "message", "role": "assistant", "status": status, "content": content}


def response_object(
    response_id: str,
    created_at: float,
    model: str,
    echo: Echo,
    *,
    status: str,
    output: list[dict[str, Any]],
    usage: Usage | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A `Response` (the object `POST /v1/responses` answers and `GET /v1/responses/{id}` returns)."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": echo.instructions,
        "max_output_tokens": echo.max_output_tokens,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": echo.previous_response_id,
        "reasoning": {"effort": None, "summary": None},
        "temperature": echo.temperature,
        "text": TEXT_FORMAT,
        "tool_choice": "auto",
        "tools": [],
        "top_logprobs": echo.top_logprobs,
        "top_p": echo.top_p,
        "truncation": "disabled",
        "usage": usage_object(usage),
        "user": echo.user,
        "metadata": echo.metadata,
    }


def response_of_record(record: CompletionRecord) -> dict[str, Any]:
    """The `Response` of a stored completion record (its log probabilities are not kept)."""
    choice = record.choice(0)
    status = status_of(choice.finish_reason if choice else None)
    content = [text_part(choice.text if choice else "", [])]
    usage = Usage(record.prompt_tokens, record.completion_tokens)
    model = record.resolved_model or record.model
    output = [message_item(record.id, status, content)]
    return response_object(record.id, int(record.created), model, Echo.of_record(record), status=status,
                           output=output, usage=usage)  # fmt: skip


class ResponsesPresenter:
    """A completion answered in the Responses API's format (`CompletionHandler.respond`'s `presenter`)."""

    def __init__(self, body: ResponseCreateRequest) -> None:
        self.echo = Echo.of_request(body)
        self.logprobs = body.logprobs
        self._response_id = new_response_id()
        extras: dict[str, Any] = {"previous_response_id": body.previous_response_id}
        if body.instructions:
            extras["instructions"] = body.instructions  # the system message that leads the record's messages
        self._record_extras = extras

    @property
    def response_id(self) -> str:
        return self._response_id

    @property
    def record_extras(self) -> Mapping[str, Any]:
        return self._record_extras

    def _logprobs(self, entries: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> list[dict[str, Any]]:
        return logprobs_list(entries) if self.logprobs else []

    def _object(
        self, completion: Completion, status: str, output: list[dict[str, Any]], **extra: Any
    ) -> dict[str, Any]:
        builder = completion.builder
        return response_object(builder.id, builder.created, builder.model, self.echo, status=status, output=output,
                               **extra)  # fmt: skip

    def full(self, completion: Completion) -> dict[str, Any]:
        candidate = completion.candidates[0]
        status = status_of(candidate.finish)
        item = message_item(
            completion.builder.id, status, [text_part(candidate.text, self._logprobs(candidate.logprobs))]
        )
        return self._object(completion, status, [item], usage=candidate.usage)

    async def events(self, completion: Completion, firsts: list[GenerateChunk]) -> AsyncGenerator[bytes, None]:
        stream = _Sequence()
        item_id = message_id(completion.builder.id)
        where = {"item_id": item_id, "output_index": 0, "content_index": 0}
        candidate = completion.candidates[0]
        try:
            for kind in ("response.created", "response.in_progress"):
                yield stream.next(kind, response=self._object(completion, "in_progress", []))
            item = message_item(completion.builder.id, "in_progress", [])
            yield stream.next("response.output_item.added", output_index=0, item=item)
            yield stream.next("response.content_part.added", **where, part=text_part("", []))
            async with contextlib.aclosing(self._chunks(completion, firsts)) as chunks:
                async for chunk in chunks:
                    candidate.add(chunk)
                    if chunk.text or (self.logprobs and chunk.logprobs):
                        delta = self._logprobs(chunk.logprobs)
                        yield stream.next("response.output_text.delta", **where, delta=chunk.text, logprobs=delta)
            logprobs = self._logprobs(candidate.logprobs)
            yield stream.next("response.output_text.done", **where, text=candidate.text, logprobs=logprobs)
            part = text_part(candidate.text, logprobs)
            yield stream.next("response.content_part.done", **where, part=part)
            status = status_of(candidate.finish)
            item = message_item(completion.builder.id, status, [part])
            yield stream.next("response.output_item.done", output_index=0, item=item)
            completion.finish()  # before the last event: a client may continue from it the moment it arrives
            final = self._object(completion, status, [item], usage=candidate.usage)
            yield stream.next(f"response.{status}", response=final)
        except BailuError as exc:
            # Headers are gone: the failure travels as the last event, and the stream ends cleanly.
            log.warning("stream failed after the first token", extra={"error": exc.name, "reason": exc.message})
            yield stream.next(
                "response.failed", response=self._object(completion, "failed", [], error=error_object(exc))
            )

    @staticmethod
    async def _chunks(completion: Completion, firsts: list[GenerateChunk]) -> AsyncGenerator[GenerateChunk, None]:
        yield firsts[0]
        async with contextlib.aclosing(completion.chunks()) as chunks:
            async for _, chunk in chunks:
                yield chunk


class _Sequence:
    """Numbers a stream's events from 0, in the order they are sent."""

    def __init__(self) -> None:
        self.number = -1

    def next(self, kind: str, **fields: Any) -> bytes:
        self.number += 1
        return event({"type": kind, "sequence_number": self.number, **fields})
