"""Sampling profiles of service processes with py-spy, and what their collapsed stacks say.

`SpyRecorder` attaches `py-spy record --format raw` to a running process for as long as a block of load
runs (SIGINT stops it, and py-spy then writes the file): collapsed stacks, one line per distinct stack with
its sample count, which flamegraph.pl and speedscope.app open as they are.
`summarize_collapsed` reads such a file into the top entries by self time (samples where a function is the
innermost frame) and by total time (samples where it is on the stack), functions named `name (file)`
without line numbers, and self time per file.

py-spy needs ptrace rights over the target (root, or kernel.yama.ptrace_scope 0, or CAP_SYS_PTRACE in a
container). Python frames are sampled with `--nonblocking` (the target is not paused; a sample may be
slightly torn); time in C code shows as self time of the Python frame that called it (`Handle._run` for an
asyncio callback, `Runner.run` under uvloop). `native=True` adds the C frames (libc, grpc's core, uvloop)
but pauses the target at each sample. py-spy's own CPU shows up as another process.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Native frames of a thread that waits (py-spy --native samples waiting threads too): left out of the rankings.
IDLE_NATIVE_LEAVES = frozenset(
    {"epoll_wait", "epoll_pwait", "poll", "ppoll", "select", "pselect", "wait4", "waitpid", "nanosleep",
     "clock_nanosleep", "pthread_cond_wait", "pthread_cond_timedwait", "sem_wait", "sem_timedwait", "accept4"}
)  # fmt: skip
_LINE = re.compile(r":\d+\)$")
_FILE = re.compile(r"\(([^()]*?)(?::\d+)?\)$")


def find_py_spy() -> str | None:
    """py-spy beside this interpreter (the project's venv, dev extra) or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.is_file():
        return str(beside)
    return shutil.which("py-spy")


@dataclass
class SpyRecorder:
    """py-spy recording one process into `output` (collapsed stacks) between `start()` and `stop()`."""

    py_spy: str
    pid: int
    output: Path
    rate_hz: int = 100
    native: bool = False
    _proc: subprocess.Popen[bytes] | None = None
    _log: Path | None = None

    @property
    def argv(self) -> list[str]:
        """The py-spy command: Python frames without pausing the target, or (`native`) with C frames too, which
        py-spy can only unwind by pausing the target at each sample."""
        argv = [self.py_spy, "record", "--pid", str(self.pid), "--format", "raw", "--output", str(self.output)]
        return [*argv, "--rate", str(self.rate_hz), "--native" if self.native else "--nonblocking"]

    def start(self) -> None:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.output.with_suffix(".log")
        with self._log.open("wb") as log:
            self._proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """Stop recording; the file's summary (or why there is none)."""
        if self._proc is None:
            return {"error": "not started"}
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        log = self._log.read_text(errors="replace").strip() if self._log else ""
        if not self.output.is_file():
            return {"error": f"py-spy wrote no profile (exit {self._proc.returncode}): {log[-500:]}"}
        return {"py_spy_exit_code": self._proc.returncode, "py_spy_output": log[-300:]}


def _function(frame: str) -> str:
    """`name (file:line)` -> `name (file)`; other frames (threads, processes) as they are."""
    return _LINE.sub(")", frame.strip())


def _file(frame: str) -> str:
    """`name (file:line)` -> `file`."""
    found = _FILE.search(frame.strip())
    return found.group(1) if found else frame.strip()


def summarize_collapsed(path: Path, top: int = 15, entry_points: Collection[str] = ()) -> dict[str, Any]:
    """The top `top` functions by self and by total samples, and the top files by self samples, of a
    collapsed-stack file (`frame;frame;...;innermost count` per line); samples of a thread waiting in a
    native call (`IDLE_NATIVE_LEAVES`) are counted apart and left out; percentages are of the rest.
    With `entry_points` (function names without their file, e.g. `Redis.execute_command`), also those
    functions by total samples (`entry_points`): where a request's time goes, library frames included."""
    self_samples: dict[str, int] = {}
    total_samples: dict[str, int] = {}
    file_samples: dict[str, int] = {}
    samples = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        if frames[-1].split(" (", 1)[0].strip() in IDLE_NATIVE_LEAVES:
            idle += count
            continue
        samples += count
        leaf = _function(frames[-1])
        self_samples[leaf] = self_samples.get(leaf, 0) + count
        leaf_file = _file(frames[-1])
        file_samples[leaf_file] = file_samples.get(leaf_file, 0) + count
        for name in {_function(f) for f in frames}:
            total_samples[name] = total_samples.get(name, 0) + count

    def ranked(table: dict[str, int]) -> list[dict[str, Any]]:
        best = sorted(table.items(), key=lambda kv: -kv[1])[:top]
        return [
            {"entry": k, "samples": v, "percent": round(100 * v / samples, 1) if samples else None} for k, v in best
        ]

    summary = {
        "file": str(path),
        "samples": samples,
        "idle_native_samples_left_out": idle,
        "top_self": ranked(self_samples),
        "top_total": ranked(total_samples),
        "top_files_self": ranked(file_samples),
    }
    if entry_points:
        summary["entry_points"] = ranked({k: v for k, v in total_samples.items() if k.split(" (")[0] in entry_points})
    return summary


def format_top(summary: dict[str, Any], key: str = "top_self", width: int = 100) -> str:
    """A printable list of one of `summarize_collapsed`'s rankings."""
    rows = [f"  {e['percent']:5.1f}%  {e['samples']:6d}  {e['entry'][:width]}" for e in summary.get(key, [])]
    return "\n".join(rows) if rows else "  (no samples)"
