"""Soak: streaming clients for minutes on sim workers, slow readers and leavers included; memory watched.

redis-server, two workers (sim engine) and the gateway (completion log on) run as processes. N client
lanes run for M minutes on loopback, each lane one kind of client:

    stream       n=1, 64 tokens, read at once                      (open loop: together with `disconnect`,
    disconnect   n=1, 256 tokens, the client leaves after 8 events   `--rate` requests per second)
    slow_n8      n=8, 8 x 4,000 tokens, read at 64 KiB/s, the client gives up after 60 s (back to back)
    stalled_n8   n=8, 8 x 4,000 tokens, not read for 75 s: the gateway cuts it off after its client write
                 timeout (the default, 30 s), then the client reads what was buffered (back to back)

The slow and stalled lanes ask for more than the kernel's socket buffers hold (a few MiB), so the
gateway's backpressure is what bounds them. Reported: throughput, time to first token (p50/p99), outcomes
and errors by kind, and each process's RSS when ready, at the start of the load (after a warm-up that runs
each kind of client but the stalled one), during the load, at its end, and after the clients left and a
settle period.

    python -m bench.soak                          # about 5 minutes; bench/results/soak.json
    python -m bench.soak --minutes 1 --name soak_short
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bailu.gateway.settings import GatewaySettings
from bailu.keys.model import hash_key, new_key
from bench.common import (
    ServiceGroup,
    distribution_ms,
    exit_on_sigterm,
    free_port,
    metadata,
    rnd,
    rss_mib,
    scrape_metrics,
    start_redis,
    start_sim_worker,
    table,
    write_results,
)
from bench.sse_client import HttpError, SseClient

NAME = "soak"
MODEL = "sim-model"
SIM = {
    "SIM_TTFT_MS": "20",
    "SIM_ITL_MS": "5",
    "SIM_OUTPUT_TOKENS": "4000",
    "MAX_MODEL_LEN": "8192",
    "MAX_BATCH_SIZE": "64",
    "MAX_QUEUE": "64",
}
STREAM_TOKENS, DISCONNECT_TOKENS, DISCONNECT_AFTER = 64, 256, 8
N8_TOKENS, SLOW_BYTES_PER_S, SLOW_GIVE_UP_S = 4000, 64 * 1024, 60.0
STALL_S = 75.0  # how long a stalled client holds its connection before it reads again
WARMUP_SLOW_S = 30.0
RECEIVE_BUFFER = 8192
REQUEST_TIMEOUT_S = 120.0
SAMPLE_EVERY_S = 5.0


def chat(n: int, max_tokens: int) -> bytes:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "a poem about dew"}],
        "stream": True,
        "n": n,
        "max_tokens": max_tokens,
        "temperature": 1.0,
    }
    return json.dumps(body).encode()


def is_token(payload: bytes) -> bool:
    return b'"content":"' in payload and b'"content":""' not in payload


@dataclass
class Outcome:
    kind: str
    outcome: str  # ok, left (as planned), cut_off (by the gateway, as planned), or an error
    ttft_s: float | None
    tokens: int
    started: float


@dataclass
class Load:
    http: SseClient
    key: str
    results: list[Outcome] = field(default_factory=list)

    async def run(self, kind: str, one: Callable[[], Awaitable[tuple[str, float | None, int]]]) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                outcome, ttft, tokens = await one()
        except TimeoutError:
            outcome, ttft, tokens = "error:timeout", None, 0
        except (OSError, asyncio.IncompleteReadError, HttpError, ValueError) as exc:
            outcome, ttft, tokens = f"error:{type(exc).__name__}", None, 0
        self.results.append(Outcome(kind, outcome, ttft, tokens, started))

    async def stream(self, max_tokens: int, leave_after: int | None) -> tuple[str, float | None, int]:
        """A streamed completion read at once; the client leaves after `leave_after` token events."""
        start, ttft, tokens = time.perf_counter(), None, 0
        async for payload in self.http.stream("/v1/chat/completions", chat(1, max_tokens), self.key):
            if payload == b"[DONE]":
                return "ok", ttft, tokens
            if payload.startswith(b'{"error"'):
                return f"error:event {json.loads(payload)['error'].get('code')}", ttft, tokens
            if is_token(payload):
                ttft = ttft if ttft is not None else time.perf_counter() - start
                tokens += 1
                if leave_after is not None and tokens >= leave_after:
                    return "left", ttft, tokens  # leaving the loop closes the connection
        return "error:no [DONE]", ttft, tokens

    async def n8(self, *, stall: bool, give_up_s: float = SLOW_GIVE_UP_S) -> tuple[str, float | None, int]:
        """n=8 on a connection with a small receive buffer, read at SLOW_BYTES_PER_S until `give_up_s` (or,
        stalled, not at all for STALL_S, then to its end)."""
        start = time.perf_counter()
        (reader, writer), status = await self.http.open_stream(
            "/v1/chat/completions", chat(8, N8_TOKENS), self.key, rcvbuf=RECEIVE_BUFFER
        )
        try:
            if status != 200:
                return f"error:http {status}", None, 0
            if stall:
                await asyncio.sleep(STALL_S)
            ttft, tokens, received, done = None, 0, 0, False
            async for chunk in SseClient.chunks(reader):
                received += len(chunk)
                for event in chunk.split(b"\n\n"):
                    if event.startswith(b"data: [DONE]"):
                        done = True
                    elif is_token(event):
                        ttft = ttft if ttft is not None else time.perf_counter() - start
                        tokens += 1
                if not stall:
                    elapsed = time.perf_counter() - start
                    if elapsed > give_up_s:
                        return "left", ttft, tokens
                    await asyncio.sleep(max(0.0, received / SLOW_BYTES_PER_S - elapsed))
            return ("ok" if done else "error:no [DONE]"), ttft, tokens
        except (asyncio.IncompleteReadError, ValueError):
            # The connection ended inside the chunked body: what a cut-off client sees.
            return ("cut_off" if stall else "error:connection closed"), None, 0
        finally:
            writer.close()


async def lane_open(load: Load, kind: str, interval_s: float, offset_s: float, until: float) -> None:
    """Requests of `kind` at a fixed rate (one per `interval_s`); a late one starts at once, none is skipped."""
    one = (
        (lambda: load.stream(STREAM_TOKENS, None))
        if kind == "stream"
        else (lambda: load.stream(DISCONNECT_TOKENS, DISCONNECT_AFTER))
    )
    due = time.perf_counter() + offset_s
    while due < until:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        await load.run(kind, one)
        due += interval_s


async def lane_back_to_back(load: Load, kind: str, offset_s: float, until: float) -> None:
    await asyncio.sleep(offset_s)
    while time.perf_counter() < until:
        await load.run(kind, lambda: load.n8(stall=kind == "stalled_n8"))


def rss_of(pids: dict[str, int]) -> dict[str, float | None]:
    return {name: rss_mib(pid) for name, pid in pids.items()}


async def sample(pids: dict[str, int], start: float, out: list[dict[str, Any]]) -> None:
    while True:
        out.append({"t_s": round(time.perf_counter() - start, 1), **rss_of(pids)})
        await asyncio.sleep(SAMPLE_EVERY_S)


KINDS = ("stream", "disconnect", "slow_n8", "stalled_n8")


def lanes_of(clients: int, only: str = "") -> dict[str, int]:
    """1/8 of the lanes each slow, stalled and leaving, the rest streaming; or `only`'s counts
    (`stream=14,disconnect=2`: the kinds it does not name get none)."""
    if only:
        counts = {kind: 0 for kind in KINDS}
        for item in only.split(","):
            kind, _, count = item.partition("=")
            if kind not in counts or not count.isdigit():
                raise ValueError(f"--lanes takes KIND=COUNT,... with KIND one of {', '.join(KINDS)}: {item!r}")
            counts[kind] = int(count)
        if counts["stream"] + counts["disconnect"] == 0:
            raise ValueError("--lanes needs at least one stream or disconnect lane")
        return counts
    each = max(1, clients // 8)
    return {"stream": max(1, clients - 3 * each), "disconnect": each, "slow_n8": each, "stalled_n8": each}


async def measure(args: argparse.Namespace, port: int, key: str, pids: dict[str, int]) -> dict[str, Any]:
    http = SseClient("127.0.0.1", port)
    rss: dict[str, Any] = {"ready": rss_of(pids)}
    # Warm-up: every path once (a slow n=8 reader fills the buffers, meanwhile n=1 streams and leavers),
    # so that one-time allocations are not counted as growth.
    warm = Load(http, key)

    async def n1_warmup() -> None:
        for kind, one in (("stream", lambda: warm.stream(STREAM_TOKENS, None)), ("left", lambda: warm.stream(64, 4))):
            for _ in range(20):
                await warm.run(kind, one)

    await asyncio.gather(warm.run("slow_n8", lambda: warm.n8(stall=False, give_up_s=WARMUP_SLOW_S)), n1_warmup())
    await asyncio.sleep(5)
    rss["start"] = rss_of(pids)

    lanes = lanes_of(args.clients, args.lanes)
    load = Load(http, key)
    start = time.perf_counter()
    until = start + args.minutes * 60
    timeline: list[dict[str, Any]] = []
    sampler = asyncio.create_task(sample(pids, start, timeline))
    open_lanes = lanes["stream"] + lanes["disconnect"]
    interval = open_lanes / args.rate
    tasks = []
    for i, kind in enumerate(["stream"] * lanes["stream"] + ["disconnect"] * lanes["disconnect"]):
        tasks.append(lane_open(load, kind, interval, i * interval / open_lanes, until))
    for i, kind in enumerate(["slow_n8"] * lanes["slow_n8"] + ["stalled_n8"] * lanes["stalled_n8"]):
        tasks.append(lane_back_to_back(load, kind, i * 5.0, until))
    await asyncio.gather(*tasks)
    load_s = time.perf_counter() - start
    rss["end_of_load"] = rss_of(pids)
    await http.close()  # the clients leave
    await asyncio.sleep(args.settle_s)
    rss["after_settle"] = rss_of(pids)
    sampler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampler
    rss["peak"] = {name: max((s[name] or 0.0) for s in timeline) for name in pids}
    return {
        "lanes": lanes,
        "load_s": round(load_s, 1),
        "warmup": summarize(warm.results, 1),
        "results": summarize(load.results, load_s),
        "rss_mib": rss,
        "rss_timeline_mib": timeline,
    }


def summarize(results: list[Outcome], wall_s: float) -> dict[str, Any]:
    by_kind: dict[str, Any] = {}
    for kind in sorted({r.kind for r in results}):
        mine = [r for r in results if r.kind == kind]
        ttft = [r.ttft_s for r in mine if r.ttft_s is not None]
        by_kind[kind] = {
            "requests": len(mine),
            "outcomes": dict(Counter(r.outcome for r in mine).most_common()),
            "ttft_ms": distribution_ms(ttft),
            "tokens": sum(r.tokens for r in mine),
        }
    errors = Counter(r.outcome.removeprefix("error:") for r in results if r.outcome.startswith("error:"))
    ttft_all = [r.ttft_s for r in results if r.ttft_s is not None and r.kind in ("stream", "disconnect")]
    return {
        "requests": len(results),
        "requests_per_s": rnd(len(results) / wall_s if wall_s else None),
        "tokens_per_s": rnd(sum(r.tokens for r in results) / wall_s if wall_s else None, 1),
        "ttft_ms_n1": distribution_ms(ttft_all),
        "errors": {"count": sum(errors.values()), "by_kind": dict(errors.most_common())},
        "by_kind": by_kind,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16, help="client lanes (1/8 each slow, stalled, leaving)")
    parser.add_argument("--minutes", type=float, default=4.0, help="duration of the load")
    parser.add_argument("--rate", type=float, default=6.0, help="requests/s of the n=1 lanes (stream, disconnect)")
    parser.add_argument(
        "--settle-s",
        type=float,
        default=45.0,
        help="wait after the clients left, before the RSS (longer than the gateway's memory_trim_s, 30 s)",
    )
    parser.add_argument(
        "--lanes", default="", help="the lanes by kind instead of --clients' mix, e.g. stream=14,disconnect=2"
    )
    parser.add_argument("--name", default=NAME, help="results file bench/results/NAME.json")
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the gateway process (repeatable), e.g. LD_PRELOAD=libjemalloc.so.2",
    )
    args = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.gateway_env if "=" in item)
    if len(extra_env) != len(args.gateway_env):
        parser.error("--gateway-env takes NAME=VALUE")
    if args.clients < 4 or args.rate <= 0 or not 0 < args.minutes <= 120:
        parser.error("--clients >= 4, --rate > 0, 0 < --minutes <= 120")
    try:
        lanes_of(args.clients, args.lanes)
    except ValueError as exc:
        parser.error(str(exc))
    exit_on_sigterm()
    run_started = time.monotonic()
    meta = metadata(("fastapi", "uvicorn", "uvloop", "redis"))
    key = new_key()
    ports: dict[str, int] = {}

    def gateway_env() -> tuple[dict[str, str], str]:
        ports["gateway"] = free_port()
        env = {
            "BAILU_GATEWAY_HOST": "127.0.0.1",
            "BAILU_GATEWAY_PORT": str(ports["gateway"]),
            "BAILU_GATEWAY_WORKERS": ",".join(worker.address for worker in workers),
            "BAILU_GATEWAY_API_KEY_HASHES": hash_key(key),
            "BAILU_GATEWAY_REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0",
            "BAILU_GATEWAY_LOG_LEVEL": "WARNING",
            **extra_env,
        }
        return env, f"http://127.0.0.1:{ports['gateway']}/readyz"

    with tempfile.TemporaryDirectory() as tmp, ServiceGroup() as group:
        redis, ports["redis"] = start_redis(group, Path(tmp), f"{NAME}-redis")
        workers = [start_sim_worker(group, f"{NAME}-{w}", MODEL, SIM) for w in ("worker-1", "worker-2")]
        gateway = group.start(f"{NAME}-gateway", "bailu.gateway", gateway_env, ready_timeout=60)
        pids = {
            "gateway": gateway.pid,
            "worker-1": workers[0].service.pid,
            "worker-2": workers[1].service.pid,
            "redis": redis.pid,
        }
        print(f"gateway on :{ports['gateway']}, {args.clients} clients for {args.minutes} min", flush=True)
        measured = asyncio.run(measure(args, ports["gateway"], key, pids))
        gateway_metrics = scrape_metrics(f"http://127.0.0.1:{ports['gateway']}/metrics", ("bailu_gateway_",))
    services = {s.name: s.report() for s in (redis, *(w.service for w in workers), gateway)}
    services[gateway.name]["command"] = services[gateway.name]["command"].replace(hash_key(key), "sha256:<generated>")
    rss = measured["rss_mib"]
    growth = {
        name: {
            "warmup": rnd((rss["start"][name] or 0) - (rss["ready"][name] or 0), 1),
            "over_load": rnd((rss["end_of_load"][name] or 0) - (rss["start"][name] or 0), 1),
            "after_settle": rnd((rss["after_settle"][name] or 0) - (rss["start"][name] or 0), 1),
        }
        for name in pids
    }
    results: dict[str, Any] = {
        "benchmark": NAME,
        "metadata": meta,
        "config": {
            "clients": args.clients,
            "minutes": args.minutes,
            "rate_per_s": args.rate,
            "settle_s": args.settle_s,
            "gateway_env": extra_env,
            "lanes": measured["lanes"],
            "sim": SIM,
            "gateway_client_write_timeout_s": GatewaySettings.model_fields["client_write_timeout_s"].default,
            "stream_tokens": STREAM_TOKENS,
            "disconnect_after_events": DISCONNECT_AFTER,
            "n8_tokens": N8_TOKENS,
            "slow_read_bytes_per_s": SLOW_BYTES_PER_S,
            "slow_give_up_s": SLOW_GIVE_UP_S,
            "stall_s": STALL_S,
            "client_receive_buffer_bytes": RECEIVE_BUFFER,
        },
        **{k: v for k, v in measured.items() if k != "lanes"},
        "rss_growth_mib": growth,
        "gateway_metrics_at_end": {k: v for k, v in gateway_metrics.items() if not k.endswith("_sum")},
        "services": services,
        "runtime_s": round(time.monotonic() - run_started, 1),
        "definitions": {
            "ttft": "client-side, request sent -> first SSE event with content",
            "rss_mib.ready": "when the gateway answered /readyz, before any request",
            "rss_mib.start": f"after a warm-up (40 n=1 requests alongside one slow n=8 reader for {WARMUP_SLOW_S:g} s) "
            "and 5 s, before the load",
            "rss_mib.after_settle": f"after the clients closed their connections and {args.settle_s:g} s more",
            "outcomes": "ok; left: the client left as planned (disconnect lanes, slow readers after "
            f"{SLOW_GIVE_UP_S:g} s); cut_off: the gateway ended a stalled response (its write timeout); error:*",
        },
    }
    path = write_results(args.name, results)
    print_summary(results)
    print(f"\nwrote {path} in {results['runtime_s']}s")


def print_summary(results: dict[str, Any]) -> None:
    r = results["results"]
    print(
        f"\n{r['requests']} requests, {r['requests_per_s']}/s, {r['tokens_per_s']} tokens/s received; "
        f"TTFT (n=1) p50 {r['ttft_ms_n1']['p50']} ms, p99 {r['ttft_ms_n1']['p99']} ms; errors {r['errors']}"
    )
    rows = [
        [k, v["requests"], ", ".join(f"{o}={c}" for o, c in v["outcomes"].items()), v["ttft_ms"]["p50"]]
        for k, v in r["by_kind"].items()
    ]
    print(table(["kind", "requests", "outcomes", "ttft p50 ms"], rows))
    rss, growth = results["rss_mib"], results["rss_growth_mib"]
    rows = [
        [
            n,
            rss["ready"][n],
            rss["start"][n],
            rss["peak"][n],
            rss["end_of_load"][n],
            rss["after_settle"][n],
            growth[n]["over_load"],
            growth[n]["after_settle"],
        ]
        for n in growth
    ]
    print(table(["process", "RSS ready", "start", "peak", "end of load", "settled", "growth", "growth settled"], rows))


if __name__ == "__main__":
    main()
