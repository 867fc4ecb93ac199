"""Feedback ingestion, end to end: client -> POST /v1/feedback -> Redis stream -> collector -> dataset shards.

A redis-server (append-only file, fsync every second, as the chart runs it), the gateway (no workers:
feedback needs none) and the collector run as subprocesses. Setup (not timed) writes completion records
straight into Redis, as the gateway's completion log would, owned by the benchmark's API key. Then:

    load        a fixed number of `edit` events (each with a unique edited text and an Idempotency-Key),
                posted by N keep-alive HTTP/1.1 connections in a closed loop (bench.sse_client)
    end to end  from the first POST until the collector's group has nothing pending and no lag; every
                accepted event id is then looked for in the dataset shards' meta.json files
    ceiling     redis-benchmark XADD of an event-sized payload against the same redis-server, without and
                with pipelining, and the gateway's own record-once script (EVALSHA)

with the CPU time of every process (client, gateway, collector, redis) during the load and the drain.

    python -m bench.feedback_ingestion             # writes bench/results/feedback_ingestion.json
    python -m bench.feedback_ingestion --profile   # and where the gateway and the collector spend it (py-spy)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
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
from bailu.gateway.feedback import _RECORD_ONCE  # the gateway's own script, for the ceiling it is measured against
from bailu.gateway.settings import GatewaySettings
from bailu.keys.model import hash_key, new_key
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
TARGET_EVENTS_PER_S = 5_000
# An edit yields one SFT example (the edited text) and one preference pair (edited over original).
RECORDS_PER_EDIT = {SFT: 1, PREFERENCE: 1}
CEILING_REQUESTS = 100_000
CEILING_CLIENTS = 50
CEILING_PIPELINE = 16
# Library frames whose inclusive share says where a request's time goes (with --profile).
PROFILE_ENTRY_POINTS = (
    "RequestResponseCycle.run_asgi",  # uvicorn: the whole ASGI app, middleware included
    "get_request_handler.<locals>.app",  # FastAPI: body parsing, validation, the endpoint, serialisation
    "run_endpoint_function",  # FastAPI: the endpoint itself
    "Response.__call__",  # Starlette: sending the response
    "Redis.execute_command",  # redis-py: one command, round trip included
    "AsyncScript.__call__",  # redis-py: EVALSHA of a registered script
)


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
    return KeyStore([hash_key(key)]).verify(f"Bearer {key}")


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
    """Edit events first..first+count-1, bodies built before the load; what the gateway answered."""

    http: SseClient
    api_key: str
    response_ids: list[str]
    first: int
    count: int
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    bodies: list[bytes] = field(default_factory=list)
    accepted: dict[int, str] = field(default_factory=dict)  # event index -> feedback id
    statuses: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        for n in range(self.first, self.first + self.count):
            rid = self.response_ids[n % len(self.response_ids)]
            body = {"type": "edit", "response_id": rid, "edited_text": edited_text(n)}
            self.bodies.append(json.dumps(body, separators=(",", ":")).encode())

    async def one(self, index: int) -> StreamResult:
        """POST event `index`; ok when accepted (202). The id the gateway gave it is kept."""
        start = time.perf_counter()
        headers = {"Idempotency-Key": f"bench-{self.run}-{self.first + index}"}
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):  # no task per request, unlike wait_for
                status, body = await self.http.post("/v1/feedback", self.bodies[index], self.api_key, headers)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, HttpError, ValueError) as exc:
            self.statuses[type(exc).__name__] += 1
            return StreamResult(False, None, time.perf_counter() - start, 0, f"{type(exc).__name__}: {exc}", 0, start)
        elapsed = time.perf_counter() - start
        self.statuses[str(status)] += 1
        if status != 202:
            return StreamResult(
                False, None, elapsed, 0, f"http {status}: {body[:200].decode(errors='replace')}", 0, start
            )
        self.accepted[index] = body.split(b'"id":"', 1)[1].split(b'"', 1)[0].decode()
        return StreamResult(True, None, elapsed, 1, None, 0.0, start)


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


@dataclass
class Run:
    """What the measured load and drain gave (times are time.perf_counter() values)."""

    warmup: dict[str, Any]
    feed: Feed
    block: BlockResult
    first_post: float
    load_end: float
    committed_at: float | None  # None: not all committed within DRAIN_CAP_S
    group_at_load_end: dict[str, int]
    group_at_end: dict[str, int]
    timeline: list[dict[str, Any]]
    cpu: dict[str, dict[str, float | None]]  # load, drain, total
    profiles: dict[str, Any] | None


async def measure(
    gateway_port: int,
    redis_url: str,
    api_key: str,
    response_ids: list[str],
    pids: dict[str, int],
    profile_dir: Path | None,
) -> Run:
    http = SseClient("127.0.0.1", gateway_port)
    client = aioredis.Redis.from_url(redis_url)
    meter = CpuMeter(pids)
    try:
        # Warm-up: open the connections, warm both services' code paths; wait until all of it is committed.
        warm = Feed(http, api_key, response_ids, 0, WARMUP_EVENTS)
        started = time.monotonic()
        block = await run_closed_loop(warm.one, concurrency=CONCURRENCY, count=warm.count, max_seconds=LOAD_CAP_S)
        drained_at, _ = await wait_committed(client, DRAIN_CAP_S)
        warmup = {
            "events": len(block.results),
            "accepted": len(warm.accepted),
            "statuses": dict(warm.statuses),
            "committed": drained_at is not None,
            "wall_s": round(time.monotonic() - started, 2),
        }
        print(f"warm-up: {len(warm.accepted)}/{len(block.results)} accepted in {warmup['wall_s']}s", flush=True)
        await client.config_resetstat()  # Redis's per-command statistics cover the measured run only

        feed = Feed(http, api_key, response_ids, WARMUP_EVENTS, EVENTS)
        timeline: list[dict[str, Any]] = []
        cpu: dict[str, dict[str, float | None]] = {}
        profiler = None
        if profile_dir is not None:
            profiler = Profiler({n: pids[n] for n in ("gateway", "collector")}, profile_dir)
            profiler.start()
            await asyncio.sleep(1.0)  # py-spy attaches
        meter.start()
        sampler = asyncio.create_task(sample_timeline(client, feed, time.perf_counter(), timeline))
        block = await run_closed_loop(feed.one, concurrency=CONCURRENCY, count=feed.count, max_seconds=LOAD_CAP_S)
        load_end = time.perf_counter()
        cpu["load"] = meter.stop()
        profiles = profiler.stop() if profiler is not None else None
        meter.start()
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        at_load_end = await group_state(client)
        committed_at, final_state = await wait_committed(client, DRAIN_CAP_S)
        cpu["drain"] = meter.stop()
        cpu["total"] = {}
        meter.add(cpu["total"], cpu["load"])
        meter.add(cpu["total"], cpu["drain"])
        print(f"load: {len(feed.accepted)}/{len(block.results)} accepted in {block.wall_s:.1f}s", flush=True)
    finally:
        await http.close()
        await client.aclose()
    first_post = min((r.started_at for r in block.results), default=load_end)
    return Run(
        warmup, feed, block, first_post, load_end, committed_at, at_load_end, final_state, timeline, cpu, profiles
    )


# ---------------------------------------------------------------------------------------------
# Optional: py-spy profiles of the gateway and the collector during the load (--profile)


@dataclass
class Profiler:
    """`py-spy record` (raw collapsed stacks, sampled without pausing the process) of named processes."""

    pids: dict[str, int]
    out_dir: Path
    rate: int = 100
    running: dict[str, tuple[subprocess.Popen[bytes], Path]] = field(default_factory=dict)

    @staticmethod
    def binary() -> str | None:
        beside = Path(sys.executable).with_name("py-spy")
        return str(beside) if beside.exists() else shutil.which("py-spy")

    def start(self) -> None:
        binary = self.binary()
        if binary is None:
            return
        for name, pid in self.pids.items():
            path = self.out_dir / f"{name}.pyspy.txt"
            argv = [binary, "record", "--pid", str(pid), "--rate", str(self.rate), "--format", "raw"]
            argv += ["--nonblocking", "--output", str(path)]
            popen = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.running[name] = (popen, path)

    def stop(self, top: int = 15) -> dict[str, Any]:
        """Stop recording (py-spy writes its file on SIGINT) and summarise each profile."""
        if not self.running and self.binary() is None:
            return {"error": "py-spy not found"}
        out: dict[str, Any] = {}
        for name, (popen, path) in self.running.items():
            popen.send_signal(signal.SIGINT)
            try:
                popen.wait(30)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
            out[name] = summarize_profile(path, top) if path.exists() else {"error": f"py-spy exit {popen.returncode}"}
        self.running.clear()
        return out


def summarize_profile(path: Path, top: int) -> dict[str, Any]:
    """Shares of the samples by function: where it was running (self) and what was on the stack (inclusive)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        # "func (path/to/file.py:123)" -> "func (path/to/file.py)"; the first frame names the thread
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")[1:]]
        if not frames:
            continue
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)

    def shares(counter: Counter[str]) -> dict[str, float]:
        return {f: round(100 * n / total, 1) for f, n in counter.most_common(top)} if total else {}

    ours = Counter({f: n for f, n in inclusive.items() if "(bailu/" in f and "__main__.py" not in f})
    return {
        "samples": total,
        "self_percent": shares(own),
        "inclusive_percent_bailu": shares(ours),
        "inclusive_percent_entry_points": shares(
            Counter({f: n for f, n in inclusive.items() if f.split(" (")[0] in PROFILE_ENTRY_POINTS})
        ),
    }


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
    """Redis's per-command statistics since the reset after the warm-up, persistence and memory."""
    stats: dict[str, Any] = client.info("commandstats")
    persistence: dict[str, Any] = client.info("persistence")
    keep = ("aof_enabled", "aof_last_write_status", "aof_rewrites", "rdb_saves", "aof_current_size")
    return {
        "commandstats": {
            name.removeprefix("cmdstat_"): {k: v[k] for k in ("calls", "usec", "usec_per_call") if k in v}
            for name, v in sorted(stats.items(), key=lambda kv: -float(kv[1].get("usec", 0)))
        },
        "persistence": {k: persistence.get(k) for k in keep},
        "total_forks": client.info("stats").get("total_forks"),
        "used_memory_human": client.info("memory").get("used_memory_human"),
        "config": {k: v for name in ("save", "appendfsync", "appendonly") for k, v in client.config_get(name).items()},
    }


def redis_benchmark(port: int, pid: int, args: list[str]) -> dict[str, Any]:
    """One redis-benchmark run (quiet mode): requests/s, p50 latency, and the CPU redis-server used."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return {"error": "redis-benchmark not found"}
    argv = [binary, "-h", "127.0.0.1", "-p", str(port), "-n", str(CEILING_REQUESTS), "-c", str(CEILING_CLIENTS)]
    argv += ["-q", *args]
    meter = CpuMeter({"redis": pid})
    meter.start()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    cpu = meter.stop()
    rates = re.findall(r"([\d.]+) requests per second", done.stdout)
    p50 = re.findall(r"p50=([\d.]+) msec", done.stdout)
    shown = [a if len(a) <= 40 else f"<{len(a)} bytes>" for a in argv]
    return {
        "command": " ".join(shown),
        "requests_per_s": float(rates[-1]) if rates else None,
        "p50_ms": float(p50[-1]) if p50 else None,
        "exit_code": done.returncode,
        "stderr": done.stderr.strip()[-500:] or None,
        "cpu": cpu,
        "redis_cores": rnd((cpu.get("redis_cpu_s") or 0) / float(cpu["wall_s"] or 1), 2),
    }


def ceiling(client: Redis, port: int, pid: int, payload: str, key_id: str) -> dict[str, Any]:
    """redis-benchmark against the same server: XADD of an event-sized payload (plain and pipelined),
    and the gateway's record-once script (GET idempotency key, XADD, SET) with fresh keys."""
    stream = "bench:ceiling"
    runs: dict[str, Any] = {}
    forks_before = client.info("stats").get("total_forks")
    runs["xadd"] = redis_benchmark(port, pid, ["XADD", stream, "*", DATA_FIELD, payload])
    client.delete(stream)
    runs[f"xadd_pipelined_{CEILING_PIPELINE}"] = redis_benchmark(
        port, pid, ["-P", str(CEILING_PIPELINE), "XADD", stream, "*", DATA_FIELD, payload]
    )
    client.delete(stream)
    sha = str(client.script_load(_RECORD_ONCE))
    idem = redis_keys.idempotency_key(key_id, "ceiling-__rand_int__")
    runs["record_once_script"] = redis_benchmark(
        port,
        pid,
        ["-r", "1000000000", "EVALSHA", sha, "2", stream, idem, "fb-x", "0" * 16, payload, "86400", DATA_FIELD],
    )
    client.delete(stream)
    runs["forks_during_ceiling_runs"] = (client.info("stats").get("total_forks") or 0) - (forks_before or 0)
    return runs


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


def print_table(results: dict[str, Any]) -> None:
    load, e2e, ceil = results["load"], results["end_to_end"], results["ceiling"]
    pipelined = ceil.get(f"xadd_pipelined_{CEILING_PIPELINE}", {}).get("requests_per_s")
    rows = [
        ["accepted (202) / sent", f"{load['accepted']}/{load['sent']}"],
        ["errors by status", load["errors_by_status"] or "none"],
        ["acceptance rate (events/s)", load["acceptance_events_per_s"]],
        ["latency p50 / p99 (ms)", f"{load['latency_ms']['p50']} / {load['latency_ms']['p99']}"],
        ["end to end (s)", e2e["time_s"]],
        ["end to end (events/s)", e2e["events_per_s"]],
        [f"target {TARGET_EVENTS_PER_S} events/s met", e2e["target_met"]],
        ["lost / duplicates", f"{e2e['lost']} / {e2e['duplicates']}"],
        ["ceiling XADD (req/s)", ceil.get("xadd", {}).get("requests_per_s")],
        [f"ceiling XADD -P {CEILING_PIPELINE} (req/s)", pipelined],
        ["ceiling record-once script (req/s)", ceil.get("record_once_script", {}).get("requests_per_s")],
        ["end to end / XADD ceiling", e2e["ratio_to_ceiling"]],
        [f"end to end / XADD -P {CEILING_PIPELINE} ceiling", e2e["ratio_to_pipelined_ceiling"]],
        *[[f"cores during load: {k}", v] for k, v in load["cores"].items() if not k.startswith("other:")],
        *[[f"bound (events/s): {k}", v] for k, v in load["bounds_events_per_s"].items()],
    ]
    print()
    print(table(["figure", "value"], rows))


def main() -> None:
    global EVENTS, CONCURRENCY
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=EVENTS, help="feedback events in the measured load")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help="keep-alive connections posting")
    parser.add_argument("--name", default=NAME, help="results file bench/results/NAME.json")
    parser.add_argument(
        "--profile", action="store_true", help="sample the gateway and the collector with py-spy during the load"
    )
    args = parser.parse_args()
    EVENTS, CONCURRENCY = args.events, args.concurrency
    exit_on_sigterm()
    run_started = time.monotonic()
    meta = metadata(("fastapi", "uvicorn", "uvloop", "httptools", "redis", "hiredis", "pydantic"))
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
            run = asyncio.run(measure(ports["gateway"], redis_url, key, response_ids, pids, profile_dir))
            feed, block = run.feed, run.block

            per_event, batches, dataset = scan_dataset(dataset_dir)
            accepted_ids = set(feed.accepted.values())
            warm_ids = set(per_event) - accepted_ids
            checks = check_dataset(per_event, accepted_ids, warm_ids)
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
            ceiling_runs = ceiling(sync, ports["redis"], redis.pid, payload, key_id)
    services = {"redis": redis.report(), "gateway": gateway.report(), "collector": collector.report()}
    services["gateway"]["command"] = services["gateway"]["command"].replace(hash_key(key), "sha256:<generated>")

    results_ok = [r for r in block.results if r.ok]
    accepted = len(feed.accepted)
    acceptance = accepted / block.wall_s if block.wall_s else None
    e2e_s = run.committed_at - run.first_post if run.committed_at is not None else None
    e2e_rate = accepted / e2e_s if e2e_s else None
    plain = ceiling_runs["xadd"].get("requests_per_s")
    pipelined = ceiling_runs[f"xadd_pipelined_{CEILING_PIPELINE}"].get("requests_per_s")
    cpu = run.cpu
    load = {
        "events_planned": EVENTS,
        "sent": len(block.results),
        "accepted": accepted,
        "statuses": dict(feed.statuses),
        "errors_by_status": {s: n for s, n in feed.statuses.items() if s != "202"},
        "errors": error_summary(block.results),
        "wall_s": round(block.wall_s, 3),
        "acceptance_events_per_s": rnd(acceptance, 1),
        "latency_ms": distribution_ms([r.total_s for r in results_ok]),
        "cpu": cpu["load"],
        "cores": cores(cpu["load"]),
        "cpu_us_per_event": cpu_per_token_us(cpu["load"], accepted),
        "bounds_events_per_s": bounds(cpu["load"], accepted, int(meta["nproc"])),
        "timeline": run.timeline,
    }
    if run.profiles is not None:
        load["profiles"] = run.profiles
    e2e = {
        "time_s": rnd(e2e_s, 3),
        "events_per_s": rnd(e2e_rate, 1),
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "target_met": e2e_rate is not None and e2e_rate >= TARGET_EVENTS_PER_S,
        "drain_s": rnd(run.committed_at - run.load_end, 3) if run.committed_at else None,
        "committed_within_cap": run.committed_at is not None,
        "group_at_load_end": run.group_at_load_end,
        "group_at_end": run.group_at_end,
        **checks,
        "deadlettered": deadletters,
        "dataset": dataset,
        "batch_sizes": batch_sizes(batches, accepted_ids),
        "ratio_to_ceiling": rnd(e2e_rate / plain, 3) if e2e_rate and plain else None,
        "ratio_to_pipelined_ceiling": rnd(e2e_rate / pipelined, 3) if e2e_rate and pipelined else None,
        "cpu_drain": cpu["drain"],
        "cpu_total": cpu["total"],
        "cores_total": cores(cpu["total"]),
        "cpu_us_per_event_total": cpu_per_token_us(cpu["total"], accepted),
    }
    results: dict[str, Any] = {
        "benchmark": NAME,
        "metadata": meta,
        "config": {
            "events": EVENTS,
            "concurrency": CONCURRENCY,
            "warmup_events": WARMUP_EVENTS,
            "load_time_cap_s": LOAD_CAP_S,
            "drain_time_cap_s": DRAIN_CAP_S,
            "request_timeout_s": REQUEST_TIMEOUT_S,
            "event": "edit (type, response_id, edited_text); each edited text unique after normalisation, so that "
            "each event yields one SFT example and one preference pair, neither a near-duplicate",
            "sample_body": feed.bodies[0].decode() if feed.bodies else None,
            "idempotency": "an Idempotency-Key header per event (unique), as a client that retries would send",
            "completions": f"{COMPLETIONS} completion records seeded directly into Redis (SET "
            f"{redis_keys.response_key('<id>')} with the completion log's retention and XADD "
            f"{redis_keys.COMPLETIONS_STREAM}, as CompletionLog._write does), owned by the benchmark key's id; "
            "no completion was generated through the gateway (it runs without workers)",
            "completion_seed_s": seed_s,
            "client": "bench.sse_client.SseClient.post: HTTP/1.1 keep-alive, one request in flight per connection, "
            "closed loop (each connection posts its next event when the previous one is answered)",
            "redis_server": " ".join(REDIS_CONFIG) + " (as the Helm chart runs it; RDB snapshots left at the default)",
            "collector": "defaults (batch_size 256, block_ms 1000), consumer name bench-collector",
            "ceiling": {
                "requests": CEILING_REQUESTS,
                "clients": CEILING_CLIENTS,
                "pipeline": CEILING_PIPELINE,
                "payload_bytes": len(payload.encode()),
            },
        },
        "definitions": {
            "acceptance_events_per_s": "events answered 202 / time from the first POST to the last answer",
            "latency_ms": "client-side, request written -> whole 202 response read, accepted events only",
            "end_to_end": "first POST -> first check (every 10 ms after the load) that the collector group has no "
            "pending events and no lag, i.e. every event is in a committed (renamed, fsynced) batch and XACKed",
            "end_to_end_events_per_s": "accepted / end-to-end time",
            "lost": "accepted events whose feedback id is in no shards/<batch>/meta.json record (must be 0)",
            "duplicates": "records of accepted events beyond what an edit yields (one sft, one preference)",
            "ratio_to_ceiling": "end-to-end events/s / redis-benchmark XADD requests/s on the same server",
            "cores": "CPU seconds of a process in the window / the window's wall seconds",
            "cpu_us_per_event": "CPU microseconds of each process per accepted event",
            "bounds_events_per_s": "<process>_one_core: 1e6 / its CPU us per event (what it could reach with a "
            "whole core to itself); machine_all_cores: cores x events / machine busy CPU s (all processes and "
            "the kernel), valid while the CPU per event stays the same",
            "batch_sizes": "events of the measured run per collector batch (from the shards' meta.json)",
            "profiles": "with --profile: py-spy samples (100/s, not pausing the process) of the gateway and the "
            "collector during the load; self: the function running; inclusive: on the stack (the service's own "
            "functions, and library entry points: the ASGI app, FastAPI's request handling, the endpoint, sending "
            "the response, redis-py commands); percentages of the samples in which the process was busy",
            "timeline": f"every {TIMELINE_S}s of the load: accepted so far, committed by the collector so far, "
            "and the group's backlog (lag: not yet delivered; pending: delivered, not yet committed)",
        },
        "warmup": run.warmup,
        "load": load,
        "end_to_end": e2e,
        "ceiling": ceiling_runs,
        "redis": redis_stats,
        "service_metrics_at_end": service_metrics,
        "services": services,
    }
    results["notes"] = [
        *bottleneck_notes(load, e2e, ceiling_runs, int(meta["nproc"])),
        "The client, the gateway, the collector, redis-server and redis-benchmark all run on this machine and share "
        f"its {meta['nproc']} CPU cores ({meta['cpu_model']}); the machine is shared with other workloads (see "
        "other_processes and steal in the CPU figures, and metadata.loadavg_at_start/at_end).",
        "redis.commandstats covers the measured load and drain (reset after the warm-up): usec per call and calls "
        "per command show what Redis spent on the gateway's path (EVALSHA of the record-once script, GET of the "
        "completion record) and on the collector's (XREADGROUP, MGET, SMISMEMBER, HSET, MULTI/EXEC).",
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
