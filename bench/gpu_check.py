"""GPU check of the engine servers: a worker per available engine, streamed requests, an adapter load.

NOT YET RUN ON A GPU. Written for a machine with an NVIDIA GPU and one or more engines installed
(the docker/worker-<engine>.Dockerfile images have one each); on the development machines only the
`swift` engine runs (CPU), which is how this script itself was checked.

    python -m bench.gpu_check --model-path /models/Qwen2.5-1.5B-Instruct --model-name qwen2.5-1.5b \\
        [--adapter poet=/models/adapters/poet] [--engines vllm,sglang,lmdeploy] [--requests 8]

For each engine it starts `python -m bailu.worker` with BAILU_WORKER_ENGINE=<engine>, waits for
/readyz, sends streamed chat requests over gRPC (one at a time, then all at once), loads the adapter
(timing the load: a restart on LmDeploy and ms-swift) and sends one request to it, and prints
time to first token and tokens per second. Results go to bench/results/gpu_check.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from bailu.common import wire
from bailu.common.types import ChatMessage, GenerateRequest, SamplingParams
from bailu.v1 import worker_pb2 as pb
from bailu.v1 import worker_pb2_grpc as pb_grpc
from bench.common import RESULTS_DIR, Service, free_port

PROMPT = "Write a short poem about autumn light."


def available_engines() -> list[str]:
    found = []
    if shutil.which("vllm"):
        found.append("vllm")
    if importlib.util.find_spec("sglang") is not None:
        found.append("sglang")
    if shutil.which("lmdeploy"):
        found.append("lmdeploy")
    return found


def gpu_name() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return "none"
    return out.stdout.strip() or "none"


async def stream_once(
    stub: pb_grpc.InferenceWorkerStub, model: str, max_tokens: int, adapter: str = ""
) -> dict[str, float]:
    request = GenerateRequest(
        request_id=f"gpu-check-{time.monotonic_ns()}",
        model=model,
        adapter=adapter,
        messages=(ChatMessage("user", PROMPT),),
        sampling=SamplingParams(max_tokens=max_tokens, temperature=0.0),
    )
    start = time.perf_counter()
    ttft = None
    tokens = 0
    async for chunk in stub.Generate(wire.request_to_pb(request)):
        if ttft is None:
            ttft = time.perf_counter() - start
        tokens += chunk.token_count
    total = time.perf_counter() - start
    decode = total - (ttft or 0.0)
    return {
        "ttft_s": ttft or total,
        "tokens": tokens,
        "total_s": total,
        "decode_tokens_per_s": tokens / decode if decode > 0 else 0.0,
    }


def summary(runs: list[dict[str, float]]) -> dict[str, float]:
    ttfts = sorted(r["ttft_s"] for r in runs)
    return {
        "requests": len(runs),
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_max_s": ttfts[-1],
        "decode_tokens_per_s_mean": statistics.mean(r["decode_tokens_per_s"] for r in runs),
        "tokens": sum(r["tokens"] for r in runs),
    }


async def check_engine(engine: str, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    port, http_port = free_port(), free_port()
    env = {
        "BAILU_WORKER_HOST": "127.0.0.1",
        "BAILU_WORKER_PORT": str(port),
        "BAILU_WORKER_HTTP_PORT": str(http_port),
        "BAILU_WORKER_ENGINE": engine,
        "BAILU_WORKER_MODEL_NAME": args.model_name,
        "BAILU_WORKER_MODEL_PATH": str(args.model_path),
        "BAILU_WORKER_MAX_BATCH_SIZE": str(args.requests),
        "BAILU_WORKER_MAX_MODEL_LEN": str(args.max_model_len),
    }
    worker = Service(
        f"gpu_check-{engine}",
        [sys.executable, "-m", "bailu.worker"],
        env,
        log_dir / f"gpu_check-{engine}.log",
        f"http://127.0.0.1:{http_port}/readyz",
    )
    worker.start()
    result: dict[str, Any] = {"engine": engine, "log": str(worker.log_path)}
    try:
        try:
            worker.wait_ready(args.ready_timeout)
        except (RuntimeError, TimeoutError):
            result["error"] = "the worker did not become ready; see its log"
            return result
        result["ready_s"] = worker.ready_after_s
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.InferenceWorkerStub(channel)
            listed = await stub.ListModels(pb.ListModelsRequest())
            result["capabilities"] = {
                k: getattr(listed.capabilities, k) for k in pb.Capabilities.DESCRIPTOR.fields_by_name
            }
            sequential = [await stream_once(stub, args.model_name, args.max_tokens) for _ in range(args.requests)]
            result["sequential"] = summary(sequential)
            concurrent = await asyncio.gather(
                *(stream_once(stub, args.model_name, args.max_tokens) for _ in range(args.requests))
            )
            result["concurrent"] = summary(list(concurrent))
            if args.adapter:
                name, _, path = args.adapter.partition("=")
                load_start = time.perf_counter()
                await stub.LoadAdapter(pb.LoadAdapterRequest(name=name, path=path))
                result["adapter_load_s"] = round(time.perf_counter() - load_start, 2)
                result["adapter_request"] = await stream_once(stub, args.model_name, args.max_tokens, adapter=name)
    except grpc.aio.AioRpcError as exc:
        result["error"] = f"{exc.code().name}: {exc.details()}"
    finally:
        worker.stop(timeout=120)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", type=Path, required=True)
    parser.add_argument("--model-name", default="gpu-check")
    parser.add_argument("--adapter", default="", help="name=path of a PEFT LoRA adapter for the base model")
    parser.add_argument("--engines", default="", help="comma-separated; default: every engine installed here")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--ready-timeout", type=float, default=1800.0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "gpu_check.json")
    args = parser.parse_args()
    engines = [e for e in args.engines.split(",") if e] or available_engines()
    if not engines:
        sys.exit("no engine found (vllm, sglang or lmdeploy); pass --engines swift to check the script on CPU")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = []
    for engine in engines:
        print(f"== {engine}", flush=True)
        result = await check_engine(engine, args, args.out.parent)
        print(json.dumps(result, indent=2), flush=True)
        results.append(result)
    report = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "gpu": gpu_name(),
        "model_path": str(args.model_path),
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
