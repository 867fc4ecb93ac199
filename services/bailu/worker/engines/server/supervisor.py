"""Run an engine server as a supervised child process: start, wait for health, restart, stop.

The child runs in its own session (process group), so that stopping it reaches every process it
started (vLLM and SGLang run their engine cores and tensor-parallel workers as children): SIGTERM to
the group, SIGKILL after a grace period. A child that dies on its own is restarted with exponential
backoff up to a limit; past it the supervisor reports FAILED and stays down. Its output is logged line
by line (the worker's JSON log stays one JSON object a line) and the last lines are kept for errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import httpx

log = logging.getLogger(__name__)

_READ_LIMIT = 1 << 20  # engines print long progress lines


class EngineState(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"


class EngineStartError(RuntimeError):
    """The engine server did not become healthy; the message ends with its last lines of output."""


class EngineSupervisor:
    """One engine server process. `command` is called at every (re)start, so that a restart picks up
    the current configuration (e.g. the adapter list of engines that load adapters only at start)."""

    def __init__(
        self,
        name: str,
        command: Callable[[], Sequence[str]],
        health_url: str,
        *,
        env: Mapping[str, str] | None = None,
        start_timeout_s: float = 600.0,
        restart_limit: int = 3,
        restart_backoff_s: float = 2.0,
        stop_grace_s: float = 30.0,
        tail_lines: int = 40,
    ) -> None:
        self.name = name
        self.command = command
        self.health_url = health_url
        self.env = dict(os.environ if env is None else env)
        self.start_timeout_s = start_timeout_s
        self.restart_limit = restart_limit
        self.restart_backoff_s = restart_backoff_s
        self.stop_grace_s = stop_grace_s
        self.state = EngineState.STOPPED
        self.restarts = 0  # restarts after the child died on its own
        self.tail: deque[str] = deque(maxlen=tail_lines)
        self._ready = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._lifecycle = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(2.0))
        self._log = logging.getLogger(f"{__name__}.{name}")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def ready(self) -> bool:
        return self.state is EngineState.READY and self._ready.is_set()

    async def wait_ready(self, timeout: float | None) -> bool:
        """Wait until the engine is ready; False once it failed for good or stopped, or when `timeout` passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.ready:
            if self.state in (EngineState.FAILED, EngineState.STOPPED):
                return False
            left = 0.25 if deadline is None else min(0.25, deadline - time.monotonic())
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), left)
        return True

    async def confirm_dead(self, wait_s: float = 1.0) -> bool:
        """After a refused connection: whether the engine process has exited (waiting up to `wait_s` for it to
        be reaped). If so it is marked not ready at once, before the watcher restarts it."""
        proc = self._proc
        if proc is None:
            return not self.ready
        if proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), wait_s)
        if proc.returncode is None:
            return False
        if proc is self._proc and self.state is EngineState.READY:
            self.state = EngineState.RESTARTING
            self._ready.clear()
        return True

    def hold(self) -> None:
        """Mark the engine not ready ahead of a controlled `restart()`, so that new requests wait for it."""
        if self.state is EngineState.READY:
            self.state = EngineState.RESTARTING
            self._ready.clear()

    async def start(self) -> None:
        """Start the engine and wait for its health endpoint; raises `EngineStartError` if it does not come up."""
        async with self._lifecycle:
            self._stopping = False
            self.state = EngineState.STARTING
            try:
                await self._spawn_and_wait()
            except BaseException:
                self.state = EngineState.FAILED
                raise

    async def restart(self) -> None:
        """A controlled restart (new configuration): stop the child, start it again, wait for health.
        Not counted against the restart limit; raises `EngineStartError` if the new child does not come up."""
        async with self._lifecycle:
            self.state = EngineState.RESTARTING
            self._ready.clear()
            old, self._proc = self._proc, None
            if old is not None:
                await self._terminate(old)
            try:
                await self._spawn_and_wait()
            except BaseException:
                self.state = EngineState.FAILED
                raise

    async def stop(self) -> None:
        """Stop the child's process group: SIGTERM, then SIGKILL after the grace period."""
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
        async with self._lifecycle:
            proc, self._proc = self._proc, None
            self._ready.clear()
            self.state = EngineState.STOPPED
            if proc is not None:
                await self._terminate(proc)
        for task in list(self._tasks):
            task.cancel()
        await self._client.aclose()

    async def _spawn_and_wait(self) -> None:
        argv = list(self.command())
        self._log.info("starting engine", extra={"engine": self.name, "argv": argv})
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                limit=_READ_LIMIT,
            )
        except (FileNotFoundError, PermissionError) as exc:
            raise EngineStartError(
                f"cannot run the {self.name} engine ({argv[0]}): {exc.strerror or exc}; install it or set "
                "BAILU_WORKER_ENGINE_EXECUTABLE"
            ) from exc
        self._proc = proc
        self._spawn_task(self._pump(proc))
        deadline = time.monotonic() + self.start_timeout_s
        while not await self._healthy():
            if proc.returncode is not None:
                await self._kill_group(proc)
                raise EngineStartError(
                    f"the {self.name} engine exited with code {proc.returncode} while starting; "
                    f"its last output:\n{self._tail()}"
                )
            if time.monotonic() > deadline:
                await self._terminate(proc)
                raise EngineStartError(
                    f"the {self.name} engine did not answer {self.health_url} within {self.start_timeout_s:g}s; "
                    f"its last output:\n{self._tail()}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), 0.25)
        self.state = EngineState.READY
        self._ready.set()
        self._watcher = self._spawn_task(self._watch(proc))
        self._log.info("engine ready", extra={"engine": self.name, "pid": proc.pid})

    async def _healthy(self) -> bool:
        try:
            response = await self._client.get(self.health_url)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        """Restart the child when it dies on its own, with backoff, up to the limit."""
        code = await proc.wait()
        while proc is self._proc and not self._stopping:
            async with self._lifecycle:
                if proc is not self._proc or self._stopping:
                    return
                self._ready.clear()
                await self._kill_group(proc)  # what it started may still hold the GPU
                self._log.error(
                    "engine died",
                    extra={"engine": self.name, "exit_code": code, "restarts": self.restarts, "tail": self._tail()},
                )
                if self.restarts >= self.restart_limit:
                    self.state = EngineState.FAILED
                    self._proc = None
                    self._log.error("engine failed for good", extra={"engine": self.name, "restarts": self.restarts})
                    return
                self.state = EngineState.RESTARTING
                delay = self.restart_backoff_s * (2**self.restarts)
                self.restarts += 1
                await asyncio.sleep(delay)
                try:
                    await self._spawn_and_wait()
                    return  # the new child has its own watcher
                except EngineStartError as exc:
                    self._log.error("engine restart failed", extra={"engine": self.name, "error": str(exc)})
                    proc = self._proc or proc
                    code = proc.returncode if proc.returncode is not None else -1

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            self._signal_group(proc, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.stop_grace_s)
            except TimeoutError:
                self._log.warning("engine ignored SIGTERM; killing it", extra={"engine": self.name})
        await self._kill_group(proc)

    async def _kill_group(self, proc: asyncio.subprocess.Process) -> None:
        """SIGKILL whatever is left of the child's process group (the child itself included)."""
        self._signal_group(proc, signal.SIGKILL)
        if proc.returncode is None:
            await proc.wait()

    @staticmethod
    def _signal_group(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
        # The child leads its own session, so its process group id is its pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    async def _pump(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                raw = await proc.stdout.readline()
            except ValueError:  # a line longer than the limit: take what is there
                raw = await proc.stdout.read(_READ_LIMIT)
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip()
            if line:
                self.tail.append(line)
                self._log.info(line, extra={"engine": self.name, "pid": proc.pid})

    def _tail(self) -> str:
        return "\n".join(self.tail) or "(no output)"

    def _spawn_task(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
