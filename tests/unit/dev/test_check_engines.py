"""The engine checker's logic (`bailu.dev.check_engines`), with a small argparse parser, FastAPI app and pydantic
models standing in for an engine: a dialect with a wrong flag or field fails with a message naming it, a correct
one passes, and a part whose import fails is reported as not run, never as passed."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict

from bailu.dev.check_engines import cases, probe, report, verdict
from bailu.dev.check_engines.verdict import Status
from bailu.worker.engines.server.dialects import VLLM, Dialect, LaunchConfig

# --- a small "engine" -------------------------------------------------------------------------------------------


def small_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="small-engine", allow_abbrev=False)
    parser.add_argument("model")
    parser.add_argument("--served-model-name")
    parser.add_argument("--max-num-seqs", type=int)
    parser.add_argument("--gpu-memory-utilization", type=float)
    parser.add_argument("--enable-lora", action="store_true")
    parser.add_argument("--lora-modules", nargs="+")
    return parser


def _args(c: LaunchConfig) -> list[str]:
    args = [str(c.model_path), "--served-model-name", c.served_name, "--max-num-seqs", str(c.max_batch_size)]
    args += ["--gpu-memory-utilization", str(c.gpu_memory_utilization)]
    if c.lora:
        args += ["--enable-lora"]
        if c.adapters:
            args += ["--lora-modules", *(f"{name}={path}" for name, path in c.adapters.items())]
    return args


def _misspelt_args(c: LaunchConfig) -> list[str]:
    return [a.replace("--max-num-seqs", "--max-num-seq") for a in _args(c)]


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """Declares what the plain chat request of a dialect without extra stream options carries; ignores the rest."""

    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[dict[str, Any]]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None


class Delta(BaseModel):
    content: str | None = None


class Choice(BaseModel):
    index: int
    delta: Delta
    finish_reason: str | None = None


class ChunkWithoutLogprobs(BaseModel):
    """A stream chunk model that has no `logprobs` on its choices: serialising through it loses them."""

    id: str
    model: str
    choices: list[Choice]


class ErrorBody(BaseModel):
    message: str
    type: str
    code: int


class ErrorEnvelope(BaseModel):
    error: ErrorBody


def small_app(args: argparse.Namespace | None) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: ChatRequest) -> dict[str, str]:
        return {}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {}

    return app


HERE = "tests.unit.dev.test_check_engines"
SMALL = probe.Engine(
    package="pytest",
    parser=small_parser,
    app=small_app,
    chat=probe.Model(f"{HERE}:ChunkWithoutLogprobs", {"exclude_unset": True}),
    completion=probe.Model(f"{HERE}:ChunkWithoutLogprobs"),
    error=probe.Model(f"{HERE}:ErrorEnvelope"),
)


def dialect(**changes: Any) -> Dialect:
    fields: dict[str, Any] = {"kind": "small", "build_args": _args, "stream_options": {}, **changes}
    return dataclasses.replace(VLLM, **fields)


def launch_result(d: Dialect) -> verdict.CheckResult:
    launch = cases.launch_cases(d)
    probed, _ = probe.probe_launch(SMALL, launch)
    return verdict.judge_launch(launch, probed)


def chat_cases(d: Dialect) -> list[dict[str, Any]]:
    return [c for c in cases.request_cases(d) if c["id"] == "chat"]


# --- launch flags --------------------------------------------------------------------------------------------


def test_a_correct_dialect_passes_every_launch_combination() -> None:
    result = launch_result(dialect())
    assert result.status is Status.PASS, result.failures
    assert result.cases == len(cases.launch_cases(dialect())) > 8


def test_a_misspelt_flag_fails_naming_the_flag() -> None:
    result = launch_result(dialect(build_args=_misspelt_args))
    assert result.status is Status.FAIL
    assert any("flag --max-num-seq is not an option" in f and "closest: --max-num-seqs" in f for f in result.failures)
    assert any("refused the command line" in f and "--max-num-seq" in f for f in result.failures)


def test_a_flag_parsed_into_another_value_fails() -> None:
    def capping_parser() -> argparse.ArgumentParser:
        parser = small_parser()
        parser._option_string_actions["--max-num-seqs"].type = lambda v: min(int(v), 8)
        return parser

    launch = cases.launch_cases(dialect())[:1]
    probed, _ = probe.probe_launch(dataclasses.replace(SMALL, parser=capping_parser), launch)
    result = verdict.judge_launch(launch, probed)
    assert result.status is Status.FAIL
    assert result.failures == [f"[{launch[0]['id']}] flag --max-num-seqs 32 parsed as 8"]


def test_adapters_that_the_parser_does_not_take_as_a_list_fail() -> None:
    def one_value() -> argparse.ArgumentParser:
        parser = small_parser()
        parser._option_string_actions["--lora-modules"].nargs = None
        return parser

    launch = [c for c in cases.launch_cases(dialect()) if "adapters=2" in c["id"]][:1]
    probed, _ = probe.probe_launch(dataclasses.replace(SMALL, parser=one_value), launch)
    result = verdict.judge_launch(launch, probed)
    assert result.status is Status.FAIL
    assert "unrecognized arguments: haiku-" in result.failures[0]


def test_an_unknown_extra_argument_fails_naming_it() -> None:
    launch = [dict(c, args=[*c["args"], "--enforce-eager"]) for c in cases.launch_cases(dialect())[:1]]
    probed, _ = probe.probe_launch(SMALL, launch)
    result = verdict.judge_launch(launch, probed)
    assert any("flag --enforce-eager is not an option" in f for f in result.failures)


# --- request bodies ------------------------------------------------------------------------------------------


def test_a_body_the_model_holds_whole_passes() -> None:
    body_cases = chat_cases(dialect())
    result = verdict.judge_bodies(verdict.REQUESTS, body_cases, probe.probe_bodies(small_app(None), body_cases))
    assert result.status is Status.PASS, result.failures


def test_a_field_the_engine_drops_fails_naming_the_field() -> None:
    # The broken dialect asks for continuous usage, which the engine's StreamOptions does not declare.
    body_cases = chat_cases(dialect(stream_options={"continuous_usage_stats": True}))
    result = verdict.judge_bodies(verdict.REQUESTS, body_cases, probe.probe_bodies(small_app(None), body_cases))
    assert result.status is Status.FAIL
    assert result.failures == [
        f"[chat] POST /v1/chat/completions: field `stream_options.continuous_usage_stats` is not a field of "
        f"{HERE}.ChatRequest: dropped"
    ]


def test_a_field_refused_or_changed_by_the_model_fails_naming_it() -> None:
    (case,) = chat_cases(dialect())
    refused = [dict(case, id="refused", body={**case["body"], "max_tokens": "many"})]
    result = verdict.judge_bodies(verdict.REQUESTS, refused, probe.probe_bodies(small_app(None), refused))
    assert result.status is Status.FAIL
    assert "max_tokens" in result.failures[0]
    changed = verdict.compare_body({"stream": True, "n": [1, 2]}, {"stream": False, "n": [1, 2]}, "M")
    assert changed == ["field `stream`: sent true, M holds false"]
    extra = verdict.compare_body({"a": {"b": 1}}, {"a": {"__extra__": ["b"]}}, "M")
    assert extra == ["field `a.b` is not a field of M: accepted as an extra and ignored"]


def test_a_path_missing_from_the_router_fails_naming_it() -> None:
    body_cases = [{"id": "load", "path": "/v1/load_lora_adapter", "body": {"lora_name": "x", "lora_path": "/p"}}]
    result = verdict.judge_bodies(verdict.ADAPTERS, body_cases, probe.probe_bodies(small_app(None), body_cases))
    assert result.failures == [
        "[load] POST /v1/load_lora_adapter: the engine refused the body: no POST route "
        "/v1/load_lora_adapter in the engine's app"
    ]
    routes = verdict.judge_routes(cases.route_cases(dialect()), probe._routes(small_app(None)))
    assert routes.failures == [
        "no POST /v1/completions in the engine's routes",
        "no GET /metrics in the engine's routes",
    ]


# --- metrics and responses -----------------------------------------------------------------------------------


def test_metric_names_missing_from_the_source_fail() -> None:
    names = {"queued": ["eng:queue"], "running": ["eng:running"], "cache_usage": ["eng:kv", "eng:old_kv"], "ttft": []}
    found = {"eng:queue": ["eng/metrics.py"], "eng:running": [], "eng:kv": ["eng/metrics.py"], "eng:old_kv": []}
    result = verdict.judge_metrics(names, found, "eng")
    assert result.failures == ["metric running: none of eng:running occurs in eng's source"]
    assert "eng:old_kv (another release's name for cache_usage) does not occur in this version" in result.notes


def test_a_response_model_that_loses_a_field_the_codec_reads_fails() -> None:
    streams = [s for s in cases.stream_cases("vllm") if s["id"] == "built chat logprobs"]
    probed = probe.probe_streams(SMALL, streams)
    result = verdict.judge_responses(streams, probed, [], [], {})
    assert result.status is Status.FAIL
    assert "the codec reads the engine's serialisation differently at chunk 0" in result.failures[0]


def test_samples_the_response_models_refuse_fail_unless_of_another_release() -> None:
    errors = [{"id": "e #0", "status": 400, "body": {"object": "error", "message": "bad", "type": "x", "code": 400}}]
    probed = probe.probe_errors(SMALL, errors)
    refused = verdict.judge_responses([], [], errors, probed, {})
    assert refused.status is Status.FAIL
    assert "e #0" in refused.failures[0]
    assert "error" in refused.failures[0]
    noted = verdict.judge_responses([], [], errors, probed, {"e #0": "an older release's body"})
    assert noted.status is Status.PASS
    assert "an older release's body" in noted.notes[0]


# --- the whole probe, and what cannot run --------------------------------------------------------------------


def test_a_part_whose_import_fails_is_not_run_and_names_the_import(monkeypatch: pytest.MonkeyPatch) -> None:
    def needs_cuda() -> argparse.ArgumentParser:
        return probe._load("no_such_cuda_module:Parser")

    monkeypatch.setitem(probe.ENGINES, "small", dataclasses.replace(SMALL, parser=needs_cuda))
    d = dialect()
    built = cases.build_cases(d, "1.0")
    probed = json.loads(json.dumps(probe.run(built)))  # through JSON, as from the engine's venv
    results = {r.check: r for r in verdict.judge(built, probed, {})}
    launch = results[verdict.LAUNCH]
    assert launch.status is Status.NOT_RUN
    assert "ModuleNotFoundError: No module named 'no_such_cuda_module'" in launch.failures[0]
    assert results[verdict.REQUESTS].status is Status.FAIL  # the small model declares few of the fields sent
    table = report.render_table({"engines": [_engine(results)], "date": "today", "machine": {"processor": "x86_64"}})
    assert "| launch flags | not run: building the CLI parser: ModuleNotFoundError" in table
    assert not report.passed({"engines": [_engine(results)]})


def _engine(results: dict[str, verdict.CheckResult]) -> dict[str, Any]:
    return {"engine": "small", "pinned": "1.0", "seconds": 1.0, "checks": [r.to_json() for r in results.values()]}


def test_the_docs_table_is_replaced_between_its_markers(tmp_path: Path) -> None:
    doc = tmp_path / "engines.md"
    doc.write_text(f"before\n{report.BEGIN}\nold\n{report.END}\nafter\n")
    results = [verdict.CheckResult(check, Status.PASS, 3) for check in verdict.CHECKS]
    full = {"engines": [_engine({r.check: r for r in results})], "date": "today", "machine": {"processor": "x86_64"}}
    report.write_docs(full, doc)
    text = doc.read_text()
    assert text.startswith("before\n")
    assert text.endswith("after\n")
    assert "old" not in text
    assert "| launch flags | pass (3 cases) |" in text
