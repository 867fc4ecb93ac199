"""Deterministic content hashes of artifact directories."""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from pathlib import Path

_CHUNK = 1 << 20


def hash_dir(path: Path, exclude: Collection[str] = ()) -> str:
    """sha256 over every regular file under `path`: relative POSIX paths in sorted order, sizes and bytes.

    Independent of file times, permissions and directory listing order; top-level names in `exclude`
    (e.g. `manifest.json`) and hidden entries (temporary files) are left out.
    """
    digest = hashlib.sha256()
    files = sorted(
        (p for p in path.rglob("*") if p.is_file() and not _skipped(p.relative_to(path), exclude)),
        key=lambda p: p.relative_to(path).as_posix(),
    )
    for file in files:
        rel = file.relative_to(path).as_posix().encode()
        digest.update(len(rel).to_bytes(8, "big") + rel + file.stat().st_size.to_bytes(8, "big"))
        with file.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def _skipped(rel: Path, exclude: Collection[str]) -> bool:
    return (len(rel.parts) == 1 and rel.name in exclude) or any(part.startswith(".") for part in rel.parts)
