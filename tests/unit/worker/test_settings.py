"""WorkerSettings read from BAILU_WORKER_* environment variables."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
from pydantic_settings import SettingsError

from bailu.worker.settings import EngineKind, WorkerSettings

pytestmark = pytest.mark.usefixtures("clean_bailu_env")


def test_defaults() -> None:
    settings = WorkerSettings()
    assert settings.engine is EngineKind.TRANSFORMERS
    assert settings.port == 50051
    assert settings.adapters == {}
    assert settings.warmup is True


def test_adapters_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAILU_WORKER_ADAPTERS", '{"poet": "/adapters/poet", "legal": "/adapters/legal"}')
    assert WorkerSettings().adapters == {"poet": Path("/adapters/poet"), "legal": Path("/adapters/legal")}


def test_adapters_that_are_not_json_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAILU_WORKER_ADAPTERS", "poet=/adapters/poet")
    with pytest.raises(SettingsError, match="adapters"):
        WorkerSettings()


@pytest.mark.parametrize(("value", "engine"), [("sim", EngineKind.SIM), ("transformers", EngineKind.TRANSFORMERS)])
def test_engine(monkeypatch: pytest.MonkeyPatch, value: str, engine: EngineKind) -> None:
    monkeypatch.setenv("BAILU_WORKER_ENGINE", value)
    assert WorkerSettings().engine is engine


def test_scalars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAILU_WORKER_MODEL_PATH", "/models/smollm2")
    monkeypatch.setenv("BAILU_WORKER_WARMUP", "false")
    monkeypatch.setenv("BAILU_WORKER_MAX_QUEUE", "0")
    monkeypatch.setenv("BAILU_WORKER_SIM_TTFT_MS", "1.5")
    settings = WorkerSettings()
    assert settings.model_path == Path("/models/smollm2")
    assert settings.warmup is False
    assert settings.max_queue == 0
    assert settings.sim_ttft_ms == 1.5


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BAILU_WORKER_ENGINE", "tensorrt"),
        ("BAILU_WORKER_PORT", "-1"),
        ("BAILU_WORKER_HTTP_PORT", "70000"),
        ("BAILU_WORKER_MAX_BATCH_SIZE", "0"),
        ("BAILU_WORKER_MAX_MODEL_LEN", "8"),
        ("BAILU_WORKER_MODEL_NAME", ""),
        ("BAILU_WORKER_DRAIN_GRACE_S", "-1"),
        ("BAILU_WORKER_WARMUP", "perhaps"),
    ],
)
def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(pydantic.ValidationError) as info:
        WorkerSettings()
    assert info.value.errors()[0]["loc"] == (name.removeprefix("BAILU_WORKER_").lower(),)


def test_agent_template(monkeypatch: pytest.MonkeyPatch) -> None:
    assert WorkerSettings().agent_template == ""  # the chat template's own (hermes where it has none)
    monkeypatch.setenv("BAILU_WORKER_AGENT_TEMPLATE", "react_en")
    assert WorkerSettings().agent_template == "react_en"
    monkeypatch.setenv("BAILU_WORKER_AGENT_TEMPLATE", "hermes --verbose")
    with pytest.raises(pydantic.ValidationError, match="agent_template"):
        WorkerSettings()
