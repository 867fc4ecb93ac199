"""Phase 1: every contract the worker has with an engine server, produced by the worker's own code, as JSON.

Nothing here restates a flag, field or path: the launch argv comes from `Dialect.argv`, the request bodies from
`openai_http.request_body` with the dialect's options (as `HttpEngine.generate` calls it), the adapter calls from
`openai_http.adapter_request` and the dialect's paths, the metric names from the dialect's `MetricNames`. What is
chosen here is the inputs: the settings combinations and the requests, each as the worker would accept them.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shlex
from pathlib import Path
from typing import Any

from bailu.common.types import ChatMessage, GenerateRequest, SamplingParams, Tool, ToolCall, ToolUse
from bailu.worker.engines.adapters import engine_adapter_name
from bailu.worker.engines.server import openai_http as oai
from bailu.worker.engines.server.dialects import Dialect, LaunchConfig

FIXTURES = Path(__file__).resolve().parents[4] / "tests" / "fixtures" / "engines"

# A tool-call parser of each engine's own naming (the worker passes the setting through; docs/engines.md) and a
# typical BAILU_WORKER_ENGINE_ARGS value, so that the launch cases cover both settings.
TOOL_PARSERS = {"vllm": "hermes", "sglang": "qwen25", "lmdeploy": "qwen"}
EXTRA_ARGS = {
    "vllm": "--enforce-eager --dtype bfloat16",
    "sglang": "--disable-cuda-graph --dtype bfloat16",
    "lmdeploy": "--log-level INFO --dtype bfloat16",
}
ADAPTERS = {"poet": "/models/adapters/poet/v3", "haiku": "/models/adapters/haiku/v1"}
SERVED = "qwen2.5-7b-instruct"


def launch_cases(dialect: Dialect) -> list[dict[str, Any]]:
    """The engine's flags (its command left out) for every combination of the settings that change them: LoRA
    on or off, adapters at start (none, one, two), tensor parallel, a tool-call parser, extra arguments."""
    cases = []
    base = LaunchConfig(
        model_path=Path("/models/base/Qwen2.5-7B-Instruct"),
        served_name=SERVED,
        host="127.0.0.1",
        port=8100,
        max_model_len=8192,
        max_batch_size=32,
        gpu_memory_utilization=0.85,
        max_lora_rank=64,
    )
    adapter_sets = [{}, dict(list(ADAPTERS.items())[:1]), ADAPTERS]
    for max_loras, adapters, tp, parser, extra in itertools.product(
        (0, 4), adapter_sets, (1, 2), ("", TOOL_PARSERS.get(dialect.kind, "")), ("", EXTRA_ARGS.get(dialect.kind, ""))
    ):
        if not max_loras and adapters and len(adapters) > 1:
            continue  # without LoRA the adapter list is not passed: one such case is enough
        engine_adapters = {engine_adapter_name(name, path): path for name, path in adapters.items()}
        config = dataclasses.replace(
            base, max_loras=max_loras, adapters=engine_adapters, tensor_parallel_size=tp, tool_call_parser=parser
        )
        argv = dialect.argv(config, executable=("ENGINE",), extra=tuple(shlex.split(extra)))
        name = f"lora={'on' if max_loras else 'off'} adapters={len(adapters)} tp={tp} tools={parser or 'off'}"
        cases.append(
            {"id": name + (f" extra={extra!r}" if extra else ""), "args": argv[1:], "extra": shlex.split(extra)}
        )
    return cases


def _messages() -> tuple[ChatMessage, ...]:
    return (ChatMessage("system", "You write short poems."), ChatMessage("user", "A poem about autumn light."))


def _tool_history() -> tuple[ChatMessage, ...]:
    call = ToolCall("call_0123456789abcdef01234567", "get_weather", '{"city": "Hangzhou"}')
    return (
        ChatMessage("user", "What is the weather in Hangzhou?"),
        ChatMessage("assistant", "", tool_calls=(call,)),
        ChatMessage("tool", '{"temperature": 21}', tool_call_id=call.id),
        ChatMessage("user", "And tomorrow?"),
    )


TOOLS = (
    Tool(
        "get_weather",
        "The weather in a city",
        json.dumps({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
    ),
    Tool("get_time"),
)
ALL_SAMPLING = SamplingParams(
    max_tokens=64,
    temperature=0.7,
    top_p=0.9,
    top_k=40,
    presence_penalty=0.1,
    frequency_penalty=0.2,
    repetition_penalty=1.1,
    stop=("\n\n", "END"),
    seed=7,
)
SCHEMA = json.dumps({"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]})


def _requests(dialect: Dialect) -> list[tuple[str, GenerateRequest]]:
    """The requests a worker on `dialect` sends on (those it refuses itself are left out, as it never sends them)."""
    chat = GenerateRequest("r", SERVED, messages=_messages())
    completion = GenerateRequest("r", SERVED, prompt="Autumn light,")
    out = [
        ("chat", chat),
        ("chat every sampling field", dataclasses.replace(chat, sampling=ALL_SAMPLING)),
        ("chat adapter", dataclasses.replace(chat, adapter="poet")),
        ("chat logprobs", dataclasses.replace(chat, sampling=SamplingParams(logprobs=True, top_logprobs=3))),
        (
            "chat continues assistant",
            dataclasses.replace(chat, messages=(*_messages(), ChatMessage("assistant", "Gold on"))),
        ),
        ("completion", completion),
        ("completion every sampling field", dataclasses.replace(completion, sampling=ALL_SAMPLING)),
        ("completion adapter", dataclasses.replace(completion, adapter="poet")),
        (
            "completion logprobs",
            dataclasses.replace(completion, sampling=SamplingParams(logprobs=True, top_logprobs=3)),
        ),
    ]
    for kind, req in (("chat", chat), ("completion", completion)):
        if dialect.serves_response_format(chat=req.is_chat):
            out.append((f"{kind} json_object", dataclasses.replace(req, sampling=SamplingParams(json_object=True))))
            out.append((f"{kind} json_schema", dataclasses.replace(req, sampling=SamplingParams(json_schema=SCHEMA))))
    uses = []
    if dialect.tool_support.auto:
        uses += [("auto", ToolUse(TOOLS, "auto")), ("auto, not parallel", ToolUse(TOOLS, "auto", parallel=False))]
    if dialect.tool_support.forced:
        uses += [("required", ToolUse(TOOLS, "required")), ("named", ToolUse(TOOLS, "function", "get_weather"))]
    for label, use in uses:
        out.append((f"chat tools {label}", dataclasses.replace(chat, tools=use)))
        out.append((f"chat tools {label}, tool turns", dataclasses.replace(chat, messages=_tool_history(), tools=use)))
    for _, req in out:
        req.validate()
    return out


def request_cases(dialect: Dialect, default_max_tokens: int = 256) -> list[dict[str, Any]]:
    """Each body as `HttpEngine.generate` builds it, streamed, and as its broken-stream probe resends it (not
    streamed, `max_tokens` 1, no `stream_options`: `HttpEngine._explain_broken_stream`)."""
    cases = []
    for name, req in _requests(dialect):
        engine_adapter = engine_adapter_name(req.adapter, ADAPTERS[req.adapter]) if req.adapter else ""
        body = oai.request_body(
            req,
            dialect.request_model(SERVED, engine_adapter),
            default_max_tokens,
            dialect.stream_options,
            legacy_completion_logprobs=dialect.legacy_completion_logprobs,
            null_call_content=dialect.null_call_content,
        )
        cases.append({"id": name, "path": oai.endpoint(req), "body": body})
        if name in ("chat every sampling field", "completion every sampling field"):
            probe = {**body, "stream": False, "max_tokens": 1}
            probe.pop("stream_options", None)
            cases.append({"id": name + ", not streamed", "path": oai.endpoint(req), "body": probe})
    return cases


def adapter_cases(dialect: Dialect) -> list[dict[str, Any]]:
    """The runtime load and unload calls (none for engines that load adapters only at start)."""
    if dialect.load_adapter_path is None or dialect.unload_adapter_path is None:
        return []
    name, path = "poet", ADAPTERS["poet"]
    engine_name = engine_adapter_name(name, path)
    return [
        {"id": "load", "path": dialect.load_adapter_path, "body": oai.adapter_request(engine_name, path)},
        {"id": "unload", "path": dialect.unload_adapter_path, "body": oai.adapter_request(engine_name)},
    ]


def route_cases(dialect: Dialect) -> list[dict[str, str]]:
    """The endpoints the worker calls besides the adapter calls."""
    routes = [
        {"path": dialect.health_path, "method": "GET"},
        {"path": "/v1/chat/completions", "method": "POST"},
        {"path": "/v1/completions", "method": "POST"},
    ]
    if dialect.metrics_path:
        routes.append({"path": dialect.metrics_path, "method": "GET"})
    return routes


def metric_cases(dialect: Dialect) -> dict[str, list[str]]:
    return {
        role.name: list(getattr(dialect.metric_names, role.name)) for role in dataclasses.fields(dialect.metric_names)
    }


def _sse_payloads(path: Path) -> list[str]:
    data: list[str] = []
    payloads = []
    for raw in [*path.read_text().splitlines(), ""]:
        if not raw:
            if data:
                payloads.append("\n".join(data))
                data = []
        elif raw.startswith("data:"):
            data.append(raw[5:].lstrip(" "))
    return [p for p in payloads if p.strip() != oai.DONE]


def _logprob(token: str, value: float) -> dict[str, Any]:
    return {"token": token, "logprob": value, "bytes": list(token.encode())}


def _built_streams() -> list[dict[str, Any]]:
    """Streams in the OpenAI shape for what the fixtures do not cover (log probabilities in both formats)."""
    chat_lp = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1760000000,
        "model": SERVED,
        "choices": [
            {
                "index": 0,
                "delta": {"content": "Gold"},
                "logprobs": {"content": [{**_logprob("Gold", -0.25), "top_logprobs": [_logprob("Gold", -0.25)]}]},
                "finish_reason": None,
            }
        ],
    }
    chat_end = {**chat_lp, "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "stop"}]}
    usage = {**chat_lp, "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13}}
    legacy = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1760000000,
        "model": SERVED,
        "choices": [
            {
                "index": 0,
                "text": " gold",
                "logprobs": {
                    "text_offset": [0],
                    "token_logprobs": [-0.5],
                    "tokens": [" gold"],
                    "top_logprobs": [{" gold": -0.5, " red": -1.5}],
                },
                "finish_reason": "length",
            }
        ],
    }
    legacy_usage = {**legacy, "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}}
    return [
        {"id": "built chat logprobs", "kind": "chat", "payloads": [json.dumps(p) for p in (chat_lp, chat_end, usage)]},
        {
            "id": "built completion logprobs",
            "kind": "completion",
            "payloads": [json.dumps(p) for p in (legacy, legacy_usage)],
        },
    ]


def stream_cases(kind: str, fixtures: Path = FIXTURES) -> list[dict[str, Any]]:
    """The engine's stream samples (`tests/fixtures/engines/<kind>/*.sse`) and the built ones: each stream's
    payloads, with the response kind they are of (`chat`, `completion`; an `error` event in a stream)."""
    streams = []
    folder = fixtures / kind
    for path in sorted(folder.glob("*.sse")) if folder.is_dir() else ():
        payloads = _sse_payloads(path)
        objects = {json.loads(p).get("object") for p in payloads}
        streams.append(
            {
                "id": f"{kind}/{path.name}",
                "kind": "completion" if "text_completion" in objects else "chat",
                "payloads": payloads,
            }
        )
    return streams + _built_streams()


def error_cases(kind: str, fixtures: Path = FIXTURES) -> list[dict[str, Any]]:
    """The engine's error bodies (`errors.json`) with the HTTP status each came with."""
    path = fixtures / kind / "errors.json"
    if not path.is_file():
        return []
    return [
        {"id": f"{kind}/errors.json #{i}", "status": e["status"], "body": e["body"]}
        for i, e in enumerate(json.loads(path.read_text()))
    ]


def build_cases(dialect: Dialect, version: str, fixtures: Path = FIXTURES) -> dict[str, Any]:
    """All the cases of one engine, for `probe.py`."""
    return {
        "engine": dialect.kind,
        "version": version,
        "command": list(dialect.command),
        "env": dict(dialect.env),
        "launch": launch_cases(dialect),
        "requests": request_cases(dialect),
        "adapters": adapter_cases(dialect),
        "routes": route_cases(dialect),
        "metrics": metric_cases(dialect),
        "streams": stream_cases(dialect.kind, fixtures),
        "errors": error_cases(dialect.kind, fixtures),
    }


# Samples of another release than the pinned one, kept for the dialect's tolerance of them: a refusal by the
# pinned version's model is reported as a note, not a failure.
OTHER_RELEASE_SAMPLES = {
    "vllm/errors.json #6": "the flat error body of vLLM's older releases, kept in the samples on purpose",
}
