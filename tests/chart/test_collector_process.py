"""The collector, started as the chart starts it: the rendered command and environment, against a real
redis-server, with the probes the chart points the kubelet at."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.chart.helm import RELEASE, Manifest, containers, env_values, one, pod_spec
from tests.conftest import RedisServer, free_port


def probe_url(port: int, probe: dict[str, Any], ports: dict[str, int]) -> str:
    """The URL the kubelet would request for an httpGet probe (named port resolved), on `port` here."""
    http = probe["httpGet"]
    assert ports[http["port"]] == ports["http-metrics"], "the probes use the collector's HTTP port"
    return f"http://127.0.0.1:{port}{http['path']}"


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_the_collector_runs_with_the_rendered_environment(
    default_manifests: list[Manifest], redis_server: RedisServer, tmp_path: Path
) -> None:
    deployment = one(default_manifests, "Deployment", f"{RELEASE}-collector")
    container = containers(deployment)[0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    rendered = env_values(container)
    assert rendered["BAILU_COLLECTOR_HTTP_PORT"] == str(ports["http-metrics"])
    # What only a cluster provides: the pod name (fieldRef), Redis (with its password), the volume and a
    # free port in place of 9092 on this shared machine.
    port = free_port()
    dataset_dir = tmp_path / "datasets"
    dataset_dir.mkdir()
    env = {
        **rendered,
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / ".cache"),
        "BAILU_COLLECTOR_CONSUMER_NAME": f"{RELEASE}-collector-7d9f-abcde",
        "BAILU_COLLECTOR_REDIS_URL": redis_server.url,
        "BAILU_COLLECTOR_DATASET_DIR": str(dataset_dir),
        "BAILU_COLLECTOR_HTTP_PORT": str(port),
    }
    assert container["args"][0] == "python"
    log = tmp_path / "collector.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, *container["args"][1:]], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        ready = probe_url(port, container["readinessProbe"], ports)
        deadline = time.monotonic() + 20
        while get(ready) != 200:
            assert process.poll() is None, f"the collector exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"the collector never got ready:\n{log.read_text()}"
            time.sleep(0.1)
        assert get(probe_url(port, container["livenessProbe"], ports)) == 200
        assert get(f"http://127.0.0.1:{port}/metrics") == 200
        # It stops on SIGTERM well within the pod's grace period.
        grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(grace) == 0, log.read_text()
        assert time.monotonic() - started < grace / 2
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # It wrote its layout into the datasets directory (the volume's mount in the pod).
    assert (dataset_dir / "shards").is_dir()
    assert (dataset_dir / "versions").is_dir()
    # Runner "none": the policy was built from the rendered trigger settings without error.
    assert "Traceback" not in log.read_text()
