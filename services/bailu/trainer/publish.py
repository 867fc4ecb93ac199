"""Publishing a run's result to the model registry.

With a Redis URL the changes go through `ModelRegistry`, so that the index and the change events
(`bailu:registry:events`) follow the files. If Redis fails half-way, the files are the source of
truth: the same steps are completed on the files alone (publishing is idempotent, alias changes
are no-ops when already done) and the caller is told that the index needs a rebuild.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bailu.registry import Aliases, Manifest, ModelRegistry, Registry, RegistryIndex
from bailu.registry.model import Status

log = logging.getLogger(__name__)

MERGED_SUFFIX = "-merged"


@dataclass(frozen=True, slots=True)
class Release:
    """What to publish: the adapter directory, its manifest fields, and derived exports."""

    name: str
    adapter_dir: Path
    fields: dict[str, Any]  # base_model, base_model_sha256, dataset_version, config, metrics, parent
    accepted: bool
    canary_weight: float
    exports: tuple[tuple[str, Path], ...] = ()  # (export name, directory), published only when accepted


@dataclass(frozen=True, slots=True)
class Published:
    version: str
    status: str
    aliases: Aliases
    exports: dict[str, str]  # export name -> version
    indexed: bool  # whether the Redis index and events were updated


async def _apply(target: ModelRegistry, release: Release) -> Published:
    """Adapter version (candidate + canary when accepted, else rejected), then its exports when accepted."""
    indexed = target.indexed
    status: Status = "candidate" if release.accepted else "rejected"
    version = await target.publish("adapter", release.name, release.adapter_dir, status=status, **release.fields)
    if not release.accepted:
        aliases = target.registry.aliases("adapter", release.name)
        return Published(version.version, version.manifest.status, aliases, {}, indexed)
    aliases = await target.set_canary("adapter", release.name, version.version, release.canary_weight)
    exports: dict[str, str] = {}
    for export_name, folder in release.exports:
        fields = {**release.fields, "parent": version.version}
        exports[export_name] = (await target.publish("export", export_name, folder, **fields)).version
    return Published(version.version, version.manifest.status, aliases, exports, indexed)


def publish(registry: Registry, redis_url: str, release: Release) -> Published:
    if redis_url:
        from redis.asyncio import Redis
        from redis.exceptions import RedisError

        async def indexed() -> Published:
            client = Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=5)
            try:
                return await _apply(ModelRegistry(registry, RegistryIndex(client)), release)
            finally:
                await client.aclose()

        try:
            return asyncio.run(indexed())
        except (RedisError, OSError) as exc:
            log.warning("registry index update failed; completing on the files", extra={"error": str(exc)})
    return asyncio.run(_apply(ModelRegistry(registry), release))


def production(registry: Registry, name: str) -> Manifest | None:
    """The production version of an adapter name, or None."""
    current = registry.aliases("adapter", name).production
    return registry.manifest("adapter", name, current) if current else None


def ping(redis_url: str) -> None:
    """Raise if Redis cannot be reached (checked before any training)."""
    from redis import Redis

    client = Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=5)
    try:
        client.ping()
    finally:
        client.close()
