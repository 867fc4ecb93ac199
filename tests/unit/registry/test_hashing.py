from __future__ import annotations

import os
from pathlib import Path

from bailu.registry import hash_dir


def test_hash_is_deterministic_and_content_sensitive(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, order in ((a, ("x", "y/z")), (b, ("y/z", "x"))):
        for rel in order:
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text(rel)
    os.utime(b / "x", (0, 0))
    assert hash_dir(a) == hash_dir(b)
    (b / "manifest.json").write_text("{}")
    (b / ".tmp-junk").write_text("junk")
    assert hash_dir(b, exclude=("manifest.json",)) == hash_dir(a)
    (b / "x").write_text("changed")
    assert hash_dir(a) != hash_dir(b)


def test_renaming_a_file_changes_the_hash(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one").write_text("same")
    before = hash_dir(tmp_path / "a")
    (tmp_path / "a" / "one").rename(tmp_path / "a" / "two")
    assert hash_dir(tmp_path / "a") != before
