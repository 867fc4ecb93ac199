"""The quota algorithm is written twice: Lua scripts that run in Redis (`bailu.gateway.quotas`) and this replica's
fallback in memory (`bailu.gateway.quota_local`). Here both get the same admits, settles and passing time, on a
real redis-server, and must decide alike: admitted or refused, by the same limit, with the same `x-ratelimit-*`
headers and message, and the same Retry-After (but for its last bits: see `Twins.admit`).

The scripts read Redis's clock (`TIME`). For an exact comparison over minutes of simulated time, the scripts run
with that one call replaced by a read of a clock the test sets (nothing else in them changes), and the local
quotas get the same instant from their injected clock. The instants are multiples of 1/8 s, so that a refill
(elapsed ms x capacity / 60,000 in Lua, elapsed s x capacity / 60 in Python) is the same number to the last bit on
both sides. The last test runs the scripts unchanged, on Redis's own clock."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from bailu.common import metrics as metric_names
from bailu.common.errors import ConcurrencyLimited, RateLimited, TokensRateLimited
from bailu.common.metrics import GatewayMetrics
from bailu.gateway import quotas as quotas_module
from bailu.gateway.quotas import QuotaGrant, Quotas
from bailu.keys.model import ApiKey, Limits, hash_key, new_key, new_key_id

# Long enough that no Redis name expires (PEXPIRE, on Redis's real clock: tested in test_quotas.py) while a test
# runs; the leases expire on the test's clock.
LEASE_TTL_S = 120.0
REDIS_TIME = "redis.call('TIME')"
CLOCK_KEY = "bailu-test:quota-clock"  # a hash with TIME's two fields: s (seconds), us (microseconds)
START_S = 1_700_000_000
ADMITTED = "admitted"
T = TypeVar("T")

# What one admit showed its caller: ("admitted", tokens reserved, headers), or the refusal's class name, message,
# headers and Retry-After.
Seen = tuple[Any, ...]


def make_key(**limits: int) -> ApiKey:
    return ApiKey(id=new_key_id(), name="writer-7", hash=hash_key(new_key()), limits=Limits(**limits))


def on_test_clock(script: str) -> str:
    """`script` with its one read of Redis's clock replaced by a read of CLOCK_KEY (same reply shape)."""
    assert script.count(REDIS_TIME) == 1, "the scripts read the clock elsewhere now: update this test"
    return script.replace(REDIS_TIME, f"redis.call('HMGET', '{CLOCK_KEY}', 's', 'us')")


class SharedClock:
    """One instant for both sides: the local quotas' clock (a call), and CLOCK_KEY in Redis for the scripts."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.ms = 0  # since START_S

    def __call__(self) -> float:
        return START_S + self.ms / 1000

    async def publish(self) -> None:
        await self.redis.hset(CLOCK_KEY, mapping={"s": START_S + self.ms // 1000, "us": self.ms % 1000 * 1000})

    async def advance(self, seconds: float) -> None:
        ms = round(seconds * 1000)
        assert ms > 0, f"advance by a positive multiple of 1/8 s, not {seconds}"
        assert ms % 125 == 0, f"advance by a positive multiple of 1/8 s, not {seconds}"
        self.ms += ms
        await self.publish()


def fallbacks(quotas: Quotas) -> float:
    samples = [s for family in quotas.metrics.quota_fallbacks.collect() for s in family.samples]
    return sum(s.value for s in samples if s.name == metric_names.GATEWAY_QUOTA_FALLBACKS)


async def seen(quotas: Quotas, key: ApiKey, tokens: int) -> tuple[Seen, QuotaGrant | None]:
    try:
        grant = await quotas.admit(key, tokens=tokens)
    except RateLimited as error:
        return (type(error).__name__, error.message, error.headers, error.retry_after_s), None
    return (ADMITTED, grant.tokens, grant.headers), grant


@dataclass
class Pair:
    """The two grants of one admission the twins both admitted."""

    in_redis: QuotaGrant
    local: QuotaGrant


@dataclass
class Twins:
    """Quotas decided in Redis and quotas decided locally, driven step by step; every admit is compared."""

    in_redis: Quotas
    local: Quotas
    clock: SharedClock
    steps: list[str] = field(default_factory=list)  # what happened so far, shown when the twins disagree

    async def admit(self, key: ApiKey, tokens: int) -> tuple[Seen, Pair | None]:
        redis_seen, redis_grant = await seen(self.in_redis, key, tokens)
        local_seen, local_grant = await seen(self.local, key, tokens)
        self.steps.append(f"t={self.clock.ms / 1000}s admit {key.limits} tokens={tokens}: {redis_seen}")
        history = "\n".join(self.steps[-15:])
        assert redis_seen[:3] == local_seen[:3], f"Lua and local quotas disagree at the last step of:\n{history}"
        if redis_seen[0] != ADMITTED:
            # The local bucket adds each refill when it looks (refused admits included), the script only when it
            # writes: the same sum, rounded at other places, so the Retry-After may differ in its last bits.
            if local_seen[3] is None:
                assert redis_seen[3] is None, history
            else:
                assert redis_seen[3] == pytest.approx(local_seen[3], rel=1e-12, abs=1e-12), history
        self.no_fallback()
        if redis_grant is None or local_grant is None:
            return redis_seen, None
        assert not redis_grant.local
        assert local_grant.local
        return redis_seen, Pair(redis_grant, local_grant)

    async def settle(self, pair: Pair, tokens_used: int) -> None:
        self.steps.append(f"t={self.clock.ms / 1000}s settle {pair.in_redis.key.limits} used={tokens_used}")
        await pair.in_redis.settle(tokens_used)
        await pair.local.settle(tokens_used)
        self.no_fallback()

    async def advance(self, seconds: float) -> None:
        self.steps.append(f"advance {seconds}s")
        await self.clock.advance(seconds)

    def no_fallback(self) -> None:
        """The Redis side really decided in Redis (a fallback would compare the local quotas with themselves)."""
        assert fallbacks(self.in_redis) == 0


@pytest.fixture
async def twins(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Twins]:
    monkeypatch.setattr(quotas_module, "_ADMIT_LUA", on_test_clock(quotas_module._ADMIT_LUA))
    monkeypatch.setattr(quotas_module, "_SETTLE_LUA", on_test_clock(quotas_module._SETTLE_LUA))
    clock = SharedClock(redis)
    await clock.publish()
    in_redis = Quotas(
        redis, GatewayMetrics(CollectorRegistry()), lease_ttl_s=LEASE_TTL_S, timeout_s=5.0, retry_interval_s=0.0
    )
    local = Quotas(None, GatewayMetrics(CollectorRegistry()), lease_ttl_s=LEASE_TTL_S, clock=clock)
    yield Twins(in_redis, local, clock)
    await in_redis.close()


def kind(result: Seen) -> str:
    return str(result[0])


def remaining(result: Seen, name: str) -> int:
    headers = result[2]
    return int(headers[f"x-ratelimit-remaining-{name}"])


async def test_the_documented_sequence_decides_alike(twins: Twins) -> None:
    """A walk through the module docstring's rules, each step's outcome as documented, on both sides."""
    key = make_key(rpm=3, tpm=1000, concurrency=2)
    first, a = await twins.admit(key, 100)
    assert kind(first) == ADMITTED
    assert (remaining(first, "requests"), remaining(first, "tokens")) == (2, 900)
    second, b = await twins.admit(key, 100)
    assert kind(second) == ADMITTED
    assert (remaining(second, "requests"), remaining(second, "tokens")) == (1, 800)
    third, _ = await twins.admit(key, 100)  # two completions in progress
    assert kind(third) == ConcurrencyLimited.__name__
    assert (remaining(third, "requests"), remaining(third, "tokens")) == (1, 800)  # a refusal takes nothing
    assert a is not None
    assert b is not None
    await twins.settle(a, 300)  # 200 beyond the reservation; its lease ends
    too_many, _ = await twins.admit(key, 700)
    assert kind(too_many) == TokensRateLimited.__name__
    assert remaining(too_many, "tokens") == 600
    await twins.advance(6)  # + 0.3 requests, + 100 tokens
    c_seen, c = await twins.admit(key, 700)
    assert kind(c_seen) == ADMITTED
    assert (remaining(c_seen, "requests"), remaining(c_seen, "tokens")) == (0, 0)
    every_limit, _ = await twins.admit(key, 1)  # 0.3 requests, 0 tokens, 2 leases: requests named first
    assert kind(every_limit) == RateLimited.__name__
    assert every_limit[3] == pytest.approx(14.0)  # the slower bucket that refused: 0.7 requests at 3 a minute
    assert c is not None
    await twins.settle(c, 2000)  # 1300 more: 1300 in debt
    await twins.advance(15)  # 1.05 requests, -1050 tokens
    in_debt, _ = await twins.admit(key, 1)
    assert kind(in_debt) == TokensRateLimited.__name__
    assert "limit 1000, used 2050, requested 1." in in_debt[1]
    assert in_debt[3] == pytest.approx(1051 * 60 / 1000)
    await twins.settle(b, 0)  # a refund of its 100
    await twins.advance(60)  # requests full again (3), tokens 50
    larger, _ = await twins.admit(key, 5000)  # needs a full bucket, not 5000
    assert kind(larger) == TokensRateLimited.__name__
    assert larger[3] == pytest.approx(950 * 60 / 1000)
    await twins.advance(60)  # tokens full (1000, not 1050)
    into_debt, _ = await twins.admit(key, 5000)
    assert kind(into_debt) == ADMITTED
    assert remaining(into_debt, "tokens") == 0
    assert kind((await twins.admit(key, 1))[0]) == TokensRateLimited.__name__  # 4000 in debt

    refund = make_key(tpm=1000)
    half, h = await twins.admit(refund, 500)
    assert kind(half) == ADMITTED
    assert h is not None
    await twins.advance(60)
    await twins.settle(h, 0)  # a refund of 500 into a full bucket: it stays full, no more
    whole, _ = await twins.admit(refund, 1000)
    assert kind(whole) == ADMITTED
    assert remaining(whole, "tokens") == 0
    assert kind((await twins.admit(refund, 1))[0]) == TokensRateLimited.__name__


async def test_a_lease_expires_at_its_ttl_on_both_sides(twins: Twins) -> None:
    key = make_key(concurrency=1)
    held, lost = await twins.admit(key, 1)  # never settled in time: its gateway "died"
    assert kind(held) == ADMITTED
    assert lost is not None
    assert kind((await twins.admit(key, 1))[0]) == ConcurrencyLimited.__name__
    await twins.advance(LEASE_TTL_S - 0.125)
    assert kind((await twins.admit(key, 1))[0]) == ConcurrencyLimited.__name__
    await twins.advance(0.125)  # the lease's expiry is now: reclaimed
    after, _ = await twins.admit(key, 1)
    assert kind(after) == ADMITTED
    await twins.settle(lost, 1)  # the expired lease's late settle does not free the new one's slot
    assert kind((await twins.admit(key, 1))[0]) == ConcurrencyLimited.__name__


async def test_a_random_walk_decides_alike(twins: Twins) -> None:
    """Admits, settles (some twice) and waits at random over several keys, each with other limits; the same
    outcomes at every step, and every outcome seen many times."""
    rng = random.Random(20_240_611)
    keys = [
        make_key(rpm=4),
        make_key(tpm=500),
        make_key(concurrency=2),
        make_key(rpm=5, tpm=800, concurrency=3),
        make_key(rpm=2, tpm=300),
    ]
    open_pairs: list[Pair] = []
    settled: list[Pair] = []
    kinds: Counter[str] = Counter()
    for _ in range(600):
        action = rng.random()
        if action < 0.5:
            result, pair = await twins.admit(rng.choice(keys), rng.choice((1, 7, 40, 150, 400, 900)))
            kinds[kind(result)] += 1
            if pair is not None:
                open_pairs.append(pair)
        elif action < 0.8 and open_pairs:
            pair = open_pairs.pop(rng.randrange(len(open_pairs)))
            reserved = pair.in_redis.tokens
            await twins.settle(pair, rng.choice((0, 1, reserved, 2 * reserved, rng.randrange(1500))))
            settled.append(pair)
        elif action < 0.83 and settled:
            await twins.settle(rng.choice(settled), rng.randrange(1500))  # a second settle does nothing
        else:
            await twins.advance(rng.randint(1, 160) / 8)  # up to 20 s
    assert min(kinds[k] for k in (ADMITTED, RateLimited.__name__, TokensRateLimited.__name__)) >= 20, kinds
    assert kinds[ConcurrencyLimited.__name__] >= 20, kinds


async def test_on_redis_own_clock_the_unchanged_scripts_decide_alike(redis: Redis) -> None:
    """The scripts as shipped, on Redis's `TIME`; the local quotas' clock is Redis's time read just before each
    step (in ms, as the scripts read it). The limits refill slowly enough that no outcome of this sequence can
    change within the few milliseconds between that read and the script's own; the token counts may differ by
    what refills in them."""
    now_ms = 0  # the local quotas' clock, in ms

    async def redis_ms() -> tuple[int, int]:
        """Redis's time in whole ms, rounded down (as the scripts read it) and up."""
        seconds, micros = await redis.time()
        return seconds * 1000 + micros // 1000, seconds * 1000 + math.ceil(micros / 1000)

    in_redis = Quotas(
        redis, GatewayMetrics(CollectorRegistry()), lease_ttl_s=LEASE_TTL_S, timeout_s=5.0, retry_interval_s=0.0
    )
    local = Quotas(None, GatewayMetrics(CollectorRegistry()), lease_ttl_s=LEASE_TTL_S, clock=lambda: now_ms / 1000)
    key = make_key(rpm=3, tpm=100, concurrency=2)
    widest_ms = 0  # the longest a script's clock read may have followed the local clock's
    grants: list[tuple[QuotaGrant, QuotaGrant]] = []
    kinds: list[str] = []

    async def in_redis_now(work: Awaitable[T]) -> T:
        """`work` in Redis, with the local clock set to Redis's time just before it."""
        nonlocal now_ms, widest_ms
        now_ms, _ = await redis_ms()
        result = await work
        widest_ms = max(widest_ms, (await redis_ms())[1] - now_ms)
        return result

    async def step(tokens: int) -> None:
        redis_seen, redis_grant = await in_redis_now(seen(in_redis, key, tokens))
        local_seen, local_grant = await seen(local, key, tokens)
        assert kind(redis_seen) == kind(local_seen), (redis_seen, local_seen)
        kinds.append(kind(redis_seen))
        assert remaining(redis_seen, "requests") == remaining(local_seen, "requests")
        drift = widest_ms / 1000 * 100 / 60  # tokens refilled in that time
        assert abs(remaining(redis_seen, "tokens") - remaining(local_seen, "tokens")) <= 1 + drift
        if redis_grant is not None and local_grant is not None:
            grants.append((redis_grant, local_grant))
        elif local_seen[3] is None:
            assert redis_seen[3] is None
        else:  # a level differs by at most what refills in that time: the wait, by at most that time
            assert redis_seen[3] == pytest.approx(local_seen[3], abs=widest_ms / 1000 + 1e-6)

    async def settle(index: int, tokens_used: int) -> None:
        redis_grant, local_grant = grants[index]
        await in_redis_now(redis_grant.settle(tokens_used))
        await local_grant.settle(tokens_used)

    await step(10)
    await step(10)
    await step(10)  # two in progress
    await settle(0, 50)  # 40 more: 40 tokens left
    await step(70)  # 30 tokens short: about 18 s of refill away
    await step(30)
    await step(1)  # the fourth request within the minute
    refusals = (ConcurrencyLimited.__name__, TokensRateLimited.__name__, RateLimited.__name__)
    assert kinds == [ADMITTED, ADMITTED, refusals[0], refusals[1], ADMITTED, refusals[2]]
    assert fallbacks(in_redis) == 0
    await in_redis.close()
