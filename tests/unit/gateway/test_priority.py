"""A request's priority class and first-token deadline, from its API key and its headers."""

from __future__ import annotations

import pytest

from bailu.common.errors import InvalidRequest, PermissionDenied
from bailu.common.types import BATCH, INTERACTIVE
from bailu.gateway.priority import PRIORITY_HEADER, TTFT_DEADLINE_HEADER, request_class
from bailu.gateway.settings import GatewaySettings

NOW = 1_700_000_000.0


@pytest.fixture
def settings(clean_bailu_env: None) -> GatewaySettings:
    return GatewaySettings(interactive_ttft_deadline_s=10.0, batch_ttft_deadline_s=0.0, request_timeout_s=120.0)


def test_the_keys_priority_and_its_default_deadline(settings: GatewaySettings) -> None:
    assert request_class({}, INTERACTIVE, settings, NOW) == (INTERACTIVE, NOW + 10.0)
    assert request_class({}, BATCH, settings, NOW) == (BATCH, None)  # 0: no deadline


def test_a_batch_deadline_default_applies_to_batch_requests(clean_bailu_env: None) -> None:
    settings = GatewaySettings(interactive_ttft_deadline_s=0, batch_ttft_deadline_s=300)
    assert request_class({}, BATCH, settings, NOW) == (BATCH, NOW + 300)
    assert request_class({}, INTERACTIVE, settings, NOW) == (INTERACTIVE, None)


def test_an_interactive_key_may_lower_a_request_to_batch(settings: GatewaySettings) -> None:
    assert request_class({PRIORITY_HEADER: "batch"}, INTERACTIVE, settings, NOW) == (BATCH, None)
    assert request_class({PRIORITY_HEADER: " Batch "}, INTERACTIVE, settings, NOW) == (BATCH, None)


def test_asking_for_the_keys_own_class_is_allowed(settings: GatewaySettings) -> None:
    assert request_class({PRIORITY_HEADER: "interactive"}, INTERACTIVE, settings, NOW)[0] == INTERACTIVE
    assert request_class({PRIORITY_HEADER: "batch"}, BATCH, settings, NOW)[0] == BATCH


def test_a_batch_key_cannot_raise_a_request_to_interactive(settings: GatewaySettings) -> None:
    with pytest.raises(PermissionDenied, match=r"priority is batch.*not raise it to interactive"):
        request_class({PRIORITY_HEADER: "interactive"}, BATCH, settings, NOW)


@pytest.mark.parametrize("value", ["urgent", "", "high", "interactive,batch"])
def test_an_unknown_priority_is_invalid(settings: GatewaySettings, value: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        request_class({PRIORITY_HEADER: value}, INTERACTIVE, settings, NOW)
    assert info.value.param == PRIORITY_HEADER


def test_the_deadline_header_overrides_the_default(settings: GatewaySettings) -> None:
    assert request_class({TTFT_DEADLINE_HEADER: "250"}, INTERACTIVE, settings, NOW) == (INTERACTIVE, NOW + 0.25)
    # A batch request gets one only when it asks.
    headers = {PRIORITY_HEADER: "batch", TTFT_DEADLINE_HEADER: "120000"}
    assert request_class(headers, INTERACTIVE, settings, NOW) == (BATCH, NOW + 120.0)


# "9" * 5000: more digits than Python's int() takes (it raised, a 500, before the length check).
@pytest.mark.parametrize("value", ["0", "-5", "1.5", "abc", "", "120001", "१२", "9" * 5000], ids=lambda v: v[:8])
def test_a_bad_deadline_is_invalid(settings: GatewaySettings, value: str) -> None:
    with pytest.raises(InvalidRequest, match="1 to 120000") as info:
        request_class({TTFT_DEADLINE_HEADER: value}, INTERACTIVE, settings, NOW)
    assert info.value.param == TTFT_DEADLINE_HEADER
