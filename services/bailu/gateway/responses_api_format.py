"""The Responses API's objects, built from a completion: the `Response` (also rebuilt from a stored completion
record, for `GET /v1/responses/{id}`) and the server-sent events of a streamed one.

A response's output is the assistant's message, then the function calls it made (`function_call` items), as
OpenAI lists them: a reply of calls alone has no message; one that wrote text too (`tool_choice: auto`) has both.
Every item's id derives from the response's (`msg_` and the same suffix; `fc_`, the suffix and the call's
position), so that a stored response is retrieved with the ids it was created with; a call's `call_id` is the
one the engine gave it. A response cut short by `max_output_tokens` is `incomplete` (`incomplete_details.reason:
max_output_tokens`), as OpenAI reports it, and so is its last output item.

A stream is OpenAI's sequence of events, each `event: <type>` and `data: <json>` with a `sequence_number` that
counts from 0: `response.created`, `response.in_progress`; for the message (from its first text on),
`response.output_item.added`, `response.content_part.added`, one `response.output_text.delta` per chunk of text,
`response.output_text.done`, `response.content_part.done`, `response.output_item.done`; for each call (from its
first piece on), `response.output_item.added` (its arguments empty), one `response.function_call_arguments.delta`
per piece of them, `response.function_call_arguments.done`, `response.output_item.done`; then
`response.completed` (or `response.incomplete`), whose response is the one `POST` without `stream` answers. Each
item closes as the next opens. A stream failing after its first token ends with `response.failed`, its `error`
saying why. There is no `[DONE]`. (Text an engine sends after a call has begun, which none of Bailu's engines
does, is in the final response but has no delta events of its own.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bailu.common.errors import BailuError
from bailu.common.records import CompletionRecord
from bailu.common.types import FinishReason, GenerateChunk, TokenLogprob, ToolCall, ToolCallDelta, Usage
from bailu.gateway.lifecycle import Completion
from bailu.gateway.openai_format import chat_logprobs
from bailu.gateway.responses_api import RESPONSE_ID_PREFIX, ResponseCreateRequest
from bailu.gateway.responses_api_tools import NO_TOOL_SETTINGS

log = logging.getLogger(__name__)

MESSAGE_ID_PREFIX = "msg_"
CALL_ITEM_ID_PREFIX = "fc_"
# What a response's `text` says of its format while only plain text is served.
TEXT_FORMAT: dict[str, Any] = {"format": {"type": "text"}, "verbosity": "medium"}


def new_response_id() -> str:
    return f"{RESPONSE_ID_PREFIX}{uuid.uuid4().hex}"


def message_id(response_id: str) -> str:
    """The id of a response's output message: derived from the response's, so stable across retrievals."""
    return MESSAGE_ID_PREFIX + response_id.removeprefix(RESPONSE_ID_PREFIX)


def call_item_id(response_id: str, position: int) -> str:
    """The id of a response's `position`th function call item: derived from the response's, as `message_id`."""
    return f"{CALL_ITEM_ID_PREFIX}{response_id.removeprefix(RESPONSE_ID_PREFIX)}_{position}"


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
    tool_settings: dict[str, Any] = field(default_factory=lambda: dict(NO_TOOL_SETTINGS))

    @classmethod
    def of_request(cls, body: ResponseCreateRequest) -> Echo:
        return cls(
            tool_settings=body.tool_settings(),
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
            tool_settings=dict(record.tool_settings or NO_TOOL_SETTINGS),
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


def call_item(response_id: str, position: int, call: ToolCall, status: str) -> dict[str, Any]:
    """The `function_call` output item of a response's `position`th call."""
    return {
        "id": call_item_id(response_id, position),
        "type": "function_call",
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
        "status": status,
    }


def output_items(
    response_id: str, text: str, logprobs: list[dict[str, Any]], calls: list[ToolCall], status: str
) -> list[dict[str, Any]]:
    """A response's output: its message (unless it made calls and wrote no text), then its calls; the last item
    has the response's `status`, those before it are complete."""
    items = [message_item(response_id, "", [text_part(text, logprobs)])] if text or not calls else []
    items += [call_item(response_id, i, call, "") for i, call in enumerate(calls)]
    for item in items:
        item["status"] = "completed"
    items[-1]["status"] = status
    return items


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
        "parallel_tool_calls": echo.tool_settings["parallel_tool_calls"],
        "previous_response_id": echo.previous_response_id,
        "reasoning": {"effort": None, "summary": None},
        "temperature": echo.temperature,
        "text": TEXT_FORMAT,
        "tool_choice": echo.tool_settings["tool_choice"],
        "tools": echo.tool_settings["tools"],
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
    usage = Usage(record.prompt_tokens, record.completion_tokens)
    model = record.resolved_model or record.model
    text, calls = (choice.text, list(choice.tool_calls)) if choice else ("", [])
    output = output_items(record.id, text, [], calls, status)
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
        if body.asks_for_tools:
            extras["tool_settings"] = self.echo.tool_settings
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

    def _output(self, completion: Completion, status: str) -> list[dict[str, Any]]:
        candidate = completion.candidates[0]
        logprobs = self._logprobs(candidate.logprobs)
        return output_items(completion.builder.id, candidate.text, logprobs, candidate.tool_calls, status)

    def full(self, completion: Completion) -> dict[str, Any]:
        candidate = completion.candidates[0]
        status = status_of(candidate.finish)
        return self._object(completion, status, self._output(completion, status), usage=candidate.usage)

    async def events(self, completion: Completion, firsts: list[GenerateChunk]) -> AsyncGenerator[bytes, None]:
        stream = EventSequence()
        candidate = completion.candidates[0]
        output = StreamedOutput(completion.builder.id, stream, self._logprobs)
        try:
            for kind in ("response.created", "response.in_progress"):
                yield stream.next(kind, response=self._object(completion, "in_progress", []))
            async with contextlib.aclosing(self._chunks(completion, firsts)) as chunks:
                async for chunk in chunks:
                    candidate.add(chunk)
                    for sent in output.text(chunk, self.logprobs):
                        yield sent
                    for sent in output.calls(chunk.tool_calls):
                        yield sent
            status = status_of(candidate.finish)
            for sent in output.finish(status):
                yield sent
            completion.finish()  # before the last event: a client may continue from it the moment it arrives
            final = self._object(completion, status, self._output(completion, status), usage=candidate.usage)
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


class EventSequence:
    """Numbers a stream's events from 0, in the order they are sent."""

    def __init__(self) -> None:
        self.number = -1

    def next(self, kind: str, **fields: Any) -> bytes:
        self.number += 1
        return event({"type": kind, "sequence_number": self.number, **fields})


@dataclass
class StreamedCall:
    position: int
    output_index: int
    call: ToolCall
    arguments: list[str] = field(default_factory=list)

    @property
    def whole(self) -> ToolCall:
        return ToolCall(self.call.id, self.call.name, "".join(self.arguments))


class StreamedOutput:
    """The events of a streamed response's output items as its chunks arrive: the message opens on its first
    text, each call on its first piece; each item closes as the next opens, the last one at the end."""

    def __init__(
        self, response_id: str, stream: EventSequence, logprobs: Callable[[list[TokenLogprob]], list[dict[str, Any]]]
    ) -> None:
        self.response_id = response_id
        self.stream = stream
        self._logprobs = logprobs  # entries -> their JSON shape ([] unless asked for)
        self.opened = 0  # output items so far
        self.message_index: int | None = None
        self.message_open = False
        self.text_parts: list[str] = []
        self.text_logprobs: list[TokenLogprob] = []
        self.pending: list[TokenLogprob] = []  # log probabilities of tokens before the message opened
        self.begun: dict[int, StreamedCall] = {}  # by the engine's call index
        self.open_call: StreamedCall | None = None

    def _where(self) -> dict[str, Any]:
        return {"item_id": message_id(self.response_id), "output_index": self.message_index, "content_index": 0}

    def _open_message(self) -> list[bytes]:
        self.message_index, self.message_open = self.opened, True
        self.opened += 1
        item = message_item(self.response_id, "in_progress", [])
        return [
            self.stream.next("response.output_item.added", output_index=self.message_index, item=item),
            self.stream.next("response.content_part.added", **self._where(), part=text_part("", [])),
        ]

    def _delta(self, text: str, entries: list[TokenLogprob]) -> bytes:
        self.text_parts.append(text)
        self.text_logprobs.extend(entries)
        return self.stream.next(
            "response.output_text.delta", **self._where(), delta=text, logprobs=self._logprobs(entries)
        )

    def _close_message(self, status: str) -> list[bytes]:
        self.message_open = False
        text, logprobs = "".join(self.text_parts), self._logprobs(self.text_logprobs)
        part = text_part(text, logprobs)
        item = message_item(self.response_id, status, [part])
        return [
            self.stream.next("response.output_text.done", **self._where(), text=text, logprobs=logprobs),
            self.stream.next("response.content_part.done", **self._where(), part=part),
            self.stream.next("response.output_item.done", output_index=self.message_index, item=item),
        ]

    def _close_call(self, status: str) -> list[bytes]:
        streamed, self.open_call = self.open_call, None
        assert streamed is not None
        item_id, whole = call_item_id(self.response_id, streamed.position), streamed.whole
        item = call_item(self.response_id, streamed.position, whole, status)
        return [
            self.stream.next(
                "response.function_call_arguments.done",
                item_id=item_id, output_index=streamed.output_index, arguments=whole.arguments,
            ),
            self.stream.next("response.output_item.done", output_index=streamed.output_index, item=item),
        ]  # fmt: skip

    def text(self, chunk: GenerateChunk, logprobs: bool) -> list[bytes]:
        """The events of a chunk's text (and its tokens' log probabilities, when asked for)."""
        if self.begun:
            return []  # text after a call has begun: in the final response only
        sent: list[bytes] = []
        if chunk.text and self.message_index is None:
            sent += self._open_message()
        entries = list(chunk.logprobs) if logprobs else []
        if self.message_open and (chunk.text or entries):
            sent.append(self._delta(chunk.text, [*self.pending, *entries]))
            self.pending = []
        elif entries:
            self.pending += entries
        return sent

    def calls(self, deltas: tuple[ToolCallDelta, ...]) -> list[bytes]:
        """The events of a chunk's pieces of calls."""
        sent: list[bytes] = []
        for delta in deltas:
            streamed = self.begun.get(delta.index)
            if streamed is None:
                if self.message_open:
                    sent += self._close_message("completed")
                if self.open_call is not None:
                    sent += self._close_call("completed")
                streamed = StreamedCall(len(self.begun), self.opened, ToolCall(delta.id, delta.name, ""))
                self.begun[delta.index], self.open_call = streamed, streamed
                self.opened += 1
                item = call_item(self.response_id, streamed.position, streamed.call, "in_progress")
                sent.append(self.stream.next("response.output_item.added", output_index=streamed.output_index,
                                             item=item))  # fmt: skip
            if delta.arguments:
                streamed.arguments.append(delta.arguments)
                sent.append(
                    self.stream.next(
                        "response.function_call_arguments.delta",
                        item_id=call_item_id(self.response_id, streamed.position),
                        output_index=streamed.output_index,
                        delta=delta.arguments,
                    )
                )
        return sent

    def finish(self, status: str) -> list[bytes]:
        """The events that close the output: the open item's, or an empty message's when nothing was said."""
        sent: list[bytes] = []
        if self.message_index is None and not self.begun:
            sent += self._open_message()
            if self.pending:
                sent.append(self._delta("", self.pending))
        if self.message_open:
            sent += self._close_message(status)
        if self.open_call is not None:
            sent += self._close_call(status)
        return sent
