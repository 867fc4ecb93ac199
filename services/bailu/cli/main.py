"""The `bailu` command: argument parsing, dispatch, and errors as one line with an exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

import pydantic

from bailu.cli import datasets, keys, models, retrain
from bailu.cli.errors import FAILED, USAGE, CliError
from bailu.cli.settings import CliSettings
from bailu.cli.train import run_trainer
from bailu.common.errors import BailuError
from bailu.common.settings import describe_errors

PROG = "bailu"
DESCRIPTION = """Operate Bailu: the model registry (versions, canary, promotion, rollback), the collector's
dataset versions, and training runs (here, or as a Job in the cluster).
The gateway's API keys (create, list, update, revoke) are kept in Redis: `bailu keys`.

Locations default to those of `make dev` (.cache/dev/registry, .cache/dev/datasets, Redis on
127.0.0.1:6379), relative to the current directory; the environment (BAILU_REGISTRY_DIR,
BAILU_DATASET_DIR, BAILU_REDIS_URL) and the options below override them.

Exit codes: 0 done, 1 the operation failed (unknown name, operation not allowed, unreachable
service), 2 wrong command line."""
# Global options that take a value (how `train` is found on the command line before parsing it).
VALUE_OPTIONS = ("--registry-dir", "--dataset-dir", "--redis-url")

Handler = Callable[[argparse.Namespace, CliSettings], int]


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and the hint where the usage is), exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(USAGE)


def location_options(parser: argparse.ArgumentParser, default: object) -> None:
    """The global options; subcommands repeat them (default SUPPRESS) so that they may come after the command."""
    parser.add_argument(
        "--registry-dir", default=default, metavar="DIR", help="model registry root (env BAILU_REGISTRY_DIR)"
    )
    parser.add_argument(
        "--dataset-dir", default=default, metavar="DIR", help="collector's dataset directory (env BAILU_DATASET_DIR)"
    )
    parser.add_argument(
        "--redis-url",
        default=default,
        metavar="URL",
        help="Redis of the registry index and events, and of the API keys (env BAILU_REDIS_URL; "
        '"" changes the registry files only, and `bailu keys` needs it)',
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    location_options(parser, None)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON (stable keys) for scripts")
    location_options(common, argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    models.add_parsers(commands, common)
    datasets.add_parsers(commands, common)
    keys.add_parsers(commands, common)
    commands.add_parser(
        "train",
        help="run the trainer here (python -m bailu.trainer); its flags follow verbatim",
        description="Run `python -m bailu.trainer` with the flags that follow (see `bailu train --help`, which is "
        "the trainer's help), and exit with its exit code.",
        add_help=False,
    ).set_defaults(handler=None)
    retrain.add_parser(commands, common)
    return parser


def split_trainer_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the CLI's own arguments, the trainer's): everything after the `train` command goes to the trainer
    untouched, even options the CLI also has (--help, --redis-url...)."""
    skip = False
    for index, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg in VALUE_OPTIONS:
            skip = True
        elif arg == "train":
            return list(argv[: index + 1]), list(argv[index + 1 :])
        elif not arg.startswith("-"):
            break  # another command
    return list(argv), []


def load_settings(args: argparse.Namespace) -> CliSettings:
    given = {
        field: value
        for field in ("registry_dir", "dataset_dir", "redis_url")
        if (value := getattr(args, field, None)) is not None
    }
    try:
        return CliSettings(**given)
    except pydantic.ValidationError as exc:
        raise CliError(f"invalid settings: {describe_errors(exc)}", USAGE) from exc


def main(argv: Sequence[str] | None = None) -> int:
    own, trainer_args = split_trainer_args(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(own)
    try:
        settings = load_settings(args)
        if args.command == "train":
            return run_trainer(settings, trainer_args)
        handler: Handler = args.handler
        return handler(args, settings)
    except CliError as exc:
        return fail(exc.message, exc.code)
    except BailuError as exc:  # the registry's VersionNotFound, InvalidRegistryOperation, ...
        return fail(exc.message, FAILED)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        return fail(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), FAILED)
    except ValueError as exc:  # e.g. a manifest that is not JSON
        return fail(str(exc), FAILED)
    except Exception as exc:  # a bug: still one line, with what it was
        return fail(f"unexpected {type(exc).__name__}: {exc}", FAILED)


def fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code
