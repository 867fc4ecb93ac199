"""The pure parts of the quotas: OpenAI's reset format, the x-ratelimit-* headers, the refusal errors, and the
local (per-replica) algorithms under an injected clock."""

from __future__ import annotations

import pytest

from bailu.common.errors import ConcurrencyLimited, RateLimited, TokensRateLimited
from bailu.gateway.errors import error_response
from bailu.gateway.quota_local import Decision, LocalQuotas
from bailu.gateway.quotas import format_duration, quota_headers, refusal
from bailu.keys.model import ApiKey, Limits


def make_key(**limits: int) -> ApiKey:
    return ApiKey(id="key_ab12", name="writer-7", hash="sha256:" + "0" * 64, limits=Limits(**limits))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-3, "0s"),
        (0.02, "20ms"),
        (0.0201, "21ms"),  # rounded up: never promise a reset sooner than it comes
        (0.999, "999ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (19.873, "19.873s"),
        (20.0000000001, "20s"),
        (60, "1m0s"),
        (90, "1m30s"),
        (360, "6m0s"),
        (3600, "1h0m0s"),
        (3725.25, "1h2m5.25s"),
    ],
)
def test_format_duration_is_openais_reset_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_headers_only_for_the_limits_the_key_has() -> None:
    decision = Decision(requests_level=2.0, tokens_level=250.4)
    assert quota_headers(Limits(rpm=3), decision) == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "2",
        "x-ratelimit-reset-requests": "20s",
    }
    headers = quota_headers(Limits(rpm=3, tpm=1000, concurrency=2), decision)
    assert headers["x-ratelimit-limit-tokens"] == "1000"
    assert headers["x-ratelimit-remaining-tokens"] == "250"
    assert headers["x-ratelimit-reset-tokens"] == "44.976s"  # 749.6 tokens at 1000/60 a second
    assert not any("concurrency" in name for name in headers)
    assert quota_headers(Limits(concurrency=2), Decision()) == {}


def test_tokens_in_debt_show_zero_remaining_and_a_longer_reset() -> None:
    headers = quota_headers(Limits(tpm=600), Decision(tokens_level=-300.0))
    assert headers["x-ratelimit-remaining-tokens"] == "0"
    assert headers["x-ratelimit-reset-tokens"] == "1m30s"


def test_requests_refusal_message_headers_and_retry_after() -> None:
    key = make_key(rpm=3)
    error = refusal(key, 1, Decision(requests_ok=False, requests_level=0.0))
    assert type(error) is RateLimited
    assert error.message == (
        "Rate limit reached for key key_ab12 (writer-7) on requests per minute: limit 3, used 3, requested 1. "
        "Try again in 20s."
    )
    assert error.retry_after_s == pytest.approx(20.0)
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    response = error_response(error)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "20"
    assert response.headers["x-ratelimit-limit-requests"] == "3"


def test_tokens_refusal_waits_for_the_reservation_out_of_debt() -> None:
    key = make_key(tpm=600)
    error = refusal(key, 50, Decision(tokens_ok=False, tokens_level=-100.0))
    assert type(error) is TokensRateLimited
    assert "on tokens per minute: limit 600, used 700, requested 50. Try again in 15s." in error.message
    assert error.retry_after_s == pytest.approx(15.0)  # 150 tokens at 10 a second


def test_a_prompt_larger_than_the_limit_waits_for_a_full_bucket_only() -> None:
    error = refusal(make_key(tpm=600), 5000, Decision(tokens_ok=False, tokens_level=300.0))
    assert error.retry_after_s == pytest.approx(30.0)


def test_the_wait_covers_every_bucket_that_refused_and_the_first_limit_names_the_error() -> None:
    key = make_key(rpm=60, tpm=600)
    error = refusal(key, 100, Decision(requests_ok=False, tokens_ok=False, requests_level=0.5, tokens_level=0.0))
    assert type(error) is RateLimited
    assert error.retry_after_s == pytest.approx(10.0)  # tokens: 100 at 10 a second; requests alone: 0.5s


def test_concurrency_refusal_keeps_the_default_retry_after() -> None:
    error = refusal(make_key(concurrency=2), 1, Decision(concurrency_ok=False, leases=2))
    assert type(error) is ConcurrencyLimited
    assert "on completions in progress: limit 2, in progress 2, requested 1" in error.message
    assert error.retry_after_s == ConcurrencyLimited.default_retry_after_s
    assert error.headers == {}


def test_local_requests_bucket_refills_at_rpm_per_minute() -> None:
    clock, limits = Clock(), Limits(rpm=3)
    local = LocalQuotas(clock)
    for left in (2, 1, 0):
        decision = local.admit("k", limits, tokens=1, lease_id="", lease_ttl_s=60)
        assert decision.admitted
        assert decision.requests_level == pytest.approx(left)
    assert not local.admit("k", limits, tokens=1, lease_id="", lease_ttl_s=60).admitted
    clock.now += 19.9
    assert not local.admit("k", limits, tokens=1, lease_id="", lease_ttl_s=60).admitted
    clock.now += 0.1
    assert local.admit("k", limits, tokens=1, lease_id="", lease_ttl_s=60).admitted
    assert local.admit("other", limits, tokens=1, lease_id="", lease_ttl_s=60).admitted  # per key


def test_local_tokens_debt_refund_and_large_prompts() -> None:
    clock, limits = Clock(), Limits(tpm=600)
    local = LocalQuotas(clock)
    assert local.admit("k", limits, tokens=100, lease_id="", lease_ttl_s=60).tokens_level == pytest.approx(500)
    local.settle("k", limits, tokens_delta=700, lease_id="")  # used 800 in all: 200 in debt
    decision = local.admit("k", limits, tokens=1, lease_id="", lease_ttl_s=60)
    assert not decision.admitted
    assert decision.tokens_level == pytest.approx(-200)
    clock.now += 20.5  # 205 tokens later
    assert local.admit("k", limits, tokens=1, lease_id="", lease_ttl_s=60).admitted
    local.settle("k", limits, tokens_delta=-10_000, lease_id="")  # a refund fills the bucket, no more
    decision = local.admit("k", limits, tokens=5000, lease_id="", lease_ttl_s=60)
    assert decision.admitted
    assert decision.tokens_level == pytest.approx(600 - 5000)


def test_local_admission_takes_from_every_limit_or_from_none() -> None:
    clock, limits = Clock(), Limits(rpm=10, concurrency=1)
    local = LocalQuotas(clock)
    assert local.admit("k", limits, tokens=1, lease_id="a", lease_ttl_s=60).requests_level == pytest.approx(9)
    refused = local.admit("k", limits, tokens=1, lease_id="b", lease_ttl_s=60)
    assert not refused.concurrency_ok
    assert refused.requests_ok
    assert refused.requests_level == pytest.approx(9)
    local.settle("k", limits, tokens_delta=0, lease_id="a")
    assert local.admit("k", limits, tokens=1, lease_id="c", lease_ttl_s=60).requests_level == pytest.approx(8)


def test_local_leases_expire() -> None:
    clock, limits = Clock(), Limits(concurrency=1)
    local = LocalQuotas(clock)
    assert local.admit("k", limits, tokens=1, lease_id="a", lease_ttl_s=5).admitted
    assert not local.admit("k", limits, tokens=1, lease_id="b", lease_ttl_s=5).admitted
    clock.now += 5
    assert local.admit("k", limits, tokens=1, lease_id="c", lease_ttl_s=5).admitted


def test_local_state_is_bounded_least_recently_used_first() -> None:
    limits = Limits(rpm=1)
    local = LocalQuotas(Clock(), max_keys=2)
    for key_id in ("a", "b"):
        assert local.admit(key_id, limits, tokens=1, lease_id="", lease_ttl_s=60).admitted
    assert not local.admit("a", limits, tokens=1, lease_id="", lease_ttl_s=60).admitted  # "a" used last
    assert local.admit("c", limits, tokens=1, lease_id="", lease_ttl_s=60).admitted  # evicts "b"
    assert len(local) == 2
    assert local.admit("b", limits, tokens=1, lease_id="", lease_ttl_s=60).admitted  # forgotten: full again
    assert not local.admit("c", limits, tokens=1, lease_id="", lease_ttl_s=60).admitted
