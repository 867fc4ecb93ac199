"""Phase 2: run with an engine's own Python (`<venv>/bin/python probe.py CASES OUT`); stdlib only on our side.

It imports nothing of Bailu (the engine's pins conflict with the worker's): it reads the cases `cases.py` wrote,
puts each to the engine's own code and writes what that code said, raw, for `verdict.py` to judge:
- launch: the engine's argparse parser (`ENGINES[...].parser`): parsed or the parser's error, the dest and value of
  each flag given, and every option string it knows;
- routes, requests, adapters: the engine's FastAPI app (`ENGINES[...].app`): its routes, and each body validated
  against the body model of the route at its path, seen back through the model's declared fields only
  (`declared_view`), so that an undeclared field (ignored as an extra, or dropped) shows;
- metrics: where each name occurs in the engine package's source;
- streams and errors: each payload validated against the engine's response model and serialised as its server
  does, or the validation error.
A part whose import fails is reported as not run, with the module and the exception.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import functools
import importlib
import importlib.metadata
import importlib.util
import io
import json
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Model:
    """A response model (`module:Class`) and the keyword arguments its server serialises it with."""

    path: str
    dump: dict[str, Any] = field(default_factory=dict)
    # `model_dump` + json.dumps instead of `model_dump_json` (vLLM's streaming errors)
    via_dict: bool = False


@dataclass(frozen=True)
class Engine:
    package: str
    # The parser of the whole command; `prefix` is what the dialect's command puts before the flags (subcommands).
    parser: Callable[[], argparse.ArgumentParser]
    app: Callable[[argparse.Namespace | None], Any]
    chat: Model
    completion: Model
    # The body of an HTTP error; in a stream, the event wraps it under `stream_error_key` when set.
    error: Model
    prefix: tuple[str, ...] = ()
    stream_error_key: str | None = None
    # The serialisation of a usage-only chunk, when the server serialises it otherwise.
    usage: dict[str, Any] | None = None


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


# --- vLLM 0.32: `vllm serve` -----------------------------------------------------------------------------------


def _vllm_parser() -> argparse.ArgumentParser:
    flexible = _load("vllm.utils.argparse_utils:FlexibleArgumentParser")
    make_arg_parser = _load("vllm.entrypoints.launchers.cli_args:make_arg_parser")
    parser: argparse.ArgumentParser = make_arg_parser(flexible())
    return parser


def _vllm_app(args: argparse.Namespace | None) -> Any:
    fastapi = importlib.import_module("fastapi")
    register = _load("vllm.entrypoints.launchers.api_server.routers:register_api_routers")
    app = fastapi.FastAPI()
    app.state.args = args
    register(args, app, ("generate",), None)
    return app


VLLM = Engine(
    package="vllm",
    parser=_vllm_parser,
    app=_vllm_app,
    # vllm/entrypoints/openai/{chat_completion,completion}/serving.py: chunk.model_dump_json(exclude_unset=True),
    # the final usage chunk with exclude_none too; errors: create_error_response(...).model_dump(), json.dumps.
    chat=Model(
        "vllm.entrypoints.openai.chat_completion.protocol:ChatCompletionStreamResponse", {"exclude_unset": True}
    ),
    completion=Model("vllm.entrypoints.openai.completion.protocol:CompletionStreamResponse", {"exclude_unset": True}),
    error=Model("vllm.entrypoints.serve.engine.protocol:ErrorResponse", via_dict=True),
    usage={"exclude_unset": True, "exclude_none": True},
)

# --- SGLang 0.5: `python -m sglang.launch_server` (server_args.prepare_server_args) ------------------------------


def _sglang_parser() -> argparse.ArgumentParser:
    server_args = _load("sglang.srt.server_args:ServerArgs")
    parser = argparse.ArgumentParser(prog="sglang serve")
    server_args.add_cli_args(parser)
    return parser


def _sglang_app(args: argparse.Namespace | None) -> Any:
    app = _load("sglang.srt.entrypoints.http_server:app")
    if getattr(args, "enable_metrics", False):
        # As http_server.py's lifespan does with --enable-metrics: /metrics mounted over the multiprocess registry.
        common = importlib.import_module("sglang.srt.utils.common")
        common.set_prometheus_multiproc_dir()
        common.add_prometheus_middleware(app)
    return app


SGLANG = Engine(
    package="sglang",
    parser=_sglang_parser,
    app=_sglang_app,
    # sglang/srt/entrypoints/openai/serving_{chat,completions}.py: chunk.model_dump_json(); errors:
    # ErrorResponse(...).model_dump(), in a stream json.dumps({"error": ...}) (serving_base.py).
    chat=Model("sglang.srt.entrypoints.openai.protocol:ChatCompletionStreamResponse"),
    completion=Model("sglang.srt.entrypoints.openai.protocol:CompletionStreamResponse"),
    error=Model("sglang.srt.entrypoints.openai.protocol:ErrorResponse", via_dict=True),
    stream_error_key="error",
)

# --- LmDeploy 0.16: `lmdeploy serve api_server` -------------------------------------------------------------------


def _lmdeploy_parser() -> argparse.ArgumentParser:
    cli = _load("lmdeploy.cli.cli:CLI")
    _load("lmdeploy.cli.serve:SubCliServe").add_parsers()
    parser: argparse.ArgumentParser = cli.parser
    return parser


def _lmdeploy_app(args: argparse.Namespace | None) -> Any:
    # serve/openai/api_server.py `serve`: the OpenAI router on a FastAPI app, /metrics mounted when enabled.
    fastapi = importlib.import_module("fastapi")
    api_server = importlib.import_module("lmdeploy.serve.openai.api_server")
    config = _load("lmdeploy.messages:PytorchEngineConfig")()
    app = fastapi.FastAPI()
    app.include_router(api_server.create_openai_router(api_server.ServerContext()))
    api_server.mount_metrics(app, config)
    return app


LMDEPLOY = Engine(
    package="lmdeploy",
    parser=_lmdeploy_parser,
    app=_lmdeploy_app,
    prefix=("serve", "api_server"),
    # serve/openai/{chat_completions/serving.py,endpoints/completions.py}: model_dump(mode="json",
    # exclude_none=True), json.dumps; errors.py: ErrorResponse(...).model_dump(), in a stream {"error": ...}.
    chat=Model(
        "lmdeploy.serve.openai.protocol:ChatCompletionStreamResponse", {"mode": "json", "exclude_none": True}, True
    ),
    completion=Model(
        "lmdeploy.serve.openai.protocol:CompletionStreamResponse", {"mode": "json", "exclude_none": True}, True
    ),
    error=Model("lmdeploy.serve.openai.protocol:ErrorResponse", via_dict=True),
    stream_error_key="error",
)

ENGINES: dict[str, Engine] = {"vllm": VLLM, "sglang": SGLANG, "lmdeploy": LMDEPLOY}


# --- the checks ----------------------------------------------------------------------------------------------


class NotRun(Exception):
    """A part of the probe that could not run: the import (or set-up call) that failed."""


def _failure(what: str, exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" at {Path(last[0].filename).name}:{last[0].lineno}" if last else ""
    return f"{what}: {type(exc).__name__}: {str(exc).strip()[:600]}{where}"


def _guard(what: str, make: Callable[[], Any]) -> Any:
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return make()
    except Exception as exc:
        raise NotRun(_failure(what, exc)) from exc


def json_safe(value: Any, depth: int = 0) -> Any:
    """A parsed value as JSON: containers recursed, enums by value, objects by their attributes."""
    if depth > 8:
        return repr(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, enum.Enum):
        return json_safe(value.value, depth + 1)
    if isinstance(value, dict):
        return {str(k): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v, depth + 1) for v in value]
    if hasattr(value, "model_dump"):
        return json_safe(value.model_dump(), depth + 1)
    if hasattr(value, "__dict__"):
        return {k: json_safe(v, depth + 1) for k, v in vars(value).items() if not k.startswith("_")}
    return repr(value)


def declared_view(value: Any) -> Any:
    """A validated request seen through its models' declared fields (by their names on the wire); each model's
    undeclared fields are listed under `__extra__` and not shown. Plain containers are kept as they are."""
    fields = getattr(type(value), "model_fields", None)
    if isinstance(fields, dict):
        out: dict[str, Any] = {}
        for name, info in fields.items():
            alias = info.validation_alias if isinstance(info.validation_alias, str) else info.alias
            out[alias or name] = declared_view(getattr(value, name, None))
        extra = getattr(value, "model_extra", None) or {}
        if extra:
            out["__extra__"] = sorted(extra)
        return out
    struct = _struct_view(value)
    if struct is not None:
        return struct
    if isinstance(value, dict):
        return {str(k): declared_view(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [declared_view(v) for v in value]
    return json_safe(value)


def _subparser(parser: argparse.ArgumentParser, prefix: tuple[str, ...]) -> argparse.ArgumentParser:
    """The parser of the subcommand `prefix` names (`serve api_server`), whose options the flags are."""
    for name in prefix:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers or name not in subparsers[0].choices:
            raise NotRun(f"the engine's parser has no subcommand {name!r}")
        parser = subparsers[0].choices[name]
    return parser


def probe_launch(engine: Engine, cases: list[dict[str, Any]]) -> tuple[dict[str, Any], argparse.Namespace | None]:
    parser = _guard("building the CLI parser", engine.parser)
    leaf = _subparser(parser, engine.prefix)
    options = {opt: action for action in leaf._actions for opt in action.option_strings}
    results = []
    first: argparse.Namespace | None = None
    for case in cases:
        args = case["args"]
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                ns = parser.parse_args([*engine.prefix, *args])
        except SystemExit as exc:
            text = err.getvalue().strip()
            message = "\n".join(line for line in text.splitlines() if "error:" in line) or text[-600:]
            results.append({"id": case["id"], "ok": False, "error": f"exit {exc.code}: {message[:600]}"})
            continue
        except Exception as exc:
            results.append({"id": case["id"], "ok": False, "error": _failure("parse_args", exc)})
            continue
        first = first or ns
        flags = []
        for token in args:
            flag = token.split("=", 1)[0]
            if token.startswith("--") and flag in options:
                action = options[flag]
                flags.append({"flag": flag, "dest": action.dest, "value": json_safe(getattr(ns, action.dest, None))})
        positionals = [
            {"dest": a.dest, "value": json_safe(getattr(ns, a.dest, None))}
            for a in leaf._actions
            if not a.option_strings
        ]
        results.append({"id": case["id"], "ok": True, "flags": flags, "positionals": positionals})
    return {"options": sorted(options), "results": results}, first


def _route_model(route: Any) -> Any:
    dependant = getattr(route, "dependant", None)
    body = getattr(dependant, "body_params", None) or []
    if not body:
        return None
    param = body[0]
    return getattr(param, "type_", None) or param.field_info.annotation


def _flat_routes(routes: list[Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(path, route) for every route, those of included routers (FastAPI's `_IncludedRouter`) too."""
    out = []
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            context = getattr(route, "include_context", None)
            out += _flat_routes(included.routes, prefix + (getattr(context, "prefix", "") or ""))
        elif getattr(route, "path", None) is not None:
            out.append((prefix + route.path, route))
    return out


def _routes(app: Any) -> list[dict[str, Any]]:
    routes = []
    for path, route in _flat_routes(app.routes):
        model = _route_model(route)
        methods = sorted(getattr(route, "methods", None) or [])
        routes.append({"path": path, "methods": methods, "body_model": getattr(model, "__qualname__", None)})
    return routes


def _validate(model: Any, body: Any) -> Any:
    """`body` validated as FastAPI validates the route's body: a pydantic model, or another type (a dataclass,
    SGLang's msgspec Structs with their pydantic core schema) through a pydantic TypeAdapter."""
    if hasattr(model, "model_validate"):
        return model.model_validate(body)
    return importlib.import_module("pydantic").TypeAdapter(model).validate_python(body)


def _struct_view(value: Any) -> Any:
    names = getattr(type(value), "__struct_fields__", None)
    if names is None and dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = [f.name for f in dataclasses.fields(value)]
    if names is None:
        return None
    return {name: declared_view(getattr(value, name, None)) for name in names}


def probe_bodies(app: Any, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_path = {path: r for path, r in _flat_routes(app.routes) if "POST" in (getattr(r, "methods", None) or ())}
    results = []
    for case in cases:
        route = by_path.get(case["path"])
        if route is None:
            results.append(
                {"id": case["id"], "ok": False, "error": f"no POST route {case['path']} in the engine's app"}
            )
            continue
        model = _route_model(route)
        if model is None:
            results.append({"id": case["id"], "ok": False, "error": f"POST {case['path']} takes no body model"})
            continue
        name = f"{model.__module__}.{model.__qualname__}"
        try:
            validated = _validate(model, case["body"])
        except Exception as exc:
            results.append({"id": case["id"], "ok": False, "model": name, "error": str(exc)[:2000]})
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            view = declared_view(validated)
        # Deprecations of fields we send (the view reads every field; only those of the body are ours).
        sent = case["body"]
        notes = sorted({str(w.message) for w in caught if str(w.message).split(" ", 1)[0] in sent})
        results.append({"id": case["id"], "ok": True, "model": name, "view": view, "warnings": notes})
    return results


def _serialise(model: Any, spec: Model, kwargs: dict[str, Any], data: Any) -> dict[str, Any]:
    try:
        validated = model.model_validate(data)
    except Exception as exc:
        return {"ok": False, "error": str(exc)[:2000]}
    text = json.dumps(validated.model_dump(**kwargs)) if spec.via_dict else validated.model_dump_json(**kwargs)
    return {"ok": True, "payload": text}


def probe_streams(engine: Engine, streams: list[dict[str, Any]]) -> list[dict[str, Any]]:
    models = {
        kind: (_guard(f"importing {spec.path}", functools.partial(_load, spec.path)), spec)
        for kind, spec in (("chat", engine.chat), ("completion", engine.completion), ("error", engine.error))
    }
    results = []
    for stream in streams:
        out = []
        for payload in stream["payloads"]:
            data = json.loads(payload)
            kind = "error" if isinstance(data, dict) and "error" in data else stream["kind"]
            model, spec = models[kind]
            kwargs = dict(spec.dump)
            if kind != "error" and engine.usage is not None and data.get("choices") == []:
                kwargs = dict(engine.usage)
            key = engine.stream_error_key if kind == "error" else None
            if key is not None and isinstance(data.get(key), dict):
                result = _serialise(model, spec, kwargs, data[key])
                if result["ok"]:
                    result["payload"] = json.dumps({key: json.loads(result["payload"])})
            else:
                result = _serialise(model, spec, kwargs, data)
            out.append({"kind": kind, **result})
        results.append({"id": stream["id"], "chunks": out})
    return results


def probe_errors(engine: Engine, errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    model = _guard(f"importing {engine.error.path}", lambda: _load(engine.error.path))
    return [{"id": e["id"], **_serialise(model, engine.error, dict(engine.error.dump), e["body"])} for e in errors]


def probe_metrics(engine: Engine, names: dict[str, list[str]]) -> dict[str, list[str]]:
    spec = importlib.util.find_spec(engine.package)
    if spec is None or not spec.submodule_search_locations:
        raise NotRun(f"the package {engine.package} is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    wanted = {n for group in names.values() for n in group}
    found: dict[str, list[str]] = {n: [] for n in wanted}
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(errors="replace")
        for name in wanted:
            if f'"{name}' in text or f"'{name}" in text:
                found[name].append(str(path.relative_to(root.parent)))
    return found


def _part(out: dict[str, Any], key: str, run: Callable[[], Any]) -> Any:
    try:
        result = run()
    except NotRun as exc:
        out[key] = {"ran": False, "error": str(exc)}
        return None
    out[key] = {"ran": True, "result": result}
    return result


def run(cases: dict[str, Any]) -> dict[str, Any]:
    engine = ENGINES[cases["engine"]]
    os.environ.update(cases["env"])
    out: dict[str, Any] = {"engine": cases["engine"], "python": sys.version.split()[0]}
    try:
        out["installed"] = importlib.metadata.version(engine.package)
    except importlib.metadata.PackageNotFoundError:
        out["installed"] = None
    launch = _part(out, "launch", lambda: probe_launch(engine, cases["launch"]))
    namespace = launch[1] if launch else None
    if launch:
        out["launch"]["result"] = launch[0]
    app: Any = None

    def build_app() -> Any:
        nonlocal app
        app = _guard("building the engine's FastAPI app", lambda: engine.app(namespace))
        return _routes(app)

    _part(out, "routes", build_app)
    for key in ("requests", "adapters"):
        if app is None:
            out[key] = {"ran": False, "error": out["routes"]["error"]}
        else:
            _part(out, key, functools.partial(probe_bodies, app, cases[key]))
    _part(out, "metrics", lambda: probe_metrics(engine, cases["metrics"]))
    _part(out, "streams", lambda: probe_streams(engine, cases["streams"]))
    _part(out, "errors", lambda: probe_errors(engine, cases["errors"]))
    return out


def main() -> None:
    cases_path, out_path = sys.argv[1:3]
    result = run(json.loads(Path(cases_path).read_text()))
    Path(out_path).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
