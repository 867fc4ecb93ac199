"""The dataset records (`bailu.datasets.format`): ms-swift's shapes and the identity used to de-duplicate."""

from __future__ import annotations

from bailu.datasets.format import PREFERENCE, SFT, Example

PROMPT = [{"role": "user", "content": "Write a short poem about autumn light."}]


def test_sft_and_preference_records_have_ms_swift_shapes() -> None:
    sft = Example(SFT, "rating", "1-0", 0.0, PROMPT, "Low sun on the wall.")
    pair = Example(PREFERENCE, "comparison", "2-0", 0.0, PROMPT, "Low sun on the wall.", "Light.")

    assert sft.to_swift() == {"messages": [*PROMPT, {"role": "assistant", "content": "Low sun on the wall."}]}
    assert pair.to_swift() == {
        "messages": [*PROMPT, {"role": "assistant", "content": "Low sun on the wall."}],
        "rejected_response": "Light.",
    }


def test_the_hash_ignores_case_and_punctuation_but_not_the_kind_or_the_answer() -> None:
    one = Example(SFT, "rating", "1-0", 0.0, PROMPT, "Low sun on the wall.")
    same = Example(
        SFT,
        "edit",
        "9-0",
        5.0,
        [{"role": "user", "content": "write a short poem about AUTUMN light"}],
        "low sun, on the wall",
    )

    assert one.hash == same.hash
    assert one.hash != Example(PREFERENCE, "rating", "1-0", 0.0, PROMPT, "Low sun on the wall.", "x").hash
    assert one.hash != Example(SFT, "rating", "1-0", 0.0, PROMPT, "High sun on the wall.").hash
