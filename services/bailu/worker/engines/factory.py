"""Build an engine by its name (`BAILU_WORKER_ENGINE`); heavy engines are imported only when built."""

from __future__ import annotations

from collections.abc import Callable

from bailu.worker.engines.base import Engine
from bailu.worker.settings import EngineKind, WorkerSettings


def _sim(settings: WorkerSettings) -> Engine:
    from bailu.worker.engines.sim import SimEngine

    return SimEngine.from_settings(settings)


def _transformers(settings: WorkerSettings) -> Engine:
    from bailu.worker.engines.transformers import TransformersEngine

    return TransformersEngine.from_settings(settings)


def _engine_server(settings: WorkerSettings) -> Engine:
    # The engine runs in its own server process; the worker only needs an HTTP client here.
    from bailu.worker.engines.server.http import HttpEngine

    return HttpEngine.from_settings(settings)


# Engine name -> how to build it from the worker's settings.
FACTORIES: dict[EngineKind, Callable[[WorkerSettings], Engine]] = {
    EngineKind.SIM: _sim,
    EngineKind.TRANSFORMERS: _transformers,
    EngineKind.VLLM: _engine_server,
    EngineKind.SGLANG: _engine_server,
    EngineKind.LMDEPLOY: _engine_server,
    EngineKind.SWIFT: _engine_server,
}


def create_engine(settings: WorkerSettings) -> Engine:
    """The engine named by `settings.engine`, built from `settings`, not yet started."""
    return FACTORIES[settings.engine](settings)
