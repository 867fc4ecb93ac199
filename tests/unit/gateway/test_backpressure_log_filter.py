"""uvicorn's ERROR for a response the gateway abandoned on purpose is dropped, once per abandonment and only
shortly after it; any other unfinished response still shows."""

from __future__ import annotations

import logging
import time

from bailu.gateway.backpressure import AbandonedResponses


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, message, None, None)


def test_one_expected_record_is_dropped_per_abandonment() -> None:
    shown = AbandonedResponses()
    assert shown.filter(record(AbandonedResponses.MESSAGE))  # nothing abandoned: a real problem, shown
    shown.expect()
    shown.expect()
    assert shown.filter(record("Exception in ASGI application"))  # other messages always pass
    assert not shown.filter(record(AbandonedResponses.MESSAGE))
    assert not shown.filter(record(AbandonedResponses.MESSAGE))
    assert shown.filter(record(AbandonedResponses.MESSAGE))  # a third one was not announced


def test_an_expectation_lapses_after_its_window() -> None:
    shown = AbandonedResponses(window_s=0.01)
    shown.expect()  # uvicorn had seen the disconnect and logs nothing for this one
    time.sleep(0.02)
    assert shown.filter(record(AbandonedResponses.MESSAGE))
