"""Generation engines behind the worker, and the registry that builds them."""

from bailu.worker.engines.base import Engine
from bailu.worker.engines.registry import create_engine

__all__ = ["Engine", "create_engine"]
