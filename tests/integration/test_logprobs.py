"""`logprobs` / `top_logprobs` end to end: through the real gateway and worker (gRPC) with the sim engine, and
with the transformers engine on the tiny model (real log-softmax of the logits it samples from)."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import httpx
import pytest

from bailu.common.types import ChatMessage, GenerateRequest, SamplingParams
from tests.conftest import MODEL

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


def chat_body(**kwargs: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "a poem about dew"}], **kwargs}


async def sse_chunks(response: httpx.Response) -> list[dict[str, Any]]:
    out = []
    async for line in response.aiter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[len("data: ") :]))
    return out


@pytest.fixture
async def http():
    async with httpx.AsyncClient(timeout=60) as client:
        yield client


def check_chat_entry(entry: dict[str, Any], top: int) -> None:
    assert entry["logprob"] <= 0
    assert bytes(entry["bytes"]) == entry["token"].encode()  # sim tokens are whole words
    alternatives = entry["top_logprobs"]
    assert len(alternatives) == top
    assert [a["logprob"] for a in alternatives] == sorted((a["logprob"] for a in alternatives), reverse=True)
    assert sum(math.exp(a["logprob"]) for a in alternatives) <= 1.0


async def test_chat_logprobs_non_streaming_one_entry_per_token_per_candidate(start_worker, start_gateway, http):
    worker = await start_worker(sim_output_tokens=6)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    body = chat_body(logprobs=True, top_logprobs=3, n=2, temperature=0.8)
    response = await http.post(gateway.url + CHAT, json=body, headers=gateway.headers)
    assert response.status_code == 200, response.text
    for choice in response.json()["choices"]:
        logprobs = choice["logprobs"]
        assert logprobs["refusal"] is None
        content = logprobs["content"]
        assert len(content) == 6
        assert "".join(e["token"] for e in content) == choice["message"]["content"]
        for entry in content:
            check_chat_entry(entry, 3)
            assert entry["top_logprobs"][0]["token"] == entry["token"]


async def test_chat_logprobs_streamed_with_each_chunk(start_worker, start_gateway, http):
    worker = await start_worker(sim_output_tokens=5)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    body = chat_body(logprobs=True, stream=True, max_tokens=5)
    async with http.stream("POST", gateway.url + CHAT, json=body, headers=gateway.headers) as response:
        assert response.status_code == 200
        chunks = await sse_chunks(response)
    texts = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(texts) == 5
    for choice in texts:
        entries = choice["logprobs"]["content"]
        assert [e["token"] for e in entries] == [choice["delta"]["content"]]
        check_chat_entry(entries[0], 0)


async def test_no_logprobs_unless_asked(start_worker, start_gateway, http):
    worker = await start_worker(sim_output_tokens=3)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    response = await http.post(gateway.url + CHAT, json=chat_body(logprobs=False), headers=gateway.headers)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["logprobs"] is None


async def test_completions_legacy_logprobs_streamed_and_not(start_worker, start_gateway, http):
    worker = await start_worker(sim_output_tokens=4)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    body = {"model": MODEL, "prompt": "White dew", "max_tokens": 4, "logprobs": 2}
    response = await http.post(gateway.url + COMPLETIONS, json=body, headers=gateway.headers)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    logprobs = choice["logprobs"]
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert all(v <= 0 for v in logprobs["token_logprobs"])
    assert [len(t) for t in logprobs["top_logprobs"]] == [2] * 4
    offsets = [0]
    for token in logprobs["tokens"][:-1]:
        offsets.append(offsets[-1] + len(token))
    assert logprobs["text_offset"] == offsets

    async with http.stream(
        "POST", gateway.url + COMPLETIONS, json={**body, "stream": True}, headers=gateway.headers
    ) as response:
        chunks = await sse_chunks(response)
    streamed = [c["choices"][0]["logprobs"] for c in chunks if c["choices"] and c["choices"][0]["text"]]
    assert [lp["tokens"] for lp in streamed] == [[t] for t in logprobs["tokens"]]
    assert [lp["text_offset"][0] for lp in streamed] == offsets


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, chat_body(top_logprobs=2), "top_logprobs"),
        (CHAT, chat_body(logprobs=True, top_logprobs=21), "top_logprobs"),
        (COMPLETIONS, {"model": MODEL, "prompt": "dew", "logprobs": 6}, "logprobs"),
    ],
)
async def test_logprobs_bounds_are_400s_naming_the_field(start_worker, start_gateway, http, path, body, param):
    worker = await start_worker()
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    response = await http.post(gateway.url + path, json=body, headers=gateway.headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


@pytest.mark.slow
async def test_transformers_logprobs_are_real_and_greedy_takes_the_top(tiny_model) -> None:
    from bailu.worker.engines.transformers import TransformersEngine

    engine = TransformersEngine(
        MODEL, tiny_model, model_type="llama", template="chatml", max_model_len=512, default_max_tokens=16,
        max_batch_size=2,
    )  # fmt: skip
    await engine.start()
    request = GenerateRequest(
        request_id="lp",
        model=MODEL,
        messages=(ChatMessage("user", "Write about dew 日本"),),
        sampling=SamplingParams(max_tokens=10, temperature=0.0, logprobs=True, top_logprobs=4),
    )
    plain = GenerateRequest(request_id="plain", model=MODEL, messages=request.messages,
                            sampling=SamplingParams(max_tokens=10, temperature=0.0))  # fmt: skip

    async def run(r: GenerateRequest) -> list[Any]:
        return [c async for c in engine.generate(r)]

    # Submitted together, the two share one batch (ms-swift batches equal sampling configurations).
    chunks, again = await asyncio.gather(run(request), run(plain))
    entries = [e for c in chunks for e in c.logprobs]
    # One entry per generated token, each in the chunk that counts the token.
    assert all(len(c.logprobs) == c.token_count for c in chunks)
    assert len(entries) == chunks[-1].usage.completion_tokens > 0
    for entry in entries:
        assert entry.logprob <= 0
        values = [t.logprob for t in entry.top]
        assert len(values) == 4
        assert values == sorted(values, reverse=True)
        # Greedy decoding emits the most likely token, with the same log probability.
        assert entry.top[0].token_bytes == entry.token_bytes
        assert math.isclose(entry.top[0].logprob, entry.logprob, rel_tol=1e-5, abs_tol=1e-6)
        assert sum(math.exp(v) for v in values) <= 1.0 + 1e-6
    # Batch safety: the request without logprobs gets none, and the same text.
    assert all(not c.logprobs for c in again)
    assert "".join(c.text for c in again) == "".join(c.text for c in chunks)


@pytest.mark.slow
def test_token_bytes_are_exact_for_pieces_of_characters(tiny_model) -> None:
    from transformers import AutoTokenizer

    from bailu.worker.engines.token_logprobs import TokenText

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    token_text = TokenText(tokenizer)
    text = "dew 日本 ü"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert b"".join(token_text(i)[1] for i in ids) == text.encode()
    assert any("\ufffd" in token_text(i)[0] for i in ids)  # some token is a piece of a character
