"""The SSE fast path must produce exactly what the general formatter produces."""

from __future__ import annotations

import json

import pytest

from bailu.gateway.openai_format import ResponseBuilder, sse


@pytest.mark.parametrize("kind", ["chat", "text"])
@pytest.mark.parametrize("text", ["dew", ' "quoted" \\ back', "ünïcödé 白露", "\n\t", "\x00 nul"])
def test_text_event_matches_the_general_chunk(kind: str, text: str) -> None:
    builder = ResponseBuilder(kind, "model-a", "id-1")
    assert builder.text_event(text) == sse(builder.chunk(text, None))
    event = json.loads(builder.text_event(text).decode()[len("data: ") :])
    choice = event["choices"][0]
    assert (choice["delta"]["content"] if kind == "chat" else choice["text"]) == text
