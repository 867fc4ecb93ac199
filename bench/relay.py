"""The engine-server relay: what the worker and the gateway add to an engine server's token stream.

One stand-in engine server with fixed timing (bench/standin_engine.py: vLLM's dialect, 50 ms to the first
token, 10 ms between tokens, 32 tokens) runs as the engine of a worker on the `vllm` engine
(BAILU_WORKER_ENGINE_EXECUTABLE), with a gateway in front of the worker. At 1, 16 and 64 concurrent streams
(closed loop) the same chat completions are streamed in each mode, in interleaved blocks (the order mirrored,
direct worker gateway router router gateway worker direct) so that every mode sees the same machine noise:

    direct   client -> engine server                     (HTTP/SSE, bench.sse_client)
    worker   client -> worker (gRPC Generate) -> engine server
    gateway  client -> gateway (HTTP/SSE) -> worker -> engine server
    router   client -> vllm-router (Rust, PyPI) -> engine server   (when installed: make bench-relay-peer)

Per mode and level: TTFT p50/p99 and what it adds over direct, the relay rate (tokens/s) and its ratio to
direct, and CPU microseconds per relayed token of each process (client, engine, worker, gateway, router)
from /proc. Every mode talks to the same engine process (the worker's child).

    python -m bench.relay                   # ~3.5 min; bench/results/relay.json
    python -m bench.relay --quick           # ~1.5 min, a quarter of the streams in one pass
    python -m bench.relay --profile         # + py-spy on worker and gateway during one more 16-stream gateway block
    python -m bench.relay --profile native  # the same with C frames (py-spy then pauses the targets per sample)
    python -m bench.relay --aiperf auto     # + AIPerf against the gateway and the engine (make bench-relay-peer)
    python -m bench.relay --name relay_after --compare bench/results/relay.json   # a change, before/after
    python -m bench.relay --report bench/results/relay.json [BEFORE.json]         # print, run nothing

`--worker-setting KEY=VALUE` / `--gateway-setting KEY=VALUE` set BAILU_WORKER_KEY / BAILU_GATEWAY_KEY, so
that a change's knobs are compared one command each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bailu.keys.model import new_key
from bailu.v1 import worker_pb2_grpc as pb_grpc
from bench import profiling, relay_peers
from bench.common import (
    RESULTS_DIR,
    BlockResult,
    CpuMeter,
    ServiceGroup,
    cpu_per_token_us,
    distribution_ms,
    error_summary,
    exit_on_sigterm,
    metadata,
    percentile,
    rnd,
    run_closed_loop,
    scrape_metrics,
    write_results,
)
from bench.relay_clients import PROMPT, Clients, counters_delta, engine_stats
from bench.relay_report import RELAY_PROCESSES, compare_levels, document, print_compare, print_levels, print_profile
from bench.relay_services import MODEL, RelayServices, Timing, start_services
from bench.sse_client import SseClient

# Streams per mode at each concurrency (split over BLOCK_REPEATS mirrored passes; --quick: a quarter, one
# pass); a block starts no new stream after BLOCK_CAP_S.
LEVELS: dict[int, int] = {1: 40, 16: 480, 64: 1280}
BLOCK_REPEATS = 2
BLOCK_CAP_S = 20.0
PROFILE_CONCURRENCY = 16
PROFILE_RATE_HZ = 200
PROFILE_SECONDS = 10.0
AIPERF_CONCURRENCY = 16
AIPERF_REQUESTS = 480


def summarize(
    mode: str,
    blocks: list[BlockResult],
    cpu: dict[str, float | None],
    events: int,
    engine: dict[str, int],
    concurrency: int,
    timing: Timing,
) -> dict[str, Any]:
    results = [r for b in blocks for r in b.results]
    ok = [r for r in results if r.ok]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    total = [r.total_s for r in ok]
    tokens = sum(r.tokens for r in results)
    wall = sum(b.wall_s for b in blocks)
    per_token = cpu_per_token_us(cpu, tokens)
    relay = [v for p in RELAY_PROCESSES[mode] if (v := per_token.get(p)) is not None]
    return {
        "streams": len(results),
        "streams_ok": len(ok),
        "blocks": [{"streams": len(b.results), "wall_s": round(b.wall_s, 3)} for b in blocks],
        "errors": error_summary(results),
        "streams_with_unexpected_token_count": sum(1 for r in ok if r.tokens != timing.tokens),
        "ttft_ms": distribution_ms(ttft),
        "total_ms": distribution_ms(total),
        "max_inter_token_gap_ms": distribution_ms([r.max_gap_s for r in ok]),
        "tokens_received": tokens,
        "token_events_received": events,
        "tokens_per_event": rnd(tokens / events if events else None, 3),
        "wall_s": round(wall, 3),
        "tokens_per_s_aggregate": rnd(tokens / wall if wall else None, 1),
        "tokens_per_s_steady": rnd(concurrency * sum(r.tokens for r in ok) / sum(total) if total else None, 1),
        "tokens_per_s_per_stream_p50": rnd(percentile([r.tokens / r.total_s for r in ok if r.total_s > 0], 50), 1),
        "engine_counters": engine,
        "cpu": cpu,
        "cpu_us_per_token": per_token,
        "relay_cpu_us_per_token": rnd(sum(relay), 1),
    }


def block_order(modes: tuple[str, ...], repeats: int) -> tuple[str, ...]:
    """Each mode's blocks mirrored (a b c c b a ...), so that a drift in machine noise hits all modes alike."""
    return (modes + modes[::-1]) * (repeats // 2) + (modes if repeats % 2 else ())


@dataclass
class Run:
    timing: Timing
    levels: dict[int, int]
    modes: tuple[str, ...]
    services: RelayServices
    pids: dict[str, int]
    api_key: str
    repeats: int
    profile: str | None  # None, "python" or "native"
    profile_s: float
    name: str


def _client(url: str) -> SseClient:
    host, _, port = url.removeprefix("http://").partition(":")
    return SseClient(host, int(port))


async def measure(run: Run) -> dict[str, Any]:
    s = run.services
    engine, gateway = _client(s.engine_url), _client(s.gateway_url)
    router = _client(s.router_url) if s.router_url else None
    stagger = run.timing.ideal_total_s
    async with grpc.aio.insecure_channel(s.worker.address) as channel:
        clients = Clients(run.timing, engine, pb_grpc.InferenceWorkerStub(channel), gateway, router, run.api_key)
        meter = CpuMeter(run.pids)
        warmup: dict[str, Any] = {}
        started = time.monotonic()
        for mode in run.modes:  # open the connections a level of 64 needs, warm every path
            await clients.fresh()
            warm = [
                await run_closed_loop(clients.mode(mode), concurrency=1, count=5, max_seconds=20),
                await run_closed_loop(clients.mode(mode), concurrency=64, count=128, max_seconds=30, stagger_s=stagger),
            ]
            results = [r for b in warm for r in b.results]
            warmup[mode] = {"streams": len(results), "errors": error_summary(results)}
        warmup["wall_s"] = round(time.monotonic() - started, 1)
        print(f"warm-up done in {warmup['wall_s']}s", flush=True)

        levels = []
        order = block_order(run.modes, run.repeats)
        for concurrency, count in run.levels.items():
            per_block = max(1, count // order.count(run.modes[0]))
            blocks: dict[str, list[BlockResult]] = {m: [] for m in run.modes}
            cpu: dict[str, dict[str, float | None]] = {m: {} for m in run.modes}
            counters: dict[str, dict[str, int]] = {m: {} for m in run.modes}
            events_before = dict(clients.events)
            for mode in order:
                await clients.fresh()
                stats_before = engine_stats(s.engine_url)
                meter.start()
                block = await run_closed_loop(
                    clients.mode(mode),
                    concurrency=concurrency,
                    count=per_block,
                    max_seconds=BLOCK_CAP_S,
                    stagger_s=stagger if concurrency > 1 else 0.0,
                )
                meter.add(cpu[mode], meter.stop())
                delta = counters_delta(stats_before, engine_stats(s.engine_url))
                counters[mode] = {k: counters[mode].get(k, 0) + v for k, v in delta.items()}
                blocks[mode].append(block)
                print(
                    f"  c={concurrency:<3} {mode:<8} {len(block.results):4d} streams in {block.wall_s:6.1f}s",
                    flush=True,
                )
            summaries = {
                m: summarize(
                    m,
                    blocks[m],
                    cpu[m],
                    clients.events.get(m, 0) - events_before.get(m, 0),
                    counters[m],
                    concurrency,
                    run.timing,
                )
                for m in run.modes
            }
            level: dict[str, Any] = {"concurrency": concurrency, "streams_per_mode_planned": count, **summaries}
            if "direct" in summaries:
                level["vs_direct"] = {
                    m: compare_levels(summaries["direct"], summary) for m, summary in summaries.items() if m != "direct"
                }
            levels.append(level)
        profile = await profile_block(run, clients) if run.profile else None
    for client in (engine, gateway, router):
        if client is not None:
            await client.close()
    return {"warmup": warmup, "levels": levels, "profile": profile}


async def profile_block(run: Run, clients: Clients) -> dict[str, Any]:
    """One more gateway block at PROFILE_CONCURRENCY with py-spy on the worker and the gateway; not part of the
    measured figures (py-spy's sampling takes CPU from the same cores)."""
    spy = profiling.find_py_spy()
    if spy is None:
        return {"error": "py-spy not found: install the dev extra (it brings py-spy)"}
    native = run.profile == "native"
    recorders = {
        name: profiling.SpyRecorder(
            spy,
            run.pids[name],
            RESULTS_DIR / f"{run.name}_profile_{name}{'_native' if native else ''}.txt",
            PROFILE_RATE_HZ,
            native,
        )
        for name in ("worker", "gateway")
    }
    for recorder in recorders.values():
        recorder.start()
    await asyncio.sleep(1.0)  # py-spy attaches
    await clients.fresh()
    block = await run_closed_loop(
        clients.mode("gateway"),
        concurrency=PROFILE_CONCURRENCY,
        count=1_000_000,  # the time cap ends it
        max_seconds=run.profile_s,
        stagger_s=run.timing.ideal_total_s,
    )
    print(f"  profile: gateway c={PROFILE_CONCURRENCY} {len(block.results)} streams in {block.wall_s:.1f}s", flush=True)
    command = " ".join(recorders["worker"].argv[1:]).replace(str(run.pids["worker"]), "<pid>")
    command = command.replace(f"{RESULTS_DIR.parents[1]}/", "")
    out: dict[str, Any] = {
        "block": {
            "mode": "gateway",
            "concurrency": PROFILE_CONCURRENCY,
            "streams": len(block.results),
            "wall_s": round(block.wall_s, 2),
            "errors": error_summary(block.results),
        },
        "how": f"py-spy {command}, attached to the worker and to the gateway for the block; the files are "
        "collapsed stacks (flamegraph.pl, speedscope.app); self = samples where the function is innermost (time "
        "in C code counts for the Python frame that called it unless native), total = samples where it is on the "
        "stack; idle threads are not sampled (native: samples waiting in epoll & co. are left out)",
    }
    for name, recorder in recorders.items():
        status = recorder.stop()
        if "error" in status:
            out[name] = status
            continue
        summary = profiling.summarize_collapsed(recorder.output)
        summary["file"] = str(recorder.output.relative_to(RESULTS_DIR.parents[1]))
        out[name] = {**status, **summary}
    return out


def aiperf_runs(aiperf: str, run: Run, quick: bool) -> dict[str, Any]:
    """AIPerf at AIPERF_CONCURRENCY streams against the gateway, then against the engine server directly,
    the services' CPU measured around each run."""
    s = run.services
    out: dict[str, Any] = {"version": relay_peers.package_version(aiperf, "aiperf")}
    requests = AIPERF_REQUESTS // 4 if quick else AIPERF_REQUESTS
    for target, url, key in (("gateway", s.gateway_url, run.api_key), ("direct", s.engine_url, None)):
        meter = CpuMeter(run.pids)
        meter.start()
        result = relay_peers.run_aiperf(
            aiperf,
            url=url,
            model=MODEL,
            api_key=key,
            concurrency=AIPERF_CONCURRENCY,
            requests=requests,
            output_tokens=run.timing.tokens,
            out_dir=relay_peers.AIPERF_ARTIFACTS / f"{run.name}_{target}",
        )
        cpu = meter.stop()
        # The window holds AIPerf's start (its dataset) and its warm-up requests (one per stream) too.
        per_request = result.get("metrics", {}).get("usage_completion_tokens", {}).get("avg") or 0
        tokens = int(per_request * (requests + AIPERF_CONCURRENCY))
        result["cpu"] = cpu
        result["cpu_us_per_token"] = cpu_per_token_us(cpu, tokens) if tokens else None
        out[target] = result
        metrics = result.get("metrics", {})
        print(
            f"  aiperf -> {target}: exit {result.get('exit_code')}, TTFT p50 "
            f"{rnd(metrics.get('time_to_first_token', {}).get('p50'))} ms, "
            f"{rnd(metrics.get('output_token_throughput', {}).get('avg'), 1)} tokens/s",
            flush=True,
        )
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="relay", help="results file bench/results/NAME.json")
    parser.add_argument("--quick", action="store_true", help="a quarter of the streams, one pass")
    parser.add_argument("--levels", default="1,16,64", help="concurrency levels (default 1,16,64)")
    parser.add_argument("--modes", default="direct,worker,gateway,router", help="modes, direct first")
    parser.add_argument("--ttft-ms", type=float, default=50.0, help="stand-in engine: time to the first token")
    parser.add_argument("--itl-ms", type=float, default=10.0, help="stand-in engine: time between tokens")
    parser.add_argument("--output-tokens", type=int, default=32, help="stand-in engine: tokens per completion")
    parser.add_argument(
        "--router",
        default=None,
        help="vllm-router executable; 'off' for none (default: "
        f"{relay_peers.ROUTER_DEFAULT.relative_to(RESULTS_DIR.parents[1])} if installed)",
    )
    parser.add_argument(
        "--profile",
        nargs="?",
        const="python",
        choices=("python", "native"),
        help="py-spy on worker and gateway during one more 16-stream gateway block (native: "
        "with C frames, pausing the targets at each sample)",
    )
    parser.add_argument(
        "--aiperf",
        default="off",
        help="AIPerf against gateway and engine: 'auto' (the one "
        "make bench-relay-peer installs), a path, or 'off' (default)",
    )
    parser.add_argument("--worker-setting", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--gateway-setting", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--compare", default=None, metavar="JSON", help="print this run beside an earlier one")
    parser.add_argument(
        "--report",
        nargs="+",
        default=None,
        metavar="JSON",
        help="print a results file (and the change from a second one), run nothing",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.report:
        reports = [json.loads(Path(p).read_text()) for p in args.report]
        print_levels(reports[0]["levels"])
        print_profile(reports[0].get("profile"))
        if len(reports) > 1:
            print_compare(reports[1], reports[0], args.report[1], args.report[0])
        return
    exit_on_sigterm()
    timing = Timing(args.ttft_ms, args.itl_ms, args.output_tokens)
    levels = {int(c): LEVELS.get(int(c), 480) for c in args.levels.split(",") if c}
    if args.quick:
        levels = {c: max(8, n // 4) for c, n in levels.items()}
    wanted = tuple(m for m in args.modes.split(",") if m)
    unknown = set(wanted) - set(RELAY_PROCESSES)
    if unknown or not wanted:
        raise SystemExit(f"unknown modes {sorted(unknown)}; known: {', '.join(RELAY_PROCESSES)}")
    router = relay_peers.find_tool(args.router, relay_peers.ROUTER_DEFAULT) if "router" in wanted else None
    aiperf = None
    if args.aiperf != "off":
        aiperf = relay_peers.find_tool(None if args.aiperf == "auto" else args.aiperf, relay_peers.AIPERF_DEFAULT)
        if aiperf is None:
            print("AIPerf is not installed (make bench-relay-peer): its run is skipped", flush=True)
    run_started = time.monotonic()
    meta = metadata(("fastapi", "uvicorn", "httptools", "orjson", "uvloop"))
    key = new_key()
    with tempfile.TemporaryDirectory(prefix="relay-model-") as tmp, ServiceGroup() as group:
        model_dir = Path(tmp)
        (model_dir / "config.json").write_text("{}")  # the worker checks for a checkpoint; the stand-in reads none
        s = start_services(
            group,
            args.name,
            timing,
            key,
            model_dir,
            router=router,
            worker_settings=args.worker_setting,
            gateway_settings=args.gateway_setting,
        )
        modes = tuple(m for m in wanted if m != "router" or s.router is not None)
        print(
            f"engine {s.engine_url} (pid {s.engine_pid}), worker {s.worker.address}, gateway {s.gateway_url}, "
            f"router {s.router_url or 'not installed (make bench-relay-peer)'}",
            flush=True,
        )
        run = Run(
            timing=timing,
            levels=levels,
            modes=modes,
            services=s,
            pids=s.pids(os.getpid()),
            api_key=key,
            repeats=1 if args.quick else BLOCK_REPEATS,
            profile=args.profile,
            profile_s=PROFILE_SECONDS / 2 if args.quick else PROFILE_SECONDS,
            name=args.name,
        )
        measured = asyncio.run(measure(run))
        third_party = aiperf_runs(aiperf, run, args.quick) if aiperf else None
        at_end = {
            "engine": engine_stats(s.engine_url),
            "worker": scrape_metrics(s.worker.metrics_url, ("bailu_worker_",)),
            "gateway": scrape_metrics(f"{s.gateway_url}/metrics", ("bailu_gateway_",)),
        }
    config = {
        "engine": "vllm dialect, bench/standin_engine.py as BAILU_WORKER_ENGINE_EXECUTABLE",
        "engine_argv": s.engine_argv,
        "standin_ttft_ms": timing.ttft_ms,
        "standin_itl_ms": timing.itl_ms,
        "standin_output_tokens": timing.tokens,
        "ideal_stream_total_ms": round(timing.ideal_total_s * 1000, 2),
        "modes": list(modes),
        "concurrency_levels": list(levels),
        "streams_per_mode_planned": levels,
        "block_order_per_level": list(block_order(modes, run.repeats)),
        "block_time_cap_s": BLOCK_CAP_S,
        "worker_settings": args.worker_setting,
        "gateway_settings": args.gateway_setting,
        "prompt": PROMPT,
        "quick": args.quick,
        "redis": "none: the gateway logs no completions in this benchmark (as in gateway_overhead)",
    }
    results = document(
        meta, config, timing, measured, third_party, at_end, s.reports(key), time.monotonic() - run_started
    )
    path = write_results(args.name, results)
    print_levels(measured["levels"])
    print_profile(measured["profile"])
    if args.compare:
        print_compare(json.loads(Path(args.compare).read_text()), results, args.compare, str(path))
    print(f"\nwrote {path} in {results['runtime_s']}s")


if __name__ == "__main__":
    main()
