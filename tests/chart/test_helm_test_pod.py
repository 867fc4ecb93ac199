"""The `helm test` pod's check, run for real: the rendered script against a gateway and a sim worker
started here, with the API key and keys file from the rendered Secret."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from bailu.gateway.app import create_app
from bailu.gateway.settings import GatewaySettings
from bailu.worker.server import WorkerServer
from tests.chart.helm import RELEASE, Manifest, containers, env_values, one
from tests.conftest import free_port

MODEL = "smollm2-135m-instruct"


@pytest.fixture
async def gateway_with_rendered_keys(
    default_manifests: list[Manifest], start_worker: Callable[..., Awaitable[WorkerServer]], tmp_path: Path
) -> AsyncIterator[tuple[str, str]]:
    """A gateway whose keys file is the rendered Secret's, over a sim worker serving the chart's model name."""
    data = one(default_manifests, "Secret", f"{RELEASE}-api-keys")["data"]
    keys_file = tmp_path / "api-keys"
    keys_file.write_bytes(base64.b64decode(data["api-keys"]))
    key = base64.b64decode(data["api-key"]).decode()
    worker = await start_worker(model_name=MODEL)
    port = free_port()
    settings = GatewaySettings(
        host="127.0.0.1",
        port=port,
        workers=[f"127.0.0.1:{worker.port}"],
        load_poll_interval_s=0.1,
        api_keys_file=keys_file,
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        assert not task.done(), "the gateway stopped while starting"
        assert time.monotonic() < deadline, "the gateway did not start"
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}", key
    server.should_exit = True
    await task


async def run_test_pod(manifests: list[Manifest], **env: str) -> tuple[int, str]:
    """Run the rendered test container's command with its environment, overridden by `env`."""
    pod = one(manifests, "Pod", f"{RELEASE}-test-completion")
    container: dict[str, Any] = containers(pod)[0]
    environ = {"PATH": os.environ["PATH"], **env_values(container), **env}
    assert container["command"][0] == "python"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *container["command"][1:],
        *container["args"],
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode()


async def test_the_test_pod_passes_against_a_ready_gateway(
    default_manifests: list[Manifest], gateway_with_rendered_keys: tuple[str, str]
) -> None:
    url, key = gateway_with_rendered_keys
    code, out = await run_test_pod(default_manifests, GATEWAY_URL=url, API_KEY=key, READY_TIMEOUT_S="20")
    assert code == 0, out
    assert "readyz: 200" in out, out
    assert "completion:" in out, out
    assert out.rstrip().endswith("PASS"), out


async def test_the_test_pod_fails_with_a_wrong_key(
    default_manifests: list[Manifest], gateway_with_rendered_keys: tuple[str, str]
) -> None:
    url, _ = gateway_with_rendered_keys
    code, out = await run_test_pod(default_manifests, GATEWAY_URL=url, API_KEY="bailu-wrong", READY_TIMEOUT_S="20")
    assert code != 0, out
    assert "HTTP 401" in out, out
    code, out = await run_test_pod(default_manifests, GATEWAY_URL=url, API_KEY="", READY_TIMEOUT_S="20")
    assert code != 0, out
    assert "no API key" in out, out


async def test_the_test_pod_fails_when_the_gateway_never_gets_ready(default_manifests: list[Manifest]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out = await run_test_pod(default_manifests, GATEWAY_URL=url, API_KEY="k", READY_TIMEOUT_S="1")
    assert code != 0, out
    assert "is not ready" in out, out
