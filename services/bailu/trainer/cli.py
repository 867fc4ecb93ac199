"""Command line of the trainer: every TrainerSettings field is also a `--kebab-case` flag that overrides
its `BAILU_TRAINER_*` variable (derived from the class, so a new field gets its flag), plus `--json`.

Values are given as in the environment (`--sft false`, `--extra-sft-args "--warmup_ratio 0.1"`, or
`--extra-sft-args=--use_dora` for a single flag-like value) and validated by the settings class.
Exit codes: 0 published, rejected by the gate or already built; 1 a stage failed; 2 bad settings or
arguments; 3 no dataset version or not enough data.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from bailu.common.logging import setup_logging
from bailu.common.settings import describe_errors
from bailu.trainer.errors import BadSettings
from bailu.trainer.settings import TrainerSettings

JSON_FLAG = "json"


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    prefix = str(TrainerSettings.model_config.get("env_prefix", ""))
    parser = argparse.ArgumentParser(
        prog="python -m bailu.trainer",
        description="Train a LoRA adapter on a dataset version, gate it against production and publish it.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, field in TrainerSettings.model_fields.items():
        parser.add_argument(
            flag(name),
            dest=name,
            metavar="VALUE",
            default=argparse.SUPPRESS,
            help=f"{field.description or ''} [{prefix}{name.upper()}]",
        )
    parser.add_argument(flag(JSON_FLAG), dest=JSON_FLAG, action="store_true", help="print the result as JSON")
    return parser


def load_settings(overrides: dict[str, Any]) -> TrainerSettings:
    """The environment, overridden by flags; invalid values become one BadSettings line naming each field."""
    try:
        return TrainerSettings(**overrides)
    except ValidationError as exc:
        raise BadSettings(f"bad settings: {describe_errors(exc)}") from None
    except SettingsError as exc:
        raise BadSettings(f"bad settings: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))  # an unknown flag exits 2 with argparse's message
    as_json = bool(args.pop(JSON_FLAG))
    try:
        settings = load_settings(args)
    except BadSettings as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if as_json:
            print(json.dumps({"outcome": "failed", "exit_code": exc.exit_code, "reason": exc.message}))
        return exc.exit_code
    setup_logging("trainer", settings.log_level)
    from bailu.trainer.pipeline import run

    result = run(settings)
    if result.exit_code:
        print(f"error: {result.reason}", file=sys.stderr)
    if as_json:
        print(result.to_json())
    return result.exit_code
