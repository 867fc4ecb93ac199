"""LoRA adapter directories as every engine reads them, and the names engines know them by."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from bailu.common.errors import InvalidRequest, ModelNotFound

ADAPTER_CONFIG = "adapter_config.json"


def engine_adapter_name(name: str, path: str) -> str:
    """The name the engine knows an adapter by: safe characters, plus a digest of the path, so that a new
    version under the same name is a different engine adapter."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:48]
    return f"{safe}-{hashlib.sha256(path.encode()).hexdigest()[:10]}"


def read_adapter_config(path: str) -> tuple[bytes, Any]:
    """The `adapter_config.json` of the PEFT adapter at `path`, as read and as parsed; refuses a directory
    without one (`ModelNotFound`) or one that is not JSON (`InvalidRequest`)."""
    config_file = Path(path) / ADAPTER_CONFIG
    if not config_file.is_file():
        raise ModelNotFound(f"no LoRA adapter at '{path}' ({ADAPTER_CONFIG} missing)", param="path")
    data = config_file.read_bytes()
    try:
        return data, json.loads(data)
    except ValueError as exc:
        raise InvalidRequest(
            f"'{path}' is not a valid LoRA adapter: {ADAPTER_CONFIG} is not JSON", param="path"
        ) from exc
