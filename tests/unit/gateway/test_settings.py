"""GatewaySettings read from BAILU_GATEWAY_* environment variables."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from bailu.gateway.settings import GatewaySettings

pytestmark = pytest.mark.usefixtures("clean_bailu_env")


def test_defaults() -> None:
    settings = GatewaySettings()
    assert settings.port == 8000
    assert settings.workers == []
    assert settings.api_key_hashes == []
    assert settings.api_keys_file is None
    assert settings.log_level == "INFO"


def test_comma_separated_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAILU_GATEWAY_WORKERS", " w1:50051, w2:50051,,[::1]:50052 ,")
    assert GatewaySettings().workers == ["w1:50051", "w2:50051", "[::1]:50052"]


def test_single_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAILU_GATEWAY_WORKERS", "127.0.0.1:50051")
    assert GatewaySettings().workers == ["127.0.0.1:50051"]


def test_empty_workers_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAILU_GATEWAY_WORKERS", "")
    assert GatewaySettings().workers == []


def test_comma_separated_key_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    monkeypatch.setenv("BAILU_GATEWAY_API_KEY_HASHES", f"{a},{b}")
    assert GatewaySettings().api_key_hashes == [a, b]


def test_lists_given_in_python_are_kept() -> None:
    assert GatewaySettings(workers=["a:1", "b:2"]).workers == ["a:1", "b:2"]


def test_scalars_and_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAILU_GATEWAY_PORT", "9000")
    monkeypatch.setenv("BAILU_GATEWAY_REQUEST_TIMEOUT_S", "2.5")
    monkeypatch.setenv("BAILU_GATEWAY_API_KEYS_FILE", "/run/secrets/keys")
    monkeypatch.setenv("BAILU_GATEWAY_LOG_LEVEL", "DEBUG")
    settings = GatewaySettings()
    assert settings.port == 9000
    assert settings.request_timeout_s == 2.5
    assert settings.api_keys_file == Path("/run/secrets/keys")
    assert settings.log_level == "DEBUG"


def test_variables_of_other_services_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAILU_WORKER_PORT", "1234")
    monkeypatch.setenv("BAILU_GATEWAY_NO_SUCH_SETTING", "x")
    assert GatewaySettings().port == 8000


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BAILU_GATEWAY_PORT", "-1"),
        ("BAILU_GATEWAY_PORT", "65536"),
        ("BAILU_GATEWAY_PORT", "http"),
        ("BAILU_GATEWAY_MAX_ATTEMPTS", "0"),
        ("BAILU_GATEWAY_REQUEST_TIMEOUT_S", "0"),
        ("BAILU_GATEWAY_MAX_BODY_BYTES", "100"),
    ],
)
def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(pydantic.ValidationError) as info:
        GatewaySettings()
    assert info.value.errors()[0]["loc"] == (name.removeprefix("BAILU_GATEWAY_").lower(),)


def test_settings_are_frozen() -> None:
    settings = GatewaySettings()
    with pytest.raises(pydantic.ValidationError):
        settings.port = 1  # type: ignore[misc]
