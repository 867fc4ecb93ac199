"""Completion log and /v1/feedback at the gateway, against a real redis-server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from bailu.common import metrics as metric_names
from bailu.common import redis_keys
from bailu.common.records import CompletionRecord, FeedbackEvent
from tests.conftest import MODEL, OTHER_KEY, eventually
from tests.integration.test_gateway import CHAT, assert_documented, chat_body, sse_events


@pytest.fixture
async def stack(start_worker, start_gateway, redis_server):
    worker = await start_worker(sim_output_tokens=6)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"], redis_url=redis_server.url)
    redis = Redis.from_url(redis_server.url)
    async with httpx.AsyncClient(timeout=30) as http:
        yield gateway, http, redis
    await redis.aclose()


async def complete(gateway, http: httpx.AsyncClient, **kwargs: Any) -> dict[str, Any]:
    response = await http.post(gateway.url + CHAT, json=chat_body(**kwargs), headers=gateway.headers)
    assert response.status_code == 200, response.text
    return response.json()


async def stored(redis: Redis, response_id: str) -> CompletionRecord | None:
    data = await redis.get(redis_keys.response_key(response_id))
    return None if data is None else CompletionRecord.from_json(data)


async def feedback_events(redis: Redis) -> list[FeedbackEvent]:
    entries = await redis.xrange(redis_keys.FEEDBACK_STREAM)
    return [FeedbackEvent.from_json(fields[b"data"]) for _, fields in entries]


async def post(gateway, http, body: dict[str, Any], key: str | None = None, **headers: str) -> httpx.Response:
    auth = {"Authorization": f"Bearer {key}"} if key else gateway.headers
    return await http.post(gateway.url + "/v1/feedback", json=body, headers={**auth, **headers})


async def test_completions_are_logged_and_store_false_is_honoured(stack) -> None:
    gateway, http, redis = stack
    body = await complete(gateway, http, max_tokens=4, temperature=0.5)
    await wait_for_record(redis, body["id"])
    record = await stored(redis, body["id"])
    assert record is not None
    assert record.messages == [{"role": "user", "content": "a poem about dew"}]
    assert record.choices[0].text == body["choices"][0]["message"]["content"]
    assert record.served_model == MODEL
    assert record.model == MODEL
    assert record.sampling == {"max_tokens": 4, "temperature": 0.5}
    assert record.completion_tokens == 4
    assert record.key_id
    assert record.prompt_hash
    assert record.ttft_ms > 0
    assert record.total_ms >= record.ttft_ms
    assert await redis.xlen(redis_keys.COMPLETIONS_STREAM) == 1

    private = await complete(gateway, http, store=False)
    streamed_events = None
    async with http.stream(
        "POST", gateway.url + CHAT, json=chat_body(stream=True), headers=gateway.headers
    ) as response:
        streamed_events = await sse_events(response)
    streamed_id = streamed_events[0]["id"]
    await wait_for_record(redis, streamed_id)
    assert await stored(redis, private["id"]) is None
    record = await stored(redis, streamed_id)
    assert record is not None
    assert record.choices[0].text.split() == ["white", "dew", "settles", "on", "the", "grass"]
    assert await redis.xlen(redis_keys.COMPLETIONS_STREAM) == 2


async def wait_for_record(redis: Redis, response_id: str) -> None:
    for _ in range(100):
        if await redis.exists(redis_keys.response_key(response_id)):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{response_id} was never logged")


async def test_n_candidates_streamed_and_not(stack) -> None:
    gateway, http, redis = stack
    body = await complete(gateway, http, n=3)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert body["usage"]["completion_tokens"] == 18
    async with http.stream(
        "POST", gateway.url + CHAT, json=chat_body(n=2, stream=True), headers=gateway.headers
    ) as response:
        events = await sse_events(response)
    chunks = [e for e in events[:-1] if e["choices"]]
    texts: dict[int, str] = {0: "", 1: ""}
    finishes = {}
    for chunk in chunks:
        choice = chunk["choices"][0]
        texts[choice["index"]] += choice["delta"].get("content", "")
        finishes[choice["index"]] = choice["finish_reason"] or finishes.get(choice["index"])
    assert texts[0].split() == texts[1].split() == ["white", "dew", "settles", "on", "the", "grass"]
    assert finishes == {0: "stop", 1: "stop"}
    await wait_for_record(redis, events[0]["id"])
    record = await stored(redis, events[0]["id"])
    assert record is not None
    assert [c.index for c in record.choices] == [0, 1]


async def test_each_feedback_kind_is_recorded(stack) -> None:
    gateway, http, redis = stack
    one = await complete(gateway, http)
    pair = await complete(gateway, http, n=2)
    await wait_for_record(redis, pair["id"])
    bodies = [
        {"type": "rating", "response_id": one["id"], "thumb": "up", "tags": ["lovely"]},
        {"type": "rating", "response_id": one["id"], "score": 2, "comment": "too short"},
        {
            "type": "comparison",
            "chosen": {"response_id": pair["id"], "choice_index": 1},
            "rejected": {"response_id": pair["id"], "choice_index": 0},
        },
        # Two separate responses to the same prompt can be compared too.
        {"type": "comparison", "chosen": {"response_id": one["id"]}, "rejected": {"response_id": pair["id"]}},
        {"type": "edit", "response_id": one["id"], "edited_text": "White dew on the grass at dawn."},
    ]
    ids = []
    for body in bodies:
        response = await post(gateway, http, body)
        assert response.status_code == 202, response.text
        assert response.json()["object"] == "feedback"
        ids.append(response.json()["id"])
    events = await feedback_events(redis)
    assert [e.id for e in events] == ids
    assert [e.kind for e in events] == ["rating", "rating", "comparison", "comparison", "edit"]
    assert events[0].thumb == "up"
    assert events[0].tags == ["lovely"]
    assert events[1].score == 2
    assert events[1].comment == "too short"
    assert events[2].chosen is not None
    assert events[2].chosen.choice_index == 1
    assert events[4].edited_text == "White dew on the grass at dawn."
    assert len({e.key_id for e in events}) == 1


async def test_retried_feedback_is_recorded_once(stack) -> None:
    gateway, http, redis = stack
    one = await complete(gateway, http)
    body = {"type": "rating", "response_id": one["id"], "thumb": "down"}
    first = await post(gateway, http, body, **{"Idempotency-Key": "retry-1"})
    again = await post(gateway, http, body, **{"Idempotency-Key": "retry-1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    by_body_id = {**body, "feedback_id": "client-7"}
    assert (await post(gateway, http, by_body_id)).json()["id"] == (await post(gateway, http, by_body_id)).json()["id"]
    assert len(await feedback_events(redis)) == 2
    conflict = await post(gateway, http, {**body, "thumb": "up"}, **{"Idempotency-Key": "retry-1"})
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "idempotency_key_reused"
    # Another API key using the same idempotency key is a different request.
    assert (await post(gateway, http, body, key=OTHER_KEY, **{"Idempotency-Key": "retry-1"})).status_code == 404


async def test_unknown_and_foreign_responses_are_404(stack) -> None:
    gateway, http, redis = stack
    one = await complete(gateway, http)
    unknown = await post(gateway, http, {"type": "rating", "response_id": "chatcmpl-nope", "thumb": "up"})
    foreign = await post(gateway, http, {"type": "rating", "response_id": one["id"], "thumb": "up"}, key=OTHER_KEY)
    for response in (unknown, foreign):
        assert response.status_code == 404
        assert response.json()["error"]["param"] == "response_id"
    # The two look the same: nothing tells an id that exists elsewhere from one that never did.
    assert unknown.json()["error"]["message"].replace("chatcmpl-nope", "X") == foreign.json()["error"][
        "message"
    ].replace(one["id"], "X")
    assert await feedback_events(redis) == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"type": "rating", "response_id": "x"}, "thumb"),
        ({"type": "rating", "response_id": "x", "thumb": "up", "score": 3}, "thumb"),
        ({"type": "rating", "response_id": "x", "score": 9}, "score"),
        ({"type": "rating", "thumb": "up"}, "response_id"),
        ({"type": "edit", "response_id": "x"}, "edited_text"),
        ({"type": "edit", "response_id": "x", "edited_text": "ok", "thumb": "up"}, "thumb"),
        ({"type": "comparison", "chosen": {"response_id": "a"}}, "rejected"),
        ({"type": "comparison", "chosen": {"response_id": "a"}, "rejected": {"response_id": "a"}}, "rejected"),
        ({"type": "praise", "response_id": "x"}, "type"),
        ({"type": "rating", "response_id": "x", "thumb": "up", "tags": ["x" * 65]}, "tags[0]"),
        ({"type": "rating", "response_id": "x", "thumb": "up", "extra": 1}, "extra"),
    ],
)
async def test_invalid_feedback_is_400(stack, body, param) -> None:
    gateway, http, _ = stack
    response = await post(gateway, http, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


async def test_comparison_of_different_prompts_is_400(stack) -> None:
    gateway, http, _ = stack
    a = await complete(gateway, http)
    b = await complete(gateway, http, messages=[{"role": "user", "content": "something else"}])
    response = await post(
        gateway, http, {"type": "comparison", "chosen": {"response_id": a["id"]}, "rejected": {"response_id": b["id"]}}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "rejected.response_id"


async def test_redis_down_refuses_feedback_but_serves_completions(stack, redis_server) -> None:
    gateway, http, redis = stack
    one = await complete(gateway, http)
    await wait_for_record(redis, one["id"])
    redis_server.stop()
    response = await post(gateway, http, {"type": "rating", "response_id": one["id"], "thumb": "up"})
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert json.loads(response.text)["error"]["code"] == "service_unavailable"
    # Generation is unaffected; the log write failure is counted, not raised.
    assert (await complete(gateway, http))["choices"][0]["message"]["content"]
    log = gateway.app.state.completion_log
    await eventually(lambda: log._queue.empty(), 10)
    metrics = (await http.get(gateway.url + "/metrics")).text
    assert 'bailu_gateway_completion_log_dropped_total{reason="redis_error"} 1.0' in metrics


async def test_feedback_without_redis_is_503(start_worker, start_gateway) -> None:
    worker = await start_worker()
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    async with httpx.AsyncClient() as http:
        response = await post(gateway, http, {"type": "rating", "response_id": "x", "thumb": "up"})
    assert response.status_code == 503


async def test_feedback_is_in_the_openapi_schema(stack) -> None:
    gateway, http, _ = stack
    schema = (await http.get(gateway.url + "/openapi.json")).json()
    operation = schema["paths"]["/v1/feedback"]["post"]
    assert set(operation["responses"]) == {"202", "400", "401", "403", "404", "409", "413", "503"}
    assert any(p["name"] == "Idempotency-Key" for p in operation["parameters"])
    # Real answers, as documented.
    one = await complete(gateway, http)
    body = {"type": "rating", "response_id": one["id"], "thumb": "up"}
    answers = [
        await post(gateway, http, body, **{"Idempotency-Key": "doc-1"}),
        await post(gateway, http, {**body, "thumb": "down"}, **{"Idempotency-Key": "doc-1"}),
        await post(gateway, http, {**body, "response_id": "chatcmpl-nope"}),
        await post(gateway, http, {**body, "score": 3}),
        await post(gateway, http, body, key="wrong"),
    ]
    assert [a.status_code for a in answers] == [202, 409, 404, 400, 401]
    for answer in answers:
        await assert_documented(schema, "post", "/v1/feedback", answer)


async def test_feedback_requests_have_their_own_route_label(stack) -> None:
    gateway, http, _ = stack
    one = await complete(gateway, http)
    assert (await post(gateway, http, {"type": "rating", "response_id": one["id"], "thumb": "up"})).status_code == 202
    text = (await http.get(gateway.url + "/metrics")).text
    assert f'{metric_names.GATEWAY_REQUESTS}{{route="/v1/feedback",status="202"}} 1.0' in text
    assert f'{metric_names.GATEWAY_REQUEST_DURATION}_count{{route="/v1/feedback"}} 1.0' in text
    assert 'route="other"' not in text
