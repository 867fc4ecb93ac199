"""Feedback ingestion, end to end: client -> POST /v1/feedback (one event per request) or
/v1/feedback/batch (many) -> Redis stream -> collector -> dataset shards.

A redis-server (append-only file, fsync every second, as the chart runs it), the gateway (no workers:
feedback needs none) and the collector run as subprocesses. Setup (not timed) writes completion records
straight into Redis, as the gateway's completion log would, owned by the benchmark's API key. Then, for
each mode in turn (default: single, then batch; each measured and drained on its own):

    load        a fixed number of `edit` events (each with a unique edited text), posted by N keep-alive
                HTTP/1.1 connections in a closed loop (bench.sse_client): single, one per request with an
                Idempotency-Key; batch, --batch-size per request, each with its feedback_id
    end to end  from the first POST until the collector's group has nothing pending and no lag; every
                accepted event id is then looked for in the dataset shards' meta.json files (0 lost, 0
                duplicated)
    ceiling     redis-benchmark XADD of an event-sized payload against the same redis-server, without and
                with pipelining, and the gateway's own record-once script (EVALSHA) for one event and for
                a batch of 256

with the CPU time of every process (client, gateway, collector, redis) during the load and the drain.

    python -m bench.feedback_ingestion                  # writes bench/results/feedback_ingestion.json
    python -m bench.feedback_ingestion --modes batch --batch-size 64
    python -m bench.feedback_ingestion --profile        # and where the gateway and the collector spend it
                                                        # (py-spy, if installed)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis import Redis
from redis import asyncio as aioredis

from bailu.common import redis_keys
from bailu.common.records import DATA_FIELD, Choice, CompletionRecord, FeedbackEvent, ResponseRef, prompt_hash
from bailu.datasets.format import PREFERENCE, SFT
from bailu.gateway.auth import KeyStore
from bailu.gateway.settings import GatewaySettings
from bailu.keys.model import hash_key, new_key
from bench import profiling
from bench.common import (
    REDIS_CONFIG,
    BlockResult,
    CpuMeter,
    ServiceGroup,
    StreamResult,
    cpu_per_token_us,
    distribution_ms,
    error_summary,
    exit_on_sigterm,
    free_port,
    metadata,
    rnd,
    run_closed_loop,
    scrape_metrics,
    start_redis,
    table,
    write_results,
)
from bench.feedback_ceiling import (
    CEILING_BATCH,
    CEILING_BATCH_REQUESTS,
    CEILING_CLIENTS,
    CEILING_PIPELINE,
    CEILING_REQUESTS,
    ceiling,
)
from bench.sse_client import HttpError, SseClient

NAME = "feedback_ingestion"
MODEL = "sim-model"
EVENTS = 20_000
CONCURRENCY = 64
WARMUP_EVENTS = 1_000
COMPLETIONS = 2_000  # seeded completion records; event n gives feedback on completion n % COMPLETIONS
LOAD_CAP_S = 60.0  # no POST starts after this
DRAIN_CAP_S = 60.0  # wait at most this long after the load for the collector to commit everything
POLL_S = 0.01  # how often the end of the drain is checked
TIMELINE_S = 0.5  # how often progress (accepted, committed, backlog) is sampled during the load
REQUEST_TIMEOUT_S = 30.0
PROCESSES = ("client", "gateway", "collector", "redis")
PROFILED = ("gateway", "collector")
PROFILE_RATE_HZ = 100
# Library frames whose total share says where a request's time goes (with --profile).
PROFILE_ENTRY_POINTS = (
    "RequestResponseCycle.run_asgi",  # uvicorn: the whole ASGI app, middleware included
    "get_request_handler.<locals>.app",  # FastAPI: body parsing, validation, the endpoint, serialisation
    "run_endpoint_function",  # FastAPI: the endpoint itself
    "Response.__call__",  # Starlette: sending the response
    "Redis.execute_command",  # redis-py: one command, round trip included
    "AsyncScript.__call__",  # redis-py: EVALSHA of a registered script
)
TARGET_EVENTS_PER_S = 5_000
# An edit yields one SFT example (the edited text) and one preference pair (edited over original).
RECORDS_PER_EDIT = {SFT: 1, PREFERENCE: 1}
SINGLE_PATH = "/v1/feedback"
BATCH_PATH = "/v1/feedback/batch"
BATCH_SIZE = 256  # events per batch request (the gateway's default limit)
BATCH_EVENTS = 60_000
BATCH_CONCURRENCY = 8


def letters(n: int, width: int = 5) -> str:
    """`n` spelled in base-26 letters: unique texts that the quality filter takes as words, not digits."""
    out = []
    for _ in range(width):
        n, digit = divmod(n, 26)
        out.append(chr(ord("a") + digit))
    return "".join(reversed(out))


def original_answer(i: int) -> str:
    """The answer of seeded completion i (each one different, as generated answers are)."""
    return f"Harbour {letters(i)} is quiet at dusk, and the boats come home one by one under a pale sky."


def edited_text(n: int) -> str:
    """The edited text of event n: different from every other one after normalisation (no near-duplicates)."""
    return f"The harbour lies quiet at dusk while boat {letters(n)} comes home slowly under a pale evening sky."


def key_id_of(key: str) -> str:
    """The id the gateway gives requests with this key (what `KeyStore.verify` answers: a hash prefix)."""
    return KeyStore([hash_key(key)]).verify(f"Bearer {key}").id


# ---------------------------------------------------------------------------------------------
# Setup: completions, as the gateway's completion log writes them


def seed_completions(client: Redis, key_id: str, count: int) -> list[str]:
    """Write `count` completion records the way `CompletionLog._write` does; their response ids."""
    defaults = GatewaySettings.model_fields
    retention = int(defaults["completion_log_retention_s"].default)
    max_len = int(defaults["completion_log_max_len"].default)
    ids = []
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        messages = [{"role": "user", "content": f"Describe harbour {letters(i)} at dusk in two sentences."}]
        record = CompletionRecord(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=time.time(),
            key_id=key_id,
            model=MODEL,
            served_model=MODEL,
            messages=messages,
            prompt=None,
            choices=[Choice(0, original_answer(i), "stop")],
            sampling={"max_tokens": 64},
            prompt_tokens=14,
            completion_tokens=20,
            ttft_ms=20.0,
            total_ms=120.0,
            request_id=uuid.uuid4().hex,
            prompt_hash=prompt_hash(messages, None),
        )
        data = record.to_json()
        pipe.xadd(redis_keys.COMPLETIONS_STREAM, {DATA_FIELD: data}, maxlen=max_len, approximate=True)
        pipe.set(redis_keys.response_key(record.id), data, ex=retention)
        ids.append(record.id)
    pipe.execute()
    return ids


# ---------------------------------------------------------------------------------------------
# Load


@dataclass
class Feed:
    """Edit events first..first+count-1, bodies built before the load, posted one per request to
    /v1/feedback (batch_size 1, an Idempotency-Key header each) or batch_size per request to
    /v1/feedback/batch (a feedback_id each); what the gateway answered, per event."""

    http: SseClient
    api_key: str
    response_ids: list[str]
    first: int
    count: int
    batch_size: int = 1
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    bodies: list[bytes] = field(default_factory=list)  # one per request
    accepted: dict[int, str] = field(default_factory=dict)  # event index -> feedback id
    statuses: Counter[str] = field(default_factory=Counter)  # per event: its status, or the request's error

    def __post_init__(self) -> None:
        events = []
        for n in range(self.first, self.first + self.count):
            rid = self.response_ids[n % len(self.response_ids)]
            event = {"type": "edit", "response_id": rid, "edited_text": edited_text(n)}
            if self.batch_size > 1:
                event["feedback_id"] = self.idempotency(n)
            events.append(event)
        if self.batch_size == 1:
            self.bodies = [json.dumps(e, separators=(",", ":")).encode() for e in events]
        else:
            for i in range(0, len(events), self.batch_size):
                batch = {"events": events[i : i + self.batch_size]}
                self.bodies.append(json.dumps(batch, separators=(",", ":")).encode())

    @property
    def requests(self) -> int:
        return len(self.bodies)

    @property
    def path(self) -> str:
        return BATCH_PATH if self.batch_size > 1 else SINGLE_PATH

    def idempotency(self, n: int) -> str:
        return f"bench-{self.run}-{n}"

    async def one(self, index: int) -> StreamResult:
        """POST request `index`; ok when every event in it was accepted (202). Their ids are kept;
        `tokens` of the result: events accepted."""
        start = time.perf_counter()
        first = index * self.batch_size
        size = min(self.batch_size, self.count - first)
        headers = {} if self.batch_size > 1 else {"Idempotency-Key": self.idempotency(self.first + index)}
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):  # no task per request, unlike wait_for
                status, body = await self.http.post(self.path, self.bodies[index], self.api_key, headers)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, HttpError, ValueError) as exc:
            self.statuses[type(exc).__name__] += size
            return StreamResult(False, None, time.perf_counter() - start, 0, f"{type(exc).__name__}: {exc}", 0, start)
        elapsed = time.perf_counter() - start
        if self.batch_size == 1 or status != 200:
            self.statuses[str(status)] += size
            if status != 202 or self.batch_size > 1:
                refused = f"http {status}: {body[:200].decode(errors='replace')}"
                return StreamResult(False, None, elapsed, 0, refused, 0, start)
            self.accepted[index] = json.loads(body)["id"]
            return StreamResult(True, None, elapsed, 1, None, 0.0, start)
        results = json.loads(body)["data"]
        for result in results:
            self.statuses[str(result["status"])] += 1
            if result["status"] == 202:
                self.accepted[first + result["index"]] = result["id"]
        ok = len(results) == size and all(r["status"] == 202 for r in results)
        error = None if ok else f"events not accepted: {Counter(r['status'] for r in results)}"
        accepted = sum(r["status"] == 202 for r in results)
        return StreamResult(ok, None, elapsed, accepted, error, 0.0, start)


async def group_state(client: aioredis.Redis) -> dict[str, int]:
    """The collector group's progress: entries read (delivered), pending (delivered, not committed), lag."""
    groups: list[dict[str, Any]] = await client.xinfo_groups(redis_keys.FEEDBACK_STREAM)
    group = next(g for g in groups if g["name"] in (redis_keys.COLLECTOR_GROUP, redis_keys.COLLECTOR_GROUP.encode()))
    lag = group.get("lag")
    if lag is None:  # Redis cannot tell (deleted entries in the range): count from the stream's totals
        info: dict[str, Any] = await client.xinfo_stream(redis_keys.FEEDBACK_STREAM)
        lag = int(info["entries-added"]) - int(group["entries-read"] or 0)
    read = int(group["entries-read"] or 0)
    pending = int(group["pending"])
    return {"entries_read": read, "pending": pending, "lag": int(lag), "committed": read - pending}


async def wait_committed(client: aioredis.Redis, timeout: float) -> tuple[float | None, dict[str, int]]:
    """Poll until the group has nothing pending and no lag: (time.perf_counter() then, or None, last state)."""
    deadline = time.perf_counter() + timeout
    state = await group_state(client)
    while time.perf_counter() < deadline:
        if state["pending"] == 0 and state["lag"] == 0:
            return time.perf_counter(), state
        await asyncio.sleep(POLL_S)
        state = await group_state(client)
    return None, state


async def sample_timeline(client: aioredis.Redis, feed: Feed, start: float, out: list[dict[str, Any]]) -> None:
    """Every TIMELINE_S: events accepted so far and the group's committed count and backlog (until cancelled)."""
    base = (await group_state(client))["committed"]
    while True:
        await asyncio.sleep(TIMELINE_S)
        state = await group_state(client)
        out.append(
            {
                "t_s": round(time.perf_counter() - start, 2),
                "accepted": len(feed.accepted),
                "committed": state["committed"] - base,
                "pending": state["pending"],
                "lag": state["lag"],
            }
        )


@dataclass(frozen=True)
class Mode:
    """One measured phase: events posted one per request (batch_size 1) or in batches."""

    name: str
    batch_size: int
    events: int
    concurrency: int


@dataclass
class Phase:
    """What one measured load and its drain gave (times are time.perf_counter() values)."""

    mode: Mode
    feed: Feed
    block: BlockResult
    first_post: float
    load_end: float
    committed_at: float | None  # None: not all committed within DRAIN_CAP_S
    group_at_load_end: dict[str, int]
    group_at_end: dict[str, int]
    timeline: list[dict[str, Any]]
    cpu: dict[str, dict[str, float | None]]  # load, drain, total
    commandstats: dict[str, Any]
    profiles: dict[str, Any] | None


@dataclass
class Run:
    warmup: dict[str, Any]
    phases: dict[str, Phase]


async def measure(
    gateway_port: int,
    redis_url: str,
    api_key: str,
    response_ids: list[str],
    pids: dict[str, int],
    profile_dir: Path | None,
    modes: list[Mode],
) -> Run:
    http = SseClient("127.0.0.1", gateway_port)
    client = aioredis.Redis.from_url(redis_url)
    try:
        # Warm-up: open the connections, warm both services' code paths (each mode's); wait until all of it
        # is committed.
        started = time.monotonic()
        first = 0
        warmup: dict[str, Any] = {}
        for mode in modes:
            warm = Feed(http, api_key, response_ids, first, WARMUP_EVENTS, mode.batch_size)
            first += warm.count
            await run_closed_loop(warm.one, concurrency=mode.concurrency, count=warm.requests, max_seconds=LOAD_CAP_S)
            drained_at, _ = await wait_committed(client, DRAIN_CAP_S)
            warmup[mode.name] = {
                "events": warm.count,
                "accepted": len(warm.accepted),
                "statuses": dict(warm.statuses),
                "committed": drained_at is not None,
            }
            print(f"warm-up {mode.name}: {len(warm.accepted)}/{warm.count} accepted", flush=True)
        warmup["wall_s"] = round(time.monotonic() - started, 2)
        phases = {}
        for mode in modes:
            phases[mode.name] = await measure_phase(http, client, api_key, response_ids, pids, profile_dir, mode, first)
            first += mode.events
    finally:
        await http.close()
        await client.aclose()
    return Run(warmup, phases)


async def measure_phase(
    http: SseClient,
    client: aioredis.Redis,
    api_key: str,
    response_ids: list[str],
    pids: dict[str, int],
    profile_dir: Path | None,
    mode: Mode,
    first: int,
) -> Phase:
    """One mode's load (events first.. of the dataset) and the drain after it, with the CPU of each process."""
    meter = CpuMeter(pids)
    await client.config_resetstat()  # Redis's per-command statistics cover this phase only
    feed = Feed(http, api_key, response_ids, first, mode.events, mode.batch_size)
    timeline: list[dict[str, Any]] = []
    cpu: dict[str, dict[str, float | None]] = {}
    recorders = start_profiles(pids, profile_dir / mode.name) if profile_dir is not None else None
    if recorders:
        await asyncio.sleep(1.0)  # py-spy attaches
    meter.start()
    sampler = asyncio.create_task(sample_timeline(client, feed, time.perf_counter(), timeline))
    block = await run_closed_loop(feed.one, concurrency=mode.concurrency, count=feed.requests, max_seconds=LOAD_CAP_S)
    load_end = time.perf_counter()
    cpu["load"] = meter.stop()
    meter.start()
    sampler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampler
    at_load_end = await group_state(client)
    committed_at, final_state = await wait_committed(client, DRAIN_CAP_S)
    cpu["drain"] = meter.stop()
    # The load and the drain: the collector may still be committing the load's events after it.
    profiles = stop_profiles(recorders) if recorders is not None else None
    cpu["total"] = {}
    meter.add(cpu["total"], cpu["load"])
    meter.add(cpu["total"], cpu["drain"])
    stats: dict[str, Any] = await client.info("commandstats")
    commandstats = {
        name.removeprefix("cmdstat_"): {k: v[k] for k in ("calls", "usec", "usec_per_call") if k in v}
        for name, v in sorted(stats.items(), key=lambda kv: -float(kv[1].get("usec", 0)))
    }
    print(f"{mode.name}: {len(feed.accepted)}/{feed.count} accepted in {block.wall_s:.1f}s", flush=True)
    first_post = min((r.started_at for r in block.results), default=load_end)
    return Phase(
        mode, feed, block, first_post, load_end, committed_at, at_load_end, final_state, timeline, cpu, commandstats,
        profiles,
    )  # fmt: skip


def start_profiles(pids: dict[str, int], out_dir: Path) -> dict[str, profiling.SpyRecorder]:
    """py-spy recording each of PROFILED into `out_dir` (none if py-spy is not installed)."""
    spy = profiling.find_py_spy()
    if spy is None:
        return {}
    recorders = {
        name: profiling.SpyRecorder(spy, pids[name], out_dir / f"{name}.txt", PROFILE_RATE_HZ) for name in PROFILED
    }
    for recorder in recorders.values():
        recorder.start()
    return recorders


def stop_profiles(recorders: dict[str, profiling.SpyRecorder]) -> dict[str, Any]:
    """Stop the recorders; each profile's summary (or why there is none)."""
    if not recorders:
        return {"error": "py-spy not found: install the dev extra (it brings py-spy)"}
    out: dict[str, Any] = {}
    for name, recorder in recorders.items():
        status = recorder.stop()
        if "error" in status:
            out[name] = status
            continue
        summary = profiling.summarize_collapsed(recorder.output, entry_points=PROFILE_ENTRY_POINTS)
        del summary["file"]  # in a temporary directory, gone when the run ends
        out[name] = {**status, **summary}
    return out


# ---------------------------------------------------------------------------------------------
# Results: the dataset, Redis, the ceiling


def scan_dataset(root: Path) -> tuple[dict[str, Counter[str]], list[set[str]], dict[str, Any]]:
    """Records per event id and kind, from every committed batch's meta.json; the event ids of each
    batch; and totals."""
    per_event: dict[str, Counter[str]] = {}
    batches: list[set[str]] = []
    kinds: Counter[str] = Counter()
    size = 0
    for meta_path in sorted((root / "shards").glob("*/meta.json")):
        if meta_path.parent.name.startswith("."):
            continue  # a half-written batch: not committed
        size += sum(p.stat().st_size for p in meta_path.parent.iterdir())
        batches.append(set())
        for record in json.loads(meta_path.read_text())["records"]:
            per_event.setdefault(record["event_id"], Counter())[record["kind"]] += 1
            kinds[record["kind"]] += 1
            batches[-1].add(record["event_id"])
    totals = {"batches": len(batches), "records_by_kind": dict(kinds), "bytes_on_disk": size}
    return per_event, batches, totals


def batch_sizes(batches: list[set[str]], events: set[str]) -> dict[str, Any]:
    """How many of `events` the batches that hold any of them held: the collector's batch sizes in the run."""
    sizes = [len(b & events) for b in batches if b & events]
    return {
        "batches": len(sizes),
        "events_per_batch_mean": rnd(sum(sizes) / len(sizes), 1) if sizes else None,
        "events_per_batch_max": max(sizes, default=None),
    }


def check_dataset(per_event: dict[str, Counter[str]], accepted: set[str], warmup: set[str]) -> dict[str, Any]:
    """Lost, duplicated and partial events among the accepted ones."""
    expected = sum(RECORDS_PER_EDIT.values())
    found = accepted & per_event.keys()
    duplicates = sum(max(0, per_event[e][k] - n) for e in found for k, n in RECORDS_PER_EDIT.items())
    partial = sum(1 for e in found if any(per_event[e][k] < n for k, n in RECORDS_PER_EDIT.items()))
    return {
        "accepted_event_ids": len(accepted),
        "distinct_accepted_event_ids_found": len(found),
        "lost": len(accepted) - len(found),
        "duplicates": duplicates,
        "events_with_missing_records": partial,
        "records_of_accepted_events": sum(sum(per_event[e].values()) for e in found),
        "records_expected": expected * len(accepted),
        "records_of_unknown_events": sum(
            sum(c.values()) for e, c in per_event.items() if e not in accepted and e not in warmup
        ),
    }


def redis_report(client: Redis) -> dict[str, Any]:
    """Redis's persistence and memory at the end (per-command statistics are per phase)."""
    persistence: dict[str, Any] = client.info("persistence")
    keep = ("aof_enabled", "aof_last_write_status", "aof_rewrites", "rdb_saves", "aof_current_size")
    return {
        "persistence": {k: persistence.get(k) for k in keep},
        "total_forks": client.info("stats").get("total_forks"),
        "used_memory_human": client.info("memory").get("used_memory_human"),
        "config": {k: v for name in ("save", "appendfsync", "appendonly") for k, v in client.config_get(name).items()},
    }


def sample_event_json(key_id: str, response_id: str) -> str:
    """A real feedback event as the gateway writes it to the stream (the ceiling's payload)."""
    event = FeedbackEvent(
        id=f"fb-{uuid.uuid4().hex}",
        created=time.time(),
        key_id=key_id,
        kind="edit",
        target=ResponseRef(response_id, 0),
        edited_text=edited_text(0),
    )
    return event.to_json()


# ---------------------------------------------------------------------------------------------


def cores(cpu: dict[str, float | None]) -> dict[str, float | None]:
    """CPU seconds of each process / wall seconds: how many cores it kept busy on average."""
    wall = float(cpu.get("wall_s") or 0)
    out: dict[str, float | None] = {}
    for key, value in cpu.items():
        if key.endswith("_cpu_s") and key != "machine_cpus_available_s":
            out[key.removesuffix("_cpu_s")] = rnd(value / wall, 2) if value is not None and wall else None
    return out


def bounds(cpu: dict[str, float | None], events: int, nproc: int) -> dict[str, int | None]:
    """Events/s each single-threaded process could reach with a whole core at the CPU per event it used,
    and what the whole machine could reach at the machine's CPU per event (all processes and the kernel)."""
    out: dict[str, int | None] = {}
    for name, us in cpu_per_token_us(cpu, events).items():
        out[f"{name}_one_core"] = round(1e6 / us) if us else None
    busy = cpu.get("machine_busy_cpu_s")
    out["machine_all_cores"] = round(nproc * events / busy) if busy else None
    return out


def bottleneck_notes(load: dict[str, Any], e2e: dict[str, Any], ceiling_runs: dict[str, Any], nproc: int) -> list[str]:
    """Where the CPU went during the load, from the measured figures."""
    busy = load["cores"]
    procs = {name: busy.get(name) or 0.0 for name in ("client", "gateway", "collector", "redis")}
    top = max(procs, key=lambda name: procs[name])
    us = load["cpu_us_per_event"]
    bound = load["bounds_events_per_s"]
    at_end = e2e["group_at_load_end"]
    machine = busy.get("machine_busy") or 0.0
    backlog = at_end["lag"] + at_end["pending"]
    machine_cpu = load["cpu"].get("machine_busy_cpu_s")
    machine_us = round(1e6 * machine_cpu / load["accepted"]) if machine_cpu and load["accepted"] else None
    notes = [
        "During the load the processes kept busy (cores, CPU s / wall s): "
        + ", ".join(f"{n} {v:.2f}" for n, v in procs.items())
        + f"; the whole machine {busy.get('machine_busy') or 0:.2f} of {nproc} cores "
        f"(other processes and kernel {busy.get('other_processes') or 0:.2f}, steal {busy.get('steal') or 0:.2f}).",
        "CPU per accepted event (microseconds): " + ", ".join(f"{n} {us.get(n)}" for n in procs) + ".",
        f"The busiest process is the {top} ({procs[top]:.2f} cores). The gateway and the collector are "
        "single-threaded asyncio processes (the collector's batch files are written in a worker thread): "
        "one of them near 1.0 core is saturated, whatever the machine has left.",
        f"At the CPU per event measured, one whole core would let the gateway accept at most "
        f"{bound.get('gateway_one_core')} events/s and the collector commit at most {bound.get('collector_one_core')}"
        f" events/s (at the batch sizes of this run, {e2e['batch_sizes']['events_per_batch_mean']} events per "
        f"batch); the machine as a whole, at {machine_us} us of CPU per event over all processes and the "
        f"kernel, at most {bound.get('machine_all_cores')} "
        f"events/s on {nproc} cores."
        + (
            f" The machine was saturated ({machine:.2f} of {nproc} cores busy): the processes competed for the "
            "cores, so the rate is bounded by the sum of their CPU per event, of which the "
            f"{max(us, key=lambda n: us[n] or 0)} takes the largest share."
            if machine >= 0.9 * nproc
            else ""
        ),
        f"Backlog when the last POST was answered: {at_end['lag']} events not yet delivered to the collector and "
        f"{at_end['pending']} delivered but not committed; the drain after the load took {e2e['drain_s']} s."
        + (
            " The collector kept pace with what the gateway accepted (a backlog of under a second of load): the "
            "acceptance rate bounds the end-to-end rate."
            if backlog < (load["acceptance_events_per_s"] or 0)
            else " The collector fell behind the gateway: it bounds the end-to-end rate (see the timeline)."
        ),
    ]
    plain = ceiling_runs.get("xadd", {}).get("requests_per_s")
    script = ceiling_runs.get("record_once_script", {}).get("requests_per_s")
    if plain and procs["redis"] < 0.5:
        notes.append(
            f"Redis is far from its limit: the redis-server used {procs['redis']:.2f} cores during the load, while "
            f"redis-benchmark drove {plain:.0f} XADD/s (and {script or 0:.0f}/s of the gateway's own record-once "
            "script) on the same server and machine."
        )
    return notes


def phase_report(
    phase: Phase,
    per_event: dict[str, Counter[str]],
    batches: list[set[str]],
    others: set[str],
    nproc: int,
    ceiling_runs: dict[str, Any],
) -> dict[str, Any]:
    """The figures of one phase: its load, its end to end (with the dataset checks of its events), notes."""
    feed, block, cpu = phase.feed, phase.block, phase.cpu
    accepted = len(feed.accepted)
    accepted_ids = set(feed.accepted.values())
    acceptance = accepted / block.wall_s if block.wall_s else None
    e2e_s = phase.committed_at - phase.first_post if phase.committed_at is not None else None
    e2e_rate = accepted / e2e_s if e2e_s else None
    plain = ceiling_runs["xadd"].get("requests_per_s")
    pipelined = ceiling_runs[f"xadd_pipelined_{CEILING_PIPELINE}"].get("requests_per_s")
    load = {
        "route": feed.path,
        "events_per_request": feed.batch_size,
        "concurrency": phase.mode.concurrency,
        "events_planned": feed.count,
        "requests_sent": len(block.results),
        "accepted": accepted,
        "statuses": dict(feed.statuses),
        "errors_by_status": {s: n for s, n in feed.statuses.items() if s != "202"},
        "errors": error_summary(block.results),
        "wall_s": round(block.wall_s, 3),
        "acceptance_events_per_s": rnd(acceptance, 1),
        "requests_per_s": rnd(len(block.results) / block.wall_s if block.wall_s else None, 1),
        "latency_ms": distribution_ms([r.total_s for r in block.results if r.ok]),
        "cpu": cpu["load"],
        "cores": cores(cpu["load"]),
        "cpu_us_per_event": cpu_per_token_us(cpu["load"], accepted),
        "bounds_events_per_s": bounds(cpu["load"], accepted, nproc),
        "timeline": phase.timeline,
    }
    if phase.profiles is not None:
        load["profiles"] = phase.profiles
    e2e = {
        "time_s": rnd(e2e_s, 3),
        "events_per_s": rnd(e2e_rate, 1),
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "target_met": e2e_rate is not None and e2e_rate >= TARGET_EVENTS_PER_S,
        "drain_s": rnd(phase.committed_at - phase.load_end, 3) if phase.committed_at else None,
        "committed_within_cap": phase.committed_at is not None,
        "group_at_load_end": phase.group_at_load_end,
        "group_at_end": phase.group_at_end,
        **check_dataset(per_event, accepted_ids, others),
        "batch_sizes": batch_sizes(batches, accepted_ids),
        "ratio_to_ceiling": rnd(e2e_rate / plain, 3) if e2e_rate and plain else None,
        "ratio_to_pipelined_ceiling": rnd(e2e_rate / pipelined, 3) if e2e_rate and pipelined else None,
        "cpu_drain": cpu["drain"],
        "cpu_total": cpu["total"],
        "cores_total": cores(cpu["total"]),
        "cpu_us_per_event_total": cpu_per_token_us(cpu["total"], accepted),
    }
    notes = bottleneck_notes(load, e2e, ceiling_runs, nproc)
    return {"load": load, "end_to_end": e2e, "redis_commandstats": phase.commandstats, "notes": notes}


def print_table(results: dict[str, Any]) -> None:
    runs, ceil = results["runs"], results["ceiling"]
    names = list(runs)

    def row(label: str, get: Any) -> list[Any]:
        return [label, *(get(runs[n]["load"], runs[n]["end_to_end"]) for n in names)]

    rows = [
        row("route (events per request)", lambda ld, e: f"{ld['route']} ({ld['events_per_request']})"),
        row("accepted (202) / planned", lambda ld, e: f"{ld['accepted']}/{ld['events_planned']}"),
        row("errors by status", lambda ld, e: ld["errors_by_status"] or "none"),
        row("acceptance rate (events/s)", lambda ld, e: ld["acceptance_events_per_s"]),
        row("request latency p50 / p99 (ms)", lambda ld, e: f"{ld['latency_ms']['p50']} / {ld['latency_ms']['p99']}"),
        row("end to end (s)", lambda ld, e: e["time_s"]),
        row("end to end (events/s)", lambda ld, e: e["events_per_s"]),
        row(f"target {TARGET_EVENTS_PER_S} events/s met", lambda ld, e: e["target_met"]),
        row("lost / duplicates", lambda ld, e: f"{e['lost']} / {e['duplicates']}"),
        row("collector batch mean (events)", lambda ld, e: e["batch_sizes"]["events_per_batch_mean"]),
        *[row(f"CPU us/event (+drain): {k}", lambda ld, e, k=k: e["cpu_us_per_event_total"].get(k)) for k in PROCESSES],
        *[row(f"cores during load: {k}", lambda ld, e, k=k: ld["cores"].get(k)) for k in (*PROCESSES, "machine_busy")],
    ]
    print()
    print(table(["figure", *names], rows))
    print()
    ceiling_rows = [
        [name, run.get("requests_per_s"), run.get("events_per_s", run.get("requests_per_s"))]
        for name, run in ceil.items()
        if isinstance(run, dict)
    ]
    print(table(["ceiling (redis-benchmark)", "calls/s", "events/s"], ceiling_rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=EVENTS, help="events in the single-event load")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help="connections posting single events")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="events per /v1/feedback/batch request")
    parser.add_argument("--batch-events", type=int, default=BATCH_EVENTS, help="events in the batch load")
    parser.add_argument("--batch-concurrency", type=int, default=BATCH_CONCURRENCY, help="connections posting batches")
    parser.add_argument(
        "--modes", default="single,batch", help="which loads to run, in order (comma-separated: single, batch)"
    )
    parser.add_argument("--name", default=NAME, help="results file bench/results/NAME.json")
    parser.add_argument(
        "--profile", action="store_true", help="sample the gateway and the collector with py-spy during each load"
    )
    args = parser.parse_args()
    available = {
        "single": Mode("single", 1, args.events, args.concurrency),
        "batch": Mode("batch", args.batch_size, args.batch_events, args.batch_concurrency),
    }
    modes = [available[name.strip()] for name in args.modes.split(",") if name.strip()]
    exit_on_sigterm()
    run_started = time.monotonic()
    meta = metadata(("fastapi", "uvicorn", "uvloop", "httptools", "redis", "hiredis", "pydantic", "orjson"))
    key = new_key()
    key_id = key_id_of(key)
    ports: dict[str, int] = {}

    with tempfile.TemporaryDirectory(prefix="bailu-feedback-bench-") as tmp, ServiceGroup() as group:
        data_dir, dataset_dir = Path(tmp) / "redis", Path(tmp) / "dataset"
        data_dir.mkdir()
        redis, ports["redis"] = start_redis(group, data_dir, f"{NAME}-redis", REDIS_CONFIG)
        redis_url = f"redis://127.0.0.1:{ports['redis']}/0"

        def gateway_env() -> tuple[dict[str, str], str]:
            ports["gateway"] = free_port()
            env = {
                "BAILU_GATEWAY_HOST": "127.0.0.1",
                "BAILU_GATEWAY_PORT": str(ports["gateway"]),
                "BAILU_GATEWAY_REDIS_URL": redis_url,
                "BAILU_GATEWAY_API_KEY_HASHES": hash_key(key),
                "BAILU_GATEWAY_LOG_LEVEL": "WARNING",
                "BAILU_GATEWAY_FEEDBACK_BATCH_MAX_EVENTS": str(max(256, args.batch_size)),
            }
            return env, f"http://127.0.0.1:{ports['gateway']}/healthz"

        def collector_env() -> tuple[dict[str, str], str]:
            ports["collector_http"] = free_port()
            env = {
                "BAILU_COLLECTOR_REDIS_URL": redis_url,
                "BAILU_COLLECTOR_HOST": "127.0.0.1",
                "BAILU_COLLECTOR_HTTP_PORT": str(ports["collector_http"]),
                "BAILU_COLLECTOR_DATASET_DIR": str(dataset_dir),
                "BAILU_COLLECTOR_CONSUMER_NAME": "bench-collector",
                "BAILU_COLLECTOR_LOG_LEVEL": "WARNING",
            }
            return env, f"http://127.0.0.1:{ports['collector_http']}/readyz"

        gateway = group.start(f"{NAME}-gateway", "bailu.gateway", gateway_env, ready_timeout=60)
        collector = group.start(f"{NAME}-collector", "bailu.collector", collector_env, ready_timeout=60)
        print(f"redis :{ports['redis']}, gateway :{ports['gateway']}, collector :{ports['collector_http']}", flush=True)

        with Redis.from_url(redis_url) as sync:
            started = time.monotonic()
            response_ids = seed_completions(sync, key_id, COMPLETIONS)
            seed_s = round(time.monotonic() - started, 2)
            pids = {"client": os.getpid(), "gateway": gateway.pid, "collector": collector.pid, "redis": redis.pid}
            profile_dir = Path(tmp) if args.profile else None
            run = asyncio.run(measure(ports["gateway"], redis_url, key, response_ids, pids, profile_dir, modes))

            per_event, batches, dataset = scan_dataset(dataset_dir)
            deadletters = int(sync.xlen(redis_keys.DEADLETTER_STREAM))
            redis_stats = redis_report(sync)
            service_metrics = {
                "gateway": scrape_metrics(f"http://127.0.0.1:{ports['gateway']}/metrics", ("bailu_gateway_feedback",)),
                "collector": scrape_metrics(
                    f"http://127.0.0.1:{ports['collector_http']}/metrics", ("bailu_collector_",)
                ),
            }
            print("running redis-benchmark for the ceiling ...", flush=True)
            payload = sample_event_json(key_id, response_ids[0])
            ceiling_runs = ceiling(sync, ports["redis"], redis.pid, payload, key_id, response_ids[0])
    services = {"redis": redis.report(), "gateway": gateway.report(), "collector": collector.report()}
    services["gateway"]["command"] = services["gateway"]["command"].replace(hash_key(key), "sha256:<generated>")

    nproc = int(meta["nproc"])
    runs = {}
    for name, phase in run.phases.items():
        others = set(per_event) - set(phase.feed.accepted.values())  # warm-up and the other phases' events
        runs[name] = phase_report(phase, per_event, batches, others, nproc, ceiling_runs)
    summary = {
        name: {
            "events_per_s_end_to_end": report["end_to_end"]["events_per_s"],
            "acceptance_events_per_s": report["load"]["acceptance_events_per_s"],
            "lost": report["end_to_end"]["lost"],
            "duplicates": report["end_to_end"]["duplicates"],
            # Over the load and the drain: the collector does much of a batch load's work after the last POST.
            "cpu_us_per_event": report["end_to_end"]["cpu_us_per_event_total"],
            "target_met": report["end_to_end"]["target_met"],
        }
        for name, report in runs.items()
    }
    results: dict[str, Any] = {
        "benchmark": NAME,
        "metadata": meta,
        "config": {
            "modes": [m.__dict__ for m in modes],
            "warmup_events_per_mode": WARMUP_EVENTS,
            "load_time_cap_s": LOAD_CAP_S,
            "drain_time_cap_s": DRAIN_CAP_S,
            "request_timeout_s": REQUEST_TIMEOUT_S,
            "event": "edit (type, response_id, edited_text); each edited text unique after normalisation, so that "
            "each event yields one SFT example and one preference pair, neither a near-duplicate",
            "sample_bodies": {name: phase.feed.bodies[0][:400].decode() for name, phase in run.phases.items()},
            "idempotency": "single: an Idempotency-Key header per event (unique), as a client that retries would "
            "send; batch: a feedback_id per event (the batch route's per-event idempotency key)",
            "completions": f"{COMPLETIONS} completion records seeded directly into Redis (SET "
            f"{redis_keys.response_key('<id>')} with the completion log's retention and XADD "
            f"{redis_keys.COMPLETIONS_STREAM}, as CompletionLog._write does), owned by the benchmark key's id; "
            "no completion was generated through the gateway (it runs without workers)",
            "completion_seed_s": seed_s,
            "client": "bench.sse_client.SseClient.post: HTTP/1.1 keep-alive, one request in flight per connection, "
            "closed loop (each connection posts its next request when the previous one is answered)",
            "redis_server": " ".join(REDIS_CONFIG) + " (as the Helm chart runs it; RDB snapshots left at the default)",
            "collector": "defaults (batch_size 256, block_ms 1000), consumer name bench-collector",
            "ceiling": {
                "requests": CEILING_REQUESTS,
                "clients": CEILING_CLIENTS,
                "pipeline": CEILING_PIPELINE,
                "batch_events_per_call": CEILING_BATCH,
                "batch_calls": CEILING_BATCH_REQUESTS,
                "payload_bytes": len(payload.encode()),
            },
        },
        "definitions": {
            "single / batch": "the same edit events, posted one per request to /v1/feedback (single) or "
            "batch_size per request to /v1/feedback/batch (batch), one phase after the other against the same "
            "services; each phase is measured and drained on its own",
            "acceptance_events_per_s": "events answered 202 / time from the first POST to the last answer",
            "latency_ms": "client-side, request written -> whole response read, requests all of whose events were "
            "accepted",
            "end_to_end": "first POST -> first check (every 10 ms after the load) that the collector group has no "
            "pending events and no lag, i.e. every event is in a committed (renamed, fsynced) batch and XACKed",
            "end_to_end_events_per_s": "accepted / end-to-end time",
            "lost": "accepted events whose feedback id is in no shards/<batch>/meta.json record (must be 0)",
            "duplicates": "records of accepted events beyond what an edit yields (one sft, one preference)",
            "ratio_to_ceiling": "end-to-end events/s / redis-benchmark XADD requests/s on the same server",
            "cores": "CPU seconds of a process in the window / the window's wall seconds",
            "cpu_us_per_event": "CPU microseconds of each process per accepted event, during the load (in runs.*.load) "
            "or over the load and the drain (cpu_us_per_event_total in runs.*.end_to_end, and in summary)",
            "bounds_events_per_s": "<process>_one_core: 1e6 / its CPU us per event (what it could reach with a "
            "whole core to itself); machine_all_cores: cores x events / machine busy CPU s (all processes and "
            "the kernel), valid while the CPU per event stays the same",
            "batch_sizes": "events of the phase per collector batch (from the shards' meta.json)",
            "redis_commandstats": "Redis's per-command statistics over the phase's load and drain (reset before it)",
            "profiles": f"with --profile: py-spy samples ({PROFILE_RATE_HZ}/s, not pausing the process; "
            "bench.profiling) of the gateway and the collector during the load and the drain after it (an idle "
            "thread is not sampled); top_self: the function running; top_total: on the stack; top_files_self: "
            "self samples by file; entry_points: library entry points on the stack (the ASGI app, FastAPI's "
            "request handling, the endpoint, sending the response, redis-py commands); percentages of the samples "
            "in which the process was busy",
            "timeline": f"every {TIMELINE_S}s of the load: accepted so far, committed by the collector so far, "
            "and the group's backlog (lag: not yet delivered; pending: delivered, not yet committed)",
        },
        "summary": summary,
        "warmup": run.warmup,
        "runs": runs,
        "dataset": {**dataset, "deadlettered": deadletters},
        "ceiling": ceiling_runs,
        "redis": redis_stats,
        "service_metrics_at_end": service_metrics,
        "services": services,
    }
    results["notes"] = [
        "The client, the gateway, the collector, redis-server and redis-benchmark all run on this machine and share "
        f"its {meta['nproc']} CPU cores ({meta['cpu_model']}); the machine is shared with other workloads (see "
        "other_processes and steal in the CPU figures, and metadata.loadavg_at_start/at_end).",
        "runs.<mode>.notes say where the CPU went in each phase; runs.<mode>.redis_commandstats what Redis spent "
        "on the gateway's path (EVALSHA of the record-once script, which reads the completion records itself) and "
        "on the collector's (XREADGROUP, MGET, SMISMEMBER, HSET, MULTI/EXEC).",
    ]
    if gateway.exit_code == -15 and not gateway.killed:
        results["notes"].append(
            "The gateway's exit code -15 is uvicorn's behaviour: after a graceful shutdown on SIGTERM it re-raises "
            "the signal (uvicorn Server.capture_signals); it was not killed."
        )
    results["runtime_s"] = round(time.monotonic() - run_started, 1)
    path = write_results(args.name, results)
    print_table(results)
    print(f"\nwrote {path} in {results['runtime_s']}s")


if __name__ == "__main__":
    main()
