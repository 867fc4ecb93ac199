"""The `bailu` operator command line: the model registry, dataset versions, and training runs."""

from bailu.cli.main import main

__all__ = ["main"]
