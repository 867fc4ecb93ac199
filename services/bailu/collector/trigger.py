"""Retraining trigger: when enough new preference pairs have accumulated, seal a dataset version and start a run.

`TriggerPolicy` is the pure decision (no I/O): at least N new pairs since the last run, a cool-down, a daily
cap counted in local days, and never inside a peak window of local time. `Trigger` applies it on shared state
in Redis (`redis_keys.TRIGGER_HASH`), so that several collector replicas agree on the last run, and a short
lock (SET NX PX) so that they never start two runs at once.
"""

from __future__ import annotations

import enum
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from bailu.collector.runners import Runner
from bailu.collector.settings import CollectorSettings
from bailu.common import redis_keys
from bailu.common.metrics import TriggerMetrics
from bailu.common.redis_values import fields_text

log = logging.getLogger(__name__)

TRIGGER_LOCK = redis_keys.TRIGGER_LOCK

# Deletes the lock only if this check still holds it (it may have expired and been taken by another replica).
_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


# --------------------------------------------------------------------------- policy


class DecisionCode(enum.StrEnum):
    """Why the policy decided as it did (stable: used as a metric label and in logs)."""

    DUE = "due"
    NOT_ENOUGH_PAIRS = "not_enough_pairs"
    COOLING_DOWN = "cooling_down"
    DAILY_CAP = "daily_cap"
    PEAK_WINDOW = "peak_window"


@dataclass(frozen=True)
class Decision:
    run: bool
    reason: str  # for people: "not enough new pairs (12 < 200)", "due", ...
    code: DecisionCode


@dataclass(frozen=True)
class PeakWindow:
    """Local wall-clock times [start, end): start inclusive, end exclusive; start > end wraps midnight."""

    start: time
    end: time

    def __post_init__(self) -> None:
        if self.start == self.end:
            raise ValueError(f"peak window {self}: start and end are equal (leave it empty for no window)")

    def contains(self, local: time) -> bool:
        local = local.replace(tzinfo=None)
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def __str__(self) -> str:
        end = "24:00" if self.end == time(0) and self.start != time(0) else f"{self.end:%H:%M}"
        return f"{self.start:%H:%M}-{end}"


def parse_peak_window(text: str) -> PeakWindow | None:
    """Parse "HH:MM-HH:MM" (local time; "24:00" allowed as the end); an empty string means no window."""
    if not text.strip():
        return None
    match = _WINDOW.match(text)
    if match is None:
        raise ValueError(f"peak window {text!r} is not HH:MM-HH:MM (for example 06:00-09:30), or empty for none")
    sh, sm, eh, em = (int(group) for group in match.groups())
    start = _clock_time(text, "start", sh, sm, allow_24=False)
    end = _clock_time(text, "end", eh, em, allow_24=True)
    if start == end:
        raise ValueError(f"peak window {text!r}: start and end are equal (leave it empty for no window)")
    return PeakWindow(start, end)


def _clock_time(text: str, which: str, hour: int, minute: int, *, allow_24: bool) -> time:
    if allow_24 and (hour, minute) == (24, 0):
        return time(0)
    if not 0 <= hour <= 23:
        raise ValueError(f"peak window {text!r}: the {which} hour {hour} is not between 00 and 23")
    if not 0 <= minute <= 59:
        raise ValueError(f"peak window {text!r}: the {which} minute {minute} is not between 00 and 59")
    return time(hour, minute)


def parse_timezone(name: str) -> ZoneInfo:
    """An IANA time zone ("Europe/Paris", "UTC"), with a clear error for anything else."""
    if not name.strip():
        raise ValueError("time zone is empty: give an IANA name such as UTC or Europe/Paris")
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}: give an IANA name such as UTC or Europe/Paris") from exc


def _require_aware(value: datetime, what: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got {value.isoformat()}")


@dataclass(frozen=True)
class TriggerPolicy:
    """When a training run is due. Pure: the caller supplies the time and the counts."""

    min_new_pairs: int
    cooldown_s: float
    daily_cap: int
    peak_window: PeakWindow | None
    timezone: ZoneInfo

    def __post_init__(self) -> None:
        if self.min_new_pairs < 1:
            raise ValueError(f"min_new_pairs must be at least 1, got {self.min_new_pairs}")
        if self.cooldown_s < 0:
            raise ValueError(f"cooldown_s must not be negative, got {self.cooldown_s}")
        if self.daily_cap < 0:
            raise ValueError(f"daily_cap must not be negative, got {self.daily_cap}")

    @classmethod
    def from_settings(cls, settings: CollectorSettings) -> TriggerPolicy:
        return cls(
            min_new_pairs=settings.trigger_min_new_pairs,
            cooldown_s=settings.trigger_cooldown_s,
            daily_cap=settings.trigger_daily_cap,
            peak_window=parse_peak_window(settings.trigger_peak_window),
            timezone=parse_timezone(settings.trigger_timezone),
        )

    def local_day(self, now: datetime) -> date:
        """The day `now` falls on in the policy's time zone (the daily cap resets at local midnight)."""
        _require_aware(now, "now")
        return now.astimezone(self.timezone).date()

    def decide(self, now: datetime, new_pairs: int, last_run: datetime | None, runs_today: int) -> Decision:
        """Whether a run should start at `now`.

        `new_pairs`: preference pairs written since the last run; `last_run`: when it started (aware);
        `runs_today`: runs started on `now`'s local day. The cool-down is measured in elapsed time, so a
        daylight-saving change neither shortens nor lengthens it; the peak window is local wall-clock time.
        """
        _require_aware(now, "now")
        if new_pairs < self.min_new_pairs:
            return Decision(
                False, f"not enough new pairs ({new_pairs} < {self.min_new_pairs})", DecisionCode.NOT_ENOUGH_PAIRS
            )
        if last_run is not None:
            _require_aware(last_run, "last_run")
            # Arithmetic in UTC: aware arithmetic in a zone with DST would add wall-clock time.
            until = last_run.astimezone(UTC) + timedelta(seconds=self.cooldown_s)
            if now.astimezone(UTC) < until:
                local_until = until.astimezone(self.timezone).isoformat(timespec="seconds")
                return Decision(False, f"cooling down until {local_until}", DecisionCode.COOLING_DOWN)
        if runs_today >= self.daily_cap:
            return Decision(False, f"daily cap reached ({self.daily_cap})", DecisionCode.DAILY_CAP)
        if self.peak_window is not None and self.peak_window.contains(now.astimezone(self.timezone).time()):
            return Decision(
                False, f"inside the peak window {self.peak_window} {self.timezone.key}", DecisionCode.PEAK_WINDOW
            )
        return Decision(True, "due", DecisionCode.DUE)


# --------------------------------------------------------------------------- shared state


@dataclass(frozen=True)
class TriggerState:
    """The fields of `redis_keys.TRIGGER_HASH`.

    `sealed_version` is a dataset version sealed for a run that failed to start; the next attempt uses it
    when sealing finds nothing newer (a sealed version is never sealed twice).
    """

    last_run_at: datetime | None = None
    last_run_id: str | None = None
    pairs_at_last_run: int = 0
    day: date | None = None
    runs_on_day: int = 0
    sealed_version: str | None = None

    @classmethod
    def from_redis(cls, raw: Mapping[Any, Any]) -> TriggerState:
        fields = fields_text(dict(raw))
        try:
            last_run_at = datetime.fromisoformat(fields["last_run_at"]) if fields.get("last_run_at") else None
            day = date.fromisoformat(fields["day"]) if fields.get("day") else None
            return cls(
                last_run_at=last_run_at,
                last_run_id=fields.get("last_run_id") or None,
                pairs_at_last_run=int(fields.get("pairs_at_last_run") or 0),
                day=day,
                runs_on_day=int(fields.get("runs_on_day") or 0),
                sealed_version=fields.get("sealed_version") or None,
            )
        except ValueError as exc:
            raise ValueError(f"malformed trigger state in {redis_keys.TRIGGER_HASH}: {fields}: {exc}") from exc

    def runs_on(self, day: date) -> int:
        return self.runs_on_day if self.day == day else 0


def utc_now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- trigger


class Trigger:
    """Evaluates the policy on the shared state and starts a run when it is due.

    `seal` seals a dataset version and returns its id (None when nothing was added since the last one);
    `pairs_total` returns the preference pairs written so far; `runner` None evaluates and logs only.
    """

    def __init__(
        self,
        policy: TriggerPolicy,
        runner: Runner | None,
        redis: Redis,
        *,
        seal: Callable[[], Awaitable[str | None]],
        pairs_total: Callable[[], Awaitable[int]],
        dataset_dir: Path,
        clock: Callable[[], datetime] = utc_now,
        metrics_registry: CollectorRegistry | None = None,
        lock_ttl_s: float = 120.0,
    ) -> None:
        self.policy = policy
        self.runner = runner
        self.redis = redis
        self.seal = seal
        self.pairs_total = pairs_total
        self.dataset_dir = dataset_dir
        self.clock = clock
        self.metrics = TriggerMetrics(metrics_registry if metrics_registry is not None else CollectorRegistry())
        self.lock_ttl_s = lock_ttl_s
        self._release = redis.register_script(_RELEASE_LOCK)
        self._last_code: DecisionCode | None = None

    async def read_state(self) -> TriggerState:
        return TriggerState.from_redis(await self.redis.hgetall(redis_keys.TRIGGER_HASH))

    async def check(self) -> str | None:
        """Evaluate the policy once; start a run if it is due. Returns the run id, or None.

        Redis errors and errors from `seal` propagate (the caller logs them and checks again later);
        a runner that fails to start is logged and counted, and leaves the state as it was, so the next
        check retries.
        """
        now = self.clock()
        state = await self.read_state()
        decision = self._evaluate(now, state, await self.pairs_total())
        if not decision.run or self.runner is None:
            return None
        token = secrets.token_hex(16)
        if not await self.redis.set(TRIGGER_LOCK, token, nx=True, px=max(1, int(self.lock_ttl_s * 1000))):
            log.debug("another replica is starting a training run", extra={"decision": decision.code.value})
            return None
        try:
            return await self._start(now, self.runner)
        finally:
            await self._release(keys=[TRIGGER_LOCK], args=[token])

    def _decide(self, now: datetime, state: TriggerState, pairs_total: int) -> tuple[Decision, int, int]:
        new_pairs = max(0, pairs_total - state.pairs_at_last_run)
        runs_today = state.runs_on(self.policy.local_day(now))
        return self.policy.decide(now, new_pairs, state.last_run_at, runs_today), new_pairs, runs_today

    def _evaluate(self, now: datetime, state: TriggerState, pairs_total: int) -> Decision:
        decision, new_pairs, runs_today = self._decide(now, state, pairs_total)
        self.metrics.decisions.labels(decision.code.value).inc()
        self.metrics.new_pairs.set(new_pairs)
        if state.last_run_at is not None:
            self.metrics.last_run.set(state.last_run_at.timestamp())
        if decision.code != self._last_code:
            log.info(
                "retraining decision: %s",
                decision.reason,
                extra={
                    "decision": decision.code.value,
                    "reason": decision.reason,
                    "new_pairs": new_pairs,
                    "runs_today": runs_today,
                    "last_run_at": state.last_run_at.isoformat() if state.last_run_at else None,
                },
            )
            self._last_code = decision.code
        return decision

    async def _start(self, now: datetime, runner: Runner) -> str | None:
        # Another replica may have started a run between our first read and the lock: decide again.
        state = await self.read_state()
        pairs_total = await self.pairs_total()
        decision, _, _ = self._decide(now, state, pairs_total)
        if not decision.run:
            log.info(
                "another replica started a training run meanwhile: %s",
                decision.reason,
                extra={"decision": decision.code.value, "last_run_id": state.last_run_id},
            )
            return None
        version = await self.seal() or state.sealed_version
        if version is None:
            log.warning(
                "retraining is due but sealing found no new data",
                extra={"pairs_total": pairs_total, "pairs_at_last_run": state.pairs_at_last_run},
            )
            return None
        if version != state.sealed_version:
            await self.redis.hset(redis_keys.TRIGGER_HASH, "sealed_version", version)
        try:
            run_id = await runner.start(version, self.dataset_dir)
        except Exception:
            self.metrics.runs.labels("failed").inc()
            log.exception(
                "could not start a training run; the next check retries",
                extra={"dataset_version": version, "runner": type(runner).__name__},
            )
            return None
        day = self.policy.local_day(now)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                redis_keys.TRIGGER_HASH,
                mapping={
                    "last_run_at": now.astimezone(UTC).isoformat(),
                    "last_run_id": run_id,
                    "last_dataset_version": version,
                    "pairs_at_last_run": pairs_total,
                    "day": day.isoformat(),
                    "runs_on_day": state.runs_on(day) + 1,
                },
            )
            pipe.hdel(redis_keys.TRIGGER_HASH, "sealed_version")
            await pipe.execute()
        self.metrics.runs.labels("started").inc()
        self.metrics.last_run.set(now.timestamp())
        log.info(
            "training run started",
            extra={
                "run_id": run_id,
                "dataset_version": version,
                "pairs_total": pairs_total,
                "runner": type(runner).__name__,
            },
        )
        return run_id
