"""Dataset shards and versions on disk: the files alone define the data.

    <root>/shards/<batch>/sft.jsonl          ms-swift `messages` records (`bailu.datasets.format`)
    <root>/shards/<batch>/preference.jsonl   ms-swift `messages` + `rejected_response` records
    <root>/shards/<batch>/meta.json          per record: kind, source, feedback event id, time, content hash,
                                             and `metadata` when its completion request had some
    <root>/versions/v000001/{sft,preference}.jsonl, manifest.json

The records of a kind in `meta.json` are in the order of that kind's JSONL lines, and a version's files are
its batches' files in the manifest's batch order: `records` pairs each line with its provenance, so that a
version can be filtered by it (e.g. by a `metadata` tag).

A batch directory is built under a temporary name, every file fsynced, then
renamed into place: the rename is the commit point, so a half-written batch is
never visible. A version is sealed the same way; it holds every batch
committed so far, so a training run pins one version and gets exactly its data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bailu.common.atomic import TMP_PREFIX, fsync_dir, write_durable
from bailu.datasets.format import KINDS, PREFERENCE_FILE, SFT_FILE, Example, file_name


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _json_bytes(value: Any) -> bytes:
    """`value` as compact UTF-8 JSON: orjson's (several times faster: the collector writes every record of a
    batch), or the standard library's for what orjson refuses (an integer beyond 64 bits, a lone surrogate,
    which then fails to encode as before)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def provenance_of(example: Example) -> dict[str, Any]:
    """What `meta.json` keeps of an example beside its ms-swift record."""
    record: dict[str, Any] = {
        "kind": example.kind,
        "source": example.source,
        "event_id": example.event_id,
        "created": example.created,
        "hash": example.hash,
    }
    if example.metadata:
        record["metadata"] = dict(example.metadata)
    return record


class DatasetStore:
    """The dataset under `root`: the collector writes batches and seals versions; readers list versions and
    read their manifests and files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.shards = root / "shards"
        self.versions_dir = root / "versions"

    def ensure(self) -> None:
        self.shards.mkdir(parents=True, exist_ok=True)
        self.versions_dir.mkdir(parents=True, exist_ok=True)

    # batches

    def batch_exists(self, name: str) -> bool:
        return (self.shards / name / "meta.json").is_file()

    def batches(self) -> list[str]:
        """Committed batches, oldest first (names start with a millisecond timestamp)."""
        if not self.shards.is_dir():
            return []
        return sorted(p.name for p in self.shards.iterdir() if not p.name.startswith(".") and p.is_dir())

    def write_batch(self, name: str, examples: list[Example], consumer: str) -> Path:
        """Write a batch atomically (idempotent: an existing batch of that name is left as it is)."""
        final = self.shards / name
        if self.batch_exists(name):
            return final
        self.ensure()
        tmp = self.shards / f"{TMP_PREFIX}{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for kind in KINDS:
            lines = [_json_bytes(e.to_swift()) for e in examples if e.kind == kind]
            if lines:
                write_durable(tmp / file_name(kind), b"\n".join(lines) + b"\n")
        meta = {
            "batch": name,
            "consumer": consumer,
            "created": _iso(time.time()),
            "records": [provenance_of(e) for e in examples],
        }
        write_durable(tmp / "meta.json", _json_bytes(meta))
        fsync_dir(tmp)
        os.rename(tmp, final)
        fsync_dir(self.shards)
        return final

    def batch_meta(self, name: str) -> dict[str, Any]:
        return dict(json.loads((self.shards / name / "meta.json").read_text()))

    def provenance(self, version: str) -> Iterator[dict[str, Any]]:
        """The provenance (`meta.json` entry) of every record of `version`, batch by batch."""
        for batch in self.manifest(version)["batches"]:
            yield from self.batch_meta(batch)["records"]

    def records(self, version: str, kind: str) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Every `kind` record of `version` in file order, as (provenance, ms-swift record)."""
        provenance = (p for p in self.provenance(version) if p["kind"] == kind)
        path = self.versions_dir / version / file_name(kind)
        with path.open(encoding="utf-8") as lines:
            for meta, line in zip(provenance, lines, strict=True):
                yield meta, json.loads(line)

    def metadata_counts(self, version: str, key: str) -> dict[str | None, Counter[str]]:
        """How many records of each kind `version` has per value of the metadata `key`: the most frequent value
        first, then None (the records without the key)."""
        counts: dict[str | None, Counter[str]] = {}
        for record in self.provenance(version):
            value = (record.get("metadata") or {}).get(key)
            counts.setdefault(value, Counter())[record["kind"]] += 1
        return dict(sorted(counts.items(), key=lambda item: (item[0] is None, -item[1].total(), item[0] or "")))

    def remove_stale_tmp(self) -> int:
        """Delete half-written batches and versions left by a crash; they were never committed."""
        removed = 0
        for folder in (self.shards, self.versions_dir):
            if folder.is_dir():
                for path in folder.glob(f"{TMP_PREFIX}*"):
                    shutil.rmtree(path, ignore_errors=True)
                    removed += 1
        return removed

    # versions

    def versions(self) -> list[str]:
        """Sealed versions, oldest first (a half-sealed one, still under its temporary name, is not listed)."""
        if not self.versions_dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.versions_dir.iterdir()
            if not p.name.startswith(".") and (p / "manifest.json").is_file()
        )

    def manifest(self, version: str) -> dict[str, Any]:
        return dict(json.loads((self.versions_dir / version / "manifest.json").read_text()))

    def seal(self) -> str | None:
        """Seal a new version holding every committed batch; None if nothing was added since the last one.
        Safe against concurrent sealers: the version directory's rename is the claim."""
        self.ensure()
        while True:
            versions = self.versions()
            previous = self.manifest(versions[-1]) if versions else None
            batches = self.batches()
            if previous is not None and set(batches) <= set(previous["batches"]):
                return None
            number = int(versions[-1][1:]) + 1 if versions else 1
            version = f"v{number:06d}"
            tmp = self.versions_dir / f"{TMP_PREFIX}{version}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            manifest = self._build_version(tmp, version, batches, previous)
            write_durable(tmp / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False).encode())
            fsync_dir(tmp)
            try:
                os.rename(tmp, self.versions_dir / version)
            except OSError:  # another replica sealed this number first: try the next one
                shutil.rmtree(tmp, ignore_errors=True)
                continue
            fsync_dir(self.versions_dir)
            return version

    def _build_version(
        self, folder: Path, version: str, batches: list[str], previous: dict[str, Any] | None
    ) -> dict[str, Any]:
        counts: Counter[str] = Counter()
        sources: Counter[str] = Counter()
        metadata_keys: Counter[str] = Counter()
        hashes: list[str] = []
        times: list[float] = []
        files: dict[str, Any] = {}
        for kind in KINDS:
            digest = hashlib.sha256()
            records = 0
            with (folder / file_name(kind)).open("wb") as out:
                for batch in batches:
                    shard = self.shards / batch / file_name(kind)
                    if shard.is_file():
                        data = shard.read_bytes()
                        out.write(data)
                        digest.update(data)
                        records += data.count(b"\n")
                out.flush()
                os.fsync(out.fileno())
            files[file_name(kind)] = {"records": records, "sha256": digest.hexdigest()}
        for batch in batches:
            for record in self.batch_meta(batch)["records"]:
                counts[record["kind"]] += 1
                sources[f"{record['kind']}/{record['source']}"] += 1
                metadata_keys.update((record.get("metadata") or {}).keys())
                hashes.append(record["hash"])
                times.append(record["created"])
        before = previous["counts"] if previous else {}
        return {
            "version": version,
            "created": _iso(time.time()),
            "previous": previous["version"] if previous else None,
            "formats": {SFT_FILE: "ms-swift messages", PREFERENCE_FILE: "ms-swift messages + rejected_response"},
            "files": files,
            "counts": {kind: counts[kind] for kind in KINDS},
            "new_since_previous": {kind: counts[kind] - int(before.get(kind, 0)) for kind in KINDS},
            "sources": dict(sorted(sources.items())),
            # How many records carry each metadata key (`bailu datasets show --by-metadata KEY` counts values).
            "metadata_keys": dict(sorted(metadata_keys.items())),
            "content_sha256": hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest(),
            "time_range": {"first": _iso(min(times)), "last": _iso(max(times))} if times else None,
            "batches": batches,
        }
