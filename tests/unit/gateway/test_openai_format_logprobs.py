"""OpenAI's logprobs objects from domain chunks: chat `content` entries, legacy lists, and JSON-safe values."""

from __future__ import annotations

import json

from bailu.common.types import FinishReason, GenerateChunk, TokenLogprob, TopLogprob, Usage
from bailu.gateway.openai_format import Candidate, ResponseBuilder

INF_ENTRY = TokenLogprob("\ufffd", float("-inf"), b"\xe6", (TopLogprob("a", float("-inf"), b"a"),))


def test_minus_infinity_is_floored_so_that_the_body_is_json() -> None:
    builder = ResponseBuilder("chat", "m", "id", logprobs=True)
    candidate = Candidate(0)
    event = builder.event(candidate, GenerateChunk("", 1, FinishReason.STOP, Usage(1, 1), "m", (INF_ENTRY,)))
    payload = json.loads(event.decode().removeprefix("data: "), parse_constant=lambda c: 1 / 0)
    [entry] = payload["choices"][0]["logprobs"]["content"]
    assert entry == {
        "token": "\ufffd",
        "logprob": -9999.0,
        "bytes": [0xE6],
        "top_logprobs": [{"token": "a", "logprob": -9999.0, "bytes": [97]}],
    }
    json.dumps(builder.full([candidate]), allow_nan=False)


def test_legacy_offsets_continue_across_chunks() -> None:
    builder = ResponseBuilder("text", "m", "id", logprobs=True)
    candidate = Candidate(0)
    a, b = TokenLogprob("ab", -1.0, b"ab"), TokenLogprob("c", -2.0, b"c")
    builder.event(candidate, GenerateChunk("ab", 1, logprobs=(a,)))
    second = json.loads(builder.event(candidate, GenerateChunk("c", 1, logprobs=(b,))).decode()[6:])
    assert second["choices"][0]["logprobs"]["text_offset"] == [2]
    full = builder.full([candidate])["choices"][0]["logprobs"]
    assert full == {
        "tokens": ["ab", "c"],
        "token_logprobs": [-1.0, -2.0],
        "top_logprobs": [{}, {}],
        "text_offset": [0, 2],
    }


def test_without_logprobs_the_hot_path_is_unchanged() -> None:
    builder = ResponseBuilder("chat", "m", "id")
    event = builder.event(Candidate(0), GenerateChunk(" dew", 1))
    assert event == builder.text_event(" dew", 0)
    assert json.loads(event.decode()[6:])["choices"][0]["logprobs"] is None
