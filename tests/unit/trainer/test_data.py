"""The snapshot stage's pure parts: reading a sealed version, the held-out split, SFT and KTO training sets."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from bailu.trainer import data
from bailu.trainer.data import Pair, SftExample, Snapshot
from bailu.trainer.errors import NotEnoughData


def pair(prompt: str, chosen: str = "A warm line of gold light.", rejected: str = "cold grey ash.") -> Pair:
    return Pair((("user", prompt),), chosen, rejected)


def prompts(n: int) -> list[Pair]:
    return [pair(f"Write about thing number {i}.", f"Gold line {i}.", f"Grey line {i}.") for i in range(n)]


def write_version(root: Path, version: str, preference: list[Any], sft: Sequence[Any] = ()) -> None:
    folder = root / "versions" / version
    folder.mkdir(parents=True)
    (folder / "preference.jsonl").write_text("".join(json.dumps(r) + "\n" for r in preference))
    (folder / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft))
    (folder / "manifest.json").write_text(json.dumps({"version": version}))


def test_split_is_deterministic_and_keeps_each_prompt_on_one_side() -> None:
    pairs = [*prompts(200), pair("Write about thing number 7.", "Another gold line.", "Another grey line.")]

    first = data.split_pairs(pairs, fraction=0.2, max_pairs=1000, seed=42)
    again = data.split_pairs(list(reversed(pairs)), fraction=0.2, max_pairs=1000, seed=42)

    held = {p.prompt_key for p in first.held_out}
    assert held == {p.prompt_key for p in again.held_out}
    assert held.isdisjoint(p.prompt_key for p in first.train)
    assert len(first.train) + len(first.held_out) == len(pairs)
    assert 20 <= len(held) <= 60  # about a fifth of 200 prompts
    twins = [p for p in pairs if p.prompt_key == pair("Write about thing number 7.").prompt_key]
    assert all((t in first.held_out) == (twins[0] in first.held_out) for t in twins)


def test_prompts_equal_up_to_case_and_punctuation_are_one_prompt() -> None:
    variant = pair("write about THING number 3", "Other gold.", "Other grey.")
    original = pair("Write about thing number 3.", "Gold line 3.", "Grey line 3.")
    assert variant.prompt_key == original.prompt_key
    for seed in range(20):
        split = data.split_pairs([*prompts(50), variant], fraction=0.5, max_pairs=1000, seed=seed)
        assert (variant in split.held_out) == (original in split.held_out)


def test_another_seed_gives_another_split() -> None:
    pairs = prompts(100)
    a = {p.prompt_key for p in data.split_pairs(pairs, fraction=0.3, max_pairs=1000, seed=1).held_out}
    b = {p.prompt_key for p in data.split_pairs(pairs, fraction=0.3, max_pairs=1000, seed=2).held_out}
    assert a != b


def test_held_out_is_capped_but_never_empty_and_something_trains() -> None:
    capped = data.split_pairs(prompts(300), fraction=0.5, max_pairs=10, seed=0)
    assert len(capped.held_out) == 10
    tiny = data.split_pairs(prompts(2), fraction=0.01, max_pairs=10, seed=0)
    assert (len(tiny.held_out), len(tiny.train)) == (1, 1)
    most = data.split_pairs(prompts(3), fraction=0.99, max_pairs=10, seed=0)
    assert len(most.train) >= 1


def test_a_growing_dataset_keeps_earlier_prompts_on_their_side() -> None:
    small = data.split_pairs(prompts(100), fraction=0.2, max_pairs=1000, seed=5)
    grown = data.split_pairs(prompts(300), fraction=0.2, max_pairs=1000, seed=5)
    held_small = {p.prompt_key for p in small.held_out}
    held_grown = {p.prompt_key for p in grown.held_out}
    assert held_small <= held_grown
    assert {p.prompt_key for p in small.train} <= {p.prompt_key for p in grown.train}


def test_sft_set_excludes_held_out_prompts_and_duplicates() -> None:
    pairs = prompts(40)
    snapshot = Snapshot("v000001", pairs, [], 0, data.split_pairs(pairs, fraction=0.3, max_pairs=100, seed=0))
    held = snapshot.split.held_out[0]
    train = snapshot.split.train[0]
    # An edit gives an SFT example with the same prompt and answer as its pair; another one is for a held-out prompt.
    snapshot.sft = [SftExample(train.prompt, train.chosen.upper()), SftExample(held.prompt, "Leaked answer.")]

    records = data.sft_training_set(snapshot)

    texts = [r["messages"][-1]["content"] for r in records]
    assert "Leaked answer." not in texts
    assert held.chosen not in texts
    assert len(records) == len(snapshot.split.train)  # the upper-cased duplicate counts once
    assert all(r["messages"][-1]["role"] == "assistant" for r in records)


def test_kto_records_label_chosen_true_and_rejected_false() -> None:
    p = Pair((("system", "Be brief."), ("user", "A line on dew.")), "Dew on the grass.", "I cannot help.")
    records = data.kto_records([p])
    assert records == [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "A line on dew."},
                {"role": "assistant", "content": "Dew on the grass."},
            ],
            "label": True,
        },
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "A line on dew."},
                {"role": "assistant", "content": "I cannot help."},
            ],
            "label": False,
        },
    ]


def test_load_reads_both_files_and_drops_pairs_without_preference(tmp_path: Path) -> None:
    chat = [{"role": "user", "content": "A line on dew."}, {"role": "assistant", "content": "Dew at dawn."}]
    write_version(
        tmp_path,
        "v000003",
        [{"messages": chat, "rejected_response": "no"}, {"messages": chat, "rejected_response": "Dew at dawn."}],
        [{"messages": chat}],
    )
    snapshot = data.load(tmp_path, "v000003")
    assert snapshot.pairs == [Pair((("user", "A line on dew."),), "Dew at dawn.", "no")]
    assert snapshot.sft == [SftExample((("user", "A line on dew."),), "Dew at dawn.")]
    assert snapshot.dropped_identical == 1


def record(messages: Sequence[Mapping[str, object]], **extra: object) -> str:
    return json.dumps({"messages": messages, **extra})


USER = {"role": "user", "content": "x"}
ANSWER = {"role": "assistant", "content": "y"}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "not JSON"),
        ('["a"]', "JSON object"),
        (record([USER], rejected_response="z"), "at least a prompt"),
        (record([USER, USER], rejected_response="z"), "assistant answer"),
        (record([{"role": "user", "content": 3}, ANSWER], rejected_response="z"), "role"),
        (record([{"role": "robot", "content": "x"}, ANSWER], rejected_response="z"), "role"),
        (record([USER, ANSWER]), "rejected_response"),
        (record([USER, ANSWER], rejected_response=" "), "rejected_response"),
    ],
)
def test_a_malformed_record_names_its_file_and_line(tmp_path: Path, line: str, problem: str) -> None:
    folder = tmp_path / "versions" / "v000001"
    folder.mkdir(parents=True)
    good = record([USER, ANSWER], rejected_response="z")
    (folder / "preference.jsonl").write_text(f"{good}\n\n{line}\n")
    (folder / "manifest.json").write_text("{}")
    with pytest.raises(NotEnoughData, match=rf"v000001/preference.jsonl line 3: .*{problem}"):
        data.load(tmp_path, "v000001")


def test_resolve_version_picks_the_newest_sealed_or_the_pinned_one(tmp_path: Path) -> None:
    for version in ("v000001", "v000002"):
        write_version(tmp_path, version, [])
    (tmp_path / "versions" / "v000003").mkdir()  # not sealed: no manifest
    (tmp_path / "versions" / ".tmp-v000004").mkdir()
    assert data.resolve_version(tmp_path, "") == "v000002"
    assert data.resolve_version(tmp_path, "v000001") == "v000001"
    with pytest.raises(NotEnoughData, match="v000003 is not sealed"):
        data.resolve_version(tmp_path, "v000003")
    with pytest.raises(NotEnoughData, match="invalid dataset version"):
        data.resolve_version(tmp_path, "../etc")
    with pytest.raises(NotEnoughData, match="no sealed dataset version"):
        data.resolve_version(tmp_path / "elsewhere", "")


def test_too_few_pairs_or_prompts_is_refused_with_the_numbers() -> None:
    with pytest.raises(NotEnoughData, match=r"v000009 has 3 usable preference pairs \(2 more had identical answers\); "
                       r"at least 50 are needed"):  # fmt: skip
        data.check_enough(Snapshot("v000009", prompts(3), [], 2), 50)
    same_prompt = [pair("One prompt.", f"gold {i}", f"grey {i}") for i in range(5)]
    with pytest.raises(NotEnoughData, match="1 distinct prompt"):
        data.check_enough(Snapshot("v000009", same_prompt, []), 5)
    data.check_enough(Snapshot("v000009", prompts(5), []), 5)
