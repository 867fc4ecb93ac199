"""The LoRA adapter lifecycle on an engine server: load, unload, restart to apply, roll back.

vLLM and SGLang load and unload adapters at run time through their HTTP endpoints. LmDeploy and
ms-swift read adapters only at start: loading one restarts the server with the new adapter list (the
restart waits for requests in flight to finish first, and requests wait while it restarts; a restart
that fails rolls back to the previous list), and unloading only forgets the name until the next
restart. Engine-side adapter names carry a digest of the path (`engine_adapter_name`), so that a new
version under the same name is loaded next to the old one before the name switches over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from bailu.common.errors import BailuError, InvalidRequest
from bailu.worker.engines.adapters import ADAPTER_CONFIG, engine_adapter_name, read_adapter_config
from bailu.worker.engines.server import openai_http as oai
from bailu.worker.engines.server.supervisor import EngineStartError

if TYPE_CHECKING:
    import httpx

    from bailu.worker.engines.server.process import EngineServer

log = logging.getLogger(__name__)


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


class AdapterLifecycle:
    """The adapters of one engine server. `adapters` (adapter name -> path) is the engine's own table,
    changed in place; loads and unloads run one at a time."""

    def __init__(self, server: EngineServer, adapters: dict[str, str]) -> None:
        self.server = server
        self.adapters = adapters
        self._lock = asyncio.Lock()

    @property
    def _kind(self) -> str:
        return self.server.kind

    def engine_name(self, name: str) -> str:
        """The engine-side name of loaded adapter `name`."""
        return engine_adapter_name(name, self.adapters[name])

    def engine_names(self) -> set[str]:
        """The engine-side names of the loaded adapters (names of different versions may share one)."""
        return {engine_adapter_name(name, path) for name, path in self.adapters.items()}

    async def load(self, name: str, path: str) -> None:
        """Make adapter `name` (a PEFT directory at `path`) available; idempotent for the same path."""
        config = self.server.config
        if not config.lora:
            raise InvalidRequest(
                f"the {self._kind} engine was started without LoRA support (BAILU_WORKER_MAX_LORAS=0)", param="name"
            )
        runtime = self.server.dialect.runtime_adapters
        engine_name = engine_adapter_name(name, path)
        async with self._lock:
            if self.adapters.get(name) == path and (runtime or engine_name in self.server.launched):
                return
            await asyncio.to_thread(check_adapter, path, config.max_lora_rank)
            if runtime:
                await self._load_runtime(name, path, engine_name)
            else:
                await self._load_by_restart(name, path, engine_name)

    async def unload(self, name: str, forget: Callable[[str], Awaitable[None]]) -> None:
        """Forget adapter `name` with `forget` (which raises for an unknown one), then free it on the server
        when no other name uses it. Engines that read adapters at start keep it until their next restart;
        requests no longer reach it."""
        async with self._lock:
            engine_name = self.engine_name(name) if name in self.adapters else ""
            await forget(name)
            if self.server.dialect.runtime_adapters and engine_name not in self.engine_names():
                await self._unload_runtime(engine_name)

    async def _load_runtime(self, name: str, path: str, engine_name: str) -> None:
        load_path = self.server.dialect.load_adapter_path
        assert load_path is not None
        if engine_name not in self.engine_names():
            await self.server.wait_until_ready()
            response = await self.server.control(load_path, oai.adapter_request(engine_name, path))
            if response.status_code != 200 and not already_loaded(response):
                raise adapter_error(self._kind, name, response)
        old = self.engine_name(name) if name in self.adapters else ""
        self.adapters[name] = path
        if old and old != engine_name and old not in self.engine_names():
            await self._unload_runtime(old)

    async def _unload_runtime(self, engine_name: str) -> None:
        unload_path = self.server.dialect.unload_adapter_path
        assert unload_path is not None
        try:
            response = await self.server.control(unload_path, oai.adapter_request(engine_name))
        except BailuError as exc:
            log.warning("adapter unload failed", extra={"engine_adapter": engine_name, "error": exc.message})
            return
        if response.status_code != 200:
            log.warning(
                "adapter unload refused",
                extra={"engine_adapter": engine_name, "error": oai.error_message(response.content)},
            )

    async def _load_by_restart(self, name: str, path: str, engine_name: str) -> None:
        previous = dict(self.adapters)
        self.adapters[name] = path
        if engine_name in self.server.launched:
            return  # the running server has it already (unloaded, then loaded again)
        try:
            await self.server.restart_when_idle("load adapter " + name)
        except EngineStartError as exc:
            self.adapters.clear()
            self.adapters.update(previous)
            log.error("engine did not start with the new adapter; rolling back", extra={"adapter": name})
            await self.server.restart_when_idle("roll back adapter " + name)
            raise InvalidRequest(
                f"the {self._kind} engine did not start with adapter '{name}' ({path}): {str(exc)[-800:]}",
                param="path",
            ) from exc
