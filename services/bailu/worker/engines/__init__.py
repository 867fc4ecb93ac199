"""Generation engines behind the worker: the interface, the in-process engines (`sim`, `transformers`),
the engine servers (`server/`), and the factory that builds one by name."""

from bailu.worker.engines.base import Engine
from bailu.worker.engines.factory import create_engine

__all__ = ["Engine", "create_engine"]
