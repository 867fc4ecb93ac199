"""py-spy profiles of running services for the benchmarks: raw collapsed stacks sampled without pausing the
process, summarised as the shares of the samples by function."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Library frames whose inclusive share says where a request's time goes (with --profile).
PROFILE_ENTRY_POINTS = (
    "RequestResponseCycle.run_asgi",  # uvicorn: the whole ASGI app, middleware included
    "get_request_handler.<locals>.app",  # FastAPI: body parsing, validation, the endpoint, serialisation
    "run_endpoint_function",  # FastAPI: the endpoint itself
    "Response.__call__",  # Starlette: sending the response
    "Redis.execute_command",  # redis-py: one command, round trip included
    "AsyncScript.__call__",  # redis-py: EVALSHA of a registered script
)


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
