"""The OpenAI protocol shared by the engine servers: recorded streams and errors through the worker's code."""

from __future__ import annotations

import json

import pytest

from bailu.common import errors
from bailu.common.types import ChatMessage, GenerateRequest, SamplingParams
from bailu.worker.engines.server import openai_http as oai
from tests.unit.engines.conftest import check_stream_contract, expected, lines, replay, sample, sample_json

STREAMS = [
    ("vllm", "chat_stream.sse"),
    ("sglang", "chat_stream.sse"),
    ("lmdeploy", "completion_stream.sse"),
    ("swift", "chat_stream.sse"),
    ("swift", "completion_stream.sse"),
]


@pytest.mark.parametrize(("engine", "name"), STREAMS, ids=[f"{e}/{n}" for e, n in STREAMS])
async def test_recorded_stream_keeps_the_streaming_contract(engine: str, name: str) -> None:
    check_stream_contract(await replay(sample(engine, name)), expected(engine)[name])


async def test_error_event_mid_stream_raises_after_the_text_before_it() -> None:
    want = expected("lmdeploy")["error_stream.sse"]
    assembler = oai.StreamAssembler("m")
    texts: list[str] = []

    async def consume() -> None:
        async for payload in oai.sse_data(lines(sample("lmdeploy", "error_stream.sse"))):
            chunk = assembler.feed(payload)
            if chunk is not None:
                texts.append(chunk.text)

    with pytest.raises(errors.BailuError) as info:
        await consume()
    assert type(info.value).__name__ == want["error"]
    assert "".join(texts) == want["text_before"]


async def test_stream_that_ends_without_a_finish_reason_is_an_error() -> None:
    truncated = sample("vllm", "chat_stream.sse").split("\n\n")[:3]
    with pytest.raises(errors.Unavailable, match="ended the stream"):
        await replay("\n\n".join(truncated))


async def test_sse_parser_joins_multiline_data_and_skips_comments() -> None:
    text = ': keep-alive\n\ndata: {"a":\ndata: 1}\n\nevent: x\ndata:[DONE]\n'
    assert [p async for p in oai.sse_data(lines(text))] == ['{"a":\n1}', "[DONE]"]


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
