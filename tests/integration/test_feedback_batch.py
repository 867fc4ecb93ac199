"""`POST /v1/feedback/batch` and the record-once script, against a real redis-server and a sim worker."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from bailu.common import metrics as metric_names
from bailu.common import redis_keys
from bailu.common.errors import InvalidRequest, NotFound
from bailu.common.metrics import GatewayMetrics
from bailu.common.records import Choice, CompletionRecord, ResponseRef
from bailu.gateway.completion_log import CompletionLog
from bailu.gateway.feedback_record import FeedbackRecorder, Recorded, Recording
from bailu.keys.model import GENERATE
from bailu.keys.store import KeyRegistry
from tests.conftest import OTHER_KEY, TEST_KEY
from tests.integration.test_feedback_gateway import feedback_events, post, wait_for_record
from tests.integration.test_gateway import CHAT, assert_documented, chat_body

BATCH = "/v1/feedback/batch"


@pytest.fixture
async def stack(start_worker, start_gateway, redis_server):
    worker = await start_worker(sim_output_tokens=4)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"], redis_url=redis_server.url, feedback_batch_max_events=8)
    redis = Redis.from_url(redis_server.url)
    async with httpx.AsyncClient(timeout=30) as http:
        yield gateway, http, redis
    await redis.aclose()


async def post_batch(gateway, http, events: Any, key: str = TEST_KEY, **extra: Any) -> httpx.Response:
    body = {"events": events, **extra}
    return await http.post(gateway.url + BATCH, json=body, headers={"Authorization": f"Bearer {key}"})


async def completed(gateway, http, redis, key: str = TEST_KEY, **kwargs: Any) -> str:
    """A completion answered to `key`, written to the log; its id."""
    response = await http.post(gateway.url + CHAT, json=chat_body(**kwargs), headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    response_id: str = response.json()["id"]
    await wait_for_record(redis, response_id)
    return response_id


def rating(response_id: str, feedback_id: str, thumb: str = "up", **extra: Any) -> dict[str, Any]:
    return {"type": "rating", "response_id": response_id, "thumb": thumb, "feedback_id": feedback_id, **extra}


def comparison(chosen: str, rejected: str, feedback_id: str) -> dict[str, Any]:
    return {
        "type": "comparison",
        "chosen": {"response_id": chosen},
        "rejected": {"response_id": rejected},
        "feedback_id": feedback_id,
    }


def statuses(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "feedback.batch"
    assert [r["index"] for r in body["data"]] == list(range(len(body["data"])))
    return [r["status"] for r in body["data"]]


async def test_each_event_gets_its_own_result_in_order(stack) -> None:
    gateway, http, redis = stack
    one = await completed(gateway, http, redis)
    pair = await completed(gateway, http, redis, n=2)
    other_prompt = await completed(gateway, http, redis, messages=[{"role": "user", "content": "something else"}])
    events: list[Any] = [
        rating(one, "e0"),
        rating(one, "e1", score=3),  # thumb and score: 400
        rating("chatcmpl-nope", "e2"),  # unknown: 404
        {"type": "edit", "response_id": one, "edited_text": "White dew at dawn."},  # no feedback_id: 400
        "not an event",
        {
            "type": "comparison",
            "chosen": {"response_id": pair, "choice_index": 1},
            "rejected": {"response_id": pair, "choice_index": 0},
            "feedback_id": "e5",
        },
        rating(pair, "e6", choice_index=5),  # no such candidate: 400
        comparison(one, other_prompt, "e7"),
    ]
    response = await post_batch(gateway, http, events)
    assert statuses(response) == [202, 400, 404, 400, 400, 202, 400, 400]
    data = response.json()["data"]
    params = [r["error"]["param"] if r["error"] else None for r in data]
    assert params == [None, "thumb", "response_id", "feedback_id", None, None, "response_id", "rejected.response_id"]
    assert data[2]["error"]["message"] == "no response 'chatcmpl-nope' that this API key can give feedback on"
    assert data[6]["error"]["message"] == f"response '{pair}' has no candidate 5"
    assert data[7]["error"]["message"] == "chosen and rejected must answer the same prompt"
    assert all(r["id"] is None for r in data if r["status"] != 202)
    recorded = await feedback_events(redis)
    assert [e.id for e in recorded] == [data[0]["id"], data[5]["id"]]
    assert [e.kind for e in recorded] == ["rating", "comparison"]
    assert recorded[1].chosen == ResponseRef(pair, 1)
    # The same event alone at /v1/feedback is refused with the same error.
    alone = await post(gateway, http, {k: v for k, v in events[1].items() if k != "feedback_id"})
    assert alone.status_code == 400
    assert alone.json()["error"] == data[1]["error"]


async def test_a_retried_batch_records_nothing_twice(stack) -> None:
    gateway, http, redis = stack
    one = await completed(gateway, http, redis)
    events = [rating(one, f"retry-{i}", thumb="up" if i % 2 else "down") for i in range(5)]
    first = await post_batch(gateway, http, events)
    again = await post_batch(gateway, http, events)
    assert statuses(first) == statuses(again) == [202] * 5
    ids = [r["id"] for r in first.json()["data"]]
    assert [r["id"] for r in again.json()["data"]] == ids
    assert len(set(ids)) == 5
    assert [e.id for e in await feedback_events(redis)] == ids
    # A retry in which one event changed: that event alone is a 409; a new one is recorded.
    flipped = "up" if events[2]["thumb"] == "down" else "down"
    changed = [*events[:2], {**events[2], "thumb": flipped}, rating(one, "new")]
    response = await post_batch(gateway, http, changed)
    assert statuses(response) == [202, 202, 409, 202]
    data = response.json()["data"]
    assert (data[2]["error"]["code"], data[2]["error"]["param"]) == ("idempotency_key_reused", "feedback_id")
    assert [r["id"] for r in data[:2]] == ids[:2]
    assert len(await feedback_events(redis)) == 6
    # The same feedback_id and body through /v1/feedback is the same event too.
    single = await post(gateway, http, events[4])
    assert single.status_code == 202
    assert single.json()["id"] == ids[4]
    assert len(await feedback_events(redis)) == 6


async def test_the_same_feedback_id_twice_in_one_batch(stack) -> None:
    gateway, http, redis = stack
    one = await completed(gateway, http, redis)
    response = await post_batch(gateway, http, [rating(one, "twin"), rating(one, "twin"), rating(one, "twin", "down")])
    assert statuses(response) == [202, 202, 409]
    data = response.json()["data"]
    assert data[0]["id"] == data[1]["id"]
    assert len(await feedback_events(redis)) == 1


async def test_another_keys_response_is_a_404_for_that_event_only(stack) -> None:
    gateway, http, redis = stack
    mine = await completed(gateway, http, redis)
    theirs = await completed(gateway, http, redis, key=OTHER_KEY)
    response = await post_batch(
        gateway,
        http,
        [
            rating(mine, "a"),
            rating(theirs, "b"),
            comparison(mine, theirs, "c"),
        ],
    )
    assert statuses(response) == [202, 404, 404]
    data = response.json()["data"]
    assert (data[1]["error"]["param"], data[2]["error"]["param"]) == ("response_id", "rejected.response_id")
    # Another key's response and one that never existed look the same.
    unknown = await post_batch(gateway, http, [rating("chatcmpl-never", "d")])
    assert unknown.json()["data"][0]["error"]["message"].replace("chatcmpl-never", "X") == data[1]["error"][
        "message"
    ].replace(theirs, "X")
    # The other key gets its own response, and its feedback_id "a" is not the first key's.
    own = await post_batch(gateway, http, [rating(theirs, "a"), rating(mine, "e")], key=OTHER_KEY)
    assert statuses(own) == [202, 404]
    assert own.json()["data"][0]["id"] != data[0]["id"]
    events = await feedback_events(redis)
    assert [e.target.response_id for e in events if e.target] == [mine, theirs]
    assert len({e.key_id for e in events}) == 2


@pytest.mark.parametrize(
    ("content", "param", "message"),
    [
        (b"", None, "the request body is missing: send a JSON object"),
        (b"{not json", None, "the request body is not valid JSON"),
        (b"[1]", None, "the request body must be a JSON object"),
        (b"{}", "events", "missing required parameter: events"),
        (b'{"events": {}}', "events", "invalid value for events: Input should be a valid list"),
        (b'{"events": []}', "events", "events is empty: send at least one event"),
        (b'{"events": [{}], "more": 1}', "more", "unrecognized request argument supplied: more"),
        (b"[" * 100_000, None, "the request body is not valid JSON"),
    ],
)
async def test_a_body_that_is_not_a_batch_is_a_400(stack, content: bytes, param: str | None, message: str) -> None:
    gateway, http, redis = stack
    response = await http.post(
        gateway.url + BATCH, content=content, headers={**gateway.headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert response.json()["error"]["message"] == message
    assert await feedback_events(redis) == []


async def test_more_events_than_the_limit_is_a_400_and_records_none(stack) -> None:
    gateway, http, redis = stack
    one = await completed(gateway, http, redis)
    at_limit = await post_batch(gateway, http, [rating(one, f"l{i}") for i in range(8)])
    assert statuses(at_limit) == [202] * 8
    over = await post_batch(gateway, http, [rating(one, f"o{i}") for i in range(9)])
    assert over.status_code == 400
    assert over.json()["error"]["param"] == "events"
    assert "at most 8 (BAILU_GATEWAY_FEEDBACK_BATCH_MAX_EVENTS)" in over.json()["error"]["message"]
    assert len(await feedback_events(redis)) == 8


async def test_a_key_without_the_feedback_scope_gets_403(stack) -> None:
    gateway, http, redis = stack
    one = await completed(gateway, http, redis)
    secret, _ = await KeyRegistry(redis).create("writer", scopes=frozenset({GENERATE}))
    response = await post_batch(gateway, http, [rating(one, "s")], key=secret)
    assert response.status_code == 403
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("permission_error", "missing_scope")
    assert "'feedback'" in error["message"]
    # Even a body that is no batch: the scope is checked first.
    assert (await post_batch(gateway, http, [], key=secret)).status_code == 403
    assert await feedback_events(redis) == []


async def test_batch_events_are_counted_and_the_route_has_its_own_label(stack) -> None:
    gateway, http, redis = stack
    one = await completed(gateway, http, redis)
    events = [rating(one, "m0"), rating(one, "m0"), rating("chatcmpl-nope", "m1"), {"type": "edit"}, []]
    assert statuses(await post_batch(gateway, http, events)) == [202, 202, 404, 400, 400]
    text = (await http.get(gateway.url + "/metrics")).text
    for kind, outcome in [("rating", "accepted"), ("rating", "duplicate"), ("rating", "NotFound"),
                          ("edit", "InvalidRequest"), ("unknown", "InvalidRequest")]:  # fmt: skip
        assert f'{metric_names.GATEWAY_FEEDBACK}{{kind="{kind}",outcome="{outcome}"}} 1.0' in text, kind
    assert f'{metric_names.GATEWAY_REQUESTS}{{route="{BATCH}",status="200"}} 1.0' in text
    assert f'{metric_names.GATEWAY_REQUEST_DURATION}_count{{route="{BATCH}"}} 1.0' in text
    assert 'route="other"' not in text


async def test_batch_answers_are_as_the_openapi_schema_documents(stack) -> None:
    gateway, http, redis = stack
    document = (await http.get(gateway.url + "/openapi.json")).json()
    one = await completed(gateway, http, redis)
    answers = [
        await post_batch(gateway, http, [rating(one, "d0"), rating("chatcmpl-nope", "d1"), {"type": "rating"}]),
        await post_batch(gateway, http, []),
        await post_batch(gateway, http, [rating(one, "d2")], key="wrong"),
    ]
    assert [a.status_code for a in answers] == [200, 400, 401]
    for answer in answers:
        await assert_documented(document, "post", BATCH, answer)


async def test_redis_down_is_a_503_for_the_batch(stack, redis_server) -> None:
    gateway, http, redis = stack
    one = await completed(gateway, http, redis)
    redis_server.stop()
    response = await post_batch(gateway, http, [rating(one, "r0")])
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["error"]["code"] == "service_unavailable"


async def test_without_redis_the_batch_is_a_503(start_worker, start_gateway) -> None:
    worker = await start_worker()
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    async with httpx.AsyncClient() as http:
        response = await post_batch(gateway, http, [rating("x", "y")])
    assert response.status_code == 503


# The recorder itself: records queued here but not yet written, and the settle wait for another replica's.


def record_of(response_id: str, key_id: str, prompt_hash: str, choices: int = 1) -> CompletionRecord:
    return CompletionRecord(
        id=response_id,
        created=time.time(),
        key_id=key_id,
        model="m",
        served_model="m",
        messages=[{"role": "user", "content": "hi"}],
        prompt=None,
        choices=[Choice(i, f"answer {i}", "stop") for i in range(choices)],
        sampling={},
        prompt_tokens=1,
        completion_tokens=2,
        ttft_ms=1.0,
        total_ms=2.0,
        request_id="r",
        prompt_hash=prompt_hash,
    )


def recording(*refs: tuple[str, int], idem: str = "") -> Recording:
    params = ("response_id",) if len(refs) == 1 else ("chosen.response_id", "rejected.response_id")
    named = tuple((ResponseRef(rid, choice), param) for (rid, choice), param in zip(refs, params, strict=True))
    return Recording(refs=named, feedback_id=f"fb-{len(refs)}-{idem}", body_hash="h", data="{}", idempotency=idem)


async def test_records_queued_here_are_checked_without_redis_knowing_them(redis) -> None:
    log = CompletionLog(redis, GatewayMetrics(CollectorRegistry()), retention_s=60, max_stream_len=1000)
    log.submit(record_of("queued-mine", "k1", "p1", choices=2))  # the writer is not started: it stays queued
    log.submit(record_of("queued-theirs", "k2", "p1"))
    for response_id, prompt in (("stored-mine", "p1"), ("stored-other-prompt", "p2")):
        await redis.set(redis_keys.response_key(response_id), record_of(response_id, "k1", prompt).to_json())
    recorder = FeedbackRecorder(redis, log, idempotency_ttl_s=60, settle_s=0.01)
    outcomes = await recorder.record(
        "k1",
        [
            recording(("queued-mine", 1)),
            recording(("queued-mine", 0), ("stored-mine", 0)),
            recording(("queued-theirs", 0)),
            recording(("queued-mine", 2)),
            recording(("queued-mine", 0), ("stored-other-prompt", 0)),
        ],
    )
    assert isinstance(outcomes[0], Recorded)
    assert isinstance(outcomes[1], Recorded)
    assert isinstance(outcomes[2], NotFound)
    assert isinstance(outcomes[3], InvalidRequest)
    assert outcomes[3].message == "response 'queued-mine' has no candidate 2"
    assert isinstance(outcomes[4], InvalidRequest)
    assert outcomes[4].param == "rejected.response_id"
    assert await redis.xlen(redis_keys.FEEDBACK_STREAM) == 2


async def test_an_unknown_response_is_asked_again_after_the_settle_time(redis) -> None:
    log = CompletionLog(redis, GatewayMetrics(CollectorRegistry()), retention_s=60, max_stream_len=1000)
    recorder = FeedbackRecorder(redis, log, idempotency_ttl_s=60, settle_s=0.5)

    async def another_replica_writes_it() -> None:
        await asyncio.sleep(0.1)
        await redis.set(redis_keys.response_key("late"), record_of("late", "k1", "p").to_json())

    writer = asyncio.create_task(another_replica_writes_it())
    started = time.monotonic()
    late, never = await recorder.record("k1", [recording(("late", 0)), recording(("never", 0))])
    await writer
    assert isinstance(late, Recorded)
    assert isinstance(never, NotFound)
    # Both were asked again after one shared wait, not one wait each.
    assert 0.5 <= time.monotonic() - started < 1.0
    # Another key's response is no unknown one: refused at once, without the wait.
    started = time.monotonic()
    [foreign] = await recorder.record("k2", [recording(("late", 0))])
    assert isinstance(foreign, NotFound)
    assert time.monotonic() - started < 0.4
