"""The `transformers` engine on the real SmolLM2-135M-Instruct, measured over gRPC (no gateway).

One worker runs as a subprocess (`BAILU_WORKER_ENGINE=transformers`, CPU). Measured:

    ttft        one short chat request at a time, greedy, a few tokens: time to the first token
    throughput  1, 4 and 8 concurrent streams of 64 greedy tokens, launched together, a few rounds each

    python -m bench.transformers_engine   # writes bench/results/transformers_engine.json
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import grpc

from bailu.v1 import worker_pb2_grpc as pb_grpc
from bench.common import (
    REPO,
    BlockResult,
    CpuMeter,
    Service,
    ServiceGroup,
    StreamResult,
    distribution_ms,
    error_summary,
    exit_on_sigterm,
    grpc_stream,
    make_request,
    metadata,
    ms,
    percentile,
    rnd,
    run_closed_loop,
    start_transformers_worker,
    table,
    write_results,
)

MODEL_DIR = REPO / ".cache" / "models" / "smollm2-135m-instruct"
MODEL = "smollm2-135m-instruct"
MAX_BATCH_SIZE = 8
STREAM_TIMEOUT_S = 120.0

TTFT_PROMPT = "Write a short poem about autumn light."
TTFT_REQUESTS = 10
TTFT_MAX_TOKENS = 4

LEVELS = (1, 4, 8)
ROUNDS = 5
# A round whose streams' TTFTs differ by more than this did not run as one batch (see the notes).
SPLIT_SPREAD_S = 1.0
MAX_TOKENS = 64
# Stream i of a round gets PROMPTS[i % len(PROMPTS)]: different prompt lengths, as real traffic has.
PROMPTS = (
    "Write a short poem about autumn light.",
    "Explain in a few paragraphs how a bicycle gear system works.",
    "Tell me a story about a lighthouse keeper and a storm.",
    "Describe the water cycle to a ten-year-old.",
    "List some tips for writing clear emails, with an example for each.",
    "What are the main differences between a lake and a sea?",
    "Write a letter to a friend about a trip to the mountains.",
    "Give a recipe for a simple vegetable soup and explain each step.",
)


def ensure_model() -> Path:
    """The converted checkpoint (`make model` builds it; converted here if missing)."""
    if not (MODEL_DIR / "config.json").is_file():
        from bailu.dev.checkpoints import convert_gguf, smollm2_gguf_path

        print(f"converting SmolLM2 into {MODEL_DIR} ...", flush=True)
        convert_gguf(smollm2_gguf_path(), MODEL_DIR)
    return MODEL_DIR


def worker_timings(service: Service) -> dict[str, Any]:
    """load_s and warmup_s from the worker's 'worker ready' log record."""
    for line in service.log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("msg") == "worker ready":
            return {"model_load_s": record.get("load_s"), "warmup_s": record.get("warmup_s")}
    return {}


async def measure_ttft(stub: pb_grpc.InferenceWorkerStub) -> dict[str, Any]:
    results = []
    for _ in range(TTFT_REQUESTS):
        request = make_request(MODEL, TTFT_PROMPT, max_tokens=TTFT_MAX_TOKENS, temperature=0.0)
        results.append(await grpc_stream(stub, request, STREAM_TIMEOUT_S))
    ttft = [r.ttft_s for r in results if r.ok and r.ttft_s is not None]
    return {
        "prompt": TTFT_PROMPT,
        "requests": len(results),
        "max_tokens": TTFT_MAX_TOKENS,
        "temperature": 0.0,
        "errors": error_summary(results),
        "ttft_median_ms": ms(statistics.median(ttft)) if ttft else None,
        "ttft_p90_ms": ms(percentile(ttft, 90)),
        "ttft_ms": distribution_ms(ttft),
        "total_ms": distribution_ms([r.total_s for r in results if r.ok]),
        "ttft_samples_ms": [ms(r.ttft_s) for r in results],
        "tokens_per_request": [r.tokens for r in results],
        "tokens_in_first_message": [r.first_tokens for r in results],
    }


def round_summary(block: BlockResult) -> dict[str, Any]:
    ok = [r for r in block.results if r.ok]
    tokens = sum(r.tokens for r in block.results)
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    return {
        "streams": len(block.results),
        "streams_ok": len(ok),
        "wall_s": round(block.wall_s, 3),
        "tokens": tokens,
        "aggregate_tokens_per_s": round(tokens / block.wall_s, 2),
        "ttft_ms": [ms(r.ttft_s) for r in block.results],
        "ttft_spread_ms": ms(max(ttft) - min(ttft)) if ttft else None,
        "total_ms": [ms(r.total_s) for r in block.results],
        "tokens_per_stream": [r.tokens for r in block.results],
        "tokens_in_first_message": [r.first_tokens for r in block.results],
        "max_gap_between_messages_ms": [ms(r.max_gap_s) for r in block.results],
        "errors": error_summary(block.results),
    }


async def measure_throughput(stub: pb_grpc.InferenceWorkerStub, meter: CpuMeter) -> list[dict[str, Any]]:
    async def one(index: int) -> StreamResult:
        prompt = PROMPTS[index % len(PROMPTS)]
        return await grpc_stream(
            stub, make_request(MODEL, prompt, max_tokens=MAX_TOKENS, temperature=0.0), STREAM_TIMEOUT_S
        )

    levels = []
    for concurrency in LEVELS:
        rounds: list[BlockResult] = []
        cpu: dict[str, float | None] = {}
        for _ in range(ROUNDS):
            meter.start()
            # All streams of a round start together and the round ends when the last one finishes.
            block = await run_closed_loop(one, concurrency=concurrency, count=concurrency, max_seconds=STREAM_TIMEOUT_S)
            meter.add(cpu, meter.stop())
            rounds.append(block)
            tokens = sum(r.tokens for r in block.results)
            print(
                f"  c={concurrency}  {tokens:4d} tokens in {block.wall_s:5.1f}s = {tokens / block.wall_s:6.1f} tok/s",
                flush=True,
            )
        streams = [r for b in rounds for r in b.results if r.ok]
        per_stream = [r.tokens / r.total_s for r in streams if r.total_s > 0]
        decode = [d for r in streams if (d := r.decode_tokens_per_s) is not None]
        ttft = [r.ttft_s for r in streams if r.ttft_s is not None]
        summaries = [round_summary(b) for b in rounds]
        together = [
            s["aggregate_tokens_per_s"] for s in summaries if (s["ttft_spread_ms"] or 0) <= SPLIT_SPREAD_S * 1000
        ]
        levels.append(
            {
                "concurrency": concurrency,
                "rounds": len(rounds),
                "aggregate_tokens_per_s_median": rnd(
                    statistics.median(s["aggregate_tokens_per_s"] for s in summaries), 2
                ),
                "per_stream_tokens_per_s_median": rnd(statistics.median(per_stream) if per_stream else None, 2),
                "per_stream_decode_tokens_per_s_median": rnd(statistics.median(decode) if decode else None, 2),
                "ttft_p50_ms": ms(percentile(ttft, 50)),
                "ttft_p90_ms": ms(percentile(ttft, 90)),
                "ttft_max_ms": ms(max(ttft)) if ttft else None,
                "rounds_split_across_batches": len(summaries) - len(together),
                "aggregate_tokens_per_s_median_one_batch_rounds": rnd(
                    statistics.median(together) if together else None, 2
                ),
                "aggregate_tokens_per_s_best": max(s["aggregate_tokens_per_s"] for s in summaries),
                "round_wall_s_median": rnd(statistics.median(b.wall_s for b in rounds), 3),
                "tokens_per_stream_mean": rnd(sum(r.tokens for r in streams) / len(streams) if streams else None, 1),
                "errors": error_summary([r for b in rounds for r in b.results]),
                "cpu": cpu,
                "worker_cpu_ms_per_token": rnd(
                    (cpu.get("worker_cpu_s") or 0.0) * 1000 / max(1, sum(s["tokens"] for s in summaries)), 2
                ),
                "round_details": summaries,
            }
        )
    return levels


async def measure(worker: Service, port: int) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.InferenceWorkerStub(channel)
        meter = CpuMeter({"client": os.getpid(), "worker": worker.pid})
        # Warm-up (not recorded): one request, then one full batch of short requests.
        await grpc_stream(stub, make_request(MODEL, TTFT_PROMPT, max_tokens=8, temperature=0.0))
        await run_closed_loop(
            lambda i: grpc_stream(stub, make_request(MODEL, PROMPTS[i], max_tokens=8, temperature=0.0)),
            concurrency=MAX_BATCH_SIZE,
            count=MAX_BATCH_SIZE,
            max_seconds=STREAM_TIMEOUT_S,
        )
        print("measuring time to first token ...", flush=True)
        meter.start()
        ttft = await measure_ttft(stub)
        ttft["cpu"] = meter.stop()
        print("measuring throughput ...", flush=True)
        throughput = await measure_throughput(stub, meter)
    return {"ttft": ttft, "throughput": throughput}


def print_table(measured: dict[str, Any]) -> None:
    ttft = measured["ttft"]
    print()
    print(
        f"TTFT ({ttft['requests']} sequential requests, max_tokens={ttft['max_tokens']}, greedy): "
        f"median {ttft['ttft_median_ms']} ms, p90 {ttft['ttft_p90_ms']} ms"
    )
    rows = [
        [
            level["concurrency"],
            level["aggregate_tokens_per_s_median"],
            level["aggregate_tokens_per_s_median_one_batch_rounds"],
            level["per_stream_tokens_per_s_median"],
            level["ttft_p50_ms"],
            level["ttft_max_ms"],
            f"{level['rounds_split_across_batches']}/{level['rounds']}",
        ]
        for level in measured["throughput"]
    ]
    headers = ["streams", "tok/s all", "(1-batch rounds)", "tok/s/stream", "ttft p50 ms", "ttft max ms", "split"]
    print(table(headers, rows))
    print("tok/s: medians over rounds; split: rounds the engine did not run as one batch")


def main() -> None:
    exit_on_sigterm()
    run_started = time.monotonic()
    meta = metadata(("torch", "transformers", "ms-swift"))
    model_dir = ensure_model()
    with ServiceGroup() as group:
        worker = start_transformers_worker(
            group, "transformers_engine-worker", MODEL, model_dir, {"MAX_BATCH_SIZE": str(MAX_BATCH_SIZE)}
        )
        print(f"worker ready on :{worker.port} after {worker.service.ready_after_s}s", flush=True)
        measured = asyncio.run(measure(worker.service, worker.port))
    results: dict[str, Any] = {
        "benchmark": "transformers_engine",
        "metadata": meta,
        "config": {
            "engine": "transformers (ms-swift TransformersEngine, CPU, float32 checkpoint converted from GGUF Q4_1)",
            "model": MODEL,
            "model_path": str(model_dir.relative_to(REPO)) if model_dir.is_relative_to(REPO) else str(model_dir),
            "max_batch_size": MAX_BATCH_SIZE,
            "torch_threads": "torch's default (BAILU_WORKER_TORCH_THREADS unset)",
            "ttft_requests": TTFT_REQUESTS,
            "ttft_max_tokens": TTFT_MAX_TOKENS,
            "concurrency_levels": list(LEVELS),
            "rounds_per_level": ROUNDS,
            "max_tokens": MAX_TOKENS,
            "temperature": 0.0,
            "prompts": list(PROMPTS),
            "client": "grpc.aio, one channel, InferenceWorker.Generate directly on the worker",
        },
        "definitions": {
            "ttft": "client-side: request sent -> first GenerateResponse with token_count > 0 (or text)",
            "tokens": "sum of GenerateResponse.token_count",
            "streaming_granularity": "ms-swift streams whole words: one GenerateResponse often carries 2-4 tokens, "
            "so the first message (the TTFT) may already hold 2 tokens (tokens_in_first_message) and gaps between "
            "messages (max_gap_between_messages_ms) span several decode steps; neither is a stall",
            "aggregate_tokens_per_s": "tokens of a round's streams / the round's wall time (all streams start "
            "together; the round ends with the last one); the level's figure is the median over rounds",
            "rounds_split_across_batches": f"rounds whose streams' TTFTs differ by more than {SPLIT_SPREAD_S} s: "
            "the engine did not take all of them into one batch",
            "aggregate_tokens_per_s_median_one_batch_rounds": "median over the rounds that ran as one batch only",
            "per_stream_tokens_per_s": "a stream's tokens / its total time; median over all streams of the level",
            "per_stream_decode_tokens_per_s": "(tokens - 1) / (total - ttft); median over all streams of the level",
        },
        "worker_startup": {"ready_after_s": worker.service.ready_after_s, **worker_timings(worker.service)},
        **measured,
        "services": {"worker": worker.service.report()},
        "runtime_s": round(time.monotonic() - run_started, 1),
        "notes": [
            f"The benchmark client and the worker share this machine's {meta['nproc']} CPU cores "
            f"({meta['cpu_model']}); the machine is shared with other workloads (see cpu.other_processes_cpu_s "
            "and metadata.loadavg_at_start/at_end).",
            "ms-swift batches requests with identical sampling parameters that are waiting when a batch starts; "
            "a batch runs to completion before the next one starts, so a request that misses a batch waits for it "
            "(visible in round_details as a large ttft_spread_ms: the late streams' TTFT includes the whole first "
            "batch).",
        ],
    }
    path = write_results("transformers_engine", results)
    print_table(measured)
    print(f"\nwrote {path} in {results['runtime_s']}s")


if __name__ == "__main__":
    main()
