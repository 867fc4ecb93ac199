"""Build the engine a worker's settings ask for; heavy engines are imported lazily."""

from __future__ import annotations

from bailu.worker.engines.base import Engine
from bailu.worker.settings import EngineKind, WorkerSettings


def create_engine(settings: WorkerSettings) -> Engine:
    """The engine for `settings.engine`, not yet started."""
    if settings.engine is EngineKind.SIM:
        from bailu.worker.engines.sim import SimEngine

        return SimEngine.from_settings(settings)
    if settings.engine is EngineKind.TRANSFORMERS:
        from bailu.worker.engines.transformers import TransformersEngine

        return TransformersEngine.from_settings(settings)
    if settings.engine in (EngineKind.VLLM, EngineKind.SGLANG, EngineKind.LMDEPLOY, EngineKind.SWIFT):
        # The engine runs in its own server process; the worker only needs an HTTP client here.
        from bailu.worker.engines.http import HttpEngine

        return HttpEngine.from_settings(settings)
    raise ValueError(f"unknown engine {settings.engine!r}")  # pragma: no cover - enum is exhaustive
