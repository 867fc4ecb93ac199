"""Start and stop `python -m bailu.dev` (what `make dev` runs) for end-to-end tests."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from bailu.dev.__main__ import READY_MARKER
from tests.conftest import REPO, SMOLLM2_DIR, free_port


@dataclass
class DevStack:
    url: str
    key: str
    process: subprocess.Popen[str]
    ports: list[int]
    output: list[str]
    state: Path

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((self.state / "logs").glob("*.log")))

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


def start_dev_stack(state: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 600) -> DevStack:
    """Start the stack on free ports with its state under `state`; fail the test with the logs if it does not
    get ready."""
    ports = [free_port() for _ in range(5)]
    argv = [
        sys.executable, "-m", "bailu.dev",
        "--state-dir", str(state), "--model-dir", str(SMOLLM2_DIR),
        "--gateway-port", str(ports[0]), "--worker-port", str(ports[1]),
        "--worker-http-port", str(ports[2]), "--redis-port", str(ports[3]),
        "--collector-http-port", str(ports[4]), *args,
    ]  # fmt: skip
    process = subprocess.Popen(
        argv,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    lines: queue.Queue[str] = queue.Queue()
    output: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    url = None
    while url is None:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            line = ""
        output.append(line)
        if line.startswith(READY_MARKER):
            url = line.split()[-1]
        elif process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in (state / "logs").glob("*.log"))
            pytest.fail(f"`python -m bailu.dev` did not get ready:\n{''.join(output)}\n{logs}")
    key = (state / "api-key").read_text().strip()
    return DevStack(url, key, process, ports, output, state)
