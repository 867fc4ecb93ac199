"""What both benchmarks share: service subprocesses on free ports, readiness, closed-loop load,
gRPC streams, percentiles, CPU accounting, run metadata and the JSON results."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import grpc
from redis import Redis
from redis.exceptions import RedisError

from bailu.common.types import ChatMessage, GenerateRequest, SamplingParams
from bailu.common.wire import request_to_pb
from bailu.v1 import worker_pb2 as pb
from bailu.v1 import worker_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
_CLK_TCK = os.sysconf("SC_CLK_TCK")

# ---------------------------------------------------------------------------------------------
# Ports and service subprocesses


_handed_out: set[int] = set()


def free_port() -> int:
    """A port the kernel reports free now (never one this process handed out before)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status of a GET, or None if nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


def http_text(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode("utf-8", errors="replace"))


@dataclass
class Service:
    """One service in its own process (`python -m <module>`), logging to a file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    ready_url: str
    popen: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ready_after_s: float | None = None
    exit_code: int | None = None
    stop_s: float | None = None
    killed: bool = False

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def command(self) -> str:
        shown = " ".join(f"{k}={v}" for k, v in sorted(self.env.items()) if k.startswith("BAILU_"))
        return f"{shown} {' '.join(self.argv)}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                self.argv,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the benchmark reaches it through stop() only
            )
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_ready(self, timeout: float) -> None:
        """Poll `ready_url` until it answers 200; raise if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited before it was ready:\n{self.log_tail()}")
            if http_status(self.ready_url, timeout=1.0) == 200:
                self.ready_after_s = round(time.monotonic() - self.started_at, 2)
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
        if self.popen is None or self.exit_code is not None:
            return
        started = time.monotonic()
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.popen.kill()
                self.popen.wait()
        self.exit_code = self.popen.returncode
        self.stop_s = round(time.monotonic() - started, 2)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_problems(self, limit: int = 10) -> dict[str, Any]:
        """Counts of warning/error records in the service's JSON-lines log (and non-JSON lines), with samples."""
        counts: dict[str, int] = {}
        samples: list[str] = []
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return {"counts": {}, "samples": []}
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                level = str(json.loads(line).get("level", "?"))
            except (json.JSONDecodeError, AttributeError):
                level = "non-json"
            if level in ("info", "debug"):
                continue
            counts[level] = counts.get(level, 0) + 1
            if len(samples) < limit:
                samples.append(line[:500])
        return {"counts": counts, "samples": samples}

    def report(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "log": str(self.log_path.relative_to(REPO)),
            "ready_after_s": self.ready_after_s,
            "exit_code": self.exit_code,
            "stop_after_sigterm_s": self.stop_s,
            "killed_after_sigterm_timeout": self.killed,
            "log_warnings_and_errors": self.log_problems(),
        }


ServiceT = TypeVar("ServiceT", bound=Service)


class ServiceGroup:
    """Services started in order and stopped in reverse, also on errors (use it as a context manager)."""

    def __init__(self) -> None:
        self.services: list[Service] = []

    def __enter__(self) -> ServiceGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(
        self,
        name: str,
        module: str,
        make_env: Callable[[], tuple[dict[str, str], str]],
        *,
        ready_timeout: float,
        attempts: int = 3,
    ) -> Service:
        """Start `python -m module` with the environment and readiness URL `make_env()` returns
        (called again on each attempt so that fresh free ports are chosen if one was taken meanwhile)."""

        def make() -> Service:
            env, ready_url = make_env()
            return Service(name, [sys.executable, "-m", module], env, RESULTS_DIR / f"{name}.log", ready_url)

        return self.launch(make, ready_timeout=ready_timeout, attempts=attempts)

    def launch(self, make: Callable[[], ServiceT], *, ready_timeout: float, attempts: int = 3) -> ServiceT:
        """Start the service `make()` builds and wait until it is ready; if it exits during its start,
        build and start another one (`make` chooses fresh free ports), at most `attempts` times."""
        for attempt in range(1, attempts + 1):
            service = make()
            service.start()
            try:
                service.wait_ready(ready_timeout)
            except RuntimeError:
                service.stop()
                if attempt == attempts:
                    raise
                print(f"  {service.name} exited during start (attempt {attempt}); retrying on other ports", flush=True)
                continue
            except BaseException:
                service.stop()
                raise
            self.services.append(service)
            return service
        raise AssertionError("unreachable")

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so that `finally` blocks (stopping the services) run."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


# ---------------------------------------------------------------------------------------------
# redis-server as a service

# As the Helm chart runs it: an append-only file synced every second, no eviction.
REDIS_CONFIG = ("--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction")


class RedisServer(Service):
    """redis-server in its own process: ready when it answers PING (`ready_url` is its redis:// URL)."""

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = Redis.from_url(self.ready_url, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise RuntimeError(f"{self.name} exited before it was ready:\n{self.log_tail()}")
                with contextlib.suppress(RedisError):
                    if client.ping():
                        self.ready_after_s = round(time.monotonic() - self.started_at, 2)
                        return
                time.sleep(0.05)
        finally:
            client.close()
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def log_problems(self, limit: int = 10) -> dict[str, Any]:
        """Warnings in redis-server's log: lines at warning level ('#' after the time) that say WARNING or
        report a failure (redis-server also logs its start and shutdown at that level)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return {"counts": {}, "samples": []}
        mark = re.compile(r"\d\d:\d\d:\d\d\.\d+ # .*(warning|error|fail|unable|can't)", re.IGNORECASE)
        warnings = [line for line in lines if mark.search(line)]
        return {"counts": {"warning": len(warnings)} if warnings else {}, "samples": warnings[:limit]}


def start_redis(
    group: ServiceGroup, data_dir: Path, name: str, config: Sequence[str] = REDIS_CONFIG, attempts: int = 3
) -> tuple[RedisServer, int]:
    """Start redis-server (`config`: its extra arguments) on a free port (another one if that port was taken
    meanwhile), logging to bench/results/<name>.log; stopped with the group."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found: install it (make system-deps)")
    port = 0

    def make() -> RedisServer:
        nonlocal port
        port = free_port()
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir), *config]
        return RedisServer(name, argv, {}, RESULTS_DIR / f"{name}.log", f"redis://127.0.0.1:{port}/0")

    return group.launch(make, ready_timeout=20, attempts=attempts), port


@dataclass
class WorkerProcess:
    """A worker process started by `start_sim_worker` or `start_transformers_worker`."""

    service: Service
    port: int  # gRPC
    http_port: int  # /readyz, /metrics

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/metrics"


def _start_worker(
    group: ServiceGroup, name: str, env: dict[str, str], settings: dict[str, str], *, ready_timeout: float
) -> WorkerProcess:
    """Start `python -m bailu.worker` with `env` on free ports (others if they were taken meanwhile); `settings`
    are more BAILU_WORKER_* variables, without the prefix, and win over `env`."""
    ports = {"grpc": 0, "http": 0}

    def make() -> tuple[dict[str, str], str]:
        ports["grpc"], ports["http"] = free_port(), free_port()
        full = {
            "BAILU_WORKER_HOST": "127.0.0.1",
            "BAILU_WORKER_PORT": str(ports["grpc"]),
            "BAILU_WORKER_HTTP_PORT": str(ports["http"]),
            **env,
            **{f"BAILU_WORKER_{key}": value for key, value in settings.items()},
        }
        return full, f"http://127.0.0.1:{ports['http']}/readyz"

    service = group.start(name, "bailu.worker", make, ready_timeout=ready_timeout)
    return WorkerProcess(service, ports["grpc"], ports["http"])


def start_sim_worker(
    group: ServiceGroup, name: str, model: str, settings: dict[str, str], *, ready_timeout: float = 60
) -> WorkerProcess:
    """Start `python -m bailu.worker` with the sim engine on free ports (others if they were taken meanwhile),
    logging to bench/results/<name>.log; `settings` are more BAILU_WORKER_* variables, without the prefix
    (`{"SIM_ITL_MS": "20"}`). Stopped with the group."""
    env = {"BAILU_WORKER_ENGINE": "sim", "BAILU_WORKER_MODEL_NAME": model, "BAILU_WORKER_LOG_LEVEL": "WARNING"}
    return _start_worker(group, name, env, settings, ready_timeout=ready_timeout)


def start_transformers_worker(
    group: ServiceGroup,
    name: str,
    model: str,
    model_path: Path,
    settings: dict[str, str],
    *,
    ready_timeout: float = 300,
) -> WorkerProcess:
    """Start `python -m bailu.worker` with the transformers engine on the checkpoint at `model_path`, served as
    `model`, on free ports (others if they were taken meanwhile), logging at INFO to bench/results/<name>.log (its
    'worker ready' record gives the load and warm-up times); `settings` are more BAILU_WORKER_* variables, without
    the prefix (`{"MAX_BATCH_SIZE": "8"}`). Stopped with the group."""
    env = {
        "BAILU_WORKER_ENGINE": "transformers",
        "BAILU_WORKER_MODEL_PATH": str(model_path),
        "BAILU_WORKER_MODEL_NAME": model,
        "BAILU_WORKER_LOG_LEVEL": "INFO",
    }
    return _start_worker(group, name, env, settings, ready_timeout=ready_timeout)


def start_engine_server_worker(
    group: ServiceGroup,
    name: str,
    engine: str,
    model: str,
    model_path: Path,
    executable: str,
    settings: dict[str, str],
    *,
    ready_timeout: float = 120,
) -> WorkerProcess:
    """Start `python -m bailu.worker` on an engine server (`engine`: vllm, sglang, lmdeploy or swift) whose
    command is `executable` (BAILU_WORKER_ENGINE_EXECUTABLE: a stand-in such as bench/standin_engine.py),
    serving the checkpoint directory `model_path` as `model`, without LoRA support, on free ports (others if
    they were taken meanwhile), logging at WARNING to bench/results/<name>.log; `settings` are more
    BAILU_WORKER_* variables, without the prefix. Ready once the engine server answers its health endpoint.
    Stopped with the group (the worker stops its engine server)."""
    env = {
        "BAILU_WORKER_ENGINE": engine,
        "BAILU_WORKER_MODEL_PATH": str(model_path),
        "BAILU_WORKER_MODEL_NAME": model,
        "BAILU_WORKER_ENGINE_EXECUTABLE": executable,
        "BAILU_WORKER_MAX_LORAS": "0",
        "BAILU_WORKER_LOG_LEVEL": "WARNING",
    }
    return _start_worker(group, name, env, settings, ready_timeout=ready_timeout)


def child_processes(pid: int) -> list[tuple[int, list[str]]]:
    """(pid, command line) of the processes whose parent is `pid`, now."""
    found: list[tuple[int, list[str]]] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid != pid:
                continue
            argv = (stat.parent / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        found.append((int(stat.parent.name), [a.decode(errors="replace") for a in argv]))
    return found


# ---------------------------------------------------------------------------------------------
# Statistics


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def rnd(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def distribution_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p99/min/max/mean in milliseconds."""
    return {
        "p50": ms(percentile(seconds, 50)),
        "p90": ms(percentile(seconds, 90)),
        "p99": ms(percentile(seconds, 99)),
        "min": ms(min(seconds)) if seconds else None,
        "max": ms(max(seconds)) if seconds else None,
        "mean": ms(sum(seconds) / len(seconds)) if seconds else None,
    }


# ---------------------------------------------------------------------------------------------
# CPU and memory accounting (Linux /proc)


def _proc_cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime + stime


def _machine_cpu_s() -> dict[str, float]:
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return {
        "busy": (user + nice + system + irq + softirq) / _CLK_TCK,
        "idle": (idle + iowait) / _CLK_TCK,
        "steal": steal / _CLK_TCK,
    }


def _all_processes_cpu_s() -> dict[int, tuple[str, float]]:
    """(command name, CPU seconds) of every process now, by pid."""
    found: dict[int, tuple[str, float]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm = text[text.find("(") + 1 : text.rfind(")")]
        fields = text.rsplit(")", 1)[1].split()
        found[int(stat.parent.name)] = (comm, (int(fields[11]) + int(fields[12])) / _CLK_TCK)
    return found


def rss_mib(pid: int) -> float | None:
    """The resident set size of a process in MiB (None if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


@dataclass
class CpuMeter:
    """CPU seconds used by named processes and by the whole machine between `start()` and `stop()`,
    and by any other process that used at least `report_other_s` of it (as `other:comm[pid]_cpu_s`)."""

    pids: dict[str, int]
    report_other_s: float = 0.5
    _procs: dict[str, float | None] = field(default_factory=dict)
    _all: dict[int, tuple[str, float]] = field(default_factory=dict)
    _machine: dict[str, float] = field(default_factory=dict)
    _wall: float = 0.0

    def start(self) -> None:
        self._procs = {name: _proc_cpu_s(pid) for name, pid in self.pids.items()}
        self._all = _all_processes_cpu_s()
        self._machine = _machine_cpu_s()
        self._wall = time.monotonic()

    def stop(self) -> dict[str, float | None]:
        wall = time.monotonic() - self._wall
        machine = _machine_cpu_s()
        out: dict[str, float | None] = {"wall_s": round(wall, 3)}
        ours = 0.0
        for name, pid in self.pids.items():
            before, after = self._procs.get(name), _proc_cpu_s(pid)
            used = None if before is None or after is None else after - before
            out[f"{name}_cpu_s"] = rnd(used, 3)
            ours += used or 0.0
        busy = machine["busy"] - self._machine["busy"]
        out["machine_busy_cpu_s"] = rnd(busy, 3)
        out["other_processes_cpu_s"] = rnd(max(0.0, busy - ours), 3)  # includes kernel work (softirq, ...)
        out["steal_cpu_s"] = rnd(machine["steal"] - self._machine["steal"], 3)
        out["machine_cpus_available_s"] = rnd(wall * (os.cpu_count() or 1), 3)
        our_pids = set(self.pids.values())
        for pid, (comm, after) in _all_processes_cpu_s().items():
            used = after - self._all.get(pid, ("", 0.0))[1]
            if used >= self.report_other_s and pid not in our_pids:
                out[f"other:{comm.split('-')[0]}[{pid}]_cpu_s"] = rnd(used, 3)
        return out

    def add(self, totals: dict[str, float | None], part: dict[str, float | None]) -> None:
        """Accumulate `part` (a `stop()` result) into `totals`."""
        for key, value in part.items():
            if value is not None:
                totals[key] = rnd((totals.get(key) or 0.0) + value, 3)


def cpu_per_token_us(cpu: dict[str, float | None], tokens: int) -> dict[str, float | None]:
    """CPU microseconds per token of each named process in a `CpuMeter` result."""
    out: dict[str, float | None] = {}
    for key, value in cpu.items():
        if key.endswith("_cpu_s") and not key.startswith(("machine", "other", "steal")):
            out[key.removesuffix("_cpu_s")] = rnd(value / tokens * 1e6, 1) if value is not None and tokens else None
    return out


# ---------------------------------------------------------------------------------------------
# Streams and closed-loop load


@dataclass
class StreamResult:
    """One streamed completion as the client saw it (times from just before the request was sent)."""

    ok: bool
    ttft_s: float | None
    total_s: float
    tokens: int
    error: str | None = None
    max_gap_s: float = 0.0  # longest wait between two consecutive token-carrying messages
    started_at: float = 0.0  # time.perf_counter() at the start
    first_tokens: int = 0  # tokens carried by the first token-carrying message

    @property
    def decode_tokens_per_s(self) -> float | None:
        """(tokens - 1) / (total - ttft): the pace after the first token (None if there is none)."""
        if self.ttft_s is None or self.tokens <= 1 or self.total_s <= self.ttft_s:
            return None
        return (self.tokens - 1) / (self.total_s - self.ttft_s)


@dataclass
class StreamTimer:
    """Times one stream: call `token()` on each message that carries tokens, then `result()`."""

    start: float = field(default_factory=time.perf_counter)
    ttft_s: float | None = None
    tokens: int = 0
    max_gap_s: float = 0.0
    first_tokens: int = 0
    _last: float = 0.0

    def token(self, count: int = 1) -> None:
        now = time.perf_counter()
        if self.ttft_s is None:
            self.ttft_s = now - self.start
            self.first_tokens = count
        else:
            self.max_gap_s = max(self.max_gap_s, now - self._last)
        self._last = now
        self.tokens += count

    def result(self, error: str | None = None) -> StreamResult:
        if error is None and self.ttft_s is None:
            error = "the stream ended without a token"
        total = time.perf_counter() - self.start
        return StreamResult(
            error is None, self.ttft_s, total, self.tokens, error, self.max_gap_s, self.start, self.first_tokens
        )


@dataclass
class BlockResult:
    concurrency: int
    wall_s: float
    results: list[StreamResult]


async def run_closed_loop(
    one: Callable[[int], Awaitable[StreamResult]],
    *,
    concurrency: int,
    count: int,
    max_seconds: float,
    stagger_s: float = 0.0,
) -> BlockResult:
    """Keep `concurrency` streams in flight until `count` streams ran or `max_seconds` passed (no new
    stream starts after that). Lane k starts after k * stagger_s / concurrency, so that the lanes do
    not move in lockstep."""
    results: list[StreamResult] = []
    issued = 0
    start = time.perf_counter()
    deadline = start + max_seconds

    async def lane(k: int) -> None:
        nonlocal issued
        if stagger_s:
            await asyncio.sleep(k * stagger_s / concurrency)
        while issued < count and time.perf_counter() < deadline:
            index = issued
            issued += 1
            results.append(await one(index))

    await asyncio.gather(*(lane(k) for k in range(concurrency)))
    return BlockResult(concurrency, time.perf_counter() - start, results)


def make_request(
    model: str, prompt: str, *, max_tokens: int, temperature: float | None = None, timeout_s: float = 120.0
) -> pb.GenerateRequest:
    """A chat GenerateRequest message, built the way the gateway builds it (domain type, then wire)."""
    request = GenerateRequest(
        request_id=uuid.uuid4().hex,
        model=model,
        messages=(ChatMessage("user", prompt),),
        sampling=SamplingParams(max_tokens=max_tokens, temperature=temperature),
        deadline=time.time() + timeout_s,
    )
    request.validate()
    return request_to_pb(request)


async def grpc_stream(
    stub: pb_grpc.InferenceWorkerStub, request: pb.GenerateRequest, timeout_s: float = 120.0
) -> StreamResult:
    """Call Generate and time it. First token: the first message with token_count > 0 or non-empty text;
    tokens: the sum of token_count."""
    timer = StreamTimer()
    try:
        call = stub.Generate(request, timeout=timeout_s, metadata=(("x-request-id", request.request_id),))
        async for message in call:
            if message.token_count or message.text_delta:
                timer.token(message.token_count)
    except grpc.aio.AioRpcError as exc:
        return timer.result(f"grpc {exc.code().name}: {exc.details()}")
    return timer.result()


def error_summary(results: Sequence[StreamResult], limit: int = 5) -> dict[str, Any]:
    kinds: dict[str, int] = {}
    for r in results:
        if not r.ok:
            key = (r.error or "?")[:200]
            kinds[key] = kinds.get(key, 0) + 1
    return {"count": sum(kinds.values()), "kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1])[:limit])}


# ---------------------------------------------------------------------------------------------
# Metrics scraping, metadata, results


def scrape_metrics(url: str, prefixes: Sequence[str]) -> dict[str, float]:
    """Samples of a Prometheus text endpoint whose names start with one of `prefixes` (buckets left out)."""
    samples: dict[str, float] = {}
    try:
        text = http_text(url)
    except OSError as exc:
        return {f"scrape failed: {exc}": 0.0}
    for line in text.splitlines():
        if line.startswith("#") or "_bucket{" in line or "_created" in line:
            continue
        name, _, value = line.rpartition(" ")
        if name.startswith(tuple(prefixes)):
            with contextlib.suppress(ValueError):
                samples[name] = float(value)
    return samples


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _nproc() -> int | str:
    try:
        return int(subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError, ValueError):
        return len(os.sched_getaffinity(0))


def _memory_gib() -> float | None:
    with contextlib.suppress(OSError, StopIteration, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _versions(packages: Sequence[str]) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def metadata(packages: Sequence[str] = ()) -> dict[str, Any]:
    """Where and how this run happened."""
    status = _git("status", "--porcelain")
    return {
        "command": " ".join(sys.orig_argv),
        "cwd": os.getcwd(),
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "nproc": _nproc(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "packages": _versions(("bailu", "grpcio", "protobuf", *packages)),
    }


def write_results(name: str, data: dict[str, Any]) -> Path:
    """Write bench/results/<name>.json (with the load average at the end added to the metadata)."""
    data.setdefault("metadata", {})["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain fixed-width text table."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
