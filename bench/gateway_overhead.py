"""Gateway overhead: the same streamed completions, directly over gRPC and through the gateway.

One worker (sim engine, fixed pace) and one gateway run as subprocesses. At each concurrency level
the benchmark keeps N streams in flight (closed loop) in two modes, in interleaved blocks (direct,
gateway, gateway, direct) so that both modes see the same machine noise:

    direct   grpc.aio InferenceWorker.Generate on the worker
    gateway  POST /v1/chat/completions with stream=true over HTTP
             (bench.sse_client: keep-alive HTTP/1.1, no per-event JSON parsing)

    python -m bench.gateway_overhead   # writes bench/results/gateway_overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from bailu.keys.model import hash_key, new_key
from bailu.v1 import worker_pb2_grpc as pb_grpc
from bench.common import (
    BlockResult,
    CpuMeter,
    Service,
    ServiceGroup,
    StreamResult,
    StreamTimer,
    cpu_per_token_us,
    distribution_ms,
    error_summary,
    exit_on_sigterm,
    free_port,
    grpc_stream,
    make_request,
    metadata,
    ms,
    percentile,
    rnd,
    run_closed_loop,
    scrape_metrics,
    start_sim_worker,
    table,
    write_results,
)
from bench.sse_client import HttpError, SseClient

MODEL = "sim-model"
PROMPT = "Write a short poem about autumn light."
SIM_TTFT_MS = 20.0
SIM_ITL_MS = 5.0
SIM_OUTPUT_TOKENS = 64
WORKER_MAX_BATCH_SIZE = 128  # well above the highest concurrency: capacity is never the bottleneck
WORKER_MAX_QUEUE = 256
STREAM_TIMEOUT_S = 60.0

# Streams per mode at each concurrency, split into blocks that alternate the modes (BLOCK_ORDER,
# repeated BLOCK_REPEATS times); a block starts no new stream after its time cap (the counts
# actually run are in the results). About 3.5 minutes in all on an idle 2-core machine.
LEVELS: dict[int, int] = {1: 200, 16: 640, 64: 1280}
BLOCK_REPEATS: dict[int, int] = {1: 2, 16: 1, 64: 1}
BLOCK_CAP_S: dict[int, float] = {1: 20.0, 16: 20.0, 64: 20.0}
BLOCK_ORDER = ("direct", "gateway", "gateway", "direct")
MODES = ("direct", "gateway")

# One stream's duration on an idle machine: the sim engine's schedule.
IDEAL_TTFT_S = SIM_TTFT_MS / 1000
IDEAL_TOTAL_S = (SIM_TTFT_MS + (SIM_OUTPUT_TOKENS - 1) * SIM_ITL_MS) / 1000


@dataclass
class Clients:
    """The two ways to reach the worker, and what the gateway needs."""

    stub: pb_grpc.InferenceWorkerStub
    http: SseClient
    gateway_url: str
    api_key: str

    async def direct(self, index: int) -> StreamResult:
        request = make_request(MODEL, PROMPT, max_tokens=SIM_OUTPUT_TOKENS, timeout_s=STREAM_TIMEOUT_S)
        return await grpc_stream(self.stub, request, STREAM_TIMEOUT_S)

    async def gateway(self, index: int) -> StreamResult:
        """One streamed chat completion through the gateway. First token: the first SSE event whose
        delta has non-empty content; tokens: such events (the sim engine sends one token per event)."""
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": SIM_OUTPUT_TOKENS,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        timer = StreamTimer()
        usage_tokens: int | None = None
        try:
            async for payload in self.http.stream("/v1/chat/completions", json.dumps(body).encode(), self.api_key):
                if payload == b"[DONE]":
                    break
                if payload.startswith(b'{"error"'):
                    return timer.result(f"sse error event: {payload[:200].decode(errors='replace')}")
                if b'"content":"' in payload and b'"content":""' not in payload:
                    timer.token()
                elif b'"usage":{' in payload:
                    usage_tokens = int(json.loads(payload)["usage"]["completion_tokens"])
            else:
                return timer.result("the stream ended without [DONE]")
        except (OSError, asyncio.IncompleteReadError, HttpError, json.JSONDecodeError) as exc:
            return timer.result(f"{type(exc).__name__}: {exc}")
        if usage_tokens is not None and usage_tokens != timer.tokens:
            return timer.result(f"usage says {usage_tokens} completion tokens, {timer.tokens} received")
        return timer.result()

    def mode(self, name: str) -> Callable[[int], Awaitable[StreamResult]]:
        return self.direct if name == "direct" else self.gateway


def summarize(blocks: list[BlockResult], cpu: dict[str, float | None], concurrency: int) -> dict[str, Any]:
    results = [r for b in blocks for r in b.results]
    ok = [r for r in results if r.ok]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    total = [r.total_s for r in ok]
    tokens = sum(r.tokens for r in results)
    wall = sum(b.wall_s for b in blocks)
    per_stream = [r.tokens / r.total_s for r in ok if r.total_s > 0]
    decode = [d for r in ok if (d := r.decode_tokens_per_s) is not None]
    short = sum(1 for r in ok if r.tokens != SIM_OUTPUT_TOKENS)
    return {
        "streams": len(results),
        "streams_ok": len(ok),
        "blocks": [{"streams": len(b.results), "wall_s": round(b.wall_s, 3)} for b in blocks],
        "errors": error_summary(results),
        "streams_with_unexpected_token_count": short,
        "ttft_ms": distribution_ms(ttft),
        "total_ms": distribution_ms(total),
        "max_inter_token_gap_ms": distribution_ms([r.max_gap_s for r in ok]),
        "tokens_received": tokens,
        "wall_s": round(wall, 3),
        "relay_tokens_per_s_aggregate": rnd(tokens / wall if wall else None, 1),
        "relay_tokens_per_s_steady_estimate": rnd(
            concurrency * sum(r.tokens for r in ok) / sum(total) if total else None, 1
        ),
        "relay_tokens_per_s_per_stream": {
            "p50": rnd(percentile(per_stream, 50), 1),
            "p1": rnd(percentile(per_stream, 1), 1),
        },
        "decode_tokens_per_s_per_stream": {
            "p50": rnd(percentile(decode, 50), 1),
            "p1": rnd(percentile(decode, 1), 1),
        },
        "cpu": cpu,
        "cpu_us_per_token": cpu_per_token_us(cpu, tokens),
    }


def added(direct: dict[str, Any], gateway: dict[str, Any]) -> dict[str, Any]:
    """Gateway minus direct, as differences of percentiles (not percentiles of per-stream differences)."""

    def diff(metric: str, q: str) -> float | None:
        d, g = direct[metric][q], gateway[metric][q]
        return None if d is None or g is None else round(g - d, 2)

    def ratio(metric: str, q: str) -> float | None:
        d, g = direct[metric][q], gateway[metric][q]
        return None if not d or g is None else round(g / d, 3)

    d_rate, g_rate = direct["relay_tokens_per_s_steady_estimate"], gateway["relay_tokens_per_s_steady_estimate"]
    return {
        "ttft_p50_ms": diff("ttft_ms", "p50"),
        "ttft_p99_ms": diff("ttft_ms", "p99"),
        "ttft_p50_ratio": ratio("ttft_ms", "p50"),
        "ttft_p99_ratio": ratio("ttft_ms", "p99"),
        "total_p50_ms": diff("total_ms", "p50"),
        "total_p99_ms": diff("total_ms", "p99"),
        "total_p50_ratio": ratio("total_ms", "p50"),
        "total_p99_ratio": ratio("total_ms", "p99"),
        "steady_relay_rate_ratio": round(g_rate / d_rate, 3) if d_rate and g_rate else None,
    }


async def measure(worker: Service, gateway: Service, worker_port: int, gateway_url: str, key: str) -> dict[str, Any]:
    host, _, port = gateway_url.removeprefix("http://").partition(":")
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{worker_port}", options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)]
    )
    http = SseClient(host, int(port))
    async with channel:
        clients = Clients(pb_grpc.InferenceWorkerStub(channel), http, gateway_url, key)
        meter = CpuMeter({"client": os.getpid(), "gateway": gateway.pid, "worker": worker.pid})

        # Warm-up: open the channel and the HTTP connections a level of 64 needs, warm both paths.
        warmup: dict[str, Any] = {}
        started = time.monotonic()
        for mode in MODES:
            runs = [
                await run_closed_loop(clients.mode(mode), concurrency=1, count=10, max_seconds=20),
                await run_closed_loop(
                    clients.mode(mode), concurrency=64, count=192, max_seconds=30, stagger_s=IDEAL_TOTAL_S
                ),
            ]
            warmup[mode] = {
                "streams": sum(len(b.results) for b in runs),
                "errors": error_summary([r for b in runs for r in b.results]),
            }
        warmup["wall_s"] = round(time.monotonic() - started, 1)
        print(f"warm-up done in {warmup['wall_s']}s", flush=True)

        levels = []
        for concurrency, count in LEVELS.items():
            order = BLOCK_ORDER * BLOCK_REPEATS[concurrency]
            per_block = count // order.count("direct")
            blocks: dict[str, list[BlockResult]] = {m: [] for m in MODES}
            cpu: dict[str, dict[str, float | None]] = {m: {} for m in MODES}
            for mode in order:
                meter.start()
                block = await run_closed_loop(
                    clients.mode(mode),
                    concurrency=concurrency,
                    count=per_block,
                    max_seconds=BLOCK_CAP_S[concurrency],
                    stagger_s=IDEAL_TOTAL_S if concurrency > 1 else 0.0,
                )
                meter.add(cpu[mode], meter.stop())
                blocks[mode].append(block)
                print(
                    f"  c={concurrency:<3} {mode:<8} {len(block.results):4d} streams in {block.wall_s:6.1f}s",
                    flush=True,
                )
            direct = summarize(blocks["direct"], cpu["direct"], concurrency)
            through = summarize(blocks["gateway"], cpu["gateway"], concurrency)
            levels.append(
                {
                    "concurrency": concurrency,
                    "streams_per_mode_planned": count,
                    "direct": direct,
                    "gateway": through,
                    "added_by_gateway": added(direct, through),
                }
            )
    await http.close()
    await asyncio.sleep(1.0)  # let the gateway's gauges settle before reading them
    return {"warmup": warmup, "levels": levels}


def print_table(levels: list[dict[str, Any]]) -> None:
    rows = []
    for level in levels:
        for mode in MODES:
            s = level[mode]
            rows.append(
                [
                    level["concurrency"],
                    mode,
                    f"{s['streams_ok']}/{s['streams']}",
                    s["ttft_ms"]["p50"],
                    s["ttft_ms"]["p99"],
                    s["total_ms"]["p50"],
                    s["total_ms"]["p99"],
                    s["relay_tokens_per_s_steady_estimate"],
                    s["relay_tokens_per_s_per_stream"]["p50"],
                ]
            )
        a = level["added_by_gateway"]
        rows.append(
            [
                "",
                "added",
                "",
                a["ttft_p50_ms"],
                a["ttft_p99_ms"],
                a["total_p50_ms"],
                a["total_p99_ms"],
                f"x{a['steady_relay_rate_ratio']}",
                "",
            ]
        )
    headers = ["conc", "mode", "ok", "ttft p50", "ttft p99", "total p50", "total p99", "tok/s (N)", "tok/s/str"]
    print()
    print("times in ms; 'added' = gateway minus direct (difference of percentiles);")
    print("tok/s (N): aggregate relay rate with N streams in flight; tok/s/str: per stream, p50")
    print(table(headers, rows))


def main() -> None:
    # The token pace is the one knob worth a second run: 5 ms (200 tokens/s per stream) stresses the
    # relay; 20 ms is closer to what a GPU engine gives each stream under load.
    global SIM_ITL_MS, IDEAL_TOTAL_S
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--itl-ms", type=float, default=SIM_ITL_MS, help="sim engine: time between tokens")
    parser.add_argument("--name", default="gateway_overhead", help="results file bench/results/NAME.json")
    args = parser.parse_args()
    SIM_ITL_MS = args.itl_ms
    IDEAL_TOTAL_S = (SIM_TTFT_MS + (SIM_OUTPUT_TOKENS - 1) * SIM_ITL_MS) / 1000
    exit_on_sigterm()
    run_started = time.monotonic()
    meta = metadata(("fastapi", "uvicorn"))
    key = new_key()
    ports: dict[str, int] = {}

    sim = {
        "SIM_TTFT_MS": str(SIM_TTFT_MS),
        "SIM_ITL_MS": str(SIM_ITL_MS),
        "SIM_OUTPUT_TOKENS": str(SIM_OUTPUT_TOKENS),
        "MAX_BATCH_SIZE": str(WORKER_MAX_BATCH_SIZE),
        "MAX_QUEUE": str(WORKER_MAX_QUEUE),
    }

    def gateway_env() -> tuple[dict[str, str], str]:
        ports["gateway"] = free_port()
        env = {
            "BAILU_GATEWAY_HOST": "127.0.0.1",
            "BAILU_GATEWAY_PORT": str(ports["gateway"]),
            "BAILU_GATEWAY_WORKERS": worker.address,
            "BAILU_GATEWAY_API_KEY_HASHES": hash_key(key),
            "BAILU_GATEWAY_LOG_LEVEL": "WARNING",
        }
        return env, f"http://127.0.0.1:{ports['gateway']}/readyz"

    with ServiceGroup() as group:
        worker = start_sim_worker(group, "gateway_overhead-worker", MODEL, sim)
        gateway = group.start("gateway_overhead-gateway", "bailu.gateway", gateway_env, ready_timeout=60)
        print(f"worker ready on :{worker.port}, gateway ready on :{ports['gateway']}", flush=True)
        gateway_url = f"http://127.0.0.1:{ports['gateway']}"
        measured = asyncio.run(measure(worker.service, gateway, worker.port, gateway_url, key))
        service_metrics = {
            "worker": scrape_metrics(worker.metrics_url, ("bailu_worker_",)),
            "gateway": scrape_metrics(f"{gateway_url}/metrics", ("bailu_gateway_",)),
        }
    services = {"worker": worker.service.report(), "gateway": gateway.report()}
    # The key hash is a secret of this run only, but keep it out of the results anyway.
    services["gateway"]["command"] = services["gateway"]["command"].replace(hash_key(key), "sha256:<generated>")

    results: dict[str, Any] = {
        "benchmark": "gateway_overhead",
        "metadata": meta,
        "config": {
            "engine": "sim",
            "sim_ttft_ms": SIM_TTFT_MS,
            "sim_itl_ms": SIM_ITL_MS,
            "sim_output_tokens": SIM_OUTPUT_TOKENS,
            "worker_max_batch_size": WORKER_MAX_BATCH_SIZE,
            "worker_max_queue": WORKER_MAX_QUEUE,
            "ideal_stream_ttft_ms": ms(IDEAL_TTFT_S),
            "ideal_stream_total_ms": ms(IDEAL_TOTAL_S),
            "prompt": PROMPT,
            "max_tokens": SIM_OUTPUT_TOKENS,
            "concurrency_levels": list(LEVELS),
            "streams_per_mode_planned": LEVELS,
            "block_order_per_level": {c: list(BLOCK_ORDER * n) for c, n in BLOCK_REPEATS.items()},
            "block_time_cap_s": BLOCK_CAP_S,
            "stream_timeout_s": STREAM_TIMEOUT_S,
            "direct_client": "grpc.aio, one channel shared by all streams (as the gateway has one per worker)",
            "gateway_client": (
                "bench.sse_client.SseClient: HTTP/1.1 keep-alive connections, chunked decoding, "
                "events matched as bytes (JSON parsed only for the usage event)"
            ),
        },
        "definitions": {
            "ttft": "client-side: request sent -> first token (direct: first GenerateResponse with tokens; "
            "gateway: first SSE event whose delta has non-empty content)",
            "total": "client-side: request sent -> end of stream (direct: call finished; gateway: [DONE])",
            "added_by_gateway": "gateway percentile minus direct percentile at the same concurrency "
            "(a difference of percentiles, not a percentile of per-stream differences); ratios are gateway/direct",
            "relay_tokens_per_s_aggregate": "tokens received by the client in a mode / summed wall time of its "
            "blocks (includes each block's ramp-up and ramp-down, so it is below the steady rate)",
            "relay_tokens_per_s_steady_estimate": "concurrency x tokens of the successful streams / their summed "
            "total time (Little's law: the aggregate rate with N streams always in flight); the sim engine's "
            f"ideal is concurrency x {SIM_OUTPUT_TOKENS / IDEAL_TOTAL_S:.1f}",
            "relay_tokens_per_s_per_stream": "per stream tokens / total time (p50, and p1 = slowest 1%)",
            "max_inter_token_gap_ms": "per stream, the longest wait between two consecutive tokens; distribution "
            f"over streams (the sim engine's pace is {SIM_ITL_MS} ms)",
            "cpu_us_per_token": "CPU microseconds per relayed token of each process in the mode's blocks",
            "decode_tokens_per_s_per_stream": "per stream (tokens - 1) / (total - ttft); the sim engine's pace is "
            f"{1000 / SIM_ITL_MS:.0f} tokens/s",
            "cpu": "CPU seconds of each process and of the whole machine during the mode's blocks (/proc); "
            "other_processes_cpu_s = machine busy minus client, gateway and worker",
            "concurrency": "closed loop: each of N lanes starts its next stream when the previous ends; lane starts "
            "are staggered over one ideal stream duration",
        },
        **measured,
        "service_metrics_at_end": service_metrics,
        "services": services,
        "runtime_s": round(time.monotonic() - run_started, 1),
        "notes": [
            "The benchmark client, the gateway and the worker all run on this machine and share its "
            f"{meta['nproc']} CPU cores ({meta['cpu_model']}); client-side CPU load (HTTP/SSE parsing at 64 streams) "
            "is part of what is measured, and the gateway mode has one more busy process competing for the cores.",
            "The machine is shared with other workloads: see cpu.other_processes_cpu_s and steal_cpu_s per mode, "
            "and metadata.loadavg_at_start/at_end.",
            "Direct and gateway blocks alternate (direct, gateway, gateway, direct) per level so that drifts in "
            "machine noise affect both modes alike.",
        ],
    }
    if gateway.exit_code == -15 and not gateway.killed:
        results["notes"].append(
            "The gateway's exit code -15 is uvicorn's behaviour: after a graceful shutdown on SIGTERM it re-raises "
            "the signal (uvicorn Server.capture_signals); it was not killed."
        )
    path = write_results(args.name, results)
    print_table(measured["levels"])
    print(f"\nwrote {path} in {results['runtime_s']}s")


if __name__ == "__main__":
    main()
