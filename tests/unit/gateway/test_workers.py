"""WorkerPool's routing logic, with load reports and model lists set by hand (no worker is contacted).
What model names mean is tested in test_model_names.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bailu.common import wire
from bailu.common.errors import Unavailable
from bailu.common.types import EngineCapabilities, LoadReport, ModelCard
from bailu.gateway.workers import WorkerClient, WorkerPool
from bailu.v1 import worker_pb2 as pb
from tests.unit.gateway.conftest import put_worker

BASE = ModelCard("base", "base", "", 4096)
POET = ModelCard("poet", "adapter", "base", 4096)
OTHER = ModelCard("other", "base", "", 2048)

AddWorker = Callable[..., WorkerClient]


def load(running: int = 0, queued: int = 0, capacity: int = 4, ready: bool = True) -> LoadReport:
    return LoadReport(queued=queued, running=running, capacity=capacity, max_queue=8, ready=ready)


@pytest.fixture
def add(pool: WorkerPool) -> AddWorker:
    """Add a worker with the given load and models; its channel never connects (no RPC is made)."""

    def add_worker(
        address: str, report: LoadReport | None, models: tuple[ModelCard, ...] = (BASE,), inflight: int = 0
    ) -> WorkerClient:
        return put_worker(pool, address, report, models, inflight)

    return add_worker


async def test_models_of_not_ready_workers_are_not_listed(pool: WorkerPool, add: AddWorker) -> None:
    add("w1:1", load(), (BASE,))
    add("w2:1", load(ready=False), (OTHER,))
    assert [card.name for card in pool.models()] == ["base"]


async def test_models_are_merged_base_models_first(pool: WorkerPool, add: AddWorker) -> None:
    add("w1:1", load(), (BASE, POET))
    add("w2:1", load(), (OTHER, BASE))
    assert [card.name for card in pool.models()] == ["base", "other", "poet"]


async def test_pick_least_loaded(pool: WorkerPool, add: AddWorker) -> None:
    add("busy:1", load(running=4, queued=2))
    add("idle:1", load(running=1))
    add("half:1", load(running=2))
    for _ in range(20):
        assert pool.pick("base", "", set()).address == "idle:1"


async def test_pick_compares_load_per_slot(pool: WorkerPool, add: AddWorker) -> None:
    add("small:1", load(running=2, capacity=2))  # full
    add("large:1", load(running=4, capacity=16))  # a quarter
    assert pool.pick("base", "", set()).address == "large:1"


async def test_pick_counts_this_gateways_calls_in_flight(pool: WorkerPool, add: AddWorker) -> None:
    # The load report lags: calls this gateway just sent count even before the worker reports them.
    add("w1:1", load(running=0), inflight=3)
    add("w2:1", load(running=1))
    assert pool.pick("base", "", set()).address == "w2:1"


async def test_pick_spreads_ties(pool: WorkerPool, add: AddWorker) -> None:
    add("w1:1", load())
    add("w2:1", load())
    assert {pool.pick("base", "", set()).address for _ in range(200)} == {"w1:1", "w2:1"}


async def test_pick_honours_exclude(pool: WorkerPool, add: AddWorker) -> None:
    add("idle:1", load(running=0))
    add("busy:1", load(running=3))
    assert pool.pick("base", "", {"idle:1"}).address == "busy:1"
    with pytest.raises(Unavailable):
        pool.pick("base", "", {"idle:1", "busy:1"})


async def test_pick_skips_workers_that_are_not_ready(pool: WorkerPool, add: AddWorker) -> None:
    add("down:1", None)
    add("starting:1", load(ready=False))
    add("up:1", load(running=4, queued=8))
    for _ in range(10):
        assert pool.pick("base", "", set()).address == "up:1"


async def test_pick_skips_workers_without_the_adapter(pool: WorkerPool, add: AddWorker) -> None:
    add("plain:1", load(running=0), (BASE,))
    add("poet:1", load(running=3), (BASE, POET))
    assert pool.pick("base", "poet", set()).address == "poet:1"
    assert pool.pick("base", "", set()).address == "plain:1"


async def test_adapter_of_another_base_model_does_not_count(pool: WorkerPool, add: AddWorker) -> None:
    add("w1:1", load(), (OTHER, ModelCard("poet", "adapter", "other", 2048)))
    with pytest.raises(Unavailable):
        pool.pick("base", "poet", set())


async def test_pick_when_nobody_serves_the_model(pool: WorkerPool, add: AddWorker) -> None:
    add("w1:1", load(), (OTHER,))
    with pytest.raises(Unavailable):
        pool.pick("base", "", set())


async def test_ready_workers(pool: WorkerPool, add: AddWorker) -> None:
    add("up:1", load())
    add("down:1", None)
    add("draining:1", load(ready=False))
    assert [w.address for w in pool.ready_workers()] == ["up:1"]


async def test_raw_prompts_prefer_engines_that_complete_them_verbatim(pool: WorkerPool, add: AddWorker) -> None:
    chat_only = add("chat:1", load())  # e.g. swift deploy: a raw prompt becomes one user turn
    verbatim = add("raw:1", load(running=3))
    verbatim.capabilities = EngineCapabilities(raw_completions=True)
    assert chat_only.capabilities.raw_completions is False
    for _ in range(10):
        assert pool.pick("base", "", set(), raw_prompt=True).address == "raw:1"  # even though it is busier
        assert pool.pick("base", "", set()).address == "chat:1"  # chat requests go by load alone
    assert pool.pick("base", "", {"raw:1"}, raw_prompt=True).address == "chat:1"  # the others still serve it


async def test_capabilities_and_engine_come_from_the_workers_model_list() -> None:
    """What ListModels carries is what routing reads (the wire conversion, both ways)."""
    caps = EngineCapabilities(adapters=True, runtime_adapter_loading=True, raw_completions=True)
    msg = pb.ListModelsResponse(engine="vllm", capabilities=wire.capabilities_to_pb(caps))
    assert msg.HasField("capabilities")
    assert wire.capabilities_from_pb(msg.capabilities) == caps
