"""The CLI's pure parts: argument splitting for `train`, option placement, names, tables, redaction."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bailu.cli.main import build_parser, load_settings, split_trainer_args
from bailu.cli.models import weight
from bailu.cli.output import percent, table
from bailu.cli.redis_access import redact
from bailu.cli.retrain import trainer_cronjob


@pytest.mark.parametrize(
    ("argv", "own", "trainer"),
    [
        (["train"], ["train"], []),
        (["train", "--help"], ["train"], ["--help"]),
        (
            ["--registry-dir", "train", "train", "--redis-url", "x", "--", "train"],
            ["--registry-dir", "train", "train"],
            ["--redis-url", "x", "--", "train"],
        ),
        (["--redis-url=redis://r", "train", "-v"], ["--redis-url=redis://r", "train"], ["-v"]),
        (["models", "show", "train"], ["models", "show", "train"], []),
        (["--help"], ["--help"], []),
    ],
    ids=["bare", "help-goes-to-the-trainer", "option-value-named-train", "inline-value", "train-as-a-name", "help"],
)
def test_everything_after_train_belongs_to_the_trainer(argv: list[str], own: list[str], trainer: list[str]) -> None:
    assert split_trainer_args(argv) == (own, trainer)


def test_global_options_may_come_before_or_after_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BAILU_REGISTRY_DIR", "BAILU_DATASET_DIR", "BAILU_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    parser = build_parser()
    before = parser.parse_args(["--registry-dir", "a", "models", "list"])
    after = parser.parse_args(["models", "list", "--registry-dir", "b"])
    neither = parser.parse_args(["models", "list"])
    assert load_settings(before).registry_dir == Path("a")
    assert load_settings(after).registry_dir == Path("b")
    assert load_settings(neither).registry_dir == Path(".cache/dev/registry")
    assert load_settings(neither).redis_url == "redis://127.0.0.1:6379/0"
    # The environment overrides the defaults, an option overrides the environment.
    monkeypatch.setenv("BAILU_REGISTRY_DIR", "/env/registry")
    monkeypatch.setenv("BAILU_REDIS_URL", "")
    assert load_settings(neither).registry_dir == Path("/env/registry")
    assert load_settings(neither).redis_url == ""
    assert load_settings(after).registry_dir == Path("b")


@pytest.mark.parametrize(
    ("release", "cronjob"),
    [
        ("bailu", "bailu-trainer"),
        ("writing", "writing-bailu-trainer"),
        ("bailu-prod", "bailu-prod-trainer"),
        # helm's `trunc 63 | trimSuffix "-"` on "<release>-bailu", then on "<fullname>-trainer".
        ("r" * 60, "r" * 60 + "-ba"),
        ("r" * 57, "r" * 57 + "-bailu"),
    ],
)
def test_the_trainer_cronjob_is_named_as_the_chart_names_it(release: str, cronjob: str) -> None:
    assert trainer_cronjob(release) == cronjob


@pytest.mark.parametrize("text", ["0", "0.1", "1", "1.0", "0.125"])
def test_weights_within_0_and_1(text: str) -> None:
    assert weight(text) == float(text)


@pytest.mark.parametrize("text", ["-0.1", "1.01", "nan", "inf", "ten", ""])
def test_weights_outside_are_usage_errors(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        weight(text)


def test_tables_align_columns() -> None:
    text = table(["NAME", "V"], [["bailu-poet", "3"], ["x", "12"]])
    lines = text.splitlines()
    assert lines == ["NAME        V", "bailu-poet  3", "x           12"]


def test_percent_and_redaction() -> None:
    assert percent(0.1) == "10%"
    assert percent(0.125) == "12.5%"
    assert percent(1.0) == "100%"
    assert redact("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redact("rediss://user:s3cret@redis:6380/0") == "rediss://user:***@redis:6380/0"
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
