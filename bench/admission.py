"""Admission: interactive and batch clients on saturated sim workers, admission control off and on.

Two workers (sim engine, as processes) with 4 engine slots and a queue of 16 each. This process is the
gateway's routing layer, built as the gateway builds it (WorkerPool polling the workers, Router, and each
request's class and first-token deadline from `request_class`, batch clients sending `X-Bailu-Priority: batch`)
and the clients: open-loop (Poisson) arrivals of interactive requests, with a time-to-first-token deadline,
and batch requests, without one, together more than the workers can serve. The same load (same seed) runs
twice against the same workers: admission control off (the baseline: one queue in arrival order, requests
wait and time out late) and on.

Reported per class: requests, completed, refused at once by admission control (shed), refused by a full
worker queue (overloaded: also at once), other errors, TTFT p50/p99 of completed requests, and for
interactive requests deadline misses (the first token came after the deadline, or never, the client having
waited past it) and goodput (completed within the deadline), plus the batch requests the workers evicted.

    python -m bench.admission                          # about 1.5 minutes; bench/results/admission.json
    python -m bench.admission --seconds 10 --name admission_short
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from bailu.common.errors import BailuError, DeadlineUnmeetable, Overloaded, Shed
from bailu.common.metrics import GATEWAY_SHED, WORKER_EVICTED, GatewayMetrics
from bailu.common.types import BATCH, INTERACTIVE, ChatMessage, GenerateRequest, SamplingParams
from bailu.gateway.priority import PRIORITY_HEADER, AdmissionPolicy, request_class
from bailu.gateway.routing import Router
from bailu.gateway.settings import GatewaySettings
from bailu.gateway.workers import WorkerPool
from bench.common import (
    ServiceGroup,
    WorkerProcess,
    distribution_ms,
    exit_on_sigterm,
    metadata,
    rnd,
    scrape_metrics,
    start_sim_worker,
    table,
    write_results,
)

NAME = "admission"
MODEL = "sim-model"
MAX_TOKENS = 32
# 4 slots a worker, each request holding one for about 30 ms + 31 x 20 ms = 0.65 s: about 6 requests/s a worker.
SIM = {
    "SIM_TTFT_MS": "30",
    "SIM_ITL_MS": "20",
    "SIM_OUTPUT_TOKENS": str(MAX_TOKENS),
    "MAX_BATCH_SIZE": "4",
    "MAX_QUEUE": "16",
}
WORKERS = 2
REQUEST_TIMEOUT_S = 30.0


@dataclass
class Outcome:
    priority: str
    outcome: str  # ok, shed, overloaded, or the error's name
    ttft_s: float | None
    ended_s: float
    deadline_s: float | None  # the first-token deadline, relative to the start

    @property
    def missed(self) -> bool:
        """The client waited past its deadline without a first token (refusals at once are not misses)."""
        if self.deadline_s is None or self.outcome in ("shed", "overloaded"):
            return False
        return self.ttft_s is None or self.ttft_s > self.deadline_s


def _outcome(exc: BailuError) -> str:
    if isinstance(exc, (DeadlineUnmeetable, Shed)):
        return "shed"
    if isinstance(exc, Overloaded):
        return "overloaded"
    return exc.name


async def one(router: Router, settings: GatewaySettings, priority: str, out: list[Outcome]) -> None:
    """One request, its class and deadline found as the completion handler finds them."""
    start = time.time()
    headers = {PRIORITY_HEADER: BATCH} if priority == BATCH else {}
    klass, first_token_deadline = request_class(headers, INTERACTIVE, settings, start)
    request = GenerateRequest(
        request_id=uuid.uuid4().hex,
        model=MODEL,
        messages=(ChatMessage("user", "hello"),),
        sampling=SamplingParams(max_tokens=MAX_TOKENS),
        deadline=start + settings.request_timeout_s,
        priority=klass,
        first_token_deadline=first_token_deadline,
    )
    ttft: float | None = None
    outcome = "ok"
    try:
        async for _ in router.stream(request):
            if ttft is None:
                ttft = time.time() - start
    except BailuError as exc:
        outcome = _outcome(exc)
    deadline_s = None if first_token_deadline is None else first_token_deadline - start
    out.append(Outcome(klass, outcome, ttft, time.time() - start, deadline_s))


async def drive(
    router: Router, settings: GatewaySettings, rates: dict[str, float], seconds: float, seed: int
) -> tuple[list[Outcome], float]:
    """Open-loop Poisson arrivals of each class for `seconds`; returns when every request ended."""
    out: list[Outcome] = []
    tasks: set[asyncio.Task[None]] = set()

    async def lane(priority: str, rate: float, rng: random.Random) -> None:
        due = time.perf_counter()
        until = due + seconds
        while True:
            due += rng.expovariate(rate)
            if due >= until:
                return
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            task = asyncio.create_task(one(router, settings, priority, out))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    started = time.perf_counter()
    await asyncio.gather(*(lane(p, rate, random.Random(f"{seed}-{p}")) for p, rate in rates.items() if rate > 0))
    while tasks:
        await asyncio.gather(*list(tasks))
    return out, time.perf_counter() - started


def summarize(results: list[Outcome], wall_s: float) -> dict[str, Any]:
    by_class: dict[str, Any] = {}
    for priority in (INTERACTIVE, BATCH):
        mine = [r for r in results if r.priority == priority]
        ok = [r for r in mine if r.outcome == "ok"]
        outcomes = Counter(r.outcome for r in mine)
        entry: dict[str, Any] = {
            "requests": len(mine),
            "completed": len(ok),
            "completed_per_s": rnd(len(ok) / wall_s if wall_s else None),
            "shed": outcomes.get("shed", 0),
            "overloaded": outcomes.get("overloaded", 0),
            "other_errors": {k: v for k, v in outcomes.items() if k not in ("ok", "shed", "overloaded")},
            "ttft_ms": distribution_ms([r.ttft_s for r in ok if r.ttft_s is not None]),
        }
        if any(r.deadline_s is not None for r in mine):
            entry["deadline_misses"] = sum(r.missed for r in mine)
            entry["goodput"] = sum(
                1 for r in ok if r.ttft_s is not None and r.deadline_s is not None and r.ttft_s <= r.deadline_s
            )
        by_class[priority] = entry
    return by_class


def evicted(workers: list[WorkerProcess]) -> float:
    name = f'{WORKER_EVICTED}{{priority="{BATCH}"}}'
    return sum(scrape_metrics(w.metrics_url, (WORKER_EVICTED,)).get(name, 0.0) for w in workers)


async def run(
    mode: str, workers: list[WorkerProcess], args: argparse.Namespace, rates: dict[str, float]
) -> dict[str, Any]:
    settings = GatewaySettings(
        admission_control=mode == "on",
        interactive_ttft_deadline_s=args.ttft_deadline_s,
        batch_ttft_deadline_s=0,
        batch_queue_share=args.batch_queue_share,
        request_timeout_s=REQUEST_TIMEOUT_S,
    )
    registry = CollectorRegistry()
    pool = WorkerPool([w.address for w in workers], poll_interval_s=settings.load_poll_interval_s)
    router = Router(
        pool,
        GatewayMetrics(registry),
        settings.max_attempts,
        first_token_timeout_s=settings.first_token_timeout_s,
        idle_timeout_s=settings.stream_idle_timeout_s,
        admission=AdmissionPolicy.from_settings(settings),
    )
    await pool.start()
    try:
        # A few requests first, so that the workers' service time is measured as it would be in service.
        warm: list[Outcome] = []
        await asyncio.gather(*(one(router, settings, INTERACTIVE, warm) for _ in range(2 * WORKERS)))
        await asyncio.sleep(2 * settings.load_poll_interval_s)
        evicted_before = await asyncio.to_thread(evicted, workers)
        results, wall_s = await drive(router, settings, rates, args.seconds, args.seed)
        evicted_after = await asyncio.to_thread(evicted, workers)
    finally:
        await pool.close()
    shed = {
        f"{sample.labels['priority']}/{sample.labels['reason']}": sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == GATEWAY_SHED
    }
    return {
        "admission_control": mode,
        "wall_s": rnd(wall_s, 1),
        "by_class": summarize(results, wall_s),
        "gateway_shed_total": shed,
        "worker_evicted_batch": evicted_after - evicted_before,
    }


def print_summary(runs: list[dict[str, Any]]) -> None:
    rows = []
    for r in runs:
        for priority, c in r["by_class"].items():
            rows.append(
                [
                    r["admission_control"],
                    priority,
                    c["requests"],
                    c["completed"],
                    c["shed"],
                    c["overloaded"],
                    sum(c["other_errors"].values()),
                    c["ttft_ms"]["p50"],
                    c["ttft_ms"]["p99"],
                    c.get("deadline_misses", "-"),
                    c.get("goodput", "-"),
                ]
            )
    headers = ["admission", "class", "requests", "completed", "shed", "overloaded", "errors"]
    print(table([*headers, "ttft p50 ms", "ttft p99 ms", "deadline misses", "goodput"], rows))
    evictions = ", ".join(f"{r['admission_control']}: {r['worker_evicted_batch']:g}" for r in runs)
    print(f"batch requests evicted by the workers ({evictions})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="duration of the arrivals, per run")
    parser.add_argument("--interactive-rate", type=float, default=5.0, help="interactive requests/s offered")
    parser.add_argument("--batch-rate", type=float, default=12.0, help="batch requests/s offered")
    parser.add_argument("--ttft-deadline-s", type=float, default=1.0, help="interactive time-to-first-token deadline")
    parser.add_argument("--batch-queue-share", type=float, default=0.5, help="the gateway's batch_queue_share")
    parser.add_argument("--seed", type=int, default=1, help="seed of the arrival times (the same in both runs)")
    parser.add_argument("--name", default=NAME, help="results file bench/results/NAME.json")
    args = parser.parse_args()
    if not 0 < args.seconds <= 600 or args.ttft_deadline_s <= 0 or not 0 < args.batch_queue_share <= 1:
        parser.error("0 < --seconds <= 600, --ttft-deadline-s > 0, 0 < --batch-queue-share <= 1")
    exit_on_sigterm()
    run_started = time.monotonic()
    meta = metadata(("prometheus-client",))
    rates = {INTERACTIVE: args.interactive_rate, BATCH: args.batch_rate}
    with ServiceGroup() as group:
        workers = [start_sim_worker(group, f"{NAME}-worker-{i + 1}", MODEL, SIM) for i in range(WORKERS)]
        print(
            f"{WORKERS} sim workers; {args.interactive_rate:g} interactive + {args.batch_rate:g} batch requests/s "
            f"for {args.seconds:g} s, admission control off, then on",
            flush=True,
        )
        runs = [asyncio.run(run(mode, workers, args, rates)) for mode in ("off", "on")]
    results: dict[str, Any] = {
        "benchmark": NAME,
        "metadata": meta,
        "config": {
            "workers": WORKERS,
            "sim": SIM,
            "max_tokens": MAX_TOKENS,
            "seconds": args.seconds,
            "rates_per_s": rates,
            "interactive_ttft_deadline_s": args.ttft_deadline_s,
            "batch_ttft_deadline_s": 0,
            "batch_queue_share": args.batch_queue_share,
            "request_timeout_s": REQUEST_TIMEOUT_S,
            "seed": args.seed,
        },
        "runs": runs,
        "services": {w.service.name: w.service.report() for w in workers},
        "runtime_s": round(time.monotonic() - run_started, 1),
        "definitions": {
            "ttft": "from the request's creation (before routing) to its first chunk, completed requests only",
            "shed": "refused at once by admission control (ttft_deadline_unmeetable, shed_under_load)",
            "overloaded": "refused by a full worker queue, or evicted from one, on every worker tried",
            "deadline_misses": "interactive requests whose first token came after the deadline, or never while "
            "the client waited past it (refusals at once are not misses)",
            "goodput": "interactive requests completed with their first token within the deadline",
        },
    }
    path = write_results(args.name, results)
    print()
    print_summary(runs)
    print(f"\nwrote {path} in {results['runtime_s']}s")


if __name__ == "__main__":
    main()
