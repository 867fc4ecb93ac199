"""OpenAI clients' requests as they send them, `GET /v1/models/{id}`, and `metadata` from a request to the
dataset, against real gateways, sim workers, a real redis-server and the `bailu` CLI in a subprocess."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from redis.asyncio import Redis

from bailu.collector.service import CollectorService
from bailu.datasets.format import PREFERENCE, SFT
from bailu.datasets.store import DatasetStore
from tests.conftest import MODEL, TEST_KEY, eventually
from tests.integration.test_cli import cli_env, run, run_json
from tests.integration.test_collector import settings as collector_settings
from tests.integration.test_feedback_gateway import stored, wait_for_record
from tests.integration.test_gateway import CHAT, assert_documented, chat_body

VERSIONED = "acme/poet@v0003"
FROST = "Frost on the pane at dawn, the garden white and still."


def client(gateway: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=30)


# --------------------------------------------------------------------------- GET /v1/models/{id}


async def test_retrieve_a_model_by_id(start_worker, start_gateway, http: httpx.AsyncClient) -> None:
    plain, versioned = await start_worker(), await start_worker(model_name=VERSIONED)
    gateway = await start_gateway([f"127.0.0.1:{plain.port}", f"127.0.0.1:{versioned.port}"])
    document = (await http.get(gateway.url + "/openapi.json")).json()
    listed = {m["id"]: m for m in (await http.get(gateway.url + "/v1/models", headers=gateway.headers)).json()["data"]}
    assert set(listed) == {MODEL, VERSIONED}

    for model_id in (MODEL, VERSIONED):
        response = await http.get(f"{gateway.url}/v1/models/{model_id}", headers=gateway.headers)
        assert response.status_code == 200, response.text
        assert response.json() == listed[model_id]
        assert response.json()["object"] == "model"
        await assert_documented(document, "get", "/v1/models/{model_id}", response)

    # The official client, which quotes the id into the path.
    async with client(gateway) as sdk:
        retrieved = await sdk.models.retrieve(VERSIONED)
        assert (retrieved.id, retrieved.object) == (VERSIONED, "model")
        with pytest.raises(openai.NotFoundError):
            await sdk.models.retrieve("nope")

    missing = await http.get(gateway.url + "/v1/models/acme/poet@v0009", headers=gateway.headers)
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {
            "message": "the model 'acme/poet@v0009' does not exist",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    await assert_documented(document, "get", "/v1/models/{model_id}", missing)

    anonymous = await http.get(f"{gateway.url}/v1/models/{MODEL}")
    assert anonymous.status_code == 401
    await assert_documented(document, "get", "/v1/models/{model_id}", anonymous)


# --------------------------------------------------------------------------- what clients send

EVERY_OPTIONAL_FIELD_AT_ITS_NO_OP: dict[str, Any] = {
    "audio": None,
    "frequency_penalty": None,
    "function_call": "none",
    "functions": [],
    "logit_bias": {},
    "logprobs": False,
    "max_completion_tokens": None,
    "metadata": {},
    "modalities": ["text"],
    "moderation": None,
    "n": None,
    "parallel_tool_calls": False,
    "prediction": None,
    "presence_penalty": None,
    "prompt_cache_key": "conversation-7",
    "prompt_cache_retention": None,
    "reasoning_effort": None,
    "response_format": {"type": "text"},
    "safety_identifier": "user-hash-1",
    "seed": None,
    "service_tier": "auto",
    "stop": None,
    "store": None,
    "stream_options": None,
    "temperature": None,
    "tool_choice": "none",
    "tools": [],
    "top_logprobs": None,
    "top_p": None,
    "user": None,
    "verbosity": None,
    "web_search_options": None,
}


async def test_the_official_client_with_every_field_and_history_from_model_dump(start_worker, start_gateway) -> None:
    worker = await start_worker(sim_output_tokens=5)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    async with client(gateway) as sdk:
        await converse(sdk)


async def converse(sdk: openai.AsyncOpenAI) -> None:
    history: list[Any] = [{"role": "user", "content": "a poem about dew"}]
    first = await sdk.chat.completions.create(model=MODEL, messages=history, **EVERY_OPTIONAL_FIELD_AT_ITS_NO_OP)
    assert first.choices[0].message.content
    # Keeping the conversation as SDK users do: the reply's full dump, nulls and all, goes back in.
    history += [first.choices[0].message.model_dump(), {"role": "user", "content": "and one about frost"}]
    second = await sdk.chat.completions.create(model=MODEL, messages=history, max_tokens=3)
    assert second.choices[0].message.content
    assert second.usage is not None
    assert second.usage.prompt_tokens > first.usage.prompt_tokens  # type: ignore[union-attr]

    stream = await sdk.chat.completions.create(
        model=MODEL,
        messages=history,
        stream=True,
        stream_options={"include_usage": True, "include_obfuscation": False},
        tools=[],
        parallel_tool_calls=True,
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None

    legacy = await sdk.completions.create(
        model=MODEL, prompt="White dew", max_tokens=4, echo=False, best_of=1, suffix=None, logit_bias=None
    )
    assert legacy.choices[0].text


async def test_a_feature_not_served_is_a_400_that_says_so(start_worker, start_gateway, http: httpx.AsyncClient) -> None:
    worker = await start_worker()
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    document = (await http.get(gateway.url + "/openapi.json")).json()
    asked = chat_body(function_call={"name": "weather"})
    response = await http.post(gateway.url + CHAT, json=asked, headers=gateway.headers)
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "unsupported value for function_call: this deployment does not support function calling "
        '(accepted: null, "none", "auto")',
        "type": "invalid_request_error",
        "param": "function_call",
        "code": "unsupported_value",
    }
    await assert_documented(document, "post", CHAT, response)

    async with client(gateway) as sdk:
        with pytest.raises(openai.BadRequestError) as info:
            await sdk.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], service_tier="flex"
            )
    assert info.value.code == "unsupported_value"
    assert info.value.param == "service_tier"

    unknown = await http.post(gateway.url + CHAT, json=chat_body(frobnicate=True), headers=gateway.headers)
    assert unknown.status_code == 400
    assert unknown.json()["error"]["message"] == "unrecognized request argument supplied: frobnicate"
    assert unknown.json()["error"]["code"] is None


# --------------------------------------------------------------------------- metadata


def written(store: DatasetStore) -> int:
    """The records the collector has committed so far."""
    return sum(len(store.batch_meta(batch)["records"]) for batch in store.batches())


async def test_metadata_is_stored_with_the_completion(start_worker, start_gateway, redis_server) -> None:
    worker = await start_worker()
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"], redis_url=redis_server.url)
    redis = Redis.from_url(redis_server.url)
    sdk = client(gateway)
    try:
        chat = await sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "dew"}], metadata={"campaign": "autumn"}
        )
        text = await sdk.completions.create(
            model=MODEL, prompt="dew", max_tokens=3, extra_body={"metadata": {"campaign": "spring", "tier": "pro"}}
        )
        untagged = await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "dew"}])
        for response_id in (chat.id, text.id, untagged.id):
            await wait_for_record(redis, response_id)
        records = [await stored(redis, response_id) for response_id in (chat.id, text.id, untagged.id)]
        assert [r.metadata if r else None for r in records] == [
            {"campaign": "autumn"},
            {"campaign": "spring", "tier": "pro"},
            {},
        ]
    finally:
        await sdk.close()
        await redis.aclose()


async def test_metadata_reaches_the_dataset_and_the_cli_counts_by_it(
    start_worker, start_gateway, redis_server, tmp_path: Path
) -> None:
    worker = await start_worker(sim_output_tokens=12)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"], redis_url=redis_server.url)
    service = CollectorService(collector_settings(redis_server.url, tmp_path / "data"))
    stop = asyncio.Event()
    runner = asyncio.create_task(service.run(stop))
    redis = Redis.from_url(redis_server.url)
    try:
        async with httpx.AsyncClient(timeout=30) as http:

            async def complete(prompt: str, metadata: dict[str, str] | None, **kw: Any) -> dict[str, Any]:
                body = chat_body(messages=[{"role": "user", "content": prompt}], temperature=1.0, **kw)
                if metadata is not None:
                    body["metadata"] = metadata
                response = await http.post(gateway.url + CHAT, json=body, headers=gateway.headers)
                assert response.status_code == 200, response.text
                await wait_for_record(redis, response.json()["id"])
                return response.json()

            async def feedback(body: dict[str, Any]) -> None:
                response = await http.post(gateway.url + "/v1/feedback", json=body, headers=gateway.headers)
                assert response.status_code == 202, response.text

            autumn = await complete("a poem about dew", {"campaign": "autumn", "tier": "pro"})
            spring = await complete("a poem about rain", {"campaign": "spring"}, n=2)
            plain = await complete("a poem about frost", None)
            await feedback({"type": "rating", "response_id": autumn["id"], "thumb": "up"})
            await feedback({
                "type": "comparison",
                "chosen": {"response_id": spring["id"], "choice_index": 0},
                "rejected": {"response_id": spring["id"], "choice_index": 1},
            })  # fmt: skip
            await feedback({"type": "edit", "response_id": plain["id"], "edited_text": FROST})
        await eventually(lambda: written(service.store) >= 4, 10)
    finally:
        stop.set()
        await runner
        await redis.aclose()

    store = service.store
    version = store.seal()
    assert version is not None
    tagged = {
        (meta["kind"], meta["source"]): (meta.get("metadata", {}), record)
        for kind in (SFT, PREFERENCE)
        for meta, record in store.records(version, kind)
    }
    assert tagged[(SFT, "rating")][0] == {"campaign": "autumn", "tier": "pro"}
    assert tagged[(SFT, "rating")][1]["messages"][0]["content"] == "a poem about dew"
    assert tagged[(PREFERENCE, "comparison")][0] == {"campaign": "spring"}
    assert tagged[(PREFERENCE, "comparison")][1]["rejected_response"] == spring["choices"][1]["message"]["content"]
    assert tagged[(SFT, "edit")][0] == {}
    assert store.manifest(version)["metadata_keys"] == {"campaign": 2, "tier": 1}

    env = cli_env(BAILU_DATASET_DIR=str(store.root))
    shown = run_json("datasets", "show", version, "--by-metadata", "campaign", cwd=tmp_path, env=env)
    assert shown["version"] == version
    assert shown["by_metadata"] == [
        {"value": "autumn", SFT: 1, PREFERENCE: 0},
        {"value": "spring", SFT: 0, PREFERENCE: 1},
        {"value": None, SFT: 1, PREFERENCE: 1},
    ]
    human = run("datasets", "show", "--by-metadata", "campaign", cwd=tmp_path, env=env)
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert "metadata keys:" in lines
    assert "  campaign: 2" in lines
    table = lines[lines.index("by metadata 'campaign':") + 1 :]
    assert [row.split() for row in table] == [
        ["VALUE", "SFT", "PREFERENCE"],
        ["autumn", "1", "0"],
        ["spring", "0", "1"],
        ["(none)", "1", "1"],
    ]
