"""The OpenAI protocol shared by the engine servers: recorded streams and errors through the worker's code."""

from __future__ import annotations

import json

import pytest

from bailu.common import errors
from bailu.common.types import ChatMessage, GenerateRequest, SamplingParams
from bailu.worker.engines.server import openai_http as oai
from tests.unit.engines.conftest import check_stream_contract, expected, payloads, replay, sample, sample_json

STREAMS = [
    ("vllm", "chat_stream.sse"),
    ("sglang", "chat_stream.sse"),
    ("lmdeploy", "completion_stream.sse"),
    ("swift", "chat_stream.sse"),
    ("swift", "completion_stream.sse"),
]


@pytest.mark.parametrize("size", [1, 7, 0], ids=["byte-by-byte", "7-byte-pieces", "all-at-once"])
@pytest.mark.parametrize(("engine", "name"), STREAMS, ids=[f"{e}/{n}" for e, n in STREAMS])
async def test_recorded_stream_keeps_the_streaming_contract(engine: str, name: str, size: int) -> None:
    # However the body arrives (each event alone, or all coalesced into one chunk), the contract holds.
    check_stream_contract(await replay(sample(engine, name), size=size), expected(engine)[name])


@pytest.mark.parametrize(("engine", "name"), STREAMS, ids=[f"{e}/{n}" for e, n in STREAMS])
async def test_events_that_arrive_together_go_on_in_fewer_chunks(engine: str, name: str) -> None:
    one_by_one = await replay(sample(engine, name), size=1)
    together = await replay(sample(engine, name), size=0)
    assert [c.text for c in together[:-1]] == ["".join(c.text for c in one_by_one[:-1])]
    assert sum(c.token_count for c in together) == sum(c.token_count for c in one_by_one)
    assert together[-1] == one_by_one[-1]


async def test_error_event_mid_stream_raises_after_the_text_before_it() -> None:
    want = expected("lmdeploy")["error_stream.sse"]
    assembler = oai.StreamAssembler("m")
    texts: list[str] = []

    def consume() -> None:
        for payload in payloads(sample("lmdeploy", "error_stream.sse"), size=5):
            chunk = assembler.feed(payload)
            if chunk is not None:
                texts.append(chunk.text)

    with pytest.raises(errors.BailuError) as info:
        consume()
    assert type(info.value).__name__ == want["error"]
    assert "".join(texts) == want["text_before"]


async def test_stream_that_ends_without_a_finish_reason_is_an_error() -> None:
    truncated = sample("vllm", "chat_stream.sse").split("\n\n")[:3]
    with pytest.raises(errors.Unavailable, match="ended the stream"):
        await replay("\n\n".join(truncated))


@pytest.mark.parametrize("size", [1, 3, 0])
def test_sse_parser_joins_multiline_data_and_skips_comments(size: int) -> None:
    text = ': keep-alive\n\ndata: {"a":\ndata: 1}\n\nevent: x\ndata:[DONE]\n'
    assert payloads(text, size) == [b'{"a":\n1}', b"[DONE]"]


@pytest.mark.parametrize("size", [1, 4, 0])
def test_sse_parser_takes_crlf_line_ends(size: int) -> None:
    text = 'data: {"x": 1}\r\n\r\n: ping\r\n\r\ndata: {"a":\r\ndata: 2}\r\n\r\ndata: [DONE]\r\n\r\n'
    assert payloads(text, size) == [b'{"x": 1}', b'{"a":\n2}', b"[DONE]"]


ERRORS = [
    (engine, i)
    for engine in ("vllm", "sglang", "lmdeploy", "swift")
    for i in range(len(sample_json(engine, "errors.json")))
]


@pytest.mark.parametrize(("engine", "index"), ERRORS, ids=[f"{e}-{i}" for e, i in ERRORS])
def test_engine_error_maps_to_the_bailu_error(engine: str, index: int) -> None:
    case = sample_json(engine, "errors.json")[index]
    message = oai.error_message(json.dumps(case["body"]).encode())
    error = oai.map_error(case["status"], message, param="messages")
    assert type(error).__name__ == case["expect"]
    # The engine's own words reach the log and the client (never a stack trace).
    assert message in error.message
    assert "Traceback" not in error.message


def test_error_message_of_a_non_json_body_is_its_text() -> None:
    assert oai.error_message(b"Internal Server Error") == "Internal Server Error"
    assert isinstance(oai.map_error(502, "Bad Gateway"), errors.Unavailable)


def test_request_body_for_chat_and_raw_prompt() -> None:
    chat = GenerateRequest(
        "r",
        "base",
        messages=(ChatMessage("system", "Be brief."), ChatMessage("user", "Dew?")),
        sampling=SamplingParams(max_tokens=9, temperature=0.0, top_k=0, stop=("\n\n",), seed=3),
    )
    body = oai.request_body(chat, "poet-1", 256, {"continuous_usage_stats": True})
    assert oai.endpoint(chat) == "/v1/chat/completions"
    assert body["model"] == "poet-1"
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Dew?"}]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert (body["max_tokens"], body["temperature"], body["stop"], body["seed"]) == (9, 0.0, ["\n\n"], 3)
    assert "top_k" not in body  # 0 means off: the engine's default applies
    assert "top_p" not in body

    raw = GenerateRequest("r", "base", prompt="Once upon", sampling=SamplingParams(top_k=5))
    body = oai.request_body(raw, "base", 256, {})
    assert oai.endpoint(raw) == "/v1/completions"
    assert (body["prompt"], body["max_tokens"], body["top_k"]) == ("Once upon", 256, 5)
    assert "messages" not in body
