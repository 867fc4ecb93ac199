"""LoRA adapters on engine servers: what the worker checks before an engine sees one, and their names there."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bailu.common.errors import BailuError, InvalidRequest, ModelNotFound
from bailu.worker.engines import openai_http as oai

if TYPE_CHECKING:
    import httpx

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


def check_adapter(path: str, max_rank: int) -> None:
    """Refuse what the engine would refuse less clearly: no PEFT adapter at `path`, or a rank it cannot hold."""
    _, config = read_adapter_config(path)
    rank = config.get("r") if isinstance(config, dict) else None
    if not isinstance(rank, int):
        raise InvalidRequest(f"'{path}' is not a LoRA adapter: {ADAPTER_CONFIG} has no rank 'r'", param="path")
    if rank > max_rank:
        raise InvalidRequest(
            f"adapter rank {rank} is above this worker's BAILU_WORKER_MAX_LORA_RANK={max_rank}", param="path"
        )


def already_loaded(response: httpx.Response) -> bool:
    return response.status_code == 400 and "already" in oai.error_message(response.content).lower()


def adapter_error(kind: str, name: str, response: httpx.Response) -> BailuError:
    message = oai.error_message(response.content)
    if response.status_code in (400, 404, 422):
        return InvalidRequest(f"the {kind} engine refused adapter '{name}': {message}", param="path")
    return oai.map_error(response.status_code, message)
