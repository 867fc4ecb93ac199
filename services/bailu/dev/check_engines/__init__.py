"""`make check-engines`: the engine-server dialects checked against the engines' own code, at the pinned versions.

vLLM, SGLang and LmDeploy cannot serve on a CPU machine, but their command-line parsers, pydantic request and
response models, FastAPI routers and metrics code import without a GPU. Each engine is installed into its own
virtual environment (`.cache/engines/<engine>-<version>/`, from the pins in `worker/engines/versions.py`: the
engines' pins conflict with the worker's and with each other's), and the check runs in three phases:

1. `cases.py` (this venv): every contract the worker has with the engine, produced by the worker's own code: the
   launch argv of every combination the settings can produce (`Dialect.argv`), every request body `HttpEngine`
   builds (`openai_http.request_body`), the LoRA load/unload bodies and paths, the health, metrics and endpoint
   paths, the metric names the dialect maps, and stream chunks and error bodies (the samples under
   `tests/fixtures/engines/` and a few built here), as JSON;
2. `probe.py` (the engine's venv, stdlib only on our side): each case against the engine's own parser, the
   request models of its routes, its router, its metrics source and its response models; one JSON verdict per
   case, or the exact import that failed;
3. `verdict.py` (this venv): what the probe saw compared with what was sent (a flag parsed into another value,
   a field the engine's model does not declare and so ignores or drops), and the engine-serialised chunks replayed
   through the codec; each failure names the flag or field.

`report.py` writes `bench/results/check_engines.json` and the table in `docs/engines.md`; `install.py` builds
the venvs. A check that cannot run (an import needing CUDA) is reported with the failing import and is not passed.
"""
