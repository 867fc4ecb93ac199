"""Per-key quotas on a real redis-server, shared by several `Quotas` (gateway replicas): request and token
buckets, concurrency leases, their Redis names' expiry, and the per-replica fallback while Redis is stopped or
hangs."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bailu.common import metrics as metric_names
from bailu.common import redis_keys
from bailu.common.errors import ConcurrencyLimited, RateLimited, TokensRateLimited
from bailu.common.metrics import GatewayMetrics
from bailu.gateway.errors import error_response
from bailu.gateway.quotas import QuotaGrant, Quotas
from bailu.keys.model import ApiKey, Limits, hash_key, new_key, new_key_id
from tests.conftest import RedisServer, free_port

QuotasFactory = Callable[..., Quotas]


def make_key(**limits: int) -> ApiKey:
    return ApiKey(id=new_key_id(), name="writer-7", hash=hash_key(new_key()), limits=Limits(**limits))


def remaining(admission: QuotaGrant, name: str) -> int:
    return int(admission.headers[f"x-ratelimit-remaining-{name}"])


def count(quotas: Quotas, name: str, **labels: str) -> float:
    """A sample of the replica's quota counters (`name` one of the catalogue's names)."""
    counters = (quotas.metrics.quota_rejections, quotas.metrics.quota_fallbacks)
    samples = [s for c in counters for family in c.collect() for s in family.samples]
    return sum(s.value for s in samples if s.name == name and s.labels == labels)


async def reconnected(quotas: Quotas, timeout: float = 10.0) -> None:
    """Wait until the replica's Redis client answers again (its pooled connections died with the server)."""
    assert quotas.redis is not None
    deadline = time.monotonic() + timeout
    while True:
        try:
            await quotas.redis.ping()
            return
        except (RedisError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def admit_until(
    quotas: Quotas, key: ApiKey, ok: Callable[[QuotaGrant], bool], timeout: float = 15.0
) -> QuotaGrant:
    """Admit until an admission satisfies `ok` (refusals and other admissions are retried, settled at once)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            admission = await quotas.admit(key, tokens=1)
        except RateLimited:
            admission = None
        if admission is not None and ok(admission):
            return admission
        if admission is not None:
            await admission.settle(1)
        if time.monotonic() > deadline:
            raise TimeoutError(f"no admission as wanted within {timeout}s")
        await asyncio.sleep(0.05)


@pytest.fixture
async def make_quotas(redis_server: RedisServer) -> AsyncIterator[QuotasFactory]:
    """`Quotas` of their own replica each: their own Redis client and metrics registry."""
    made: list[tuple[Quotas, Redis]] = []

    def make(url: str | None = None, **overrides: Any) -> Quotas:
        client = Redis.from_url(url or redis_server.url)
        values: dict[str, Any] = {"lease_ttl_s": 30.0, "timeout_s": 5.0, "retry_interval_s": 0.0}
        values.update(overrides)
        quotas = Quotas(client, GatewayMetrics(CollectorRegistry()), **values)
        made.append((quotas, client))
        return quotas

    yield make
    for quotas, client in made:
        await quotas.close()
        await client.aclose()


async def test_the_fourth_request_in_a_minute_is_refused_with_headers_and_retry_after(
    make_quotas: QuotasFactory,
) -> None:
    quotas, key = make_quotas(), make_key(rpm=3)
    for left in (2, 1, 0):
        admission = await quotas.admit(key, tokens=10)
        assert not admission.local
        assert admission.headers["x-ratelimit-limit-requests"] == "3"
        assert remaining(admission, "requests") == left
        await admission.settle(20)
    with pytest.raises(RateLimited) as refused:
        await quotas.admit(key, tokens=10)
    error = refused.value
    assert type(error) is RateLimited
    assert f"Rate limit reached for key {key.id} (writer-7) on requests per minute: limit 3, used 3, requested 1." in (
        error.message
    )
    assert error.retry_after_s is not None
    assert 0 < error.retry_after_s <= 20
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    assert error.headers["x-ratelimit-limit-requests"] == "3"
    response = error_response(error)
    assert response.status_code == 429
    assert response.headers["retry-after"] == str(max(1, math.ceil(error.retry_after_s)))
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert count(quotas, metric_names.GATEWAY_QUOTA_REJECTIONS, limit="requests") == 1


async def test_replicas_share_one_limit(make_quotas: QuotasFactory) -> None:
    first, second, key = make_quotas(), make_quotas(), make_key(rpm=3)
    await first.admit(key, tokens=1)
    await second.admit(key, tokens=1)
    await first.admit(key, tokens=1)
    with pytest.raises(RateLimited):
        await second.admit(key, tokens=1)
    assert await first.admit(make_key(rpm=3), tokens=1)  # another key has its own bucket


async def test_an_unlimited_key_never_asks_redis(make_quotas: QuotasFactory) -> None:
    quotas = make_quotas(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    admission = await quotas.admit(make_key(), tokens=10**9)
    assert admission.headers == {}
    await admission.settle(10**9)
    assert count(quotas, metric_names.GATEWAY_QUOTA_FALLBACKS, op="admit") == 0
    assert count(quotas, metric_names.GATEWAY_QUOTA_FALLBACKS, op="settle") == 0


async def test_settle_debits_the_tokens_used_beyond_the_reservation(make_quotas: QuotasFactory) -> None:
    first, second, key = make_quotas(), make_quotas(), make_key(tpm=1000)
    admission = await first.admit(key, tokens=100)
    assert admission.headers["x-ratelimit-limit-tokens"] == "1000"
    assert 900 <= remaining(admission, "tokens") < 950
    await admission.settle(600)  # 500 more than reserved
    later = await second.admit(key, tokens=100)  # the other replica sees the debit
    assert 300 <= remaining(later, "tokens") < 350
    await later.settle(100)


async def test_settle_refunds_an_overestimate(make_quotas: QuotasFactory) -> None:
    quotas, key = make_quotas(), make_key(tpm=1000)
    admission = await quotas.admit(key, tokens=500)
    assert remaining(admission, "tokens") < 550
    await admission.settle(100)
    later = await quotas.admit(key, tokens=1)
    assert remaining(later, "tokens") >= 899


async def test_tokens_in_debt_refuse_until_refilled(make_quotas: QuotasFactory) -> None:
    quotas, key = make_quotas(), make_key(tpm=1000)
    admission = await quotas.admit(key, tokens=100)
    await admission.settle(1500)  # 500 in debt
    with pytest.raises(TokensRateLimited) as refused:
        await quotas.admit(key, tokens=10)
    error = refused.value
    assert re.search(rf"for key {key.id} \(writer-7\) on tokens per minute: limit 1000, used 1[45]\d\d, requested 10\.",
                     error.message)  # fmt: skip
    assert error.headers["x-ratelimit-remaining-tokens"] == "0"
    # 510 tokens at 1000 a minute: about 30.6 s (less whatever refilled meanwhile).
    assert error.retry_after_s is not None
    assert 25 < error.retry_after_s <= 30.6 + 1e-6
    assert count(quotas, metric_names.GATEWAY_QUOTA_REJECTIONS, limit="tokens") == 1


async def test_a_prompt_larger_than_the_limit_is_admitted_into_debt(make_quotas: QuotasFactory) -> None:
    quotas, key = make_quotas(), make_key(tpm=1000)
    admission = await quotas.admit(key, tokens=5000)
    assert remaining(admission, "tokens") == 0
    with pytest.raises(TokensRateLimited):
        await quotas.admit(key, tokens=1)


async def test_the_tokens_bucket_refills(make_quotas: QuotasFactory) -> None:
    quotas, key = make_quotas(), make_key(tpm=600_000)  # 10,000 tokens a second
    drained = await quotas.admit(key, tokens=600_000)
    await asyncio.sleep(0.05)
    later = await quotas.admit(key, tokens=1)
    assert remaining(later, "tokens") > remaining(drained, "tokens")


async def test_exactly_concurrency_parallel_admits_succeed_across_replicas(make_quotas: QuotasFactory) -> None:
    replicas, key = [make_quotas() for _ in range(3)], make_key(concurrency=3)
    outcomes = await asyncio.gather(
        *(replica.admit(key, tokens=1) for replica in replicas for _ in range(10)), return_exceptions=True
    )
    admitted = [o for o in outcomes if isinstance(o, QuotaGrant)]
    refused = [o for o in outcomes if isinstance(o, ConcurrencyLimited)]
    assert len(admitted) == 3
    assert len(refused) == 27
    assert all(not a.local for a in admitted)
    assert "on completions in progress: limit 3, in progress 3, requested 1." in refused[0].message
    assert sum(count(r, metric_names.GATEWAY_QUOTA_REJECTIONS, limit="concurrency") for r in replicas) == 27

    await admitted[0].settle(5)
    await admitted[0].settle(5)  # idempotent: frees one slot, not two
    assert await replicas[1].admit(key, tokens=1)
    with pytest.raises(ConcurrencyLimited):
        await replicas[2].admit(key, tokens=1)


async def test_an_admission_takes_from_every_limit_or_from_none(make_quotas: QuotasFactory) -> None:
    quotas, key = make_quotas(), make_key(rpm=10, tpm=1000, concurrency=1)
    first = await quotas.admit(key, tokens=100)
    assert remaining(first, "requests") == 9
    with pytest.raises(ConcurrencyLimited) as refused:
        await quotas.admit(key, tokens=100)
    assert refused.value.headers["x-ratelimit-remaining-requests"] == "9"  # nothing taken by the refusal
    assert 900 <= int(refused.value.headers["x-ratelimit-remaining-tokens"]) < 950
    await first.settle(100)
    second = await quotas.admit(key, tokens=100)
    assert remaining(second, "requests") == 8


async def test_an_expired_lease_is_reclaimed(make_quotas: QuotasFactory) -> None:
    quotas, key = make_quotas(lease_ttl_s=2.0), make_key(concurrency=1)
    await quotas.admit(key, tokens=1)  # never settled: its gateway "died"
    with pytest.raises(ConcurrencyLimited):
        await quotas.admit(key, tokens=1)
    await admit_until(quotas, key, lambda a: not a.local)


async def test_idle_quota_state_expires_in_redis(make_quotas: QuotasFactory, redis: Redis) -> None:
    quotas, key = make_quotas(lease_ttl_s=30), make_key(rpm=3, tpm=600, concurrency=2)
    await quotas.admit(key, tokens=60)
    # Full again in 20 s (requests) and 6 s (tokens), then two minutes.
    assert 120_000 < await redis.pttl(redis_keys.quota_requests_key(key.id)) <= 140_000
    assert 120_000 < await redis.pttl(redis_keys.quota_tokens_key(key.id)) <= 126_000
    assert 0 < await redis.pttl(redis_keys.quota_leases_key(key.id)) <= 30_000


async def test_a_cancelled_settle_still_releases_the_lease(make_quotas: QuotasFactory) -> None:
    quotas, key = make_quotas(), make_key(concurrency=1)
    admission = await quotas.admit(key, tokens=1)
    settling = asyncio.create_task(admission.settle(1))
    await asyncio.sleep(0)  # the settle is under way in Redis
    settling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await settling
    await quotas.close()
    assert await quotas.admit(key, tokens=1)


async def test_redis_stopped_local_limits_apply_then_redis_decides_again(
    make_quotas: QuotasFactory, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    quotas, key = make_quotas(), make_key(rpm=3)
    assert not (await quotas.admit(key, tokens=1)).local  # Redis holds 2 more
    redis_server.stop()
    with caplog.at_level(logging.WARNING, logger="bailu.gateway.quotas"):
        local = [await quotas.admit(key, tokens=1) for _ in range(3)]  # the key's full limit, on this replica
        with pytest.raises(RateLimited):
            await quotas.admit(key, tokens=1)  # not unlimited
    assert all(a.local for a in local)
    assert [remaining(a, "requests") for a in local] == [2, 1, 0]
    assert count(quotas, metric_names.GATEWAY_QUOTA_FALLBACKS, op="admit") == 4
    assert (
        len([r for r in caplog.records if r.name == "bailu.gateway.quotas" and r.levelno == logging.WARNING]) == 1
    )  # at most one per 30 s

    redis_server.start()  # the same port and data: its bucket still holds 2
    back = await admit_until(quotas, key, lambda a: not a.local)
    assert remaining(back, "requests") == 1  # Redis's count, not the exhausted local one
    assert len(quotas.local) == 0  # the local state was dropped


async def test_a_local_admission_settles_locally(make_quotas: QuotasFactory, redis_server: RedisServer) -> None:
    quotas, key = make_quotas(), make_key(concurrency=1)
    redis_server.stop()
    admission = await quotas.admit(key, tokens=1)
    assert admission.local
    with pytest.raises(ConcurrencyLimited):
        await quotas.admit(key, tokens=1)
    await admission.settle(1)
    assert (await quotas.admit(key, tokens=1)).local
    assert count(quotas, metric_names.GATEWAY_QUOTA_FALLBACKS, op="settle") == 1


async def test_a_settle_redis_does_not_answer_never_raises_and_is_retried(
    make_quotas: QuotasFactory, redis_server: RedisServer
) -> None:
    # A long lease: only the retried settle, not the lease's expiry, can free the slot within the test.
    quotas, key = make_quotas(lease_ttl_s=300.0), make_key(concurrency=1)
    admission = await quotas.admit(key, tokens=1)
    assert not admission.local
    redis_server.stop()
    await admission.settle(1)  # Redis down: does not raise; retried behind, `retry_interval_s` apart
    assert count(quotas, metric_names.GATEWAY_QUOTA_FALLBACKS, op="settle") >= 1
    redis_server.start()
    await reconnected(quotas)
    # A retry reached Redis and released the lease: the key may run a completion again, decided in Redis.
    await admit_until(quotas, key, lambda a: not a.local)


async def test_redis_that_hangs_is_bounded_by_the_timeout(
    make_quotas: QuotasFactory, redis_server: RedisServer
) -> None:
    quotas, key = make_quotas(timeout_s=0.2, retry_interval_s=60.0), make_key(rpm=2)
    assert not (await quotas.admit(key, tokens=1)).local
    assert redis_server.popen is not None
    redis_server.popen.send_signal(signal.SIGSTOP)
    try:
        assert (await quotas.admit(key, tokens=1)).local  # timed out: decided here
        assert (await quotas.admit(key, tokens=1)).local  # within retry_interval_s: Redis not asked
        with pytest.raises(RateLimited):
            await quotas.admit(key, tokens=1)
    finally:
        redis_server.popen.send_signal(signal.SIGCONT)
    assert count(quotas, metric_names.GATEWAY_QUOTA_FALLBACKS, op="admit") == 3


async def test_without_redis_the_local_limits_are_the_configuration() -> None:
    quotas = Quotas(None, GatewayMetrics(CollectorRegistry()), lease_ttl_s=30)
    key = make_key(rpm=1)
    admission = await quotas.admit(key, tokens=1)
    assert admission.local
    assert remaining(admission, "requests") == 0
    await admission.settle(1)
    with pytest.raises(RateLimited):
        await quotas.admit(key, tokens=1)
    assert count(quotas, metric_names.GATEWAY_QUOTA_FALLBACKS, op="admit") == 0
