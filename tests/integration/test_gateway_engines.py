"""The gateway's contract, unchanged, against each engine that runs here: the in-process `sim` and
`transformers` engines and the engine-server path (`swift`: a real `swift deploy` child process). Switching
`engine` changes nothing for the gateway or its clients: the same requests get the same kinds of answers
(chat and text completions, streaming with usage, several candidates, model listing, unknown models,
prompts longer than the context)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import MODEL

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CONTEXT = 128  # tokens: a prompt of a few hundred words exceeds it on every engine
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Write about dew."}], "max_tokens": 6}


def worker_settings(engine: str, tiny_model: Path) -> dict[str, Any]:
    values: dict[str, Any] = {"engine": engine, "max_model_len": CONTEXT, "max_batch_size": 2}
    if engine != "sim":
        values["model_path"] = str(tiny_model)
    if engine == "swift":
        values["engine_start_timeout_s"] = 120
    return values


async def sse_events(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    events = []
    async with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    return events


@pytest.mark.parametrize("engine", ["sim", "transformers", "swift"])
async def test_the_gateway_contract_holds_on_every_engine(
    engine: str, start_worker, start_gateway, tiny_model: Path
) -> None:
    worker = await start_worker(**worker_settings(engine, tiny_model))
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    async with httpx.AsyncClient(base_url=gateway.url, headers=gateway.headers, timeout=120) as client:
        models = (await client.get("/v1/models")).json()
        assert MODEL in [m["id"] for m in models["data"]]

        reply = await client.post("/v1/chat/completions", json=CHAT)
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        assert (answer["object"], answer["model"]) == ("chat.completion", MODEL)
        assert answer["choices"][0]["finish_reason"] in ("stop", "length")
        usage = answer["usage"]
        assert 0 < usage["completion_tokens"] <= 6
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

        events = await sse_events(
            client, "/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        )
        assert all(e["object"] == "chat.completion.chunk" and e["id"] == events[0]["id"] for e in events)
        assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] in ("stop", "length")
        assert events[-1]["choices"] == []
        assert 0 < events[-1]["usage"]["completion_tokens"] <= 6

        text = await client.post("/v1/completions", json={"model": MODEL, "prompt": "Dew on", "max_tokens": 4})
        assert text.status_code == 200, text.text
        assert text.json()["object"] == "text_completion"
        assert 0 < text.json()["usage"]["completion_tokens"] <= 4

        pair = await client.post("/v1/chat/completions", json={**CHAT, "n": 2, "temperature": 1.0})
        assert pair.status_code == 200, pair.text
        assert sorted(c["index"] for c in pair.json()["choices"]) == [0, 1]

        unknown = await client.post("/v1/chat/completions", json={**CHAT, "model": "no-such-model"})
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "model_not_found"

        long_prompt = " ".join(["morning dew on the grass"] * 120)
        too_long = await client.post(
            "/v1/chat/completions", json={**CHAT, "messages": [{"role": "user", "content": long_prompt}]}
        )
        assert too_long.status_code == 413, too_long.text
        assert too_long.json()["error"]["code"] == "context_length_exceeded"

        # The worker still serves after the refusals.
        again = await client.post("/v1/chat/completions", json=CHAT)
        assert again.status_code == 200, again.text
