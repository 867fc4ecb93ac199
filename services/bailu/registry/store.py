"""The model registry on shared storage: the files alone define it (blocking file I/O).

    <root>/<kind>/<name>/<version>/...          the artifact files, copied at publish
    <root>/<kind>/<name>/<version>/manifest.json
    <root>/<kind>/<name>/aliases.json           production, canary, canary weight, history

A version is built in a temporary directory next to its final place, every file
fsynced, then renamed into place: the rename is the commit point, so a half-written
version is never visible. Manifests and aliases are rewritten atomically (temporary
file + rename). Writers of one name serialise on `<name>/.lock` (flock).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bailu.common.atomic import TMP_PREFIX, fsync_dir, replace_file, write_durable
from bailu.registry import aliases as transitions
from bailu.registry.errors import InvalidRegistryOperation, VersionNotFound
from bailu.registry.hashing import hash_dir
from bailu.registry.model import (
    ALIASES,
    ALIASES_FILE,
    KINDS,
    MANIFEST,
    Alias,
    Aliases,
    Kind,
    Manifest,
    Status,
    Version,
    check_kind,
    check_status,
    dumps,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION = re.compile(r"^v(\d{4,})$")
# Statuses that may not carry an alias.
_UNSERVABLE: tuple[Status, ...] = ("rejected", "retired")


@dataclass(frozen=True, slots=True)
class NameState:
    """Everything the registry holds for one name: its versions' manifests (oldest first) and aliases."""

    kind: Kind
    name: str
    manifests: tuple[Manifest, ...]
    aliases: Aliases


def format_version(number: int) -> str:
    return f"v{number:04d}"


class Registry:
    """Versions, manifests and aliases under `root`; safe for several processes on one shared volume."""

    def __init__(self, root: Path, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self._clock = clock

    # reading

    def names(self, kind: str | None = None) -> list[tuple[Kind, str]]:
        """Every (kind, name) with a directory, sorted; temporary and hidden entries are ignored."""
        result: list[tuple[Kind, str]] = []
        for k in (check_kind(kind),) if kind else KINDS:
            folder = self.root / k
            if folder.is_dir():
                result += [(k, p.name) for p in sorted(folder.iterdir()) if p.is_dir() and _NAME.match(p.name)]
        return result

    def versions(self, kind: str, name: str) -> list[str]:
        """Committed versions of a name, oldest first (a version is committed once its directory is renamed)."""
        folder = self._name_dir(kind, name)
        if not folder.is_dir():
            return []
        found = [p.name for p in folder.iterdir() if _VERSION.match(p.name) and (p / MANIFEST).is_file()]
        return sorted(found, key=_number)

    def manifest(self, kind: str, name: str, version: str) -> Manifest:
        path = self._name_dir(kind, name) / version / MANIFEST
        if not _VERSION.match(version) or not path.is_file():
            raise VersionNotFound(f"no version {kind}/{name}@{version}")
        return Manifest.from_json(path.read_text())

    def get(self, kind: str, name: str, ref: str) -> Version:
        """A version by number (`v0003`) or by alias (`production`, `canary`)."""
        version = ref
        if ref in ALIASES:
            resolved = self.aliases(kind, name).get(ref)
            if resolved is None:
                raise VersionNotFound(f"{kind}/{name} has no {ref} version")
            version = resolved
        return Version(self.manifest(kind, name, version), self._name_dir(kind, name) / version)

    def version_dir(self, kind: str, name: str, version: str) -> Path:
        """Where a version's files are (whether or not it exists)."""
        return self._name_dir(kind, name) / version

    def aliases(self, kind: str, name: str) -> Aliases:
        path = self._name_dir(kind, name) / ALIASES_FILE
        return Aliases.from_json(path.read_text()) if path.is_file() else Aliases()

    def state(self, kind: str, name: str) -> NameState:
        manifests = tuple(self.manifest(kind, name, v) for v in self.versions(kind, name))
        return NameState(check_kind(kind), name, manifests, self.aliases(kind, name))

    def find_build(self, kind: str, name: str, dataset_version: str | None, config: dict[str, Any]) -> Manifest | None:
        """The newest version of `name` built from `dataset_version` with `config` (whatever its content and
        status), or None: lets a job that would produce it see, before doing the work, that it already did."""
        wanted = dumps(config)
        for manifest in reversed(self.state(kind, name).manifests):
            if manifest.dataset_version == dataset_version and dumps(manifest.config) == wanted:
                return manifest
        return None

    def scan(self) -> list[NameState]:
        """The whole registry, read from the files alone (what an index is rebuilt from)."""
        return [self.state(kind, name) for kind, name in self.names()]

    # writing

    def publish(
        self,
        kind: str,
        name: str,
        source_dir: Path,
        *,
        base_model: str | None = None,
        base_model_sha256: str | None = None,
        dataset_version: str | None = None,
        config: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        parent: str | None = None,
        status: Status = "candidate",
    ) -> Version:
        """Copy `source_dir` in as the next version of `name`, atomically.

        Idempotent: if a version of `name` already has the same artifact content hash, dataset version
        and config, that version is returned (`existed=True`) and nothing is written. For kind `base`,
        `base_model` and its hash default to the name and the content hash.
        """
        kind = check_kind(kind)
        folder = self._name_dir(kind, name)
        if not source_dir.is_dir():
            raise InvalidRegistryOperation(f"{source_dir} is not a directory")
        config = dict(config or {})
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            shutil.copytree(source_dir, tmp, ignore=_ignore(source_dir))
            content = hash_dir(tmp, exclude=(MANIFEST,))
            with self._locked(folder):
                for existing in self.state(kind, name).manifests:
                    if existing.same_build(content, dataset_version, config):
                        return Version(existing, folder / existing.version, existed=True)
                manifest = Manifest(
                    name=name,
                    kind=kind,
                    version="",
                    created=datetime.fromtimestamp(self._clock(), UTC).isoformat(timespec="seconds"),
                    content_sha256=content,
                    base_model=base_model if base_model or kind != "base" else name,
                    base_model_sha256=base_model_sha256 if base_model_sha256 or kind != "base" else content,
                    dataset_version=dataset_version,
                    config=config,
                    metrics=dict(metrics or {}),
                    parent=parent,
                    status=check_status(status),
                )
                return self._commit(folder, tmp, manifest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def set_status(self, kind: str, name: str, version: str, status: Status) -> Manifest:
        """Rewrite a version's status in its manifest (atomically); an aliased version cannot be rejected
        or retired."""
        status = check_status(status)
        folder = self._name_dir(kind, name)
        with self._locked(folder):
            manifest = self.manifest(kind, name, version)
            aliases = self.aliases(kind, name)
            if status in _UNSERVABLE and version in (aliases.production, aliases.canary):
                raise InvalidRegistryOperation(f"{kind}/{name}@{version} is aliased: move the alias first")
            updated = manifest.with_status(status)
            if updated != manifest:
                replace_file(folder / version / MANIFEST, updated.to_json().encode())
            return updated

    def set_alias(self, kind: str, name: str, alias: Alias, version: str | None) -> Aliases:
        """Point an alias at a version (None clears it); the old production is kept for rollback."""
        return self._update_aliases(kind, name, lambda a: transitions.set_alias(a, alias, version))

    def set_canary(self, kind: str, name: str, version: str | None, weight: float) -> Aliases:
        """Set the canary and its traffic share (0..1); `None, 0.0` removes the canary."""
        return self._update_aliases(kind, name, lambda a: transitions.set_canary(a, version, weight))

    def promote(self, kind: str, name: str) -> Aliases:
        """The canary becomes production."""
        return self._update_aliases(kind, name, transitions.promote)

    def rollback(self, kind: str, name: str) -> Aliases:
        """Undo the latest rollout step: drop a live canary, else return production to its previous version."""
        return self._update_aliases(kind, name, transitions.rollback)

    def remove_stale_tmp(self, older_than_s: float = 0.0) -> int:
        """Delete temporary versions and files left by a crash (never committed, never visible).
        On a volume other writers share, pass an age that no running publish can reach."""
        removed = 0
        cutoff = time.time() - older_than_s  # file times are wall-clock times
        for kind in KINDS:
            for path in (self.root / kind).glob(f"*/{TMP_PREFIX}*"):
                if older_than_s <= 0 or path.lstat().st_mtime <= cutoff:
                    if path.is_dir():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)
                    removed += 1
        return removed

    # internals

    def _commit(self, folder: Path, tmp: Path, manifest: Manifest) -> Version:
        versions = self.versions(manifest.kind, manifest.name)
        number = _number(versions[-1]) + 1 if versions else 1
        version = format_version(number)
        manifest = replace(manifest, version=version)
        write_durable(tmp / MANIFEST, manifest.to_json().encode())
        _fsync_tree(tmp)
        os.rename(tmp, folder / version)  # under the name's lock: the number is free
        fsync_dir(folder)
        return Version(manifest, folder / version)

    def _update_aliases(self, kind: str, name: str, change: Callable[[Aliases], Aliases]) -> Aliases:
        folder = self._name_dir(kind, name)
        if not folder.is_dir():
            raise VersionNotFound(f"no model {kind}/{name}")
        with self._locked(folder):
            before = self.aliases(kind, name)
            after = change(before)
            for version in {after.production, after.canary} - {before.production, before.canary, None}:
                status = self.manifest(kind, name, version).status  # type: ignore[arg-type]
                if status in _UNSERVABLE:
                    raise InvalidRegistryOperation(f"{kind}/{name}@{version} is {status}")
            if after == before:
                return before
            if after.production is not None and after.production != before.production:
                self._mark_published(folder, self.manifest(kind, name, after.production))
            after = replace(after, updated=datetime.fromtimestamp(self._clock(), UTC).isoformat(timespec="seconds"))
            replace_file(folder / ALIASES_FILE, after.to_json().encode())
            return after

    def _mark_published(self, folder: Path, manifest: Manifest) -> None:
        """A candidate that becomes production is published (written before the alias that makes it so)."""
        if manifest.status == "candidate":
            replace_file(folder / manifest.version / MANIFEST, manifest.with_status("published").to_json().encode())

    def _name_dir(self, kind: str, name: str) -> Path:
        check_kind(kind)
        if not _NAME.match(name):
            raise InvalidRegistryOperation(f"invalid model name {name!r}")
        return self.root / kind / name

    @contextmanager
    def _locked(self, folder: Path) -> Iterator[None]:
        with (folder / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _number(version: str) -> int:
    match = _VERSION.match(version)
    return int(match.group(1)) if match else -1


def _ignore(source: Path) -> Callable[[str, list[str]], set[str]]:
    """copytree filter: hidden entries, and a top-level manifest.json (the registry writes its own)."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n.startswith(".")}
        if Path(directory) == source:
            skipped |= {n for n in names if n == MANIFEST}
        return skipped

    return ignore


def _fsync_tree(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for file in files:
            fd = os.open(Path(directory) / file, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(directory))
