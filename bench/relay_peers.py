"""The relay benchmark's outside tools, each in its own virtual environment under .cache/ (never the
project's): vLLM's router as a peer relay, and AIPerf as an established benchmark client.

- vllm-router (PyPI `vllm-router`, Rust, `make bench-relay-peer` installs it into .cache/vllm-router):
  started as `vllm-router --worker-urls <engine> --policy round_robin`, ready when its /health answers.
- AIPerf (PyPI `aiperf`, NVIDIA's successor to GenAI-Perf, `make bench-relay-peer` installs it into
  .cache/aiperf). Chosen over the other two candidates because it runs here without a hub: it takes a local
  tokenizer directory (`--tokenizer DIR`, here SmolLM2's, converted by `make model`), generates its synthetic
  prompts from a corpus it ships, installs without torch, and counts tokens from the server's usage
  (`--use-server-token-count`). GuideLLM 0.8.1 would pull torch and the CUDA wheels (several GB) for its
  processor; inference-perf 0.7.0 requires Python 3.12, which the project's 3.11 toolchain is not. With
  HF_HUB_OFFLINE=1 AIPerf 0.13.0 looks a local path up as a hub cache entry and fails (`Repo id must be in the
  form...`), so it runs online-mode with HF_ENDPOINT pointed at a closed port on this machine: a hub call
  would fail at once instead of reaching out, and none is made (its log says so).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, RESULTS_DIR, Service, ServiceGroup, free_port

ROUTER_DEFAULT = REPO / ".cache" / "vllm-router" / "bin" / "vllm-router"
AIPERF_DEFAULT = REPO / ".cache" / "aiperf" / "bin" / "aiperf"
AIPERF_ARTIFACTS = REPO / ".cache" / "relay-aiperf"  # its per-request exports; the summary goes in the results
TOKENIZER = REPO / ".cache" / "models" / "smollm2-135m-instruct"  # make model
NO_HUB = "http://127.0.0.1:9"  # the discard port: nothing listens, so any hub call fails at once
AIPERF_METRICS = (
    "time_to_first_token",
    "inter_token_latency",
    "request_latency",
    "output_token_throughput",
    "output_token_throughput_per_user",
    "request_throughput",
    "output_sequence_length",
    "usage_completion_tokens",
    "request_count",
    "benchmark_duration",
    "http_req_connection_reused",
)


def find_tool(choice: str | None, default: Path) -> str | None:
    """The tool to use: `choice` ('off' for none; a path, which must exist), else `default` if installed."""
    if choice == "off":
        return None
    if choice:
        if not Path(choice).is_file():
            raise SystemExit(f"{choice}: not found")
        return choice
    return str(default) if default.is_file() else None


def package_version(tool: str, package: str) -> str | None:
    """The version of `package` in the virtual environment the tool `tool` lives in."""
    python = Path(tool).parent / "python"
    if not python.is_file():
        return None
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    try:
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def start_router(group: ServiceGroup, router: str, engine_url: str, name: str) -> tuple[Service, str]:
    """vllm-router in front of the engine server at `engine_url` (round robin over one worker; its Prometheus
    exporter on a free port of this machine): the service and its base URL."""
    ports = {"http": 0}

    def make() -> Service:
        ports["http"], metrics = free_port(), free_port()
        argv = [router, "--host", "127.0.0.1", "--port", str(ports["http"]), "--worker-urls", engine_url]
        argv += ["--policy", "round_robin", "--log-level", "warning"]
        argv += ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics)]
        return Service(name, argv, {}, RESULTS_DIR / f"{name}.log", f"http://127.0.0.1:{ports['http']}/health")

    service = group.launch(make, ready_timeout=60)
    return service, f"http://127.0.0.1:{ports['http']}"


def run_aiperf(
    aiperf: str,
    *,
    url: str,
    model: str,
    api_key: str | None,
    concurrency: int,
    requests: int,
    output_tokens: int,
    out_dir: Path,
    timeout_s: float = 300.0,
) -> dict[str, Any]:
    """One `aiperf profile` run (chat, streamed, synthetic 16-token prompts, SmolLM2's tokenizer from
    `TOKENIZER`) against `url`: its command, exit code, wall time, and the summary of its JSON export (unit,
    avg, p50, p90, p99 per metric)."""
    if not (TOKENIZER / "tokenizer.json").is_file():
        return {"error": f"no local tokenizer at {TOKENIZER.relative_to(REPO)}: make model"}
    if out_dir.exists():
        shutil.rmtree(out_dir)
    argv = [
        aiperf, "profile",
        "--model", model,
        "--url", url,
        "--endpoint-type", "chat",
        "--streaming",
        "--tokenizer", str(TOKENIZER.resolve()),
        "--use-server-token-count",
        "--concurrency", str(concurrency),
        "--request-count", str(requests),
        "--warmup-request-count", str(concurrency),
        "--prompt-input-tokens-mean", "16", "--prompt-input-tokens-stddev", "0",
        "--prompt-output-tokens-mean", str(output_tokens), "--prompt-output-tokens-stddev", "0",
        "--random-seed", "14",
        "--ui-type", "none",
        "--no-server-metrics",
        "--no-gpu-telemetry",
        "--output-artifact-dir", str(out_dir),
    ]  # fmt: skip
    if api_key:
        argv += ["--api-key", api_key]
    env = {**os.environ, "HF_ENDPOINT": NO_HUB, "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}
    shown = " ".join("<generated key>" if a == api_key else a for a in argv)
    started = time.monotonic()
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"command": shown, "error": f"timed out after {timeout_s:g}s"}
    result: dict[str, Any] = {
        "command": shown,
        "tokenizer": str(TOKENIZER.relative_to(REPO)),
        "exit_code": done.returncode,
        "wall_s": round(time.monotonic() - started, 1),
    }
    export = out_dir / "profile_export_aiperf.json"
    if done.returncode != 0 or not export.is_file():
        result["error"] = (done.stdout + done.stderr)[-1500:]
        return result
    data = json.loads(export.read_text())
    result["aiperf_version"] = data.get("aiperf_version")
    result["metrics"] = {
        name: {k: data[name].get(k) for k in ("unit", "avg", "p50", "p90", "p99") if data[name].get(k) is not None}
        for name in AIPERF_METRICS
        if isinstance(data.get(name), dict)
    }
    result["error_summary"] = data.get("error_summary")
    log = out_dir / "logs" / "aiperf.log"
    result["hub_calls_in_log"] = log.read_text(errors="replace").count(NO_HUB) if log.is_file() else None
    return result
