"""The cost of structured outputs (constrained decoding, xgrammar) on the `transformers` engine, SmolLM2-135M.

One worker runs as a subprocess (`BAILU_WORKER_ENGINE=transformers`, CPU), measured over gRPC (no gateway), in
one run, on the same prompts, with and without a JSON Schema, the two modes alternating round by round so that
the machine's load drifts over both alike:

    throughput   1 and 8 concurrent greedy streams of MAX_TOKENS tokens: tokens/s, free text vs. under
                 LONG_SCHEMA, a schema whose output cannot end within MAX_TOKENS (an array of at least 60
                 strings), so that both modes generate exactly as many tokens and the difference is the
                 constraint's own cost (matcher, token mask, applying it)
    ttft         one request at a time: free text, under a schema seen before (its grammar cached), under a
                 schema never seen (a fresh `title` each time: compiled for that request)
    validity     PERSON_SCHEMA (a small realistic schema) sampled at temperature 1: how many outputs parse and
                 validate
    processor    in this process, on SmolLM2's tokenizer: the time of one `JsonConstraint` step (advance the
                 matchers, fill and apply the mask) for a batch of 1 and of 8 constrained rows, against the
                 model's step time above: the same cost, without the machine's noise

    python -m bench.structured   # writes bench/results/structured.json (about 2-3 minutes)
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from typing import Any

import grpc
import jsonschema

from bailu.common.types import ChatMessage, GenerateRequest, SamplingParams
from bailu.common.wire import request_to_pb
from bailu.v1 import worker_pb2_grpc as pb_grpc
from bench.common import (
    REPO,
    ServiceGroup,
    StreamResult,
    StreamTimer,
    error_summary,
    exit_on_sigterm,
    metadata,
    ms,
    rnd,
    start_transformers_worker,
    table,
    write_results,
)
from bench.transformers_engine import MODEL, PROMPTS, ensure_model, worker_timings

MAX_BATCH_SIZE = 8
STREAM_TIMEOUT_S = 120.0
MAX_TOKENS = 48
LEVELS = (1, 8)
ROUNDS = 6  # per mode and level, alternating: free, schema, free, schema, ...
TTFT_REQUESTS = 5
TTFT_MAX_TOKENS = 4
VALIDITY_TRIES = 8

LONG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"lines": {"type": "array", "items": {"type": "string"}, "minItems": 60}},
    "required": ["lines"],
    "additionalProperties": False,
}
PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "mood": {"enum": ["calm", "cheerful", "tired"]},
    },
    "required": ["name", "age", "mood"],
    "additionalProperties": False,
}
PERSON_PROMPT = "Describe a person as JSON: name, age and mood."


def request(prompt: str, *, max_tokens: int, schema: dict[str, Any] | None, temperature: float = 0.0) -> Any:
    """A chat GenerateRequest message, built the way the gateway builds it (domain type, then wire)."""
    sampling = SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        json_schema=json.dumps(schema, separators=(",", ":")) if schema is not None else "",
    )
    domain = GenerateRequest(
        request_id=uuid.uuid4().hex,
        model=MODEL,
        messages=(ChatMessage("user", prompt),),
        sampling=sampling,
        deadline=time.time() + STREAM_TIMEOUT_S,
    )
    domain.validate()
    return request_to_pb(domain)


async def stream(stub: pb_grpc.InferenceWorkerStub, message: Any) -> tuple[StreamResult, str]:
    """Generate, timed, and the text it produced."""
    timer = StreamTimer()
    text: list[str] = []
    try:
        async for reply in stub.Generate(message, timeout=STREAM_TIMEOUT_S):
            text.append(reply.text_delta)
            if reply.token_count or reply.text_delta:
                timer.token(reply.token_count)
    except grpc.aio.AioRpcError as exc:
        return timer.result(f"grpc {exc.code().name}: {exc.details()}"), "".join(text)
    return timer.result(), "".join(text)


async def one_round(
    stub: pb_grpc.InferenceWorkerStub, concurrency: int, schema: dict[str, Any] | None
) -> dict[str, Any]:
    """`concurrency` streams started together (one batch); the round ends with the last one."""
    started = time.perf_counter()
    results = await asyncio.gather(
        *(
            stream(stub, request(PROMPTS[i % len(PROMPTS)], max_tokens=MAX_TOKENS, schema=schema))
            for i in range(concurrency)
        )
    )
    wall = time.perf_counter() - started
    streams = [r for r, _ in results]
    tokens = sum(r.tokens for r in streams)
    return {
        "wall_s": round(wall, 3),
        "tokens": tokens,
        "aggregate_tokens_per_s": round(tokens / wall, 2),
        "per_stream_decode_tokens_per_s": [rnd(r.decode_tokens_per_s, 2) for r in streams],
        "tokens_per_stream": [r.tokens for r in streams],
        "ttft_ms": [ms(r.ttft_s) for r in streams],
        "errors": error_summary(streams),
    }


def mode_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    decode = [v for r in rounds for v in r["per_stream_decode_tokens_per_s"] if v is not None]
    return {
        "aggregate_tokens_per_s_median": rnd(statistics.median(r["aggregate_tokens_per_s"] for r in rounds), 2),
        "per_stream_decode_tokens_per_s_median": rnd(statistics.median(decode) if decode else None, 2),
        "tokens_per_stream": sorted({t for r in rounds for t in r["tokens_per_stream"]}),
        "errors": sum(r["errors"]["count"] for r in rounds),
        "rounds": rounds,
    }


async def measure_throughput(stub: pb_grpc.InferenceWorkerStub) -> list[dict[str, Any]]:
    levels = []
    for concurrency in LEVELS:
        by_mode: dict[str, list[dict[str, Any]]] = {"free": [], "schema": []}
        for _ in range(ROUNDS):
            for mode, schema in (("free", None), ("schema", LONG_SCHEMA)):
                result = await one_round(stub, concurrency, schema)
                by_mode[mode].append(result)
                print(
                    f"  c={concurrency} {mode:6s} {result['tokens']:4d} tokens in {result['wall_s']:5.1f}s = "
                    f"{result['aggregate_tokens_per_s']:6.1f} tok/s",
                    flush=True,
                )
        free, constrained = mode_summary(by_mode["free"]), mode_summary(by_mode["schema"])
        base, with_schema = free["aggregate_tokens_per_s_median"], constrained["aggregate_tokens_per_s_median"]
        levels.append(
            {
                "concurrency": concurrency,
                "free": free,
                "schema": constrained,
                "aggregate_slowdown_pct": rnd((1 - with_schema / base) * 100 if base and with_schema else None, 1),
            }
        )
    return levels


async def measure_ttft(stub: pb_grpc.InferenceWorkerStub) -> dict[str, Any]:
    async def ttfts(make: Any) -> list[float | None]:
        out = []
        for i in range(TTFT_REQUESTS):
            result, _ = await stream(stub, make(i))
            out.append(ms(result.ttft_s))
        return out

    free = await ttfts(lambda i: request(PERSON_PROMPT, max_tokens=TTFT_MAX_TOKENS, schema=None))
    cached = await ttfts(lambda i: request(PERSON_PROMPT, max_tokens=TTFT_MAX_TOKENS, schema=PERSON_SCHEMA))
    fresh = await ttfts(
        lambda i: request(
            PERSON_PROMPT, max_tokens=TTFT_MAX_TOKENS, schema={**PERSON_SCHEMA, "title": f"person-{uuid.uuid4().hex}"}
        )
    )

    def median(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return rnd(statistics.median(present), 1) if present else None

    return {
        "requests_each": TTFT_REQUESTS,
        "free_median_ms": median(free),
        "cached_schema_median_ms": median(cached),
        "fresh_schema_median_ms": median(fresh),
        "free_ms": free,
        "cached_schema_ms": cached,
        "fresh_schema_ms": fresh,
    }


async def measure_validity(stub: pb_grpc.InferenceWorkerStub) -> dict[str, Any]:
    results = await asyncio.gather(
        *(
            stream(stub, request(PERSON_PROMPT, max_tokens=64, schema=PERSON_SCHEMA, temperature=1.0))
            for _ in range(VALIDITY_TRIES)
        )
    )
    valid = 0
    for _, text in results:
        try:
            jsonschema.validate(json.loads(text), PERSON_SCHEMA)
        except (ValueError, jsonschema.ValidationError):
            continue
        valid += 1
    return {"tries": VALIDITY_TRIES, "valid": valid, "outputs": [text for _, text in results]}


def measure_processor(model_dir: Any) -> dict[str, Any]:
    """Mean time of one JsonConstraint step under LONG_SCHEMA, rows walking random allowed tokens."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from bailu.worker.engines.json_constraint import JsonConstraint, JsonGrammars

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    grammars = JsonGrammars(tokenizer, AutoConfig.from_pretrained(model_dir).vocab_size)
    started = time.perf_counter()
    grammar = grammars.compile(SamplingParams(json_schema=json.dumps(LONG_SCHEMA)))
    compile_ms = (time.perf_counter() - started) * 1000
    assert grammar is not None
    generator = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {"schema_compile_ms": round(compile_ms, 2), "steps": MAX_TOKENS}
    for rows in (1, MAX_BATCH_SIZE):
        processor = JsonConstraint(dict.fromkeys(range(rows), grammar), grammars.vocab_size)
        ids = torch.zeros((rows, 1), dtype=torch.long)
        spent = 0.0
        for _ in range(MAX_TOKENS):
            scores = torch.randn((rows, grammars.vocab_size), generator=generator)
            started = time.perf_counter()
            masked = processor(ids, scores)
            spent += time.perf_counter() - started
            ids = torch.cat([ids, masked.argmax(dim=-1, keepdim=True)], dim=1)
        out[f"step_us_batch_{rows}"] = round(spent / MAX_TOKENS * 1e6, 1)
    return out


async def measure(port: int) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.InferenceWorkerStub(channel)
        # Warm-up (not recorded): a full batch each way.
        await one_round(stub, MAX_BATCH_SIZE, None)
        await one_round(stub, MAX_BATCH_SIZE, LONG_SCHEMA)
        print("measuring throughput ...", flush=True)
        throughput = await measure_throughput(stub)
        print("measuring time to first token ...", flush=True)
        ttft = await measure_ttft(stub)
        print("checking validity ...", flush=True)
        validity = await measure_validity(stub)
    return {"throughput": throughput, "ttft": ttft, "validity": validity}


def print_table(measured: dict[str, Any]) -> None:
    processor = measured["processor"]
    rows = [
        [
            level["concurrency"],
            level["free"]["aggregate_tokens_per_s_median"],
            level["schema"]["aggregate_tokens_per_s_median"],
            level["aggregate_slowdown_pct"],
            level["model_step_us"],
            processor[f"step_us_batch_{level['concurrency']}"],
            level["constraint_share_of_step_pct"],
        ]
        for level in measured["throughput"]
    ]
    headers = ["streams", "tok/s free", "tok/s schema", "slower %", "step us", "constraint us", "share %"]
    print()
    print(table(headers, rows))
    print("tok/s: medians over rounds; step: the model's decoding step (free text); constraint: JsonConstraint alone")
    ttft = measured["ttft"]
    print(
        f"TTFT medians: free {ttft['free_median_ms']} ms, cached schema {ttft['cached_schema_median_ms']} ms, "
        f"fresh schema {ttft['fresh_schema_median_ms']} ms (compiling this schema alone: "
        f"{processor['schema_compile_ms']} ms)"
    )
    validity = measured["validity"]
    print(f"valid outputs (temperature 1): {validity['valid']}/{validity['tries']}")


def main() -> None:
    exit_on_sigterm()
    run_started = time.monotonic()
    meta = metadata(("torch", "transformers", "ms-swift", "xgrammar"))
    model_dir = ensure_model()
    settings = {
        "MAX_BATCH_SIZE": str(MAX_BATCH_SIZE),
        # Streams of a round arrive within milliseconds: gather them into one batch.
        "BATCH_WAIT_MS": "200",
    }

    with ServiceGroup() as group:
        worker = start_transformers_worker(group, "structured-worker", MODEL, model_dir, settings)
        print(f"worker ready on :{worker.port} after {worker.service.ready_after_s}s", flush=True)
        measured = asyncio.run(measure(worker.port))
    print("timing the constraint's own step ...", flush=True)
    measured["processor"] = processor = measure_processor(model_dir)
    for level in measured["throughput"]:
        # The model's step time at this level (free text): a batch of `concurrency` rows makes one token each.
        tokens_per_s = level["free"]["aggregate_tokens_per_s_median"]
        step_us = level["concurrency"] / tokens_per_s * 1e6 if tokens_per_s else None
        constraint_us = processor[f"step_us_batch_{level['concurrency']}"]
        level["model_step_us"] = rnd(step_us, 0)
        level["constraint_share_of_step_pct"] = rnd(constraint_us / step_us * 100 if step_us else None, 2)
    results: dict[str, Any] = {
        "benchmark": "structured",
        "metadata": meta,
        "config": {
            "engine": "transformers (ms-swift TransformersEngine, CPU), constraint: xgrammar logits processor",
            "model": MODEL,
            "model_path": str(model_dir.relative_to(REPO)) if model_dir.is_relative_to(REPO) else str(model_dir),
            "max_batch_size": MAX_BATCH_SIZE,
            "concurrency_levels": list(LEVELS),
            "rounds_per_mode_and_level": ROUNDS,
            "max_tokens": MAX_TOKENS,
            "temperature": 0.0,
            "prompts": list(PROMPTS),
            "long_schema": LONG_SCHEMA,
            "person_schema": PERSON_SCHEMA,
            "client": "grpc.aio, one channel, InferenceWorker.Generate directly on the worker",
        },
        "definitions": {
            "aggregate_tokens_per_s": "tokens of a round's streams / the round's wall time; median over rounds",
            "aggregate_slowdown_pct": "1 - schema / free, of the aggregate medians",
            "per_stream_decode_tokens_per_s": "(tokens - 1) / (total - ttft) per stream; median over all streams. "
            "ms-swift streams whole words, so when the first message leaves differs between free text and JSON: "
            "compare the aggregate figures",
            "model_step_us": "concurrency / free-text aggregate tokens/s: one decoding step of the batch",
            "constraint_share_of_step_pct": "processor.step_us_batch_N / model_step_us at that concurrency",
            "tokens_per_stream": "the distinct token counts seen: both modes generate MAX_TOKENS per stream",
            "fresh_schema": "a schema with a never-seen title: its grammar is compiled for that request",
            "processor.step_us_batch_N": "mean wall time of one JsonConstraint call on N constrained rows (CPU, "
            "this process, no model): advance each matcher by its last token, fill its mask row, apply the mask",
        },
        "worker_startup": {"ready_after_s": worker.service.ready_after_s, **worker_timings(worker.service)},
        **measured,
        "services": {"worker": worker.service.report()},
        "runtime_s": round(time.monotonic() - run_started, 1),
        "notes": [
            f"The benchmark client and the worker share this machine's {meta['nproc']} CPU cores "
            f"({meta['cpu_model']}), and the machine is shared with other workloads (metadata.loadavg_*): "
            "compare the two modes of one run, not runs with each other.",
        ],
    }
    path = write_results("structured", results)
    print_table(measured)
    print(f"\nwrote {path} in {results['runtime_s']}s")


if __name__ == "__main__":
    main()
