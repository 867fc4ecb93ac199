"""Memory probe: what holds the gateway's memory after slow and stalled n=8 readers.

The soak (`bench.soak`) sees the gateway's RSS grow by ~10 MiB under its slow_n8 and stalled_n8 lanes
and stay there. This probe runs the gateway app in this process (uvicorn.Server on the same event loop
as `python -m bailu.gateway`: uvloop and httptools), so that it can look inside it, with redis-server
and two sim workers as processes, and the clients in a child process (`--drive`) so that they do not
touch this process's memory. The clients are soak's own: slow n=8 readers (8 x 4,000 tokens read at
64 KiB/s through an 8 KiB receive buffer, leaving after 60 s) and stalled ones (not read for 75 s: the
gateway cuts them off after its client write timeout).

Phases: ready, after a warm-up (one slow reader for 30 s beside 40 n=1 streams), after each round of
the same load (the clients gone), after a settle period, and after `malloc_trim(0)`. At each phase:

- the process: RSS (anonymous and file-backed), threads, and the anonymous memory by kind of mapping
  (`[heap]`, glibc's per-thread arenas, thread stacks, the rest);
- glibc malloc (`mallinfo2`, every arena): bytes in use and bytes free but kept;
- pymalloc (`sys._debugmallocstats`): arenas and bytes in allocated blocks;
- Python: tracemalloc's traced total, gc-tracked objects by type, uncollectable garbage, asyncio tasks;
  tracemalloc snapshots are compared (by traceback) between the start of the load and each later phase.

Freed-but-kept memory (malloc's free bytes, empty pymalloc pools) is a high-water mark; bytes in use
that stay above the start after the clients left are held by someone: Python objects if tracemalloc's
total stays up, native code (gRPC core, uvloop) if only malloc's in-use bytes do.

    python -m bench.memory_probe                                        # ~6 min; bench/results/memory_probe.json
    python -m bench.memory_probe --tracemalloc --rounds 2 --settle-s 10  # ~7 min; memory_probe_traced.json

Without `--tracemalloc` the RSS is the gateway's own; with it, the allocation sites (tracemalloc's own
memory, snapshots included, then inflates RSS and malloc's figures: read only its Python figures).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import os
import re
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import uvicorn

from bailu.gateway.settings import GatewaySettings
from bailu.keys.model import hash_key, new_key
from bench import soak
from bench.common import ServiceGroup, free_port, metadata, rnd, start_redis, start_sim_worker, table, write_results
from bench.sse_client import SseClient

NAME = "memory_probe"
MIB = 1024 * 1024
ARENA_ALIGN = 64 * MIB  # glibc's HEAP_MAX_SIZE on 64-bit: thread arenas are mapped aligned to it
THREAD_STACK_KB = 8192  # the default pthread stack (ulimit -s)
TRACE_FRAMES = 12

# ---------------------------------------------------------------------------------------------
# The process's memory, by who holds it


def proc_status() -> dict[str, float]:
    """VmRSS, RssAnon, RssFile (MiB) and Threads of this process."""
    wanted = {"VmRSS": "rss_mib", "RssAnon": "rss_anon_mib", "RssFile": "rss_file_mib", "Threads": "threads"}
    out: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in wanted:
            number = int(value.split()[0])
            out[wanted[name]] = number if name == "Threads" else round(number / 1024, 1)
    return out


def anonymous_mappings() -> dict[str, float]:
    """Resident anonymous memory (MiB) by kind of mapping: the main malloc heap (`[heap]`), glibc's thread
    arenas (writable mappings that start on a 64 MiB boundary), thread stacks (8 MiB writable mappings
    behind a guard page) and everything else (pymalloc arenas, large malloc blocks, native libraries')."""
    kinds: Counter[str] = Counter()
    previous_guard = False
    start, perms, path, size_kb = 0, "", "", 0
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = re.match(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \d+\s*(.*)$", line)
        if head:
            previous_guard = perms == "---p" and not path
            start, perms, path = int(head.group(1), 16), head.group(3), head.group(4).strip()
            size_kb = (int(head.group(2), 16) - start) // 1024
            continue
        if not line.startswith("Rss:"):
            continue
        rss_kb = int(line.split()[1])
        if path == "[heap]":
            kinds["heap"] += rss_kb
        elif path == "[stack]":
            kinds["main_stack"] += rss_kb
        elif path or not perms.startswith("rw"):
            continue
        elif start % ARENA_ALIGN == 0:
            kinds["thread_arenas"] += rss_kb
        elif previous_guard and size_kb in (THREAD_STACK_KB, THREAD_STACK_KB - 4):
            kinds["thread_stacks"] += rss_kb
        else:
            kinds["other_anonymous"] += rss_kb
    return {kind: round(kb / 1024, 1) for kind, kb in sorted(kinds.items())}


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallinfo2") else None


LIBC = _libc()
if LIBC is not None:
    LIBC.mallinfo2.restype = MallInfo2
    LIBC.fopen.restype = ctypes.c_void_p
    LIBC.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    LIBC.fclose.argtypes = [ctypes.c_void_p]
    LIBC.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]


def malloc_stats() -> dict[str, float]:
    """glibc malloc over all arenas (MiB): in use (small + mmapped blocks) and free but kept by the arenas."""
    if LIBC is None:
        return {}
    info = LIBC.mallinfo2()
    return {
        "in_use_mib": round((info.uordblks + info.hblkhd) / MIB, 2),
        "free_kept_mib": round(info.fordblks / MIB, 2),
        "arenas_mib": round(info.arena / MIB, 2),
        "mmapped_mib": round(info.hblkhd / MIB, 2),
    }


def malloc_arenas() -> int | None:
    """How many malloc arenas glibc has (the main one plus one per thread that needed its own)."""
    if LIBC is None:
        return None
    with tempfile.NamedTemporaryFile("r", suffix=".xml") as out:
        fp = LIBC.fopen(out.name.encode(), b"w")
        LIBC.malloc_info(0, fp)
        LIBC.fclose(fp)
        return len(re.findall(r"<heap nr=", Path(out.name).read_text()))


def pymalloc_stats() -> dict[str, float]:
    """pymalloc's arenas and the bytes in its allocated blocks (`sys._debugmallocstats`, which writes to fd 2;
    nothing while tracemalloc hooks the allocator)."""
    if tracemalloc.is_tracing():
        return {}
    with tempfile.TemporaryFile("w+") as out:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read()

    def number(label: str) -> int:
        found = re.search(rf"# {label}\s*=\s*([\d,]+)", text)
        return int(found.group(1).replace(",", "")) if found else 0

    arena_bytes = re.search(r"arenas \* ([\d,]+) bytes/arena", text)
    arena_size = int(arena_bytes.group(1).replace(",", "")) if arena_bytes else 1 << 20
    return {
        "arenas": number("arenas allocated current"),
        "arenas_highwater": number("arenas highwater mark"),
        "arenas_mib": round(number("arenas allocated current") * arena_size / MIB, 2),
        "allocated_blocks_mib": round(number("bytes in allocated blocks") / MIB, 2),
        "available_blocks_mib": round(number("bytes in available blocks") / MIB, 2),
    }


def objects_by_type() -> Counter[str]:
    return Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())


# ---------------------------------------------------------------------------------------------
# Phases


class Recorder:
    """The state at each phase; tracemalloc snapshots and object counts kept on disk, out of the measured heap."""

    def __init__(self, folder: Path, tracing: bool) -> None:
        self.folder = folder
        self.tracing = tracing
        self.phases: dict[str, dict[str, Any]] = {}
        self.samples: dict[str, list[dict[str, float]]] = {}

    def record(self, phase: str) -> dict[str, Any]:
        gc.collect()
        # The process first, before this function's own allocations (object counts, snapshots) touch it.
        state: dict[str, Any] = {"process": {**proc_status(), "anonymous_by_kind_mib": anonymous_mappings()}}
        state["malloc"] = {**malloc_stats(), "arena_count": malloc_arenas()}
        state["pymalloc"] = pymalloc_stats()
        state["python"] = {
            "gc_garbage": len(gc.garbage),
            "asyncio_tasks": len(asyncio.all_tasks()),
            "gc_objects": len(gc.get_objects()),
        }
        if self.tracing:
            current, peak = tracemalloc.get_traced_memory()
            state["python"]["traced_mib"] = round(current / MIB, 2)
            state["python"]["traced_peak_mib"] = round(peak / MIB, 2)
            state["python"]["tracemalloc_own_mib"] = round(tracemalloc.get_tracemalloc_memory() / MIB, 2)
            tracemalloc.take_snapshot().dump(str(self.folder / f"{phase}.snapshot"))
            tracemalloc.reset_peak()
        (self.folder / f"{phase}.objects.json").write_text(json.dumps(objects_by_type()))
        self.phases[phase] = state
        print(f"  {phase}: {brief(state)}", flush=True)
        return state

    async def watch_peak(self, phase: str, every_s: float = 3.0) -> None:
        """Until cancelled: every `every_s`, the process's RSS and (tracing) the traced total; each new highest
        traced total's snapshot is kept as `phase` (what the Python heap holds at the peak of a round)."""
        samples: list[dict[str, float]] = []
        self.samples[phase] = samples
        highest, started = 0, time.perf_counter()
        while True:
            await asyncio.sleep(every_s)
            sample = {"t_s": round(time.perf_counter() - started, 1), "rss_mib": proc_status()["rss_mib"]}
            if self.tracing:
                current = tracemalloc.get_traced_memory()[0]
                sample["traced_mib"] = round(current / MIB, 2)
                if current > highest:
                    highest = current
                    tracemalloc.take_snapshot().dump(str(self.folder / f"{phase}.snapshot"))
            samples.append(sample)

    def object_growth(self, base: str, phase: str, top: int = 15) -> dict[str, int]:
        """gc-tracked objects by type: `phase`'s count less `base`'s, the largest changes."""
        delta = Counter(json.loads((self.folder / f"{phase}.objects.json").read_text()))
        delta.subtract(json.loads((self.folder / f"{base}.objects.json").read_text()))
        return {name: count for name, count in sorted(delta.items(), key=lambda kv: -abs(kv[1]))[:top] if count}

    def traced_growth(self, base: str, phase: str, top: int = 25) -> list[dict[str, Any]]:
        """tracemalloc: the allocation sites (by traceback) whose live memory grew most from `base` to `phase`."""
        if not self.tracing or not (self.folder / f"{phase}.snapshot").exists():
            return []
        before = tracemalloc.Snapshot.load(str(self.folder / f"{base}.snapshot"))
        after = tracemalloc.Snapshot.load(str(self.folder / f"{phase}.snapshot"))
        # Not this probe's own records, nor tracemalloc's, nor imports.
        ignore = [
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap*"),
            tracemalloc.Filter(False, __file__),
        ]
        stats = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "traceback")
        out = []
        for stat in stats[:top]:
            frames = [f"{frame.filename.rsplit('site-packages/', 1)[-1]}:{frame.lineno}" for frame in stat.traceback]
            out.append(
                {
                    "size_diff_kib": round(stat.size_diff / 1024, 1),
                    "size_kib": round(stat.size / 1024, 1),
                    "count_diff": stat.count_diff,
                    "traceback_innermost_last": frames[-6:],
                }
            )
        return out


def brief(state: dict[str, Any]) -> str:
    p, m, py = state["process"], state["malloc"], state["python"]
    traced = f", traced {py['traced_mib']} MiB" if "traced_mib" in py else ""
    return (
        f"RSS {p['rss_mib']} MiB (anon {p['rss_anon_mib']}), threads {p['threads']}, malloc in use "
        f"{m.get('in_use_mib')} / free kept {m.get('free_kept_mib')} MiB ({m.get('arena_count')} arenas), "
        f"pymalloc {state['pymalloc'].get('arenas_mib')} MiB{traced}, tasks {py['asyncio_tasks']}, "
        f"objects {py['gc_objects']}"
    )


# ---------------------------------------------------------------------------------------------
# The clients (a child process: `--drive`)


async def drive(port: int, key: str, mode: str, slow: int, stalled: int, seconds: float) -> dict[str, Any]:
    """Run soak's clients against the gateway: `warmup` (one slow reader for 30 s beside 40 n=1 streams) or
    `round` (`slow` slow and `stalled` stalled n=8 lanes, back to back, each starting requests for `seconds`)."""
    http = SseClient("127.0.0.1", port)
    load = soak.Load(http, key)
    if mode == "warmup":

        async def n1() -> None:
            for kind, one in (("stream", lambda: load.stream(64, None)), ("left", lambda: load.stream(64, 4))):
                for _ in range(20):
                    await load.run(kind, one)

        slow_one = load.run("slow_n8", lambda: load.n8(stall=False, give_up_s=soak.WARMUP_SLOW_S))
        await asyncio.gather(slow_one, n1())
    else:
        until = time.perf_counter() + seconds

        async def lane(kind: str, offset_s: float) -> None:
            await asyncio.sleep(offset_s)  # staggered as soak's lanes, each running at least one request
            while True:
                await load.run(kind, lambda: load.n8(stall=kind == "stalled_n8"))
                if time.perf_counter() >= until:
                    return

        lanes = ["slow_n8"] * slow + ["stalled_n8"] * stalled
        await asyncio.gather(*(lane(kind, i * 5.0) for i, kind in enumerate(lanes)))
    await http.close()
    outcomes: dict[str, Counter[str]] = {}
    for result in load.results:
        outcomes.setdefault(result.kind, Counter())[result.outcome] += 1
    return {kind: dict(counts) for kind, counts in outcomes.items()}


class Clients:
    """The clients' process (`--drive`), started once before the first measurement, so that this process
    forks nothing later on; each `run` sends it a command (warmup, round) and waits for the outcomes."""

    def __init__(self, child: asyncio.subprocess.Process) -> None:
        self.child = child

    @classmethod
    async def start(cls, args: argparse.Namespace, port: int, key: str) -> Clients:
        argv = [sys.executable, "-m", "bench.memory_probe", "--drive", "--port", str(port), "--key", key]
        argv += ["--slow", str(args.slow), "--stalled", str(args.stalled), "--round-s", str(args.round_s)]
        argv += ["--stall-s", str(args.stall_s)]
        pipe = asyncio.subprocess.PIPE
        return cls(await asyncio.create_subprocess_exec(*argv, stdin=pipe, stdout=pipe))

    async def run(self, mode: str) -> dict[str, Any]:
        assert self.child.stdin is not None
        assert self.child.stdout is not None
        self.child.stdin.write(f"{mode}\n".encode())
        await self.child.stdin.drain()
        line = await self.child.stdout.readline()
        if not line:
            raise RuntimeError(f"the clients' process exited ({await self.child.wait()})")
        result: dict[str, Any] = json.loads(line)
        return result

    async def close(self) -> None:
        if self.child.stdin is not None:
            self.child.stdin.close()
        try:
            await asyncio.wait_for(self.child.wait(), 10)
        except TimeoutError:
            self.child.kill()
            await self.child.wait()


async def serve_commands(args: argparse.Namespace) -> None:
    """`--drive`: run each command read from stdin (warmup, round) and write its outcomes as one JSON line."""
    loop = asyncio.get_running_loop()
    while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
        outcomes = await drive(args.port, args.key, line, args.slow, args.stalled, args.round_s)
        print(json.dumps(outcomes), flush=True)


# ---------------------------------------------------------------------------------------------
# The gateway in this process


async def probe(args: argparse.Namespace, workers: list[str], redis_port: int, folder: Path) -> dict[str, Any]:
    from bailu.gateway.app import create_app  # here: the clients' process does not import the app

    key, port = new_key(), free_port()
    settings = GatewaySettings(
        host="127.0.0.1",
        port=port,
        workers=workers,
        api_key_hashes=[hash_key(key)],
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        log_level="WARNING",
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()
            raise RuntimeError("the gateway stopped during its start")
        await asyncio.sleep(0.05)
    for _ in range(300):  # /readyz: a worker ready (30 s at most)
        if await http_ready(port):
            break
        await asyncio.sleep(0.1)
    else:
        raise RuntimeError("the gateway did not become ready within 30 s")
    recorder = Recorder(folder, tracing=args.tracemalloc)
    outcomes: dict[str, Any] = {}
    clients = await Clients.start(args, port, key)
    try:
        await asyncio.sleep(2)  # the clients' process has started
        recorder.record("ready")
        outcomes["warmup"] = await clients.run("warmup")
        await asyncio.sleep(5)
        recorder.record("start")
        for n in range(1, args.rounds + 1):
            watcher = asyncio.create_task(recorder.watch_peak(f"round_{n}_peak"))
            try:
                outcomes[f"round_{n}"] = await clients.run("round")
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            await asyncio.sleep(5)
            recorder.record(f"after_round_{n}")
        await asyncio.sleep(args.settle_s)
        recorder.record("after_settle")
        if LIBC is not None:
            LIBC.malloc_trim(0)
        recorder.record("after_malloc_trim")
    finally:
        await clients.close()
        server.should_exit = True
        await serving
    phases = list(recorder.phases)
    return {
        "phases": recorder.phases,
        "client_outcomes": outcomes,
        "objects_growth_from_start": {p: recorder.object_growth("start", p) for p in phases[2:]},
        "traced_growth_from_start": {
            phase: recorder.traced_growth("start", phase)
            for phase in ("round_1_peak", f"after_round_{args.rounds}", "after_settle")
        },
        "samples_during_rounds": recorder.samples,
        "traced_growth_warmup": recorder.traced_growth("ready", "start", top=10),
    }


async def http_ready(port: int) -> bool:
    with contextlib.suppress(OSError):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status = await reader.readline()
        writer.close()
        return b" 200 " in status
    return False


def growth(phases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """From the start of the load to each later phase: RSS, malloc in use / free kept, pymalloc, traced."""

    def values(state: dict[str, Any]) -> dict[str, float | None]:
        return {
            "rss_mib": state["process"]["rss_mib"],
            "malloc_in_use_mib": state["malloc"].get("in_use_mib"),
            "malloc_free_kept_mib": state["malloc"].get("free_kept_mib"),
            "pymalloc_arenas_mib": state["pymalloc"].get("arenas_mib"),
            "traced_mib": state["python"].get("traced_mib"),
            "threads": state["process"]["threads"],
        }

    def less(value: float | None, base: float | None) -> float | None:
        return None if value is None or base is None else rnd(value - base, 2)

    base = values(phases["start"])
    return {
        phase: {k: less(v, base[k]) for k, v in values(state).items()}
        for phase, state in phases.items()
        if phase != "ready"
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the same slow/stalled n=8 load")
    parser.add_argument("--slow", type=int, default=2, help="slow n=8 lanes per round (soak: 2)")
    parser.add_argument("--stalled", type=int, default=2, help="stalled n=8 lanes per round (soak: 2)")
    parser.add_argument("--round-s", type=float, default=1.0, help="lanes start requests for this long (1: one each)")
    parser.add_argument("--stall-s", type=float, default=soak.STALL_S, help="how long a stalled client does not read")
    parser.add_argument("--settle-s", type=float, default=30.0, help="wait after the last round")
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="trace Python allocations (top sites by traceback; tracemalloc's own memory then inflates RSS)",
    )
    parser.add_argument("--name", help="results file bench/results/NAME.json (memory_probe[_traced])")
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        soak.STALL_S = args.stall_s
        asyncio.run(serve_commands(args))
        return
    if args.rounds < 1 or args.stall_s <= GatewaySettings.model_fields["client_write_timeout_s"].default:
        parser.error("--rounds >= 1, and --stall-s above the gateway's client write timeout (30 s)")
    started = time.monotonic()
    meta = metadata(("fastapi", "uvicorn", "uvloop", "httptools", "redis"))
    from bailu.common.logging import setup_logging
    from bailu.gateway.app import create_app  # noqa: F401  # imported before tracing starts, as in a gateway

    if args.tracemalloc:
        tracemalloc.start(TRACE_FRAMES)
    setup_logging("gateway", "WARNING")
    with tempfile.TemporaryDirectory() as tmp, ServiceGroup() as group:
        _, redis_port = start_redis(group, Path(tmp), f"{NAME}-redis")
        workers = [start_sim_worker(group, f"{NAME}-worker-{i}", soak.MODEL, soak.SIM).address for i in (1, 2)]
        print(f"gateway in process {os.getpid()}, {args.rounds} rounds of {args.slow} slow + {args.stalled} stalled")
        loop_factory = uvicorn.Config(app="").get_loop_factory()  # what uvicorn.run uses: uvloop if installed
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            measured = runner.run(probe(args, workers, redis_port, Path(tmp)))
            loop_type = type(runner.get_loop()).__module__
    results = {
        "benchmark": NAME,
        "metadata": meta,
        "command": " ".join(["python", "-m", "bench.memory_probe", *sys.argv[1:]]),
        "config": {
            "rounds": args.rounds,
            "slow_lanes": args.slow,
            "stalled_lanes": args.stalled,
            "round_s": args.round_s,
            "stall_s": args.stall_s,
            "settle_s": args.settle_s,
            "tracemalloc_frames": TRACE_FRAMES if args.tracemalloc else 0,
            "event_loop": loop_type,
            "sim": soak.SIM,
            "n8_tokens": soak.N8_TOKENS,
        },
        "growth_from_start": growth(measured["phases"]),
        **measured,
        "runtime_s": round(time.monotonic() - started, 1),
    }
    path = write_results(args.name or (f"{NAME}_traced" if args.tracemalloc else NAME), results)
    rows = [[phase, *g.values()] for phase, g in results["growth_from_start"].items()]
    print(table(["phase (vs start)", "RSS", "malloc in use", "malloc free", "pymalloc", "traced", "threads"], rows))
    print(f"\nwrote {path} in {results['runtime_s']}s")


if __name__ == "__main__":
    main()
