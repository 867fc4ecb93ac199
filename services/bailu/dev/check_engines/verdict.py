"""Phase 3: what the engine's own code said (`probe.py`) judged against what the worker sends and reads.

Each check of one engine comes out as a `CheckResult`: passed, failed (each failure names the flag, field, path,
metric or sample), not run (the probe's part failed: the import and its exception), or not applicable.
"""

from __future__ import annotations

import difflib
import enum
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bailu.common.errors import BailuError
from bailu.common.types import GenerateChunk
from bailu.worker.engines.server import openai_http as oai
from bailu.worker.engines.server.openai_tools import ToolCallReader


class Status(enum.StrEnum):
    PASS = "pass"  # nosec B105 # a check status, not a password
    FAIL = "fail"
    NOT_RUN = "not run"
    NOT_APPLICABLE = "n/a"


@dataclass
class CheckResult:
    check: str
    status: Status
    cases: int = 0
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "status": str(self.status),
            "cases": self.cases,
            "failures": self.failures,
            "notes": self.notes,
        }


# The checks, in the order of the report and of the docs table.
LAUNCH, ENDPOINTS, REQUESTS, ADAPTERS, METRICS, RESPONSES = (
    "launch flags",
    "endpoints",
    "request bodies",
    "LoRA calls",
    "metric names",
    "responses",
)
CHECKS = (LAUNCH, ENDPOINTS, REQUESTS, ADAPTERS, METRICS, RESPONSES)


def _result(check: str, cases: int, failures: list[str], notes: list[str] | None = None) -> CheckResult:
    return CheckResult(check, Status.FAIL if failures else Status.PASS, cases, failures, notes or [])


def _flag_values(args: list[str]) -> list[tuple[str, list[str]]]:
    """(flag, the values that follow it) for each `--flag` of an argv; `--flag=value` splits."""
    out: list[tuple[str, list[str]]] = []
    for token in args:
        if token.startswith("--"):
            flag, eq, value = token.partition("=")
            out.append((flag, [value] if eq else []))
        elif out:
            out[-1][1].append(token)
    return out


def _same_scalar(sent: str, parsed: Any) -> bool:
    if isinstance(parsed, bool):
        return sent.lower() == str(parsed).lower()
    if isinstance(parsed, int | float):
        try:
            return math.isclose(float(sent), float(parsed))
        except ValueError:
            return False
    if isinstance(parsed, dict):  # an object parsed from "name=path": both parts among its values
        values = {str(v) for v in parsed.values()}
        return all(part in values for part in sent.split("=", 1))
    return sent == str(parsed)


def _parsed_as_sent(values: list[str], parsed: Any) -> bool:
    if not values:
        return parsed is True or (parsed not in (None, False, 0, "") and not isinstance(parsed, list))
    if isinstance(parsed, list):
        return len(parsed) == len(values) and all(_same_scalar(v, p) for v, p in zip(values, parsed, strict=True))
    return len(values) == 1 and _same_scalar(values[0], parsed)


def judge_launch(cases: list[dict[str, Any]], probed: dict[str, Any]) -> CheckResult:
    options = set(probed["options"])
    by_id = {r["id"]: r for r in probed["results"]}
    failures: list[str] = []
    for case in cases:
        result = by_id.get(case["id"])
        prefix = f"[{case['id']}]"
        for flag, _ in _flag_values(case["args"]):
            if flag not in options:
                close = difflib.get_close_matches(flag, options, n=1)
                hint = f" (closest: {close[0]})" if close else ""
                failures.append(f"{prefix} flag {flag} is not an option of the engine's parser{hint}")
        if result is None or not result["ok"]:
            failures.append(f"{prefix} the engine's parser refused the command line: {(result or {}).get('error')}")
            continue
        parsed = {f["flag"]: f["value"] for f in result["flags"]}
        for flag, values in _flag_values(case["args"]):
            if flag in parsed and not _parsed_as_sent(values, parsed[flag]):
                failures.append(f"{prefix} flag {flag} {' '.join(values)} parsed as {json.dumps(parsed[flag])}")
        if case["args"] and not case["args"][0].startswith("-"):
            positional = case["args"][0]
            if not any(p["value"] == positional for p in result["positionals"]):
                failures.append(f"{prefix} the positional {positional} was not parsed as the engine's model argument")
    return _result(LAUNCH, len(cases), failures)


def judge_routes(cases: list[dict[str, str]], routes: list[dict[str, Any]]) -> CheckResult:
    failures = []
    for case in cases:
        methods = [r["methods"] for r in routes if r["path"] == case["path"]]
        # A mounted app (vLLM's /metrics) lists no methods.
        if not any(case["method"] in m or not m for m in methods):
            failures.append(f"no {case['method']} {case['path']} in the engine's routes")
    return _result(ENDPOINTS, len(cases), failures)


def _equal(sent: Any, held: Any) -> bool:
    if isinstance(sent, bool) or isinstance(held, bool):
        return sent is held
    if isinstance(sent, int | float) and isinstance(held, int | float):
        return math.isclose(sent, held)
    return bool(sent == held)


def compare_body(sent: Any, view: Any, model: str, path: str = "") -> list[str]:
    """Where the engine's validated model (`view`, its declared fields only) does not hold what was sent."""
    if isinstance(sent, dict):
        if not isinstance(view, dict):
            return [f"field `{path}`: sent an object, {model} holds {json.dumps(view)[:200]}"]
        problems = []
        for key, value in sent.items():
            where = f"{path}.{key}" if path else key
            if key in view:
                problems += compare_body(value, view[key], model, where)
            elif key in view.get("__extra__", ()):
                problems.append(f"field `{where}` is not a field of {model}: accepted as an extra and ignored")
            else:
                problems.append(f"field `{where}` is not a field of {model}: dropped")
        return problems
    if isinstance(sent, list):
        if not isinstance(view, list) or len(view) != len(sent):
            return [f"field `{path}`: sent {len(sent)} items, {model} holds {json.dumps(view)[:200]}"]
        return [
            p
            for i, (s, v) in enumerate(zip(sent, view, strict=True))
            for p in compare_body(s, v, model, f"{path}[{i}]")
        ]
    if not _equal(sent, view):
        return [f"field `{path}`: sent {json.dumps(sent)}, {model} holds {json.dumps(view)[:200]}"]
    return []


def judge_bodies(check: str, cases: list[dict[str, Any]], probed: list[dict[str, Any]]) -> CheckResult:
    by_id = {r["id"]: r for r in probed}
    failures: list[str] = []
    notes: set[str] = set()
    for case in cases:
        result = by_id.get(case["id"], {"ok": False, "error": "not probed"})
        prefix = f"[{case['id']}] POST {case['path']}"
        if not result["ok"]:
            model = result.get("model", "the engine")
            failures.append(f"{prefix}: {model} refused the body: {result['error']}")
            continue
        failures += [f"{prefix}: {p}" for p in compare_body(case["body"], result["view"], result["model"])]
        notes.update(result.get("warnings", ()))
    return _result(check, len(cases), failures, sorted(notes))


def judge_metrics(names: dict[str, list[str]], found: dict[str, list[str]], package: str) -> CheckResult:
    failures, notes = [], []
    for role, candidates in names.items():
        if not candidates:
            continue
        present = [n for n in candidates if found.get(n)]
        if not present:
            failures.append(f"metric {role}: none of {', '.join(candidates)} occurs in {package}'s source")
        for name in candidates:
            if name in present:
                notes.append(f"{name}: {', '.join(found[name])}")
            elif present:
                notes.append(f"{name} (another release's name for {role}) does not occur in this version")
    return _result(METRICS, sum(map(len, names.values())), failures, notes)


Replay = list[tuple[Any, ...]]


def replay(payloads: list[str]) -> Replay:
    """What the codec makes of a stream's payloads: each chunk, the last one, or the error it raises."""
    assembler = oai.StreamAssembler("served", top_logprobs=5, tools=ToolCallReader(accept=True, parallel=True))
    out: Replay = []
    try:
        for payload in payloads:
            chunk = assembler.feed(payload)
            if chunk is not None:
                out.append(_chunk(chunk))
        out.append(_chunk(assembler.last()))
    except BailuError as exc:
        out.append(("error", type(exc).__name__, exc.message))
    return out


def _chunk(chunk: GenerateChunk) -> tuple[Any, ...]:
    return (chunk.text, chunk.token_count, chunk.finish_reason, chunk.usage, chunk.logprobs, chunk.tool_calls)


def judge_responses(
    streams: list[dict[str, Any]],
    probed_streams: list[dict[str, Any]],
    errors: list[dict[str, Any]],
    probed_errors: list[dict[str, Any]],
    other_releases: dict[str, str],
) -> CheckResult:
    failures: list[str] = []
    notes: list[str] = []
    by_id = {s["id"]: s for s in probed_streams}
    for stream in streams:
        chunks = by_id.get(stream["id"], {"chunks": []})["chunks"]
        if len(chunks) != len(stream["payloads"]):
            failures.append(f"[{stream['id']}] the probe returned {len(chunks)} of {len(stream['payloads'])} chunks")
            continue
        refused = [(i, c) for i, c in enumerate(chunks) if not c["ok"]]
        for i, c in refused:
            sample = f"{stream['id']} #{i}"
            (notes if sample in other_releases else failures).append(
                f"[{sample}] the engine's {c['kind']} model refused the sample: {c['error']}"
                + (f" ({other_releases[sample]})" if sample in other_releases else "")
            )
        if refused:
            continue
        _compare_replays(stream["id"], stream["payloads"], [c["payload"] for c in chunks], failures)
    errors_by_id = {e["id"]: e for e in probed_errors}
    for error in errors:
        result = errors_by_id.get(error["id"], {"ok": False, "error": "not probed"})
        sample = error["id"]
        if not result["ok"]:
            (notes if sample in other_releases else failures).append(
                f"[{sample}] the engine's error model refused the body: {result['error']}"
                + (f" ({other_releases[sample]})" if sample in other_releases else "")
            )
            continue
        ours = _read_error(error["status"], json.dumps(error["body"]))
        engines = _read_error(error["status"], result["payload"])
        if ours != engines:
            failures.append(f"[{sample}] the codec reads the engine's serialisation as {engines}, the sample as {ours}")
    return _result(RESPONSES, len(streams) + len(errors), failures, notes)


def _read_error(status: int, body: str) -> tuple[str, str]:
    message = oai.error_message(body)
    return type(oai.map_error(status, message)).__name__, message


def _compare_replays(stream_id: str, ours: list[str], engines: list[str], failures: list[str]) -> None:
    a, b = replay(ours), replay(engines)
    if a == b:
        return
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            failures.append(
                f"[{stream_id}] the codec reads the engine's serialisation differently at chunk {i}: {y} vs {x}"
            )
            return
    failures.append(
        f"[{stream_id}] the codec reads {len(b)} chunks from the engine's serialisation, {len(a)} from the sample"
    )


def _not_run(check: str, part: dict[str, Any]) -> CheckResult:
    return CheckResult(check, Status.NOT_RUN, failures=[part["error"]])


def judge(cases: dict[str, Any], probed: dict[str, Any], other_releases: dict[str, str]) -> list[CheckResult]:
    """Every check of one engine, from its cases and the probe's output."""
    package = cases["engine"]

    def part(check: str, key: str, run: Callable[[Any], CheckResult]) -> CheckResult:
        section = probed.get(key) or {"ran": False, "error": f"the probe returned no {key}"}
        return run(section["result"]) if section["ran"] else _not_run(check, section)

    results = [
        part(LAUNCH, "launch", lambda r: judge_launch(cases["launch"], r)),
        part(ENDPOINTS, "routes", lambda r: judge_routes(cases["routes"], r)),
        part(REQUESTS, "requests", lambda r: judge_bodies(REQUESTS, cases["requests"], r)),
    ]
    if cases["adapters"]:
        results.append(part(ADAPTERS, "adapters", lambda r: judge_bodies(ADAPTERS, cases["adapters"], r)))
    else:
        results.append(
            CheckResult(
                ADAPTERS,
                Status.NOT_APPLICABLE,
                notes=["no runtime adapter calls: adapters are loaded by restarting with them (see launch flags)"],
            )
        )
    results.append(part(METRICS, "metrics", lambda r: judge_metrics(cases["metrics"], r, package)))
    streams, errors = probed.get("streams") or {}, probed.get("errors") or {}
    if not streams.get("ran") or not errors.get("ran"):
        results.append(_not_run(RESPONSES, streams if not streams.get("ran") else errors))
    else:
        results.append(
            judge_responses(cases["streams"], streams["result"], cases["errors"], errors["result"], other_releases)
        )
    return results
