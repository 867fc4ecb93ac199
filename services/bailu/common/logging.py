"""JSON-lines logging with a request id that crosses the gRPC hop."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from typing import Any

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


def reset_request_id(token: contextvars.Token[str]) -> None:
    """Undo `request_id_var.set(...)` from the `finally` of an async generator (a streaming RPC's handler).

    An abandoned async generator is closed by asyncio's finalizer in a new task, whose context is not the one
    the token came from: `reset` then raises ValueError ("created in a different Context") out of the
    generator's cleanup, logged as a task exception nobody retrieved. That context is a throwaway copy, so
    there is nothing to restore in it."""
    with contextlib.suppress(ValueError):
        request_id_var.reset(token)


_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id and any `extra` fields."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid:
            entry["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(service: str, level: str = "INFO") -> None:
    """Send every logger's records to stderr as JSON lines (called once by each `__main__`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries that log every access or configure their own handlers.
    for noisy in ("uvicorn.access", "httpx", "swift", "transformers", "modelscope"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def reclaim_logging(*library_loggers: str) -> None:
    """Undo what a library's import did to logging (ms-swift raises the root handlers' level to ERROR
    and prints through handlers of its own): every record goes through the JSON handler again, and
    the named libraries log warnings and errors only."""
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.NOTSET)
    for name in library_loggers:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.WARNING)
