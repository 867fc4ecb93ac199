"""Capabilities over the wire, the engine factory, and the engine-server settings."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pydantic
import pytest

from bailu.common import wire
from bailu.common.types import EngineCapabilities
from bailu.v1 import worker_pb2 as pb
from bailu.worker.engines import create_engine
from bailu.worker.engines.factory import FACTORIES
from bailu.worker.engines.server.http import HttpEngine
from bailu.worker.engines.sim import SimEngine
from bailu.worker.settings import EngineKind, WorkerSettings

FIELDS = [f.name for f in dataclasses.fields(EngineCapabilities)]


pytestmark = pytest.mark.usefixtures("clean_bailu_env")


@pytest.mark.parametrize("values", list(itertools.product([False, True], repeat=len(FIELDS)))[::7])
def test_capabilities_round_trip_over_protobuf(values: tuple[bool, ...]) -> None:
    capabilities = EngineCapabilities(**dict(zip(FIELDS, values, strict=True)))
    msg = pb.ListModelsResponse(capabilities=wire.capabilities_to_pb(capabilities))
    decoded = pb.ListModelsResponse.FromString(msg.SerializeToString())
    assert wire.capabilities_from_pb(decoded.capabilities) == capabilities


def test_every_capability_has_a_proto_field() -> None:
    assert set(FIELDS) == set(pb.Capabilities.DESCRIPTOR.fields_by_name)


def test_in_process_engines_keep_the_default_capabilities() -> None:
    engine = SimEngine("m", ttft_s=0, itl_s=0, output_tokens=1, capacity=1)
    assert engine.capabilities == EngineCapabilities()
    assert engine.kind == "sim"
    assert engine.ready
    assert engine.alive


@pytest.mark.parametrize("kind", ["vllm", "sglang", "lmdeploy", "swift"])
def test_factory_builds_an_engine_server_for_each_kind(kind: str, tmp_path: Path) -> None:
    engine = create_engine(WorkerSettings(engine=kind, model_path=tmp_path))
    assert isinstance(engine, HttpEngine)
    assert engine.kind == kind
    assert not engine.ready  # nothing started yet


def test_factory_knows_every_engine() -> None:
    assert set(FACTORIES) == set(EngineKind)


def test_engine_server_needs_a_model_path() -> None:
    with pytest.raises(ValueError, match="BAILU_WORKER_MODEL_PATH"):
        create_engine(WorkerSettings(engine="vllm"))


def test_engine_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAILU_WORKER_ENGINE", "sglang")
    monkeypatch.setenv("BAILU_WORKER_ENGINE_ARGS", "--enable-torch-compile --chunked-prefill-size 4096")
    monkeypatch.setenv("BAILU_WORKER_TENSOR_PARALLEL_SIZE", "4")
    monkeypatch.setenv("BAILU_WORKER_GPU_MEMORY_UTILIZATION", "0.8")
    monkeypatch.setenv("BAILU_WORKER_MAX_LORAS", "0")
    settings = WorkerSettings()
    assert settings.engine is EngineKind.SGLANG
    assert settings.engine_args == "--enable-torch-compile --chunked-prefill-size 4096"
    assert (settings.tensor_parallel_size, settings.gpu_memory_utilization, settings.max_loras) == (4, 0.8, 0)
    assert settings.engine_port == 0
    assert settings.engine_host == "127.0.0.1"


@pytest.mark.parametrize(
    ("name", "value"), [("gpu_memory_utilization", "1.5"), ("gpu_memory_utilization", "0"), ("engine_port", "70000")]
)
def test_out_of_range_engine_settings_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(f"BAILU_WORKER_{name.upper()}", value)
    with pytest.raises(pydantic.ValidationError, match=name):
        WorkerSettings()
