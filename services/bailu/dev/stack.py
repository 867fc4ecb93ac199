"""Start, watch and stop the local stack's processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bailu.keys.model import hash_key, new_key


@dataclass
class Process:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(  # nosec B603 # argv list, no shell: the dev stack's own commands
            self.argv, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float) -> None:
        if not self.alive():
            return
        assert self.popen is not None
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def port_free(port: int) -> bool:
    """True if a server could listen on the port (connections in TIME_WAIT do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def dev_api_key(state_dir: Path) -> tuple[str, Path]:
    """The dev API key (created once, kept in the state directory) and the keys file holding its hash."""
    state_dir.mkdir(parents=True, exist_ok=True)
    key_file, hashes_file = state_dir / "api-key", state_dir / "api-keys"
    if not key_file.is_file():
        key_file.write_text(new_key() + "\n")
        key_file.chmod(0o600)
    key = key_file.read_text().strip()
    hashes_file.write_text(f"{hash_key(key)} dev\n")
    return key, hashes_file


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # nosec B310 # our own http://127.0.0.1 URLs
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Stack:
    """The local processes, started in order and stopped in reverse."""

    processes: list[Process] = field(default_factory=list)

    def start(self, process: Process) -> None:
        print(f"  starting {process.name:<8} log: {process.log_path}", flush=True)
        process.start()
        self.processes.append(process)

    def failed(self) -> Process | None:
        return next((p for p in self.processes if not p.alive()), None)

    def wait_until(self, url: str, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (dead := self.failed()) is not None:
                raise RuntimeError(f"{dead.name} exited while waiting for {what}:\n{dead.log_tail()}")
            if http_ok(url):
                return
            time.sleep(0.5)
        raise TimeoutError(f"{what} not ready after {timeout:.0f}s")

    def stop(self, timeout: float = 40.0) -> None:
        for process in reversed(self.processes):
            process.stop(timeout)


def redis_process(port: int, state_dir: Path) -> Process | None:
    binary = shutil.which("redis-server")
    if binary is None:
        print("  redis-server not found: install it (make setup does) — starting without Redis", file=sys.stderr)
        return None
    data = state_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--appendonly", "yes"]
    return Process("redis", argv, {}, state_dir / "logs" / "redis.log")
