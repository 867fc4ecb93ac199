"""The engine-server supervisor with a real child process (a small HTTP server standing in for the engine)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from bailu.worker.engines.server.supervisor import EngineStartError, EngineState, EngineSupervisor
from tests.conftest import eventually, free_port

CHILD = Path(__file__).resolve().parents[1] / "fixtures" / "engines" / "child_server.py"

Factory = Callable[..., Awaitable[EngineSupervisor]]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
async def supervise() -> AsyncIterator[Factory]:
    started: list[EngineSupervisor] = []

    def make(*child_args: str, start: bool = True, **options: float) -> EngineSupervisor:
        port = free_port()
        values: dict[str, float] = {"start_timeout_s": 20.0, "restart_backoff_s": 0.05, "stop_grace_s": 5.0}
        values.update(options)
        supervisor = EngineSupervisor(
            "child",
            lambda: [sys.executable, str(CHILD), "--port", str(port), *child_args],
            f"http://127.0.0.1:{port}/health",
            **values,  # type: ignore[arg-type]
        )
        started.append(supervisor)
        return supervisor

    async def factory(*child_args: str, start: bool = True, **options: float) -> EngineSupervisor:
        supervisor = make(*child_args, **options)
        if start:
            await supervisor.start()
        return supervisor

    yield factory
    for supervisor in started:
        await supervisor.stop()


async def test_start_waits_for_health(supervise: Factory) -> None:
    supervisor = await supervise("--startup-delay", "1", "--message", "loading weights")
    assert supervisor.state is EngineState.READY
    assert supervisor.ready
    assert supervisor.pid is not None
    assert alive(supervisor.pid)
    # Its output is kept for error messages (and logged).
    assert "loading weights" in supervisor.tail


async def test_child_that_exits_while_starting_is_a_clear_error(supervise: Factory) -> None:
    supervisor = await supervise("--exit-code", "3", "--message", "CUDA out of memory", start=False)
    with pytest.raises(EngineStartError) as info:
        await supervisor.start()
    assert "exited with code 3" in str(info.value)
    assert "CUDA out of memory" in str(info.value)
    assert supervisor.state is EngineState.FAILED


async def test_child_that_never_gets_healthy_times_out_and_is_killed(supervise: Factory) -> None:
    supervisor = await supervise("--never-healthy", start=False, start_timeout_s=1.5)
    with pytest.raises(EngineStartError, match="did not answer"):
        await supervisor.start()
    pid = supervisor.pid
    assert pid is not None
    await eventually(lambda: not alive(pid), timeout=20)


async def test_missing_executable_names_the_setting(supervise: Factory) -> None:
    supervisor = EngineSupervisor("vllm", lambda: ["/nonexistent/vllm", "serve"], "http://127.0.0.1:1/health")
    with pytest.raises(EngineStartError, match="BAILU_WORKER_ENGINE_EXECUTABLE"):
        await supervisor.start()
    await supervisor.stop()


async def test_crashed_child_is_restarted(supervise: Factory) -> None:
    supervisor = await supervise(restart_limit=2)
    first = supervisor.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await eventually(lambda: supervisor.ready and supervisor.pid != first, timeout=20)
    assert supervisor.restarts == 1
    assert supervisor.pid is not None
    assert alive(supervisor.pid)
    assert await supervisor.wait_ready(1.0)


async def test_child_that_keeps_crashing_ends_failed_and_not_ready(supervise: Factory) -> None:
    supervisor = await supervise(restart_limit=1)
    for _ in range(2):
        pid = supervisor.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await eventually(lambda p=pid: supervisor.pid != p or supervisor.state is EngineState.FAILED, timeout=20)  # type: ignore[misc]
        await eventually(lambda: supervisor.ready or supervisor.state is EngineState.FAILED, timeout=20)
    assert supervisor.state is EngineState.FAILED
    assert not supervisor.ready
    assert supervisor.restarts == 1
    assert not await supervisor.wait_ready(1.0)


async def test_stop_kills_the_whole_process_group_even_when_sigterm_is_ignored(
    supervise: Factory, tmp_path: Path
) -> None:
    pidfile = tmp_path / "grandchild.pid"
    supervisor = await supervise("--ignore-sigterm", "--grandchild-pidfile", str(pidfile), stop_grace_s=0.5)
    child = supervisor.pid
    assert child is not None
    grandchild = int(pidfile.read_text())
    assert alive(grandchild)
    await supervisor.stop()
    assert supervisor.state is EngineState.STOPPED
    assert not alive(child)
    await eventually(lambda: not alive(grandchild), timeout=20)


async def test_controlled_restart_runs_the_new_command(supervise: Factory) -> None:
    messages = iter(["first configuration", "second configuration"])
    port = free_port()
    supervisor = EngineSupervisor(
        "child",
        lambda: [sys.executable, str(CHILD), "--port", str(port), "--message", next(messages)],
        f"http://127.0.0.1:{port}/health",
        start_timeout_s=20,
        stop_grace_s=5,
    )
    try:
        await supervisor.start()
        first = supervisor.pid
        supervisor.hold()
        assert not supervisor.ready
        await supervisor.restart()
        assert supervisor.ready
        assert supervisor.pid != first
        assert first is not None
        assert not alive(first)
        assert "second configuration" in supervisor.tail
        assert supervisor.restarts == 0  # a controlled restart is not a crash
    finally:
        await supervisor.stop()
