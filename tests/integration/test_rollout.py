"""Serving new registry versions without restarts, with real processes: a real redis-server, real gRPC
workers (sim engine) following a registry in a temporary directory, and the real gateway. The registry is
changed through `ModelRegistry`, so that the index and the change events are the real ones.

The sim engine starts every adapter's text with the adapter's fingerprint, so each response's text proves
which version generated it, independently of the `model` the gateway reports."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from bailu.common import metrics as metric_names
from bailu.common import redis_keys
from bailu.common.records import CompletionRecord
from bailu.registry import ModelRegistry, Registry, RegistryIndex
from bailu.v1 import worker_pb2 as pb
from bailu.v1 import worker_pb2_grpc as pb_grpc
from bailu.worker.engines.sim import adapter_fingerprint
from tests.conftest import MODEL, RedisServer
from tests.integration.test_feedback_gateway import wait_for_record
from tests.integration.test_gateway import CHAT, chat_body, sse_events

NAME = "bailu-poet"
V1, V2 = f"{NAME}@v0001", f"{NAME}@v0002"
GRACE_S = 0.5


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.05)


@dataclass
class Rollout:
    root: Path
    sources: Path
    models: ModelRegistry

    def source(self, marker: str) -> Path:
        """A fake adapter (the sim engine reads only adapter_config.json) that differs by `marker`."""
        folder = self.sources / marker
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "marker": marker}))
        (folder / "adapter_model.safetensors").write_text(marker)
        return folder

    async def publish(self, marker: str) -> str:
        """Publish a fake adapter as the next version, through the registry's files, index and events."""
        folder = self.source(marker)
        version = await self.models.publish("adapter", NAME, folder, base_model=MODEL, dataset_version=marker)
        return version.version

    def fingerprint(self, served: str) -> str:
        version = served.split("@", 1)[1]
        return adapter_fingerprint(str(self.models.registry.version_dir("adapter", NAME, version)))


@pytest.fixture
def rollout(tmp_path: Path, redis: Redis) -> Rollout:
    root = tmp_path / "registry"
    return Rollout(root, tmp_path / "sources", ModelRegistry(Registry(root), RegistryIndex(redis)))


def worker_settings(rollout: Rollout, redis_server: RedisServer, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "registry_dir": str(rollout.root),
        "registry_redis_url": redis_server.url,
        # Long: within a test only change events (or the start) can explain a version being loaded.
        "registry_poll_s": 600,
        "adapter_unload_grace_s": GRACE_S,
        "sim_output_tokens": 4,
    }
    values.update(overrides)
    return values


async def ask(gateway: Any, http: httpx.AsyncClient, model: str = NAME, **kwargs: Any) -> httpx.Response:
    return await http.post(gateway.url + CHAT, json=chat_body(model=model, **kwargs), headers=gateway.headers)


async def served_by(gateway: Any, http: httpx.AsyncClient, count: int, rollout: Rollout) -> Counter[str]:
    """Send `count` requests for the alias name; check each text against the version it reports."""
    served: Counter[str] = Counter()
    for start in range(0, count, 20):
        batch = await asyncio.gather(*(ask(gateway, http) for _ in range(min(20, count - start))))
        for response in batch:
            assert response.status_code == 200, response.text
            body = response.json()
            words = body["choices"][0]["message"]["content"].split()
            assert words[0] == rollout.fingerprint(body["model"]), "the text is not the reported version's"
            served[body["model"]] += 1
    return served


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a Prometheus exposition, None when absent."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return None


async def model_ids(gateway: Any, http: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    listing = (await http.get(gateway.url + "/v1/models", headers=gateway.headers)).json()
    return {entry["id"]: entry for entry in listing["data"]}


async def test_versions_roll_out_canary_splits_and_rollback_retires(
    rollout, redis_server, redis, start_worker, start_gateway, http
) -> None:
    worker = await start_worker(**worker_settings(rollout, redis_server))
    gateway = await start_gateway(
        [f"127.0.0.1:{worker.port}"], redis_url=redis_server.url, registry_refresh_s=600
    )  # the gateway too follows the events only
    assert (await ask(gateway, http)).status_code == 404  # nothing published yet

    # v1 becomes production: the running worker loads it, and the alias name serves it.
    v1 = await rollout.publish("one")
    await rollout.models.set_alias("adapter", NAME, "production", v1)
    await eventually(lambda: _has(worker, V1), what="worker loads v0001")
    await eventually(lambda: _listed(gateway, http, NAME), what="gateway lists the alias name")
    listed = await model_ids(gateway, http)
    assert listed[NAME]["parent"] == MODEL
    assert listed[V1]["parent"] == MODEL
    response = await ask(gateway, http)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == V1
    assert body["choices"][0]["message"]["content"].split()[0] == rollout.fingerprint(V1)
    async with http.stream(
        "POST", gateway.url + CHAT, json=chat_body(model=NAME, stream=True), headers=gateway.headers
    ) as streamed:
        events = await sse_events(streamed)
    assert {e["model"] for e in events if isinstance(e, dict)} == {V1}

    # The completion log attributes the response to the version, and keeps what the client asked.
    await wait_for_record(redis, body["id"])
    record = CompletionRecord.from_json(await redis.get(redis_keys.response_key(body["id"])))
    assert (record.model, record.resolved_model) == (NAME, V1)

    # v2 as a canary with 30% of the traffic: both versions serve, in about that proportion.
    v2 = await rollout.publish("two")
    await rollout.models.set_canary("adapter", NAME, v2, 0.3)
    await eventually(lambda: _has(worker, V2), what="worker loads v0002")
    await eventually(lambda: _gateway_sees_canary(gateway, V2), what="gateway sees the canary")
    await eventually(lambda: _listed(gateway, http, V2), what="gateway sees v0002 served")
    served = await served_by(gateway, http, 200, rollout)
    assert set(served) == {V1, V2}
    # Binomial(200, 0.3): mean 60, sd 6.5; 30..90 is more than 4.5 sd either side.
    assert 30 <= served[V2] <= 90, served
    metrics = (await http.get(gateway.url + "/metrics")).text
    assert sample(metrics, metric_names.GATEWAY_MODEL_REQUESTS, requested=NAME, served=V2) == served[V2]

    # Promote: every request goes to v2; v1 leaves the aliases and is unloaded after the grace.
    await rollout.models.promote("adapter", NAME)
    await eventually(lambda: _gateway_production_is(gateway, v2), what="gateway sees the promotion")
    assert await served_by(gateway, http, 20, rollout) == {V2: 20}
    await eventually(lambda: _gone(worker, V1), timeout=GRACE_S + 10, what="v0001 unloaded")

    # Rollback: v1 is loaded again and takes all the traffic; v2 is retired after the grace.
    await rollout.models.rollback("adapter", NAME)
    await eventually(lambda: _has(worker, V1), what="worker reloads v0001")
    await eventually(lambda: _gateway_production_is(gateway, v1), what="gateway sees the rollback")
    await eventually(lambda: _listed(gateway, http, V1), what="gateway sees v0001 served again")
    assert await served_by(gateway, http, 20, rollout) == {V1: 20}
    await eventually(lambda: _gone(worker, V2), timeout=GRACE_S + 10, what="v0002 unloaded")
    await eventually(lambda: _not_listed(gateway, http, V2), what="v0002 leaves /v1/models")
    probe = (await http.get(f"http://127.0.0.1:{worker.probes.port}/metrics")).text
    assert sample(probe, metric_names.WORKER_ADAPTERS_LOADED) == 1
    assert sample(probe, metric_names.WORKER_ADAPTER_UNLOADS, outcome="ok") == 2  # v0001, then v0002
    assert sample(probe, metric_names.WORKER_ADAPTER_LOADS, outcome="ok") == 3  # v0001, v0002, v0001 again


async def test_canary_that_fails_to_load_falls_back_then_serves_once_fixed(
    rollout, redis_server, start_worker, start_gateway, http
) -> None:
    worker = await start_worker(**worker_settings(rollout, redis_server, registry_poll_s=0.3))
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"], redis_url=redis_server.url, registry_refresh_s=600)
    await rollout.models.set_alias("adapter", NAME, "production", await rollout.publish("one"))
    v2 = await rollout.publish("two")
    config = rollout.models.registry.version_dir("adapter", NAME, v2) / "adapter_config.json"
    saved = config.read_text()
    config.unlink()  # the canary cannot be loaded
    await rollout.models.set_canary("adapter", NAME, v2, 1.0)
    await eventually(lambda: _gateway_sees_canary(gateway, V2), what="gateway sees the canary")
    await eventually(lambda: _failed(worker, V2), what="worker reports the failed load")
    await eventually(lambda: _listed(gateway, http, V1), what="gateway sees v0001 served")
    # Every request chooses the canary; none is served by it, so all fall back to production.
    assert await served_by(gateway, http, 10, rollout) == {V1: 10}
    metrics = (await http.get(gateway.url + "/metrics")).text
    assert sample(metrics, metric_names.GATEWAY_VERSION_FALLBACKS, model=NAME, alias="canary") == 10
    # An explicit request for the aliased but unloaded version is a 503 that says so.
    explicit = await ask(gateway, http, model=V2)
    assert explicit.status_code == 503
    assert "not loaded" in explicit.json()["error"]["message"]
    assert "retry-after" in explicit.headers
    assert worker.is_ready()  # the failure never took the worker down

    # The files are fixed: the next reconcile (the poll) loads the canary.
    config.write_text(saved)
    await eventually(lambda: _has(worker, V2), what="worker retries and loads v0002")
    await eventually(lambda: _listed(gateway, http, V2), what="gateway sees v0002 served")
    assert await served_by(gateway, http, 10, rollout) == {V2: 10}

    # Dropping the canary sends everything back to production; v2 is unloaded after the grace.
    await rollout.models.set_canary("adapter", NAME, None, 0.0)
    await eventually(lambda: _gateway_sees_canary(gateway, None), what="gateway sees the canary dropped")
    assert await served_by(gateway, http, 10, rollout) == {V1: 10}
    await eventually(lambda: _gone(worker, V2), timeout=GRACE_S + 10, what="v0002 unloaded")
    # A version that exists but is neither production nor canary is not served: 404 saying why.
    await eventually(lambda: _not_listed(gateway, http, V2), what="v0002 leaves /v1/models")
    retired = await ask(gateway, http, model=V2)
    assert retired.status_code == 404
    assert "not loaded" in retired.json()["error"]["message"]


async def test_a_restarted_worker_serves_the_current_versions_at_once(rollout, redis_server, worker_processes) -> None:
    await rollout.models.set_alias("adapter", NAME, "production", await rollout.publish("one"))
    env = {k: str(v) for k, v in worker_settings(rollout, redis_server).items()}
    first = worker_processes("first", **env)
    assert await _listing(first.address) == [MODEL, V1]
    first.popen.terminate()
    assert first.popen.wait(30) == 0

    # While no worker runs, a canary is set and a version without an alias is published.
    await rollout.models.set_canary("adapter", NAME, await rollout.publish("two"), 0.1)
    await rollout.publish("three")
    second = worker_processes("second", **env)  # returns once /readyz answers 200
    assert await _listing(second.address) == [MODEL, V1, V2]


async def _listing(address: str) -> list[str]:
    async with grpc.aio.insecure_channel(address) as channel:
        listing = await pb_grpc.InferenceWorkerStub(channel).ListModels(pb.ListModelsRequest())
    return [m.name for m in listing.models]


async def test_worker_keeps_serving_and_polling_while_redis_is_down(
    rollout, redis_server, start_worker, start_gateway, http
) -> None:
    worker = await start_worker(**worker_settings(rollout, redis_server, registry_poll_s=0.3))
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"], redis_url=redis_server.url, registry_refresh_s=0.5)
    await rollout.models.set_alias("adapter", NAME, "production", await rollout.publish("one"))
    await eventually(lambda: _listed(gateway, http, NAME), what="gateway serves the alias")
    assert worker.follower is not None
    await eventually(lambda: _true(worker.follower.events_connected), what="worker follows events")

    redis_server.stop()
    await eventually(lambda: _true(not worker.follower.events_connected), what="worker notices Redis is gone")
    # The gateway keeps its last view of the aliases; the worker keeps serving.
    assert await served_by(gateway, http, 5, rollout) == {V1: 5}
    # Registry changes made on the files alone (no index, no events) still reach the worker by the poll.
    files = Registry(rollout.root)
    v2 = files.publish("adapter", NAME, rollout.source("two"), base_model=MODEL, dataset_version="two").version
    files.set_canary("adapter", NAME, v2, 0.5)
    await eventually(lambda: _has(worker, V2), what="worker loads v0002 from the files")
    await eventually(lambda: _listed(gateway, http, V2), what="gateway sees v0002 served")
    explicit = await ask(gateway, http, model=V2)
    assert explicit.status_code == 200, explicit.text
    assert explicit.json()["model"] == V2

    # Redis is back (same data): the worker follows events again, resuming after the last id it saw.
    redis_server.start()
    await eventually(lambda: _true(worker.follower.events_connected), timeout=30, what="worker reconnects")
    async with Redis.from_url(redis_server.url, decode_responses=True) as client:
        models = ModelRegistry(files, RegistryIndex(client))
        await models.rebuild()  # the index catches up with the files
        await models.set_canary("adapter", NAME, v2, 0.2)
        latest = (await client.xrevrange(redis_keys.REGISTRY_EVENTS_STREAM, count=1))[0][0]
    await eventually(lambda: _true(worker.follower.last_event_id == latest), what="worker reads the new event")
    await eventually(lambda: _gateway_sees_canary(gateway, V2), what="gateway reads the index again")


async def _true(value: bool) -> bool:
    return value


async def _has(worker: Any, name: str) -> bool:
    return name in worker.engine.adapters


async def _gone(worker: Any, name: str) -> bool:
    return name not in worker.engine.adapters


async def _failed(worker: Any, name: str) -> bool:
    return name in worker.follower.failed


async def _listed(gateway: Any, http: httpx.AsyncClient, name: str) -> bool:
    return name in await model_ids(gateway, http)


async def _not_listed(gateway: Any, http: httpx.AsyncClient, name: str) -> bool:
    return name not in await model_ids(gateway, http)


async def _gateway_sees_canary(gateway: Any, served: str | None) -> bool:
    entry = gateway.app.state.resolver.adapters.get(NAME)
    canary = None if entry is None or entry.aliases.canary is None else f"{NAME}@{entry.aliases.canary}"
    return entry is not None and canary == served


async def _gateway_production_is(gateway: Any, version: str) -> bool:
    entry = gateway.app.state.resolver.adapters.get(NAME)
    return entry is not None and entry.aliases.production == version


async def test_gateway_started_while_redis_is_down_serves_and_catches_up(
    rollout, redis_server, start_worker, start_gateway, http
) -> None:
    await rollout.models.set_alias("adapter", NAME, "production", await rollout.publish("one"))
    worker = await start_worker(**worker_settings(rollout, redis_server))
    redis_server.stop()
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"], redis_url=redis_server.url, registry_refresh_s=0.3)
    assert (await http.get(gateway.url + "/readyz")).status_code == 200
    base = await ask(gateway, http, model=MODEL)
    assert base.status_code == 200, base.text
    # Without the index the alias name is unknown, but the version workers serve is not.
    assert (await ask(gateway, http)).status_code == 404
    assert (await ask(gateway, http, model=V1)).json()["model"] == V1
    redis_server.start()
    await eventually(lambda: _listed(gateway, http, NAME), timeout=30, what="gateway reads the index")
    assert await served_by(gateway, http, 5, rollout) == {V1: 5}
