"""The dataset on disk (`bailu.datasets.store`): batches, sealed versions and their manifests."""

from __future__ import annotations

import json
from pathlib import Path

from bailu.common.atomic import TMP_PREFIX
from bailu.datasets.format import PREFERENCE, SFT, Example
from bailu.datasets.store import DatasetStore

PROMPT = [{"role": "user", "content": "Write a short poem about autumn light."}]


def examples(n: int, start: int = 0) -> list[Example]:
    return [
        item
        for i in range(start, start + n)
        for item in (
            Example(SFT, "rating", f"{i}-0", 1_750_000_000.0 + i, PROMPT, f"Answer number {i}."),
            Example(PREFERENCE, "comparison", f"{i}-1", 1_750_000_000.0 + i, PROMPT, f"Better {i}.", f"Worse {i}."),
        )
    ]


def test_a_batch_is_written_once_with_its_records_and_meta(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path)
    batch = store.write_batch("0001-a", examples(2), "consumer-a")

    assert store.batches() == ["0001-a"]
    sft = [json.loads(line) for line in (batch / "sft.jsonl").read_text().splitlines()]
    assert sft[0] == {"messages": [*PROMPT, {"role": "assistant", "content": "Answer number 0."}]}
    meta = store.batch_meta("0001-a")
    assert meta["consumer"] == "consumer-a"
    assert [r["kind"] for r in meta["records"]] == [SFT, PREFERENCE, SFT, PREFERENCE]

    store.write_batch("0001-a", examples(1, start=7), "consumer-b")  # idempotent: left as it is
    assert store.batch_meta("0001-a")["consumer"] == "consumer-a"


def test_versions_hold_every_batch_so_far_and_count_what_is_new(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path)
    store.write_batch("0001-a", examples(2), "c")
    first = store.seal()
    assert first == "v000001"
    assert store.seal() is None  # nothing new

    store.write_batch("0002-a", examples(1, start=2), "c")
    second = store.seal()
    assert second == "v000002"
    manifest = store.manifest("v000002")
    assert manifest["previous"] == "v000001"
    assert manifest["batches"] == ["0001-a", "0002-a"]
    assert manifest["counts"] == {SFT: 3, PREFERENCE: 3}
    assert manifest["new_since_previous"] == {SFT: 1, PREFERENCE: 1}
    assert manifest["files"]["preference.jsonl"]["records"] == 3
    assert store.versions() == ["v000001", "v000002"]


def test_half_written_batches_and_versions_are_invisible_and_removed(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path)
    store.ensure()
    (store.shards / f"{TMP_PREFIX}0001-a").mkdir()
    (store.versions_dir / f"{TMP_PREFIX}v000001-1").mkdir()

    assert store.batches() == []
    assert store.versions() == []
    assert store.remove_stale_tmp() == 2
    assert list(store.shards.iterdir()) == []


def tagged(kind: str, number: int, metadata: dict[str, str]) -> Example:
    rejected = f"Worse {number}." if kind == PREFERENCE else None
    answer = f"Answer number {number}."
    return Example(kind, "edit", f"{number}-t", 1_750_000_000.0 + number, PROMPT, answer, rejected, metadata)


def test_metadata_is_kept_beside_the_records_and_a_version_can_be_filtered_by_it(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path)
    store.write_batch(
        "0001-a",
        [tagged(SFT, 1, {"campaign": "autumn"}), tagged(PREFERENCE, 2, {"campaign": "spring", "tier": "pro"})],
        "c",
    )
    store.write_batch("0002-a", [tagged(SFT, 3, {}), tagged(SFT, 4, {"campaign": "autumn"})], "c")
    version = store.seal()
    assert version is not None

    # The ms-swift records stay as ms-swift reads them; the tags are in the provenance.
    sft_lines = (store.versions_dir / version / "sft.jsonl").read_text().splitlines()
    assert all(set(json.loads(line)) == {"messages"} for line in sft_lines)
    assert [r.get("metadata") for r in store.batch_meta("0001-a")["records"]] == [
        {"campaign": "autumn"},
        {"campaign": "spring", "tier": "pro"},
    ]
    assert "metadata" not in store.batch_meta("0002-a")["records"][0]

    autumn = [
        record["messages"][-1]["content"]
        for meta, record in store.records(version, SFT)
        if meta.get("metadata", {}).get("campaign") == "autumn"
    ]
    assert autumn == ["Answer number 1.", "Answer number 4."]
    [(meta, pair)] = list(store.records(version, PREFERENCE))
    assert (meta["metadata"]["tier"], pair["rejected_response"]) == ("pro", "Worse 2.")

    assert store.manifest(version)["metadata_keys"] == {"campaign": 3, "tier": 1}
    counts = store.metadata_counts(version, "campaign")
    assert list(counts) == ["autumn", "spring", None]  # most frequent first, the records without the key last
    assert counts["autumn"] == {SFT: 2}
    assert counts["spring"] == {PREFERENCE: 1}
    assert counts[None] == {SFT: 1}


def test_records_without_metadata_count_as_untagged(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path)
    store.write_batch("0001-a", examples(2), "c")
    version = store.seal()
    assert version is not None
    assert store.metadata_counts(version, "campaign") == {None: {SFT: 2, PREFERENCE: 2}}
