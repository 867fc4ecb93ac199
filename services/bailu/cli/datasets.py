"""`bailu datasets ...`: the collector's sealed dataset versions, read from their manifests (and, for counts by
a `metadata` key, from their batches' provenance)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from bailu.cli.errors import CliError
from bailu.cli.output import dump_json, short_value, table
from bailu.cli.settings import CliSettings
from bailu.datasets.format import KINDS
from bailu.datasets.store import DatasetStore

# The manifest fields `datasets list --json` reports per version (the batch list is reduced to its length).
SUMMARY_FIELDS = ("version", "created", "previous", "counts", "new_since_previous", "time_range", "content_sha256")


def open_store(settings: CliSettings) -> DatasetStore:
    if not settings.dataset_dir.is_dir():
        raise CliError(f"dataset directory {settings.dataset_dir} does not exist (--dataset-dir or BAILU_DATASET_DIR)")
    return DatasetStore(settings.dataset_dir)


def read_manifest(store: DatasetStore, version: str) -> dict[str, Any]:
    try:
        return store.manifest(version)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read the manifest of dataset version {version}: {exc}") from exc


def summary(manifest: dict[str, Any]) -> dict[str, Any]:
    return {**{k: manifest.get(k) for k in SUMMARY_FIELDS}, "batches": len(manifest.get("batches") or [])}


def list_datasets(args: argparse.Namespace, settings: CliSettings) -> int:
    store = open_store(settings)
    manifests = [read_manifest(store, v) for v in store.versions()]
    if args.json:
        dump_json([summary(m) for m in manifests])
        return 0
    if not manifests:
        print(f"no sealed dataset versions in {store.root}")
        return 0

    def count(m: dict[str, Any], field: str, kind: str) -> str:
        return str((m.get(field) or {}).get(kind, "-"))

    rows = [
        [
            m.get("version", "?"),
            m.get("created", "-"),
            *(count(m, "counts", kind) for kind in KINDS),
            " / ".join(count(m, "new_since_previous", kind) for kind in KINDS),
            m.get("previous") or "-",
        ]
        for m in manifests
    ]
    headers = ["VERSION", "CREATED", *(kind.upper() for kind in KINDS), "NEW (" + " / ".join(KINDS) + ")", "PREVIOUS"]
    print(table(headers, rows))
    return 0


def show_dataset(args: argparse.Namespace, settings: CliSettings) -> int:
    store = open_store(settings)
    versions = store.versions()
    if args.version is None:
        if not versions:
            raise CliError(f"no sealed dataset versions in {store.root}")
        version = versions[-1]
    elif args.version in versions:
        version = args.version
    else:
        known = ", ".join(versions[-5:]) or "none"
        raise CliError(f"no dataset version {args.version!r} in {store.root} (newest: {known})")
    manifest = read_manifest(store, version)
    by_metadata = metadata_rows(store, version, args.by_metadata) if args.by_metadata else None
    if args.json:
        dump_json(manifest if by_metadata is None else {**manifest, "by_metadata": by_metadata})
        return 0
    time_range = manifest.get("time_range") or {}
    fields = [
        ("version", manifest.get("version")),
        ("created", manifest.get("created")),
        ("previous", manifest.get("previous") or "none"),
        ("examples from", f"{time_range.get('first', '-')} to {time_range.get('last', '-')}"),
        ("content sha256", manifest.get("content_sha256")),
        ("batches", len(manifest.get("batches") or [])),
        ("path", str(store.versions_dir / version)),
    ]
    width = max(len(label) for label, _ in fields) + 1
    for label, value in fields:
        print(f"{label + ':':<{width}} {value}")
    counts, new = manifest.get("counts") or {}, manifest.get("new_since_previous") or {}
    print("counts:")
    for kind in KINDS:
        print(f"  {kind}: {counts.get(kind, '-')} ({new.get(kind, '-')} new)")
    print("sources:")
    for source, number in sorted((manifest.get("sources") or {}).items()):
        print(f"  {source}: {number}")
    print("files:")
    for name, info in sorted((manifest.get("files") or {}).items()):
        detail = info if not isinstance(info, dict) else {k: short_value(v) for k, v in info.items()}
        print(f"  {name}: {json.dumps(detail, sort_keys=True)}")
    keys = manifest.get("metadata_keys") or {}
    print("metadata keys:" + ("" if keys else " none"))
    for name, number in sorted(keys.items()):
        print(f"  {name}: {number}")
    if by_metadata is not None:
        print(f"by metadata {args.by_metadata!r}:")
        rows = [["(none)" if r["value"] is None else str(r["value"]), *(str(r[k]) for k in KINDS)] for r in by_metadata]
        print(table(["VALUE", *(kind.upper() for kind in KINDS)], rows))
    return 0


def metadata_rows(store: DatasetStore, version: str, key: str) -> list[dict[str, Any]]:
    """One row per value of the metadata `key` in `version` (value None: records without it), with counts by kind."""
    try:
        counts = store.metadata_counts(version, key)
    except (OSError, ValueError, KeyError) as exc:
        raise CliError(f"cannot read the batches of dataset version {version}: {exc}") from exc
    return [{"value": value, **{kind: kinds[kind] for kind in KINDS}} for value, kinds in counts.items()]


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    datasets = commands.add_parser(
        "datasets",
        help="the collector's sealed dataset versions",
        description="The dataset versions the collector sealed (training runs pin one), from their manifests.",
    )
    sub = datasets.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("list", parents=[common], help="every sealed version with its counts")
    p.set_defaults(handler=list_datasets)
    p = sub.add_parser("show", parents=[common], help="one version's manifest (default: the newest)")
    p.add_argument("version", nargs="?", metavar="VERSION", help="e.g. v000003 (default: the newest)")
    p.add_argument(
        "--by-metadata",
        metavar="KEY",
        help="also count the version's records by the value of this `metadata` key of their completion requests",
    )
    p.set_defaults(handler=show_dataset)
