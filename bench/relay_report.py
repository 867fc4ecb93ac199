"""The relay benchmark's figures: each mode against direct, printed per level, and one run against another.

python -m bench.relay --report bench/results/relay.json [bench/results/relay_before.json]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.common import table

if TYPE_CHECKING:
    from bench.relay_services import Timing

# The processes a mode's tokens are relayed through (their CPU is the relay's cost).
RELAY_PROCESSES: dict[str, tuple[str, ...]] = {
    "direct": (),
    "worker": ("worker",),
    "gateway": ("gateway", "worker"),
    "router": ("router",),
}
PROCESSES = ("client", "engine", "worker", "gateway", "router")


def compare_levels(direct: dict[str, Any], other: dict[str, Any]) -> dict[str, float | None]:
    """`other` minus `direct` (differences of percentiles, in ms) and its rates over direct's."""

    def diff(metric: str, q: str) -> float | None:
        d, o = direct[metric][q], other[metric][q]
        return None if d is None or o is None else round(o - d, 2)

    def ratio(key: str) -> float | None:
        d, o = direct.get(key), other.get(key)
        return round(o / d, 3) if d and o is not None else None

    return {
        "ttft_p50_added_ms": diff("ttft_ms", "p50"),
        "ttft_p99_added_ms": diff("ttft_ms", "p99"),
        "total_p50_added_ms": diff("total_ms", "p50"),
        "total_p99_added_ms": diff("total_ms", "p99"),
        "throughput_ratio": ratio("tokens_per_s_steady"),
        "aggregate_throughput_ratio": ratio("tokens_per_s_aggregate"),
    }


def _modes(level: dict[str, Any]) -> list[str]:
    return [m for m in RELAY_PROCESSES if m in level]


def print_levels(levels: list[dict[str, Any]]) -> None:
    headers = [
        "conc",
        "mode",
        "ok",
        "ttft p50",
        "ttft p99",
        "+p50",
        "+p99",
        "tok/s",
        "x direct",
        "tok/ev",
        "relay us/tok",
    ]
    headers += [f"{p} us/tok" for p in PROCESSES]
    rows = []
    for level in levels:
        for mode in _modes(level):
            s = level[mode]
            vs = level.get("vs_direct", {}).get(mode, {})
            per = s["cpu_us_per_token"]
            rows.append(
                [
                    level["concurrency"],
                    mode,
                    f"{s['streams_ok']}/{s['streams']}",
                    s["ttft_ms"]["p50"],
                    s["ttft_ms"]["p99"],
                    vs.get("ttft_p50_added_ms"),
                    vs.get("ttft_p99_added_ms"),
                    s["tokens_per_s_steady"],
                    vs.get("throughput_ratio"),
                    s["tokens_per_event"],
                    s["relay_cpu_us_per_token"] if mode != "direct" else None,
                    *(per.get(p) for p in PROCESSES),
                ]
            )
    print()
    print("times in ms; +p50/+p99: TTFT percentile minus direct's; tok/s: steady relay rate with N streams in flight;")
    print("x direct: that rate over direct's; tok/ev: tokens per event; us/tok: CPU microseconds per relayed token")
    print(table(headers, rows))


def print_compare(before: dict[str, Any], after: dict[str, Any], before_name: str, after_name: str) -> None:
    """The headline figures of two runs side by side (before -> after), per level and relay mode."""
    old = {level["concurrency"]: level for level in before.get("levels", [])}
    rows = []
    for level in after.get("levels", []):
        prior = old.get(level["concurrency"])
        if prior is None:
            continue
        for mode in _modes(level):
            if mode == "direct" or mode not in prior:
                continue
            a, b = level.get("vs_direct", {}).get(mode, {}), prior.get("vs_direct", {}).get(mode, {})
            rows.append(
                [
                    level["concurrency"],
                    mode,
                    f"{prior[mode]['relay_cpu_us_per_token']} -> {level[mode]['relay_cpu_us_per_token']}",
                    f"{b.get('ttft_p50_added_ms')} -> {a.get('ttft_p50_added_ms')}",
                    f"{b.get('ttft_p99_added_ms')} -> {a.get('ttft_p99_added_ms')}",
                    f"{b.get('throughput_ratio')} -> {a.get('throughput_ratio')}",
                    f"{prior[mode]['tokens_per_event']} -> {level[mode]['tokens_per_event']}",
                ]
            )
    print()
    for label, name, data in (("before", before_name, before), ("after ", after_name, after)):
        meta = data.get("metadata", {})
        print(f"{label}: {name} ({meta.get('date_utc')}, git {str(meta.get('git_commit'))[:10]})")
    headers = ["conc", "mode", "relay us/tok", "+ttft p50 ms", "+ttft p99 ms", "x direct", "tok/ev"]
    print(table(headers, rows))


def print_profile(profile: dict[str, Any] | None, top: int = 15) -> None:
    """The profiled block's top self-time entries per process."""
    if not profile:
        return
    if "error" in profile:
        print(f"\nprofile: {profile['error']}")
        return
    for name in ("worker", "gateway"):
        entry = profile.get(name, {})
        if "error" in entry:
            print(f"\n{name}: {entry['error']}")
            continue
        print(f"\n{name}: top {top} by self time ({entry.get('samples')} samples; {entry.get('file')})")
        for e in entry.get("top_self", [])[:top]:
            print(f"  {e['percent']:5.1f}%  {e['samples']:6d}  {e['entry'][:110]}")


def definitions(timing: Timing) -> dict[str, str]:
    ideal = timing.tokens / timing.ideal_total_s
    return {
        "ttft": "client-side: request sent -> first event with a non-empty content delta (worker mode: first "
        "GenerateResponse with tokens)",
        "total": "client-side: request sent -> end of stream ([DONE] and the end of the body, or the gRPC call's end)",
        "vs_direct": "per mode: its percentile minus direct's at the same concurrency (a difference of percentiles, "
        "not a percentile of differences), and its tokens_per_s_steady over direct's (throughput_ratio)",
        "tokens_per_s_steady": "concurrency x tokens of the successful streams / their summed total time (Little's "
        f"law: the rate with N streams always in flight); the stand-in's ideal is concurrency x {ideal:.1f}",
        "tokens_per_s_aggregate": "tokens received / summed wall time of the mode's blocks (includes their ramps)",
        "tokens": "SSE modes: the final usage chunk's completion_tokens; worker mode: the sum of token_count",
        "tokens_per_event": "tokens / token-carrying events (SSE events with content, or gRPC messages with "
        "tokens): above 1 when a relay coalesces tokens",
        "cpu_us_per_token": "CPU microseconds of each process (/proc utime+stime, 10 ms ticks) during the mode's "
        "blocks per token the client received; every process is listed in every mode (those not on the path near 0)",
        "relay_cpu_us_per_token": "the sum over the mode's relay processes: "
        + ", ".join(f"{m}: {'+'.join(p) or 'none'}" for m, p in RELAY_PROCESSES.items()),
        "engine_counters": "the stand-in engine's own counters over the mode's blocks (connections: TCP connections "
        "it accepted; streams_aborted: streams whose client closed the connection before the end)",
        "max_inter_token_gap_ms": "per stream, the longest wait between two token events; distribution over streams",
        "third_party": "AIPerf's own figures (its definitions: docs.nvidia.com/aiperf), run against the gateway and "
        "against the engine directly after the measured blocks, with the services' CPU around each run",
    }


def document(
    meta: dict[str, Any],
    config: dict[str, Any],
    timing: Timing,
    measured: dict[str, Any],
    third_party: dict[str, Any] | None,
    at_end: dict[str, Any],
    services: dict[str, Any],
    runtime_s: float,
) -> dict[str, Any]:
    """The results file."""
    return {
        "benchmark": "relay",
        "metadata": meta,
        "config": config,
        "definitions": definitions(timing),
        **measured,
        "third_party": third_party,
        "at_end": at_end,
        "services": services,
        "runtime_s": round(runtime_s, 1),
        "notes": [
            f"Client, engine, worker, gateway and router share this machine's {meta['nproc']} cores "
            f"({meta['cpu_model']}), and so do other workloads: see cpu.other_processes_cpu_s and steal_cpu_s per "
            "mode and metadata.loadavg_at_start/at_end. Compare ratios and CPU per token rather than absolute times.",
            "The worker asks the engine for usage on every chunk (the vllm dialect's continuous_usage_stats); the "
            "direct, gateway and router clients ask for include_usage only.",
            "The profiled block runs after the measured ones and is not part of their figures.",
        ],
    }
