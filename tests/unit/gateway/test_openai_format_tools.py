"""Tool calls in chat responses: pieces merged per candidate, the full message and the stream in OpenAI's shapes
(checked with the openai SDK's own models and stream accumulator, and against the published schema)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageFunctionToolCall

from bailu.common.types import FinishReason, GenerateChunk, TokenLogprob, ToolCall, ToolCallDelta, Usage
from bailu.gateway.openai_format import Candidate, ResponseBuilder, sse
from tests.unit.gateway.test_openapi import openapi_document, schema_validator

ID_A, ID_B = "call_" + "a" * 24, "call_" + "b" * 24
# Two calls streamed interleaved: each call's first piece has its id and name, later pieces more arguments.
PIECES = [
    GenerateChunk("", 1, tool_calls=(ToolCallDelta(0, ID_A, "get_forecast", '{"ci'),)),
    GenerateChunk("", 1, tool_calls=(ToolCallDelta(0, arguments='ty": "Ky'), ToolCallDelta(1, ID_B, "now", ""))),
    GenerateChunk("", 1, tool_calls=(ToolCallDelta(0, arguments='oto"}'),)),
    GenerateChunk("", 1, tool_calls=(ToolCallDelta(1, arguments="{}"),)),
    GenerateChunk("", 0, FinishReason.TOOL_CALLS, Usage(12, 4), "m"),
]
CALLS = [ToolCall(ID_A, "get_forecast", '{"city": "Kyoto"}'), ToolCall(ID_B, "now", "{}")]


def events_of(builder: ResponseBuilder, candidate: Candidate, chunks: list[GenerateChunk]) -> list[dict[str, Any]]:
    """The JSON of each event the chunks make (empty events left out)."""
    events = (builder.event(candidate, chunk) for chunk in chunks)
    return [json.loads(event.decode().removeprefix("data: ")) for event in events if event]


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi_document()


def test_pieces_merge_by_index() -> None:
    candidate = Candidate(0)
    for chunk in PIECES:
        candidate.add(chunk)
    assert candidate.tool_calls == CALLS
    assert candidate.text == ""
    assert candidate.finish is FinishReason.TOOL_CALLS


def test_a_call_sent_whole_in_one_piece() -> None:
    candidate = Candidate(0)
    candidate.add(GenerateChunk("", 3, FinishReason.TOOL_CALLS, tool_calls=(ToolCallDelta(0, ID_A, "now", "{}"),)))
    assert candidate.tool_calls == [ToolCall(ID_A, "now", "{}")]


def test_the_full_reply_has_the_calls_and_null_content(document: dict[str, Any]) -> None:
    builder = ResponseBuilder("chat", "m@v0001", "chatcmpl-1")
    candidate = Candidate(0)
    for chunk in PIECES:
        candidate.add(chunk)
    body = builder.full([candidate])
    [choice] = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": ID_A, "type": "function", "function": {"name": "get_forecast", "arguments": '{"city": "Kyoto"}'}},
            {"id": ID_B, "type": "function", "function": {"name": "now", "arguments": "{}"}},
        ],
    }
    schema_validator(document, {"$ref": "#/components/schemas/ChatCompletion"}).validate(body)
    parsed = ChatCompletion.model_validate(body)
    message = parsed.choices[0].message
    assert message.content is None
    functions = [c for c in message.tool_calls or [] if isinstance(c, ChatCompletionMessageFunctionToolCall)]
    assert [(c.id, c.function.name, c.function.arguments) for c in functions] == [
        (c.id, c.name, c.arguments) for c in CALLS
    ]


def test_text_written_beside_calls_is_kept() -> None:
    candidate = Candidate(0)
    candidate.add(GenerateChunk("Let me look. ", 3))
    for chunk in PIECES:
        candidate.add(chunk)
    message = ResponseBuilder("chat", "m", "id").full([candidate])["choices"][0]["message"]
    assert message["content"] == "Let me look. "
    assert len(message["tool_calls"]) == 2


def test_a_reply_without_calls_has_no_tool_calls_key() -> None:
    candidate = Candidate(0)
    candidate.add(GenerateChunk("dew", 1, FinishReason.STOP))
    message = ResponseBuilder("chat", "m", "id").full([candidate])["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "dew"}


def test_the_stream_sends_id_and_name_once_then_arguments(document: dict[str, Any]) -> None:
    builder = ResponseBuilder("chat", "m@v0001", "chatcmpl-1")
    candidate = Candidate(0)
    events = events_of(builder, candidate, PIECES)
    deltas = [e["choices"][0]["delta"] for e in events]
    assert deltas[0] == {
        "tool_calls": [
            {"index": 0, "id": ID_A, "type": "function", "function": {"name": "get_forecast", "arguments": '{"ci'}}
        ]
    }
    assert deltas[1] == {
        "tool_calls": [
            {"index": 0, "function": {"arguments": 'ty": "Ky'}},
            {"index": 1, "id": ID_B, "type": "function", "function": {"name": "now", "arguments": ""}},
        ]
    }
    assert deltas[2] == {"tool_calls": [{"index": 0, "function": {"arguments": 'oto"}'}}]}
    assert deltas[3] == {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}
    assert [e["choices"][0]["finish_reason"] for e in events] == [None, None, None, None, "tool_calls"]
    chunk_schema = schema_validator(document, {"$ref": "#/components/schemas/ChatCompletionChunk"})
    for event in events:
        chunk_schema.validate(event)
    assert candidate.tool_calls == CALLS  # the stream added them to the candidate too (the completion record)


def test_the_openai_sdk_accumulates_the_stream_into_the_calls() -> None:
    builder = ResponseBuilder("chat", "m", "chatcmpl-1")
    candidate = Candidate(0)
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    state.handle_chunk(ChatCompletionChunk.model_validate(builder.chunk("", None, first=True)))
    for event in events_of(builder, candidate, PIECES):
        state.handle_chunk(ChatCompletionChunk.model_validate(event))
    final = state.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    calls = final.choices[0].message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        (c.id, c.name, c.arguments) for c in CALLS
    ]
    assert json.loads(calls[0].function.arguments) == {"city": "Kyoto"}


def test_a_call_piece_with_text_and_the_finish_in_one_chunk() -> None:
    builder = ResponseBuilder("chat", "m", "id")
    chunk = GenerateChunk("ok", 2, FinishReason.TOOL_CALLS, tool_calls=(ToolCallDelta(0, ID_A, "now", "{}"),))
    [event] = events_of(builder, Candidate(0), [chunk])
    choice = event["choices"][0]
    assert choice["delta"]["content"] == "ok"
    assert choice["delta"]["tool_calls"][0]["id"] == ID_A
    assert choice["finish_reason"] == "tool_calls"


def test_candidates_stream_their_own_calls() -> None:
    builder = ResponseBuilder("chat", "m", "id")
    first, second = Candidate(0), Candidate(1)
    a = builder.event(first, GenerateChunk("", 1, tool_calls=(ToolCallDelta(0, ID_A, "now", "{"),)))
    b = builder.event(second, GenerateChunk("", 1, tool_calls=(ToolCallDelta(0, ID_B, "now", "{"),)))
    # Call 0 of candidate 1 is new to it although candidate 0 has a call 0: its first piece has id and name.
    for event, index, call_id in ((a, 0, ID_A), (b, 1, ID_B)):
        choice = json.loads(event.decode()[6:])["choices"][0]
        assert choice["index"] == index
        assert choice["delta"]["tool_calls"][0]["id"] == call_id
    builder.event(first, GenerateChunk("", 1, tool_calls=(ToolCallDelta(0, arguments="}"),)))
    body = builder.full([first, second])
    assert [c["message"]["tool_calls"][0]["function"]["arguments"] for c in body["choices"]] == ["{}", "{"]


def test_text_chunks_keep_the_hot_path() -> None:
    builder = ResponseBuilder("chat", "m", "id")
    candidate = Candidate(0)
    builder.event(candidate, PIECES[0])
    assert builder.event(candidate, GenerateChunk(" dew", 1)) == builder.text_event(" dew", 0)
    assert builder.text_event(" dew") == sse(builder.chunk(" dew", None))


def test_call_pieces_carry_their_logprobs() -> None:
    builder = ResponseBuilder("chat", "m", "id", logprobs=True)
    entry = TokenLogprob("{", -0.5, b"{")
    chunk = GenerateChunk("", 1, logprobs=(entry,), tool_calls=(ToolCallDelta(0, ID_A, "now", "{"),))
    [event] = events_of(builder, Candidate(0), [chunk])
    assert event["choices"][0]["logprobs"]["content"][0]["token"] == "{"
    assert event["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] == "{"
