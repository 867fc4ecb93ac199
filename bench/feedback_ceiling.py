"""The ceiling of feedback ingestion on one redis-server: what redis-benchmark drives through it for XADD of an
event-sized payload (plain and pipelined) and for the gateway's own record-once script (one event and a batch)."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

from redis import Redis

from bailu.common import redis_keys
from bailu.common.records import DATA_FIELD
from bailu.gateway.feedback_record import RECORD_ONCE  # the gateway's own script
from bench.common import CpuMeter, rnd

CEILING_REQUESTS = 100_000
CEILING_CLIENTS = 50
CEILING_PIPELINE = 16
CEILING_BATCH = 256  # events per call of the record-once script in the batch ceiling
CEILING_BATCH_REQUESTS = 1_000
CEILING_STREAM = "bench:ceiling"


def redis_benchmark(port: int, pid: int, args: list[str], requests: int = CEILING_REQUESTS) -> dict[str, Any]:
    """One redis-benchmark run (quiet mode): requests/s, p50 latency, and the CPU redis-server used."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return {"error": "redis-benchmark not found"}
    argv = [binary, "-h", "127.0.0.1", "-p", str(port), "-n", str(requests), "-c", str(CEILING_CLIENTS)]
    argv += ["-q", *args]
    meter = CpuMeter({"redis": pid})
    meter.start()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    cpu = meter.stop()
    rates = re.findall(r"([\d.]+) requests per second", done.stdout)
    p50 = re.findall(r"p50=([\d.]+) msec", done.stdout)
    shown = [a if len(a) <= 40 else f"<{len(a)} bytes>" for a in argv]
    if len(shown) > 40:
        shown = [*shown[:30], f"<{len(shown) - 30} more arguments>"]
    return {
        "command": " ".join(a if a else "''" for a in shown),
        "requests_per_s": float(rates[-1]) if rates else None,
        "p50_ms": float(p50[-1]) if p50 else None,
        "exit_code": done.returncode,
        "stderr": done.stderr.strip()[-500:] or None,
        "cpu": cpu,
        "redis_cores": rnd((cpu.get("redis_cpu_s") or 0) / float(cpu["wall_s"] or 1), 2),
    }


def record_once_args(events: int, key_id: str, response_id: str, payload: str) -> list[str]:
    """`numkeys keys... args...` of the gateway's record-once script for `events` edits of one response, each
    with a fresh idempotency key (redis-benchmark's __rand_int__)."""
    keys = [CEILING_STREAM]
    args = ["86400", DATA_FIELD, key_id]
    for i in range(events):
        keys += [
            redis_keys.idempotency_key(key_id, f"ceiling-{i}-__rand_int__"),
            redis_keys.response_key(response_id),
            "",
        ]
        args += [f"fb-{i}", "0" * 16, payload, "0", "", "0", "none"]
    return [str(len(keys)), *keys, *args]


def ceiling(client: Redis, port: int, pid: int, payload: str, key_id: str, response_id: str) -> dict[str, Any]:
    """redis-benchmark against the same server: XADD of an event-sized payload (plain and pipelined),
    and the gateway's record-once script (completion check, idempotency GET, XADD, SET) for one event and
    for a batch of CEILING_BATCH, with fresh keys."""
    stream = CEILING_STREAM
    runs: dict[str, Any] = {}
    forks_before = client.info("stats").get("total_forks")
    runs["xadd"] = redis_benchmark(port, pid, ["XADD", stream, "*", DATA_FIELD, payload])
    client.delete(stream)
    runs[f"xadd_pipelined_{CEILING_PIPELINE}"] = redis_benchmark(
        port, pid, ["-P", str(CEILING_PIPELINE), "XADD", stream, "*", DATA_FIELD, payload]
    )
    client.delete(stream)
    sha = str(client.script_load(RECORD_ONCE))
    one = ["-r", "1000000000", "EVALSHA", sha, *record_once_args(1, key_id, response_id, payload)]
    runs["record_once_script"] = redis_benchmark(port, pid, one)
    client.delete(stream)
    many = ["-r", "1000000000", "EVALSHA", sha, *record_once_args(CEILING_BATCH, key_id, response_id, payload)]
    batch = redis_benchmark(port, pid, many, requests=CEILING_BATCH_REQUESTS)
    batch["events_per_s"] = rnd((batch.get("requests_per_s") or 0) * CEILING_BATCH, 0)
    runs[f"record_once_script_batch_{CEILING_BATCH}"] = batch
    client.delete(stream)
    runs["forks_during_ceiling_runs"] = (client.info("stats").get("total_forks") or 0) - (forks_before or 0)
    return runs
