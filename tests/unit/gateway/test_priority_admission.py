"""The gateway's side of admission control, on load reports set by hand (no worker is contacted): the wait
estimate, the pick by estimated wait, and what `AdmissionPolicy` refuses."""

from __future__ import annotations

import time

import pytest

from bailu.common.errors import DeadlineUnmeetable, Shed, Unavailable
from bailu.common.types import BATCH, INTERACTIVE, ChatMessage, GenerateRequest, LoadReport, ModelCard
from bailu.gateway.priority import AdmissionPolicy
from bailu.gateway.settings import GatewaySettings
from bailu.gateway.workers import WorkerClient, WorkerPool, estimated_wait_s
from tests.unit.gateway.conftest import put_worker

BASE = ModelCard("base", "base", "", 4096)


def load(
    running: int = 0, queued: int = 0, queued_batch: int = 0, capacity: int = 4, service_s: float = 2.0
) -> LoadReport:
    return LoadReport(
        queued=queued,
        running=running,
        capacity=capacity,
        max_queue=8,
        ready=True,
        queued_batch=queued_batch,
        service_s=service_s,
    )


def request(priority: str = INTERACTIVE, first_token_in_s: float | None = None) -> GenerateRequest:
    deadline = None if first_token_in_s is None else time.time() + first_token_in_s
    return GenerateRequest(
        "r1", "base", messages=(ChatMessage("user", "hi"),), priority=priority, first_token_deadline=deadline
    )


# --- the estimate -------------------------------------------------------------------------------


def test_no_wait_while_a_slot_is_free() -> None:
    assert estimated_wait_s(load(running=3), INTERACTIVE) == 0.0
    assert estimated_wait_s(load(running=3), BATCH) == 0.0


def test_no_estimate_before_the_worker_measured_its_service_time() -> None:
    assert estimated_wait_s(load(running=4, queued=8, service_s=0.0), INTERACTIVE) == 0.0


def test_the_wait_grows_with_the_work_ahead_per_slot() -> None:
    # All 4 slots busy: the next request waits for one slot to free, on average service_s / capacity.
    assert estimated_wait_s(load(running=4), INTERACTIVE) == pytest.approx(0.5)
    # Four queued ahead of it: the fifth slot to free.
    assert estimated_wait_s(load(running=4, queued=4), INTERACTIVE) == pytest.approx(2.5)
    assert estimated_wait_s(load(running=4, queued=4, service_s=4.0), INTERACTIVE) == pytest.approx(5.0)


def test_queued_batch_work_does_not_delay_interactive_work() -> None:
    report = load(running=4, queued=6, queued_batch=4)
    assert estimated_wait_s(report, INTERACTIVE) == pytest.approx((2 + 1) * 2.0 / 4)
    assert estimated_wait_s(report, BATCH) == pytest.approx((6 + 1) * 2.0 / 4)


def test_this_gateways_calls_since_the_report_count() -> None:
    report = load(running=1)  # stale: this gateway has sent 9 more since
    assert estimated_wait_s(report, INTERACTIVE, inflight=10) == pytest.approx((6 + 1) * 2.0 / 4)
    # Of its batch calls, at most `capacity` (4) can hold slots; the rest queue behind interactive work:
    # 2 interactive + 4 batch ahead.
    assert estimated_wait_s(report, INTERACTIVE, inflight=10, inflight_batch=8) == pytest.approx((2 + 1) * 2.0 / 4)
    assert estimated_wait_s(report, BATCH, inflight=10, inflight_batch=8) == pytest.approx((6 + 1) * 2.0 / 4)


# --- the pick and the policy on a pool ------------------------------------------------------------


def add(pool: WorkerPool, address: str, report: LoadReport, inflight: int = 0) -> WorkerClient:
    return put_worker(pool, address, report, (BASE,), inflight)


async def test_the_pick_prefers_the_shortest_wait_for_the_class(pool: WorkerPool) -> None:
    # Fewer requests in all on "mostly-batch", but more interactive ones ahead on "interactive-queue".
    add(pool, "interactive-queue:1", load(running=4, queued=3, queued_batch=0))
    add(pool, "mostly-batch:1", load(running=4, queued=5, queued_batch=5))
    for _ in range(10):
        assert pool.pick("base", "", set(), priority=INTERACTIVE).address == "mostly-batch:1"
        assert pool.pick("base", "", set(), priority=BATCH).address == "interactive-queue:1"
        assert pool.pick("base", "", set()).address == "interactive-queue:1"  # off: least loaded


async def test_equal_waits_fall_back_to_the_least_loaded(pool: WorkerPool) -> None:
    add(pool, "busier:1", load(running=3))
    add(pool, "idle:1", load(running=0))
    for _ in range(10):
        assert pool.pick("base", "", set(), priority=INTERACTIVE).address == "idle:1"


async def test_an_unmeetable_first_token_deadline_is_refused(pool: WorkerPool) -> None:
    policy = AdmissionPolicy(batch_queue_share=0.5)
    add(pool, "w1:1", load(running=4, queued=4))  # 2.5 s
    add(pool, "w2:1", load(running=4, queued=7))  # 4 s
    candidates = pool.candidates("base", "", set())
    with pytest.raises(DeadlineUnmeetable, match=r"shortest estimated wait is 2\.50s") as info:
        policy.check(request(INTERACTIVE, first_token_in_s=1.0), candidates, time.time())
    assert info.value.retry_after_s == 3
    assert isinstance(info.value, Unavailable)
    assert info.value.retryable
    policy.check(request(INTERACTIVE, first_token_in_s=3.0), candidates, time.time())  # w1 makes it
    policy.check(request(INTERACTIVE, first_token_in_s=None), candidates, time.time())  # no deadline


async def test_a_batch_requests_deadline_only_orders_the_queue(pool: WorkerPool) -> None:
    add(pool, "w1:1", load(running=4, queued=2))  # 1.5 s, below the batch share
    policy = AdmissionPolicy(batch_queue_share=0.5)
    policy.check(request(BATCH, first_token_in_s=0.5), pool.candidates("base", "", set()), time.time())
    with pytest.raises(DeadlineUnmeetable):
        policy.check(request(INTERACTIVE, first_token_in_s=0.5), pool.candidates("base", "", set()), time.time())


async def test_batch_is_shed_only_when_every_queue_holds_its_share(pool: WorkerPool) -> None:
    policy = AdmissionPolicy(batch_queue_share=0.5)
    full = add(pool, "full:1", load(running=4, queued=4))  # 4 of 8: the share
    roomy = add(pool, "roomy:1", load(running=4, queued=3))
    policy.check(request(BATCH), pool.candidates("base", "", set()), time.time())
    roomy.load = load(running=4, queued=6, queued_batch=6)
    with pytest.raises(Shed, match="50% full") as info:
        policy.check(request(BATCH), pool.candidates("base", "", set()), time.time())
    assert info.value.retry_after_s == 3  # ceil of the shortest batch wait, 2.5 s
    # Interactive work is never shed for the queue share.
    policy.check(request(INTERACTIVE), pool.candidates("base", "", set()), time.time())
    # This gateway's own calls since the last report count as queued.
    full.load = load(running=0, queued=0)
    full.inflight = 4 + 4
    with pytest.raises(Shed):
        policy.check(request(BATCH), pool.candidates("base", "", set()), time.time())


async def test_a_worker_without_a_queue_never_sheds_batch(pool: WorkerPool) -> None:
    worker = add(pool, "w:1", load(running=4))
    worker.load = LoadReport(queued=0, running=4, capacity=4, max_queue=0, ready=True, service_s=2.0)
    AdmissionPolicy(batch_queue_share=0.5).check(request(BATCH), pool.candidates("base", "", set()), time.time())


async def test_no_candidates_is_left_to_routing(pool: WorkerPool) -> None:
    AdmissionPolicy(batch_queue_share=0.5).check(request(INTERACTIVE, 0.001), [], time.time())


def test_the_policy_follows_the_settings(clean_bailu_env: None) -> None:
    assert AdmissionPolicy.from_settings(GatewaySettings(batch_queue_share=0.25)) == AdmissionPolicy(0.25)
    assert AdmissionPolicy.from_settings(GatewaySettings(admission_control=False)) is None
