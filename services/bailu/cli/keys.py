"""`bailu keys ...`: create, list, update and revoke the gateway's API keys, held in Redis (`KeyRegistry`).

A key is printed once, by `create`; Redis keeps only its hash. Revoked keys stay listed (an audit trail)."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from redis.exceptions import RedisError

from bailu.cli.errors import CliError, UsageError
from bailu.cli.output import dump_json, table
from bailu.cli.redis_access import connect, redact
from bailu.cli.settings import CliSettings
from bailu.keys.model import DEFAULT_SCOPES, INTERACTIVE, PRIORITIES, ApiKey, Limits, parse_duration, parse_scopes
from bailu.keys.store import UNCHANGED, KeyRegistry

T = TypeVar("T")

# `--expires-in` of `update`: the key no longer expires.
NEVER = "never"
LIMIT_OPTIONS = ("rpm", "tpm", "concurrency")


def with_keys(settings: CliSettings, operation: Callable[[KeyRegistry], Awaitable[T]]) -> T:
    """Run `operation` on the key registry in Redis; a one-line `CliError` when Redis is not there."""
    if not settings.redis_url:
        raise CliError("API keys are kept in Redis: pass --redis-url or set BAILU_REDIS_URL")

    async def run() -> T:
        redis = await connect(settings.redis_url)
        try:
            return await operation(KeyRegistry(redis))
        except (RedisError, OSError) as exc:
            raise CliError(f"Redis at {redact(settings.redis_url)} failed: {exc}") from exc
        finally:
            await redis.aclose()

    return asyncio.run(run())


def when(timestamp: float | None, none: str) -> str:
    """A Unix time as UTC for people (`none` when unset)."""
    if timestamp is None:
        return none
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def limit_text(value: int | None) -> str:
    return "unlimited" if value is None else str(value)


def describe(record: ApiKey, now: float) -> str:
    """A key's settings, one per line."""
    fields = [
        ("id", record.id),
        ("name", record.name),
        ("scopes", ",".join(sorted(record.scopes))),
        *((name, limit_text(getattr(record.limits, name))) for name in LIMIT_OPTIONS),
        ("priority", record.priority),
        ("created", when(record.created_at, "-")),
        ("expires", when(record.expires_at, NEVER)),
        ("state", record.state(now)),
    ]
    if record.revoked_at is not None:
        fields.append(("revoked", when(record.revoked_at, "-")))
    width = max(len(label) for label, _ in fields) + 1
    return "\n".join(f"{label + ':':<{width}} {value}" for label, value in fields)


# --------------------------------------------------------------------------- commands


def create_key(args: argparse.Namespace, settings: CliSettings) -> int:
    limits = Limits(args.rpm, args.tpm, args.concurrency)
    scopes = args.scopes or DEFAULT_SCOPES
    priority = args.priority or INTERACTIVE
    secret, record = with_keys(
        settings,
        lambda keys: keys.create(
            args.name, scopes=scopes, limits=limits, priority=priority, expires_in_s=args.expires_in
        ),
    )
    now = time.time()
    if args.json:
        dump_json({"key": secret, **record.public(now)})
        return 0
    print(f"New API key for {record.name}. It is shown only this once (Redis keeps only its hash): store it now.")
    print()
    print(f"    {secret}")
    print()
    print(describe(record, now))
    return 0


def list_keys(args: argparse.Namespace, settings: CliSettings) -> int:
    records = with_keys(settings, lambda keys: keys.list())
    now = time.time()
    if args.json:
        dump_json([record.public(now) for record in records])
        return 0
    if not records:
        print(f"no API keys in Redis at {redact(settings.redis_url)}")
        return 0
    rows = [
        [
            r.id,
            r.name,
            ",".join(sorted(r.scopes)),
            *(limit_text(getattr(r.limits, name)) for name in LIMIT_OPTIONS),
            r.priority,
            when(r.expires_at, NEVER),
            r.state(now),
        ]
        for r in records
    ]
    print(table(["ID", "NAME", "SCOPES", "RPM", "TPM", "CONCURRENCY", "PRIORITY", "EXPIRES", "STATE"], rows))
    return 0


def revoke_key(args: argparse.Namespace, settings: CliSettings) -> int:
    record = with_keys(settings, lambda keys: keys.revoke(args.id))
    now = time.time()
    if args.json:
        dump_json(record.public(now))
        return 0
    print(f"API key {record.id} ({record.name}) is revoked since {when(record.revoked_at, '-')}")
    return 0


def update_key(args: argparse.Namespace, settings: CliSettings) -> int:
    changes = {
        name: value
        for name in (*LIMIT_OPTIONS, "priority", "scopes", "expires_in")
        if (value := getattr(args, name)) is not UNCHANGED
    }
    if not changes:
        raise UsageError(
            "nothing to update: give at least one of --rpm, --tpm, --concurrency, --priority, --scopes, --expires-in"
        )
    if "expires_in" in changes:
        changes["expires_in_s"] = changes.pop("expires_in")
    record = with_keys(settings, lambda keys: keys.update(args.id, **changes))
    now = time.time()
    if args.json:
        dump_json(record.public(now))
        return 0
    print(f"updated API key {record.id}:")
    print(describe(record, now))
    return 0


# --------------------------------------------------------------------------- arguments


def key_name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("a key needs a name (its owner or tenant)")
    return text.strip()


def limit(text: str) -> int | None:
    """A limit: a positive integer, or 0 for no limit (None)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, or 0 for no limit, got {text}")
    return value or None


def expiry(text: str) -> float | None:
    """A duration (30d, 12h, 90m, 45s, 2w) in seconds, or `never` (None)."""
    if text.strip() == NEVER:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (or {NEVER})") from None


def scope_list(text: str) -> frozenset[str]:
    try:
        return parse_scopes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def setting_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """The options `create` and `update` share; `default` is what an option not given means."""
    parser.add_argument(
        "--scopes", type=scope_list, default=default, metavar="S", help="comma-separated: generate,feedback,admin"
    )
    parser.add_argument("--rpm", type=limit, default=default, metavar="N", help="requests per minute (0: no limit)")
    parser.add_argument(
        "--tpm", type=limit, default=default, metavar="N", help="prompt plus completion tokens per minute (0: no limit)"
    )
    parser.add_argument(
        "--concurrency", type=limit, default=default, metavar="N", help="completions in progress at once (0: no limit)"
    )
    parser.add_argument("--priority", choices=PRIORITIES, default=default, help="admission priority")
    parser.add_argument(
        "--expires-in",
        type=expiry,
        default=default,
        metavar="D",
        help=f"expire after D from now: 30d, 12h, 90m, 45s, 2w ({NEVER}: no expiry)",
    )


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add `keys` and its subcommands to the top-level subparsers."""
    keys = commands.add_parser(
        "keys",
        help="the gateway's API keys: create, list, update, revoke",
        description="API keys for the gateway, kept in Redis (--redis-url): each with an owner name, scopes, "
        "per-minute quotas, a concurrency limit, an admission priority and an optional expiry. A key is printed "
        "once, when it is created; only its hash is stored. Revoked keys stay listed. A limit of 0 means no limit.",
    )
    sub = keys.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = sub.add_parser(
        "create",
        parents=[common],
        help="a new key, printed once",
        description="Create a key for NAME and print it once (only its hash is stored). Defaults: scopes "
        "generate,feedback; no limits; priority interactive; no expiry. A limit of 0 means no limit.",
    )
    p.add_argument("--name", type=key_name, required=True, help="who holds the key (its owner or tenant)")
    setting_options(p, None)
    p.set_defaults(handler=create_key)

    p = sub.add_parser("list", parents=[common], help="every key (revoked and expired included), oldest first")
    p.set_defaults(handler=list_keys)

    p = sub.add_parser(
        "revoke", parents=[common], help="revoke a key at once (it stays listed; revoking again changes nothing)"
    )
    p.add_argument("id", metavar="ID", help="the key's id (key_...)")
    p.set_defaults(handler=revoke_key)

    p = sub.add_parser(
        "update",
        parents=[common],
        help="change a key's limits, priority, scopes or expiry",
        description="Change only the settings given (at least one). A limit of 0 removes it (no limit); "
        f"--expires-in counts from now, {NEVER} removes the expiry. A revoked key cannot be updated.",
    )
    p.add_argument("id", metavar="ID", help="the key's id (key_...)")
    setting_options(p, UNCHANGED)
    p.set_defaults(handler=update_key)
