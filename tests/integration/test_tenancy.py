"""Managed API keys under two gateway replicas sharing one real redis-server: scopes, quotas (requests, tokens,
concurrent streams) enforced across replicas with OpenAI's headers, revocation and expiry seen by both, and
Redis going away (local limits, generation goes on)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from bailu.common import metrics as metric_names
from bailu.keys.model import FEEDBACK, Limits
from bailu.keys.store import KeyRegistry
from tests.conftest import RedisServer, RunningGateway
from tests.integration.test_gateway import CHAT, chat_body

pytestmark = pytest.mark.usefixtures("clean_bailu_env")

HEADERS = ("limit", "remaining", "reset")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def replicas(start_worker, start_gateway, redis_server: RedisServer) -> tuple[RunningGateway, RunningGateway]:
    worker = await start_worker(sim_itl_ms=2)
    address = f"127.0.0.1:{worker.port}"
    settings: dict[str, Any] = {"redis_url": redis_server.url, "redis_timeout_s": 0.5, "key_cache_s": 1.0}
    return await start_gateway([address], **settings), await start_gateway([address], **settings)


@pytest.fixture
def keys(redis: Redis) -> KeyRegistry:
    return KeyRegistry(redis)


def error_of(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


async def test_a_key_with_rpm_3_gets_429_on_its_4th_request_on_either_replica(replicas, keys, http) -> None:
    a, b = replicas
    secret, record = await keys.create("writer-7", limits=Limits(rpm=3))
    remaining = []
    for gateway in (a, b, a):
        response = await http.post(gateway.url + CHAT, json=chat_body(max_tokens=2), headers=bearer(secret))
        assert response.status_code == 200, response.text
        assert response.headers["x-ratelimit-limit-requests"] == "3"
        assert "x-ratelimit-limit-tokens" not in response.headers  # no tokens limit, no tokens headers
        remaining.append(int(response.headers["x-ratelimit-remaining-requests"]))
    assert remaining == [2, 1, 0]
    refused = await http.post(b.url + CHAT, json=chat_body(max_tokens=2), headers=bearer(secret))
    assert refused.status_code == 429
    error = error_of(refused)
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert record.id in error["message"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert {f"x-ratelimit-{h}-requests" for h in HEADERS} <= refused.headers.keys()
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    metrics = (await http.get(b.url + "/metrics")).text
    assert f'{metric_names.GATEWAY_QUOTA_REJECTIONS}{{limit="requests"}} 1.0' in metrics


async def test_tokens_per_minute_count_the_streamed_tokens(replicas, keys, http) -> None:
    a, b = replicas
    secret, _ = await keys.create("tokens", limits=Limits(tpm=80))
    body = chat_body(max_tokens=64, stream=True, stream_options={"include_usage": True})
    async with http.stream("POST", a.url + CHAT, json=body, headers=bearer(secret)) as response:
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit-tokens"] == "80"
        before = int(response.headers["x-ratelimit-remaining-tokens"])
        events = [json.loads(line[6:]) for line in [x async for x in response.aiter_lines()] if line[6:7] == "{"]
    usage = events[-1]["usage"]
    used = usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] == 64
    # The stream's tokens were debited when it ended: the other replica refuses a request whose prompt needs
    # more than is left (80 a minute refill about 1.3 tokens a second).
    long_prompt = chat_body(max_tokens=2, messages=[{"role": "user", "content": "dew " * 50}])
    refused = await http.post(b.url + CHAT, json=long_prompt, headers=bearer(secret))
    assert refused.status_code == 429, (before, used, refused.text)
    error = error_of(refused)
    assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")
    left = int(refused.headers["x-ratelimit-remaining-tokens"])
    assert left <= 80 - used + 20  # what the stream used is gone (give or take 15 s of refill)
    assert int(refused.headers["Retry-After"]) >= 1
    # A prompt that fits in what is left still goes through.
    small = await http.post(b.url + CHAT, json=chat_body(max_tokens=1), headers=bearer(secret))
    assert small.status_code == 200, small.text


async def test_concurrent_streams_are_limited_across_replicas(start_worker, start_gateway, redis_server, keys, http):
    worker = await start_worker(sim_itl_ms=50)
    address = f"127.0.0.1:{worker.port}"
    a = await start_gateway([address], redis_url=redis_server.url)
    b = await start_gateway([address], redis_url=redis_server.url)
    secret, _ = await keys.create("streams", limits=Limits(concurrency=2))
    body = chat_body(max_tokens=60, stream=True)
    async with (
        http.stream("POST", a.url + CHAT, json=body, headers=bearer(secret)) as first,
        http.stream("POST", b.url + CHAT, json=body, headers=bearer(secret)) as second,
    ):
        assert (first.status_code, second.status_code) == (200, 200)
        for gateway in (a, b):
            third = await http.post(gateway.url + CHAT, json=chat_body(max_tokens=2), headers=bearer(secret))
            assert third.status_code == 429, third.text
            assert error_of(third)["code"] == "concurrency_limit_exceeded"
        # Parallel attempts while both slots are held: none gets through.
        burst = await asyncio.gather(
            *(http.post(g.url + CHAT, json=chat_body(max_tokens=2), headers=bearer(secret)) for g in (a, b) * 3)
        )
        assert {r.status_code for r in burst} == {429}
    # Both streams closed (the client left mid-stream): their slots are released once the gateways notice.
    deadline = time.monotonic() + 10
    while (again := await http.post(a.url + CHAT, json=chat_body(max_tokens=2), headers=bearer(secret))).status_code:
        if again.status_code == 200 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert again.status_code == 200, again.text


async def test_a_revoked_key_is_refused_by_both_replicas_within_5s(replicas, keys, http) -> None:
    secret, record = await keys.create("leaver")
    for gateway in replicas:
        ok = await http.post(gateway.url + CHAT, json=chat_body(max_tokens=2), headers=bearer(secret))
        assert ok.status_code == 200, ok.text
    await keys.revoke(record.id)
    revoked_at = time.monotonic()
    refused: dict[str, httpx.Response] = {}

    async def both_refuse() -> bool:
        for gateway in replicas:
            if gateway.url not in refused:
                response = await http.post(gateway.url + CHAT, json=chat_body(max_tokens=2), headers=bearer(secret))
                if response.status_code == 401:
                    refused[gateway.url] = response
        return len(refused) == 2

    while not await both_refuse():
        assert time.monotonic() - revoked_at < 5.0, "a replica still accepts the revoked key after 5 s"
        await asyncio.sleep(0.1)
    for response in refused.values():
        error = error_of(response)
        assert (error["type"], error["code"]) == ("authentication_error", "api_key_revoked")
        assert record.id in error["message"]


async def test_an_expired_key_is_refused_with_its_own_code(replicas, keys, http) -> None:
    secret, _ = await keys.create("short-lived", expires_in_s=1.0)
    await asyncio.sleep(1.1)
    response = await http.post(replicas[0].url + CHAT, json=chat_body(max_tokens=2), headers=bearer(secret))
    assert response.status_code == 401
    assert error_of(response)["code"] == "api_key_expired"


async def test_a_feedback_only_key_gets_403_on_completions(replicas, keys, http) -> None:
    secret, record = await keys.create("rater", scopes=frozenset({FEEDBACK}))
    for path, body in ((CHAT, chat_body()), ("/v1/completions", {"model": "test-model", "prompt": "hi"})):
        response = await http.post(replicas[0].url + path, json=body, headers=bearer(secret))
        assert response.status_code == 403, response.text
        error = error_of(response)
        assert (error["type"], error["code"]) == ("permission_error", "missing_scope")
        assert "'generate'" in error["message"]
        assert record.id in error["message"]
    # The scope it has lets it through to feedback (a response id it does not own is a 404, not a 403).
    feedback = {"type": "rating", "response_id": "chatcmpl-unknown", "thumb": "up"}
    response = await http.post(replicas[1].url + "/v1/feedback", json=feedback, headers=bearer(secret))
    assert response.status_code == 404, response.text
    metrics = (await http.get(replicas[0].url + "/metrics")).text
    assert f'{metric_names.GATEWAY_AUTH_REJECTIONS}{{reason="scope"}} 2.0' in metrics


async def test_unknown_and_missing_keys_are_401s(replicas, http) -> None:
    unknown = await http.post(replicas[0].url + CHAT, json=chat_body(), headers=bearer("bailu-not-a-key"))
    assert unknown.status_code == 401
    assert error_of(unknown)["code"] == "invalid_api_key"
    missing = await http.post(replicas[0].url + CHAT, json=chat_body())
    assert missing.status_code == 401
    assert "missing API key" in error_of(missing)["message"]


async def test_with_redis_stopped_local_limits_apply_and_generation_continues(
    replicas, keys, redis_server: RedisServer, http
) -> None:
    a, _b = replicas
    secret, _ = await keys.create("offline", limits=Limits(rpm=3))
    first = await http.post(a.url + CHAT, json=chat_body(max_tokens=2), headers=bearer(secret))
    assert first.status_code == 200, first.text
    redis_server.stop()
    # The key was seen: this replica keeps it, and counts it against its own buckets (full: 3 per minute).
    statuses = []
    for _ in range(4):
        response = await http.post(a.url + CHAT, json=chat_body(max_tokens=2), headers=bearer(secret))
        statuses.append(response.status_code)
    assert statuses == [200, 200, 200, 429], statuses
    # A static key generates as before.
    static = await http.post(a.url + CHAT, json=chat_body(max_tokens=2), headers=a.headers)
    assert static.status_code == 200, static.text
    metrics = (await http.get(a.url + "/metrics")).text
    assert f'{metric_names.GATEWAY_QUOTA_FALLBACKS}{{op="admit"}}' in metrics
    # A key this replica never saw cannot be checked: 503 (retry), not 401.
    never_seen = await http.post(a.url + CHAT, json=chat_body(max_tokens=2), headers=bearer("bailu-unseen"))
    assert never_seen.status_code == 503, never_seen.text
    assert "key store" in error_of(never_seen)["message"]
    # Redis back: decisions are Redis's again (within the replica's retry interval), and its bucket for the key
    # still holds 2 requests of 3: the local refusals above took nothing from it.
    redis_server.start()
    deadline = time.monotonic() + 10
    while (again := await http.post(a.url + CHAT, json=chat_body(max_tokens=2), headers=bearer(secret))).status_code:
        if again.status_code == 200 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert again.status_code == 200, again.text
    assert again.headers["x-ratelimit-remaining-requests"] == "1"


async def test_a_request_may_lower_its_priority_but_not_raise_it(replicas, keys, http) -> None:
    batch_secret, _ = await keys.create("sweeps", priority="batch")
    interactive_secret, _ = await keys.create("writer")
    url = replicas[0].url + CHAT
    raised = await http.post(
        url, json=chat_body(max_tokens=2), headers={**bearer(batch_secret), "X-Bailu-Priority": "interactive"}
    )
    assert raised.status_code == 403, raised.text
    assert (error_of(raised)["type"], error_of(raised)["code"]) == ("permission_error", "priority_not_allowed")
    lowered = await http.post(
        url, json=chat_body(max_tokens=2), headers={**bearer(interactive_secret), "X-Bailu-Priority": "batch"}
    )
    assert lowered.status_code == 200, lowered.text
    for name, value in (("X-Bailu-Priority", "urgent"), ("X-Bailu-TTFT-Deadline-Ms", "soon")):
        bad = await http.post(url, json=chat_body(max_tokens=2), headers={**bearer(interactive_secret), name: value})
        assert bad.status_code == 400, bad.text
        assert error_of(bad)["param"] == name.lower()
