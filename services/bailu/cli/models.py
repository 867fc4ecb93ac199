"""`bailu models ...`: read the registry from its files; change aliases through `ModelRegistry` (files, then the
Redis index and change events) when Redis answers, else through the files alone, with a warning."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from bailu.cli.errors import CliError, UsageError
from bailu.cli.output import dump_json, percent, short_value, table
from bailu.cli.redis_access import connect, connect_or_warn, redact
from bailu.cli.settings import CliSettings
from bailu.common.errors import BailuError
from bailu.registry import Aliases, Manifest, ModelRegistry, NameState, Registry, RegistryIndex
from bailu.registry.model import KINDS, Kind

FILES_ONLY = (
    "changing the registry files only; workers notice at their next registry poll, "
    "the gateway only after `bailu models reindex`"
)
# How many metrics a row of `models show` lists (`models show NAME VERSION` has them all), and the ones listed
# first: the evaluation gate's verdict, as the trainer records it.
TABLE_METRICS = 4
KEY_METRICS = ("candidate_accuracy", "baseline_accuracy", "accuracy_margin", "accepted")


def open_registry(settings: CliSettings) -> Registry:
    root = settings.registry_dir
    if not root.is_dir():
        raise CliError(f"registry directory {root} does not exist (--registry-dir or BAILU_REGISTRY_DIR)")
    return Registry(root)


def resolve_kind(registry: Registry, name: str, kind: str | None) -> Kind:
    """The kind holding `name`: the one given, or the only one that has it."""
    kinds = [k for k, n in registry.names(kind) if n == name]
    if not kinds:
        where = f"{kind} " if kind else ""
        raise CliError(f"no {where}model named {name!r} in {registry.root}")
    if len(kinds) > 1:
        raise UsageError(f"{name!r} exists as {' and '.join(kinds)}: pass --kind")
    return kinds[0]


def alias_names(aliases: Aliases, version: str) -> list[str]:
    return [alias for alias in ("production", "canary") if getattr(aliases, alias) == version]


def canary_text(aliases: Aliases) -> str:
    return f"{aliases.canary} ({percent(aliases.canary_weight)})" if aliases.canary else "none"


def metrics_text(metrics: dict[str, Any]) -> str:
    def order(key: str) -> tuple[int, str]:
        return (KEY_METRICS.index(key) if key in KEY_METRICS else len(KEY_METRICS), key)

    scalars = [(k, metrics[k]) for k in sorted(metrics, key=order) if isinstance(metrics[k], int | float | str | bool)]
    shown = " ".join(f"{k}={short_value(v)}" for k, v in scalars[:TABLE_METRICS])
    hidden = len(metrics) - min(len(scalars), TABLE_METRICS)
    return f"{shown} (+{hidden} more)" if hidden else shown


def version_record(manifest: Manifest, aliases: Aliases) -> dict[str, Any]:
    return {**manifest.to_dict(), "aliases": alias_names(aliases, manifest.version)}


# --------------------------------------------------------------------------- reading


def list_models(args: argparse.Namespace, settings: CliSettings) -> int:
    registry = open_registry(settings)
    states = [registry.state(kind, name) for kind, name in registry.names(args.kind)]
    if args.json:
        dump_json([summary(state) for state in states])
        return 0
    if not states:
        print(f"no {args.kind + ' ' if args.kind else ''}models in {registry.root}")
        return 0
    rows = [
        [
            s.name,
            s.kind,
            s.aliases.production or "-",
            canary_text(s.aliases) if s.aliases.canary else "-",
            str(len(s.manifests)),
            s.manifests[-1].version if s.manifests else "-",
        ]
        for s in states
    ]
    print(table(["NAME", "KIND", "PRODUCTION", "CANARY", "VERSIONS", "LATEST"], rows))
    return 0


def summary(state: NameState) -> dict[str, Any]:
    return {
        "kind": state.kind,
        "name": state.name,
        "production": state.aliases.production,
        "canary": state.aliases.canary,
        "canary_weight": state.aliases.canary_weight,
        "versions": len(state.manifests),
        "latest": state.manifests[-1].version if state.manifests else None,
    }


def show_model(args: argparse.Namespace, settings: CliSettings) -> int:
    registry = open_registry(settings)
    kind = resolve_kind(registry, args.name, args.kind)
    if args.ref is not None:
        return show_version(registry, kind, args.name, args.ref, as_json=args.json)
    state = registry.state(kind, args.name)
    aliases = state.aliases
    if args.json:
        dump_json(
            {
                "kind": kind,
                "name": args.name,
                "aliases": aliases.to_dict(),
                "versions": [version_record(m, aliases) for m in state.manifests],
            }
        )
        return 0
    history = ", ".join(aliases.history) or "none"
    print(f"{kind}/{args.name}: production {aliases.production or 'none'}, canary {canary_text(aliases)}")
    print(f"earlier production versions (rollback goes to the last): {history}")
    if not state.manifests:
        print("no versions")
        return 0
    rows = [
        [
            m.version,
            m.status,
            m.created,
            m.dataset_version or "-",
            metrics_text(m.metrics) or "-",
            ",".join(alias_names(aliases, m.version)) or "-",
        ]
        for m in state.manifests
    ]
    print()
    print(table(["VERSION", "STATUS", "CREATED", "DATASET", "METRICS", "ALIASES"], rows))
    return 0


def show_version(registry: Registry, kind: Kind, name: str, ref: str, *, as_json: bool) -> int:
    version = registry.get(kind, name, ref)
    aliases = registry.aliases(kind, name)
    record = {**version_record(version.manifest, aliases), "path": str(version.path)}
    if as_json:
        dump_json(record)
        return 0
    m = version.manifest
    fields = [
        ("version", m.version),
        ("kind", m.kind),
        ("name", m.name),
        ("status", m.status),
        ("aliases", ", ".join(record["aliases"]) or "none"),
        ("created", m.created),
        ("base model", f"{m.base_model or '-'} (sha256 {m.base_model_sha256 or '-'})"),
        ("dataset version", m.dataset_version or "-"),
        ("parent", m.parent or "-"),
        ("content sha256", m.content_sha256),
        ("path", str(version.path)),
    ]
    width = max(len(label) for label, _ in fields) + 1
    for label, value in fields:
        print(f"{label + ':':<{width}} {value}")
    for label, data in (("metrics", m.metrics), ("config", m.config)):
        print(f"{label}:" + ("" if data else " none"))
        for key, value in sorted(data.items()):
            print(f"  {key}: {short_value(value)}")
    return 0


# --------------------------------------------------------------------------- changing


def change_aliases(
    settings: CliSettings,
    registry: Registry,
    kind: Kind,
    name: str,
    change: Callable[[ModelRegistry], Awaitable[Aliases]],
) -> tuple[Aliases, Aliases, str]:
    """Apply one alias change; returns (before, after, "redis" | "files")."""

    async def run() -> tuple[Aliases, str]:
        redis = await connect_or_warn(settings.redis_url, FILES_ONLY)
        if redis is None:
            return await change(ModelRegistry(registry)), "files"
        try:
            return await change(ModelRegistry(registry, RegistryIndex(redis))), "redis"
        except (RedisError, OSError) as exc:
            raise CliError(
                f"the registry files may have changed, but the Redis index at {redact(settings.redis_url)} could not "
                f"be updated ({exc}): run `bailu models reindex` once Redis answers"
            ) from exc
        finally:
            await redis.aclose()

    before = registry.aliases(kind, name)
    try:
        after, index = asyncio.run(run())
    except BailuError as exc:  # promote without a canary, unknown version, ...
        raise CliError(f"{kind}/{name}: {exc.message}") from exc
    return before, after, index


def report_change(args: argparse.Namespace, kind: Kind, action: str, change: tuple[Aliases, Aliases, str]) -> int:
    before, after, index = change
    if args.json:
        dump_json(
            {
                "kind": kind,
                "name": args.name,
                "action": action,
                "before": before.to_dict(),
                "after": after.to_dict(),
                "index": index,
            }
        )
        return 0
    lines = []
    if before.production != after.production:
        lines.append(f"  production: {before.production or 'none'} -> {after.production or 'none'}")
    if (before.canary, before.canary_weight) != (after.canary, after.canary_weight):
        lines.append(f"  canary:     {canary_text(before)} -> {canary_text(after)}")
    where = "registry files and Redis index" if index == "redis" else "registry files only"
    print(f"{kind}/{args.name}: {action} ({where})")
    print("\n".join(lines) if lines else "  nothing changed")
    return 0


def promote(args: argparse.Namespace, settings: CliSettings) -> int:
    registry = open_registry(settings)
    kind = resolve_kind(registry, args.name, args.kind)
    name = args.name
    change = change_aliases(settings, registry, kind, name, lambda m: m.promote(kind, name))
    return report_change(args, kind, "promoted the canary to production", change)


def rollback(args: argparse.Namespace, settings: CliSettings) -> int:
    registry = open_registry(settings)
    kind = resolve_kind(registry, args.name, args.kind)
    name = args.name
    change = change_aliases(settings, registry, kind, name, lambda m: m.rollback(kind, name))
    before, after, _ = change
    # The registry undoes the latest rollout step: a live canary first, else the last promotion.
    action = "rolled back: dropped the canary" if before.canary else "rolled back production to the previous version"
    if after == before:
        action = "rolled back: nothing to undo"
    return report_change(args, kind, action, change)


def canary(args: argparse.Namespace, settings: CliSettings) -> int:
    if args.clear and (args.version is not None or args.weight is not None):
        raise UsageError("--clear takes no VERSION and no --weight")
    if not args.clear and args.weight is None:
        raise UsageError("--weight is required (or --clear to remove the canary)")
    registry = open_registry(settings)
    kind = resolve_kind(registry, args.name, args.kind)
    version: str | None = None
    weight = 0.0
    if not args.clear:
        version = args.version or registry.aliases(kind, args.name).canary
        if version is None:
            raise CliError(f"{kind}/{args.name} has no canary: name the VERSION to make the canary")
        weight = args.weight
    action = "removed the canary" if args.clear else f"set the canary to {version} at {percent(weight)}"
    change = change_aliases(
        settings,
        registry,
        kind,
        args.name,
        lambda m: m.set_canary(kind, args.name, version, weight),
    )
    return report_change(args, kind, action, change)


def reindex(args: argparse.Namespace, settings: CliSettings) -> int:
    registry = open_registry(settings)
    if not settings.redis_url:
        raise CliError("reindex needs Redis: pass --redis-url or set BAILU_REDIS_URL")

    async def run() -> int:
        redis = await connect(settings.redis_url)

        try:
            return await ModelRegistry(registry, RegistryIndex(redis)).rebuild()
        finally:
            await redis.aclose()

    versions = asyncio.run(run())
    names = len(registry.names())
    if args.json:
        dump_json({"names": names, "versions": versions, "registry_dir": str(registry.root)})
    else:
        where = f"{redact(settings.redis_url)} from {registry.root}"
        print(f"rebuilt the Redis index at {where}: {names} names, {versions} versions")
    return 0


# --------------------------------------------------------------------------- arguments


def weight(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be within 0..1 (a share of the traffic), got {text}")
    return value


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add `models` and its subcommands to the top-level subparsers."""
    models = commands.add_parser(
        "models",
        help="the model registry: versions, aliases, canary",
        description="Read the model registry from its files. Changes (promote, rollback, canary) go to the files, "
        "then to the Redis index and its change events, which serving follows within a second; without Redis, to "
        "the files only (workers notice at their next registry poll, the gateway after `bailu models reindex`).",
    )
    sub = models.add_subparsers(dest="action", required=True, metavar="ACTION")

    def kind_option(parser: argparse.ArgumentParser, what: str) -> None:
        parser.add_argument("--kind", choices=KINDS, help=what)

    p = sub.add_parser("list", parents=[common], help="every name with its production and canary versions")
    kind_option(p, "only this kind")
    p.set_defaults(handler=list_models)

    p = sub.add_parser("show", parents=[common], help="a name's versions, or one version's manifest")
    p.add_argument("name", metavar="NAME")
    p.add_argument("ref", nargs="?", metavar="VERSION", help="a version (v0003), production or canary")
    kind_option(p, "the kind of NAME, when several kinds have it")
    p.set_defaults(handler=show_model)

    p = sub.add_parser("promote", parents=[common], help="the canary becomes production")
    p.add_argument("name", metavar="NAME")
    kind_option(p, "the kind of NAME, when several kinds have it")
    p.set_defaults(handler=promote)

    p = sub.add_parser(
        "rollback",
        parents=[common],
        help="undo the latest rollout step: drop a live canary, else return production to the previous version",
    )
    p.add_argument("name", metavar="NAME")
    kind_option(p, "the kind of NAME, when several kinds have it")
    p.set_defaults(handler=rollback)

    p = sub.add_parser(
        "canary",
        parents=[common],
        help="set the canary version and its share of traffic, or remove it",
        description="Set the canary of NAME to VERSION (default: the current canary) with --weight W, a share of "
        "the alias's traffic within 0..1; or remove the canary with --clear.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("version", nargs="?", metavar="VERSION", help="the version (default: the current canary)")
    p.add_argument("--weight", type=weight, help="share of the traffic the canary gets, 0..1 (0.1: 10%%)")
    p.add_argument("--clear", action="store_true", help="remove the canary (all traffic to production)")
    kind_option(p, "the kind of NAME, when several kinds have it")
    p.set_defaults(handler=canary)

    p = sub.add_parser("reindex", parents=[common], help="rebuild the Redis index from the registry files")
    p.set_defaults(handler=reindex)
