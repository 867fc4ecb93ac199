"""Per-key quotas, shared by every gateway replica: requests per minute, tokens per minute, completions at once.

- Requests (`rpm`): a token bucket of `rpm` requests, refilled `rpm/60` per second; a request takes one.
- Tokens (`tpm`): a token bucket of `tpm` tokens, refilled `tpm/60` per second. `admit` reserves the prompt's
  estimated tokens and needs the bucket to hold that many (at most a full bucket, so that a prompt larger than the
  limit is admitted once the bucket is full, not refused for ever); `settle` debits what the completion really used
  beyond the reservation (or refunds the rest). The bucket may go negative: later requests wait until it refills.
- Concurrency: one lease per completion in progress, in a sorted set scored by its expiry (`lease_ttl_s` after the
  admission), so that a gateway that dies without settling frees its slots when they expire.

Each decision is one Lua script over the key's three Redis names (`redis_keys.quota_*_key`), on Redis's clock
(`TIME`), so that replicas with skewed clocks agree: `admit` checks every limit and takes from all or from none;
`settle` is the other script. A bucket's name expires two minutes after the bucket is full again.

When Redis does not answer (refused, `timeout_s`, any Redis or socket error) the decision is taken by this
replica's `LocalQuotas`, with the same algorithms and the key's full limits per replica; counted in
`bailu_gateway_quota_fallbacks_total` and logged (a warning at most every 30 s). For `retry_interval_s` after a
failure the replica decides locally without asking Redis; then the next admit asks Redis again, and once Redis
answers the local state is dropped. An admission decided locally is settled locally. A settle that Redis does not
answer is lost: its lease expires after `lease_ttl_s`, and its tokens are not reconciled.

The responses carry OpenAI's `x-ratelimit-*` headers for the limits the key has (concurrency has none); a refusal
is `RateLimited`, `TokensRateLimited` or `ConcurrencyLimited` with the same headers and the real wait as its
`Retry-After` (a concurrency refusal cannot know when a completion ends: it keeps the error's default).
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bailu.common import redis_keys
from bailu.common.errors import ConcurrencyLimited, RateLimited, TokensRateLimited
from bailu.common.metrics import GatewayMetrics
from bailu.gateway.quota_local import WINDOW_S, Decision, LocalQuotas, tokens_needed
from bailu.keys.model import ApiKey, Limits

log = logging.getLogger(__name__)

REQUESTS, TOKENS, CONCURRENCY = "requests", "tokens", "concurrency"  # the `limit` label of the rejections
ADMIT, SETTLE = "admit", "settle"  # the `op` label of the fallbacks
IDLE_TTL_MS = 120_000  # a bucket's name lives this long after the bucket is full again
WARNING_INTERVAL_S = 30.0
# Tries of a settle (or of undoing an admit that timed out) Redis did not answer, `retry_interval_s` apart.
SETTLE_RETRIES = 3

# Shared by both scripts. `now` is Redis's clock in ms; a missing bucket is full.
_LUA_BUCKETS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function level(key, cap)
  local state = redis.call('HMGET', key, 'level', 'ts')
  local lvl, ts = tonumber(state[1]), tonumber(state[2])
  if lvl == nil or ts == nil then return cap end
  return math.min(cap, lvl + math.max(0, now - ts) * cap / 60000)
end
local function store(key, cap, lvl)
  redis.call('HSET', key, 'level', string.format('%.17g', lvl), 'ts', now)
  redis.call('PEXPIRE', key, math.ceil((cap - lvl) * 60000 / cap) + tonumber(ARGV[#ARGV]))
end
"""

# KEYS: requests bucket, tokens bucket, leases. ARGV: rpm, tpm, concurrency (0: no such limit), tokens reserved,
# lease id, lease ttl ms, idle ttl ms. Returns requests ok, tokens ok, concurrency ok (1/0), the two levels, leases.
_ADMIT_LUA = (
    _LUA_BUCKETS
    + """
local rpm, tpm, conc, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local req, tok, leases = 0, 0, 0
local req_ok, tok_ok, conc_ok = 1, 1, 1
if rpm > 0 then
  req = level(KEYS[1], rpm)
  if req < 1 then req_ok = 0 end
end
if tpm > 0 then
  tok = level(KEYS[2], tpm)
  if tok < math.min(tokens, tpm) then tok_ok = 0 end
end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  leases = redis.call('ZCARD', KEYS[3])
  if leases >= conc then conc_ok = 0 end
end
if req_ok == 1 and tok_ok == 1 and conc_ok == 1 then
  if rpm > 0 then
    req = req - 1
    store(KEYS[1], rpm, req)
  end
  if tpm > 0 then
    tok = tok - tokens
    store(KEYS[2], tpm, tok)
  end
  if conc > 0 then
    local ttl = tonumber(ARGV[6])
    redis.call('ZADD', KEYS[3], now + ttl, ARGV[5])
    leases = leases + 1
    if redis.call('PTTL', KEYS[3]) < ttl then redis.call('PEXPIRE', KEYS[3], ttl) end
  end
end
return {req_ok, tok_ok, conc_ok, string.format('%.17g', req), string.format('%.17g', tok), leases}
"""
)

# KEYS: tokens bucket, leases. ARGV: tpm (0: none), tokens to debit (negative: refund), lease id ('': none),
# idle ttl ms.
_SETTLE_LUA = (
    _LUA_BUCKETS
    + """
local tpm, delta = tonumber(ARGV[1]), tonumber(ARGV[2])
if tpm > 0 and delta ~= 0 then store(KEYS[1], tpm, math.min(tpm, level(KEYS[1], tpm) - delta)) end
if ARGV[3] ~= '' then redis.call('ZREM', KEYS[2], ARGV[3]) end
return 1
"""
)


def format_duration(seconds: float) -> str:
    """A wait in OpenAI's `x-ratelimit-reset-*` format (Go's durations), rounded up to the millisecond:
    `0s`, `20ms`, `1s`, `1.5s`, `1m30s`, `6m0s`, `1h0m0s`."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    secs = f"{whole}.{frac:03d}".rstrip("0") if frac else str(whole)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _wait_s(capacity: int, level: float, wanted: float) -> float:
    """Seconds until a bucket of `capacity` at `level` holds `wanted`."""
    return max(0.0, (wanted - level) * WINDOW_S / capacity)


def _used(capacity: int, level: float) -> int:
    return max(0, math.ceil(capacity - level - 1e-9))


def quota_headers(limits: Limits, decision: Decision) -> dict[str, str]:
    """OpenAI's `x-ratelimit-*` headers for the key's request and token limits (none for a limit it lacks)."""
    headers: dict[str, str] = {}
    for name, capacity, level in ((REQUESTS, limits.rpm, decision.requests_level),
                                  (TOKENS, limits.tpm, decision.tokens_level)):  # fmt: skip
        if capacity is None:
            continue
        headers[f"x-ratelimit-limit-{name}"] = str(capacity)
        headers[f"x-ratelimit-remaining-{name}"] = str(max(0, math.floor(level + 1e-9)))
        headers[f"x-ratelimit-reset-{name}"] = format_duration(_wait_s(capacity, level, capacity))
    return headers


def refusal(key: ApiKey, tokens: int, decision: Decision) -> RateLimited:
    """The error for a refused admission: the first limit reached (requests, tokens, concurrency) names it; the
    wait is until every bucket that refused holds enough."""
    limits, headers = key.limits, quota_headers(key.limits, decision)
    waits = []
    if not decision.requests_ok and limits.rpm is not None:
        waits.append(_wait_s(limits.rpm, decision.requests_level, 1))
    if not decision.tokens_ok and limits.tpm is not None:
        waits.append(_wait_s(limits.tpm, decision.tokens_level, tokens_needed(tokens, limits.tpm)))
    wait = max(waits, default=None)
    again = "" if wait is None else f" Try again in {format_duration(wait)}."
    who = f"key {key.id} ({key.name})"
    if not decision.requests_ok and limits.rpm is not None:
        used = _used(limits.rpm, decision.requests_level)
        message = f"Rate limit reached for {who} on requests per minute: limit {limits.rpm}, used {used}, requested 1."
        return RateLimited(message + again, retry_after_s=wait, headers=headers)
    if not decision.tokens_ok and limits.tpm is not None:
        used = _used(limits.tpm, decision.tokens_level)
        message = (
            f"Rate limit reached for {who} on tokens per minute: limit {limits.tpm}, used {used}, requested {tokens}."
        )
        return TokensRateLimited(message + again, retry_after_s=wait, headers=headers)
    message = (
        f"Concurrency limit reached for {who} on completions in progress: limit {limits.concurrency}, "
        f"in progress {decision.leases}, requested 1. Try again when one of them ends."
    )
    return ConcurrencyLimited(message, headers=headers)


def _limit_name(error: RateLimited) -> str:
    if isinstance(error, ConcurrencyLimited):
        return CONCURRENCY
    return TOKENS if isinstance(error, TokensRateLimited) else REQUESTS


class QuotaGrant:
    """One admitted request. `settle` must follow when its completion ends, however it ends."""

    def __init__(
        self,
        quotas: Quotas | None,
        key: ApiKey,
        *,
        tokens: int,
        lease_id: str = "",
        local: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.key = key
        self.tokens = tokens  # reserved at admission
        self.lease_id = lease_id
        self.local = local  # decided by this replica's local limits (Redis did not answer)
        self.headers: dict[str, str] = dict(headers or {})
        self._quotas = quotas
        self._settled = False

    async def settle(self, tokens_used: int) -> None:
        """Reconcile the tokens (`tokens_used`, prompt and completion, against the reservation) and end the
        concurrency lease. Idempotent; never raises an error (Redis errors are logged and counted); bounded by the
        quotas' `timeout_s`. The work goes on if the caller is cancelled meanwhile."""
        if self._settled or self._quotas is None:
            return
        self._settled = True
        await self._quotas._settle(self, tokens_used)


class Quotas:
    """Per-key quotas in Redis, with this replica's `LocalQuotas` when Redis does not answer (or `redis` is None:
    then the local limits are the configuration, not a fallback, and not counted)."""

    def __init__(
        self,
        redis: Redis | None,
        metrics: GatewayMetrics,
        *,
        lease_ttl_s: float,
        timeout_s: float = 0.5,
        retry_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.metrics = metrics
        self.lease_ttl_s = lease_ttl_s
        self.timeout_s = timeout_s
        self.retry_interval_s = retry_interval_s
        self.clock = clock
        self.local = LocalQuotas(clock)
        self._admit_script = redis.register_script(_ADMIT_LUA) if redis is not None else None
        self._settle_script = redis.register_script(_SETTLE_LUA) if redis is not None else None
        self._failed_at: float | None = None  # when Redis last failed to answer; None while it answers
        self._warned_at: float | None = None
        self._settling: set[asyncio.Task[bool]] = set()

    async def admit(self, key: ApiKey, *, tokens: int) -> QuotaGrant:
        """Admit one request of `key` with a prompt of about `tokens` tokens, or raise `RateLimited`
        (requests), `TokensRateLimited` or `ConcurrencyLimited`. A key without limits costs nothing."""
        limits = key.limits
        if limits.unlimited:
            return QuotaGrant(None, key, tokens=tokens)
        tokens = max(1, tokens)  # every request reserves at least one token
        lease_id = secrets.token_hex(8) if limits.concurrency is not None else ""
        decision, local = await self._decide(key, tokens, lease_id)
        if not decision.admitted:
            error = refusal(key, tokens, decision)
            self.metrics.quota_rejections.labels(_limit_name(error)).inc()
            raise error
        headers = quota_headers(limits, decision)
        self.metrics.quota_admitted.labels(key.priority).inc()
        return QuotaGrant(self, key, tokens=tokens, lease_id=lease_id, local=local, headers=headers)

    async def _settle(self, admission: QuotaGrant, tokens_used: int) -> None:
        """`QuotaGrant.settle`'s work (not idempotent: `QuotaGrant.settle` guards it)."""
        limits = admission.key.limits
        delta = max(0, tokens_used) - admission.tokens if limits.tpm is not None else 0
        if limits.tpm is not None:
            self.metrics.quota_tokens.labels(admission.key.priority).inc(max(0, tokens_used))
        if not delta and not admission.lease_id:
            return
        if admission.local or self.redis is None:
            if self.redis is not None:
                self.metrics.quota_fallbacks.labels(SETTLE).inc()
            self.local.settle(admission.key.id, limits, tokens_delta=delta, lease_id=admission.lease_id)
            return
        # The first attempt is awaited (bounded by timeout_s); retries, if Redis did not answer, go on behind.
        if not await asyncio.shield(self._background(self._settle_in_redis(admission.key, delta, admission.lease_id))):
            self._background(self._settle_in_redis(admission.key, delta, admission.lease_id, attempts=SETTLE_RETRIES))

    def _background(self, work: Coroutine[Any, Any, bool]) -> asyncio.Task[bool]:
        """`work` as a task that `close` waits for."""
        task = asyncio.create_task(work)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        return task

    async def close(self) -> None:
        """Wait (up to `timeout_s`) for settles still being written to Redis; cancel the rest."""
        if self._settling:
            _, pending = await asyncio.wait(set(self._settling), timeout=self.timeout_s)
            for task in pending:
                task.cancel()

    async def _decide(self, key: ApiKey, tokens: int, lease_id: str) -> tuple[Decision, bool]:
        """The decision and whether it was local."""
        if self.redis is not None:
            if self._failed_at is None or self.clock() - self._failed_at >= self.retry_interval_s:
                try:
                    async with asyncio.timeout(self.timeout_s):
                        decision = await self._admit_in_redis(key, tokens, lease_id)
                except (RedisError, OSError, TimeoutError) as exc:
                    self._failed(ADMIT, exc)
                    if isinstance(exc, TimeoutError):
                        # The script may have run after all: give back what it took (the tokens, the lease)
                        # once Redis answers, or the key stays charged until the lease expires.
                        self._background(
                            self._settle_in_redis(key, -tokens, lease_id, attempts=SETTLE_RETRIES, first_delay=True)
                        )
                else:
                    self._answered()
                    return decision, False
            self.metrics.quota_fallbacks.labels(ADMIT).inc()
        limits = key.limits
        decision = self.local.admit(key.id, limits, tokens=tokens, lease_id=lease_id, lease_ttl_s=self.lease_ttl_s)
        return decision, True

    async def _admit_in_redis(self, key: ApiKey, tokens: int, lease_id: str) -> Decision:
        assert self._admit_script is not None
        limits = key.limits
        keys = [
            redis_keys.quota_requests_key(key.id),
            redis_keys.quota_tokens_key(key.id),
            redis_keys.quota_leases_key(key.id),
        ]
        args: list[int | str] = [limits.rpm or 0, limits.tpm or 0, limits.concurrency or 0, tokens, lease_id,
                math.ceil(self.lease_ttl_s * 1000), IDLE_TTL_MS]  # fmt: skip
        req_ok, tok_ok, conc_ok, req_level, tok_level, leases = await self._admit_script(keys=keys, args=args)
        return Decision(bool(req_ok), bool(tok_ok), bool(conc_ok), float(req_level), float(tok_level), int(leases))

    async def _settle_in_redis(
        self, key: ApiKey, delta: int, lease_id: str, *, attempts: int = 1, first_delay: bool = False
    ) -> bool:
        """Debit `delta` tokens (negative: refund) and release `lease_id` in Redis; up to `attempts` tries,
        `retry_interval_s` apart (the first too, with `first_delay`). Whether it was done."""
        assert self._settle_script is not None
        keys = [redis_keys.quota_tokens_key(key.id), redis_keys.quota_leases_key(key.id)]
        args: list[int | str] = [key.limits.tpm or 0, delta, lease_id, IDLE_TTL_MS]
        for attempt in range(attempts):
            if attempt or first_delay:
                await asyncio.sleep(self.retry_interval_s)
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self._settle_script(keys=keys, args=args)
                return True
            except (RedisError, OSError, TimeoutError) as exc:
                self.metrics.quota_fallbacks.labels(SETTLE).inc()
                self._failed(SETTLE, exc)
        return False

    def _failed(self, op: str, exc: BaseException) -> None:
        now = self.clock()
        if op == ADMIT:
            self._failed_at = now
        if self._warned_at is None or now - self._warned_at >= WARNING_INTERVAL_S:
            self._warned_at = now
            log.warning(
                "quotas: Redis did not answer; this replica applies its local limits",
                extra={"op": op, "error": str(exc) or type(exc).__name__},
            )

    def _answered(self) -> None:
        if self._failed_at is not None:
            self._failed_at = None
            self.local.clear()
            log.info("quotas: Redis answers again; quota decisions are back in Redis")
