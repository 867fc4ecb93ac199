"""The retraining policy's decisions at their boundaries, in local time zones with daylight saving."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from bailu.collector.settings import CollectorSettings
from bailu.collector.trigger import (
    DecisionCode,
    PeakWindow,
    TriggerPolicy,
    TriggerState,
    parse_peak_window,
    parse_timezone,
)

PARIS = ZoneInfo("Europe/Paris")


pytestmark = pytest.mark.usefixtures("clean_bailu_env")


def policy(**overrides: object) -> TriggerPolicy:
    values: dict[str, object] = {
        "min_new_pairs": 200,
        "cooldown_s": 6 * 3600,
        "daily_cap": 2,
        "peak_window": PeakWindow(time(6, 0), time(9, 30)),
        "timezone": PARIS,
    }
    values.update(overrides)
    return TriggerPolicy(**values)  # type: ignore[arg-type]


def paris(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=PARIS, fold=fold)  # type: ignore[misc]


# An ordinary summer afternoon in Paris (UTC+2), outside the peak window.
AFTERNOON = paris(2025, 6, 2, 15, 0)


def test_exactly_min_new_pairs_is_due() -> None:
    decision = policy().decide(AFTERNOON, 200, None, 0)
    assert decision.run
    assert decision.reason == "due"
    assert decision.code is DecisionCode.DUE


def test_one_pair_short_is_not_enough() -> None:
    decision = policy().decide(AFTERNOON, 199, None, 0)
    assert not decision.run
    assert decision.reason == "not enough new pairs (199 < 200)"
    assert decision.code is DecisionCode.NOT_ENOUGH_PAIRS


def test_not_enough_pairs_is_reported_before_the_other_reasons() -> None:
    inside_window_and_capped = paris(2025, 6, 2, 7, 0)
    decision = policy().decide(inside_window_and_capped, 12, inside_window_and_capped - timedelta(minutes=1), 5)
    assert decision.reason == "not enough new pairs (12 < 200)"


def test_cool_down_ends_exactly_cooldown_s_after_the_last_run() -> None:
    last_run = paris(2025, 6, 2, 10, 0)
    almost = last_run + timedelta(hours=6) - timedelta(microseconds=1)
    decision = policy().decide(almost, 500, last_run, 1)
    assert not decision.run
    assert decision.code is DecisionCode.COOLING_DOWN
    assert decision.reason == "cooling down until 2025-06-02T16:00:00+02:00"
    assert policy().decide(last_run + timedelta(hours=6), 500, last_run, 1).run


def test_cool_down_reason_is_in_the_policy_time_zone_whatever_the_inputs_zone() -> None:
    last_run_utc = datetime(2025, 6, 2, 8, 0, tzinfo=UTC)
    decision = policy().decide(datetime(2025, 6, 2, 9, 0, tzinfo=UTC), 500, last_run_utc, 0)
    assert decision.reason == "cooling down until 2025-06-02T16:00:00+02:00"


def test_zero_cool_down_allows_back_to_back_runs() -> None:
    assert policy(cooldown_s=0).decide(AFTERNOON, 200, AFTERNOON, 1).run


def test_cool_down_is_elapsed_time_across_the_autumn_clock_change() -> None:
    # 2025-10-26 in Paris: 03:00 CEST becomes 02:00 CET, so 02:30 happens twice.
    last_run = paris(2025, 10, 26, 2, 30, fold=0)  # 00:30 UTC
    one_hour_later = paris(2025, 10, 26, 2, 30, fold=1)  # 01:30 UTC, the same wall-clock time
    assert one_hour_later - last_run == timedelta(0)  # wall-clock arithmetic would see no time passed
    hourly = policy(cooldown_s=3600, peak_window=None)
    assert hourly.decide(one_hour_later, 500, last_run, 0).run
    early = hourly.decide(one_hour_later - timedelta(seconds=1), 500, last_run, 0)
    assert not early.run
    assert early.reason == "cooling down until 2025-10-26T02:30:00+01:00"


def test_daily_cap() -> None:
    assert policy().decide(AFTERNOON, 500, None, 1).run
    decision = policy().decide(AFTERNOON, 500, None, 2)
    assert not decision.run
    assert decision.reason == "daily cap reached (2)"
    assert decision.code is DecisionCode.DAILY_CAP


def test_a_daily_cap_of_zero_never_runs() -> None:
    assert policy(daily_cap=0).decide(AFTERNOON, 10_000, None, 0).reason == "daily cap reached (0)"


@pytest.mark.parametrize(
    ("zone", "last_second_utc", "day"),
    [
        # Paris in summer is UTC+2: its day ends at 21:59:59 UTC.
        ("Europe/Paris", datetime(2025, 6, 1, 21, 59, 59, tzinfo=UTC), date(2025, 6, 1)),
        # Los Angeles in summer is UTC-7: its 1 June ends at 06:59:59 UTC on 2 June.
        ("America/Los_Angeles", datetime(2025, 6, 2, 6, 59, 59, tzinfo=UTC), date(2025, 6, 1)),
        # Spring-forward day in Paris has 23 hours: it ends at 21:59:59 UTC.
        ("Europe/Paris", datetime(2025, 3, 30, 21, 59, 59, tzinfo=UTC), date(2025, 3, 30)),
        # Autumn day in Paris has 25 hours: it ends at 22:59:59 UTC.
        ("Europe/Paris", datetime(2025, 10, 26, 22, 59, 59, tzinfo=UTC), date(2025, 10, 26)),
    ],
)
def test_daily_cap_resets_at_local_midnight(zone: str, last_second_utc: datetime, day: date) -> None:
    capped = policy(timezone=ZoneInfo(zone), peak_window=None)
    state = TriggerState(day=day, runs_on_day=2)
    midnight = last_second_utc + timedelta(seconds=1)

    assert capped.local_day(last_second_utc) == day
    runs_today = state.runs_on(capped.local_day(last_second_utc))
    assert capped.decide(last_second_utc, 500, None, runs_today).code is DecisionCode.DAILY_CAP

    assert capped.local_day(midnight) == day + timedelta(days=1)
    runs_today = state.runs_on(capped.local_day(midnight))
    assert runs_today == 0
    assert capped.decide(midnight, 500, None, runs_today).run


@pytest.mark.parametrize(
    ("local", "inside"),
    [
        (paris(2025, 6, 2, 5, 59, 59, 999999), False),
        (paris(2025, 6, 2, 6, 0), True),  # start inclusive
        (paris(2025, 6, 2, 9, 29, 59), True),
        (paris(2025, 6, 2, 9, 30), False),  # end exclusive
    ],
)
def test_peak_window_edges(local: datetime, inside: bool) -> None:
    decision = policy().decide(local.astimezone(UTC), 500, None, 0)
    assert decision.run is not inside
    if inside:
        assert decision.reason == "inside the peak window 06:00-09:30 Europe/Paris"
        assert decision.code is DecisionCode.PEAK_WINDOW


@pytest.mark.parametrize(
    ("hour", "minute", "inside"),
    [(21, 59, False), (22, 0, True), (23, 30, True), (0, 0, True), (1, 59, True), (2, 0, False), (12, 0, False)],
)
def test_window_wrapping_midnight(hour: int, minute: int, inside: bool) -> None:
    night = policy(peak_window=parse_peak_window("22:00-02:00"))
    decision = night.decide(paris(2025, 6, 2, hour, minute), 500, None, 0)
    assert decision.run is not inside
    if inside:
        assert decision.reason == "inside the peak window 22:00-02:00 Europe/Paris"


def test_peak_window_is_local_wall_clock_time_on_the_spring_forward_day() -> None:
    # 2025-03-30 in Paris: 02:00 CET becomes 03:00 CEST. 04:00 UTC is 06:00 local (it was 05:00 the day before).
    assert policy().decide(datetime(2025, 3, 29, 5, 0, tzinfo=UTC), 500, None, 0).code is DecisionCode.PEAK_WINDOW
    assert policy().decide(datetime(2025, 3, 30, 3, 59, 59, tzinfo=UTC), 500, None, 0).run
    assert policy().decide(datetime(2025, 3, 30, 4, 0, tzinfo=UTC), 500, None, 0).code is DecisionCode.PEAK_WINDOW
    assert policy().decide(datetime(2025, 3, 30, 7, 30, tzinfo=UTC), 500, None, 0).run  # 09:30 CEST


def test_window_inside_the_repeated_hour_of_the_autumn_clock_change() -> None:
    small_hours = policy(peak_window=parse_peak_window("02:00-03:00"))
    assert not small_hours.decide(datetime(2025, 10, 26, 0, 30, tzinfo=UTC), 500, None, 0).run  # 02:30 CEST
    assert not small_hours.decide(datetime(2025, 10, 26, 1, 30, tzinfo=UTC), 500, None, 0).run  # 02:30 CET
    assert small_hours.decide(datetime(2025, 10, 26, 2, 0, tzinfo=UTC), 500, None, 0).run  # 03:00 CET


def test_no_window() -> None:
    assert policy(peak_window=None).decide(paris(2025, 6, 2, 7, 0), 500, None, 0).run


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        policy().decide(datetime(2025, 6, 2, 15, 0), 500, None, 0)
    with pytest.raises(ValueError, match="last_run must be a timezone-aware"):
        policy().decide(AFTERNOON, 500, datetime(2025, 6, 2, 8, 0), 0)


def test_parse_peak_window() -> None:
    assert parse_peak_window("06:00-09:30") == PeakWindow(time(6, 0), time(9, 30))
    assert parse_peak_window(" 6:00 - 9:30 ") == PeakWindow(time(6, 0), time(9, 30))
    assert parse_peak_window("") is None
    assert parse_peak_window("   ") is None
    until_midnight = parse_peak_window("18:00-24:00")
    assert until_midnight == PeakWindow(time(18, 0), time(0, 0))
    assert str(until_midnight) == "18:00-24:00"
    assert until_midnight.contains(time(23, 59, 59))
    assert not until_midnight.contains(time(0, 0))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("6-9", r"'6-9' is not HH:MM-HH:MM \(for example 06:00-09:30\)"),
        ("06:00", "is not HH:MM-HH:MM"),
        ("06:00-09:30-10:00", "is not HH:MM-HH:MM"),
        ("25:00-09:30", "the start hour 25 is not between 00 and 23"),
        ("24:00-06:00", "the start hour 24 is not between 00 and 23"),
        ("06:00-09:60", "the end minute 60 is not between 00 and 59"),
        ("06:00-06:00", "start and end are equal"),
    ],
)
def test_peak_window_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_peak_window(text)


@pytest.mark.parametrize("name", ["Mars/Olympus", "Europe/Pariss", "../etc/passwd", ""])
def test_unknown_time_zones(name: str) -> None:
    with pytest.raises(ValueError, match="IANA name such as UTC or Europe/Paris"):
        parse_timezone(name)


def test_policy_refuses_invalid_numbers() -> None:
    with pytest.raises(ValueError, match="min_new_pairs"):
        policy(min_new_pairs=0)
    with pytest.raises(ValueError, match="cooldown_s"):
        policy(cooldown_s=-1)
    with pytest.raises(ValueError, match="daily_cap"):
        policy(daily_cap=-1)


def test_from_settings() -> None:
    built = TriggerPolicy.from_settings(
        CollectorSettings(
            trigger_min_new_pairs=50,
            trigger_cooldown_s=600,
            trigger_daily_cap=3,
            trigger_peak_window="22:00-02:00",
            trigger_timezone="Asia/Shanghai",
        )
    )
    assert built == TriggerPolicy(
        min_new_pairs=50,
        cooldown_s=600,
        daily_cap=3,
        peak_window=PeakWindow(time(22, 0), time(2, 0)),
        timezone=ZoneInfo("Asia/Shanghai"),
    )


def test_from_default_settings() -> None:
    built = TriggerPolicy.from_settings(CollectorSettings())
    assert built.peak_window == PeakWindow(time(6, 0), time(9, 30))
    assert built.timezone.key == "UTC"
    assert (built.min_new_pairs, built.cooldown_s, built.daily_cap) == (200, 6 * 3600, 2)


def test_from_settings_reports_bad_values() -> None:
    with pytest.raises(ValueError, match="peak window '6h-9h'"):
        TriggerPolicy.from_settings(CollectorSettings(trigger_peak_window="6h-9h"))
    with pytest.raises(ValueError, match="unknown time zone 'Paris'"):
        TriggerPolicy.from_settings(CollectorSettings(trigger_timezone="Paris"))


def test_state_from_redis_fields() -> None:
    state = TriggerState.from_redis(
        {
            b"last_run_at": b"2025-06-02T08:00:00+00:00",
            b"last_run_id": b"run-1",
            b"pairs_at_last_run": b"240",
            b"day": b"2025-06-02",
            b"runs_on_day": b"1",
        }
    )
    assert state == TriggerState(
        last_run_at=datetime(2025, 6, 2, 8, 0, tzinfo=UTC),
        last_run_id="run-1",
        pairs_at_last_run=240,
        day=date(2025, 6, 2),
        runs_on_day=1,
    )
    assert TriggerState.from_redis({}) == TriggerState()
    with pytest.raises(ValueError, match="malformed trigger state"):
        TriggerState.from_redis({"runs_on_day": "two"})
