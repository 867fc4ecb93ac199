"""A synthetic preference set with a clear, checkable style, for measuring whether the learning loop learns.

Every prompt asks for a few words on a topic. The chosen answer is a three-line poem (three short lines);
the rejected answer is one paragraph of prose on the same topic. `is_three_line_poem` checks the style of a
generation, so "the share of generations in that style" is a number, before and after training.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from bailu.datasets.format import PREFERENCE, SFT, Example
from bailu.datasets.store import DatasetStore

SUBJECTS = [
    "autumn light", "a harbour", "winter bread", "the last train", "a paper lantern", "spring rain", "an old bicycle",
    "the night market", "a copper kettle", "morning fog", "a small library", "the first snow", "a lighthouse",
    "summer dust", "a violin", "river stones", "a rooftop garden", "the tide", "an empty station", "a wool coat",
    "the orchard", "a candle", "city pigeons", "a fishing boat", "the mountain pass", "a blue door", "rice fields",
    "a clock tower", "the ferry", "an attic", "a pine forest", "the market square", "a letter", "a tea house",
    "the lake at noon", "a stone bridge", "wild geese", "a bakery", "the desert road", "a music box",
]  # fmt: skip
ASKS = ["Write a few words about {s}.", "Say something about {s}.", "Give me a short piece on {s}."]
OPENINGS = ["{S} at first light", "{S} in the rain", "{S}, half asleep", "{S} after dark", "Slowly, {s}"]
MIDDLES = [
    "a thin wind counts the hours", "holding what the day forgot", "the shadows lean and listen",
    "someone hums a borrowed tune", "gold settles on the edges", "the street forgets its name",
]  # fmt: skip
ENDINGS = ["and the quiet stays", "then nothing moves at all", "a door closes softly", "the kettle sings once"]
PROSE = [
    "{S} is something many people notice in everyday life, and it can mean different things to different "
    "people depending on where they live and what they have experienced over the years.",
    "When thinking about {s}, it is worth remembering that there are several aspects to consider, including "
    "its history, its practical uses and the feelings it tends to evoke in those who encounter it.",
    "There are many interesting facts about {s}; for example, it has appeared in stories and conversations "
    "for a long time, and people continue to discuss it in a variety of contexts today.",
]


def _fill(template: str, subject: str) -> str:
    return template.format(s=subject, S=subject[:1].upper() + subject[1:])


def poem(subject: str, rng: random.Random) -> str:
    lines = [_fill(rng.choice(OPENINGS), subject), rng.choice(MIDDLES), rng.choice(ENDINGS)]
    return "\n".join(lines)


def pairs(count: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """(prompt, chosen three-line poem, rejected prose), distinct prompts."""
    rng = random.Random(seed)
    prompts = [_fill(ask, s) for s in SUBJECTS for ask in ASKS]
    rng.shuffle(prompts)
    if count > len(prompts):
        raise ValueError(f"at most {len(prompts)} distinct prompts")
    result = []
    for prompt in prompts[:count]:
        subject = next(s for s in SUBJECTS if s in prompt)
        result.append((prompt, poem(subject, rng), _fill(rng.choice(PROSE), subject)))
    return result


_WORD = re.compile(r"\w+")


def is_three_line_poem(text: str) -> bool:
    """Exactly three non-empty lines of at most ten words each."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return len(lines) == 3 and all(len(_WORD.findall(line)) <= 10 for line in lines)


def write_dataset(root: Path, count: int, seed: int = 0) -> str:
    """Write the pairs (and their chosen side as SFT examples) as one batch and seal a dataset version."""
    store = DatasetStore(root)
    examples: list[Example] = []
    for i, (prompt, chosen, rejected) in enumerate(pairs(count, seed)):
        messages = [{"role": "user", "content": prompt}]
        examples.append(Example(PREFERENCE, "synthetic", f"synthetic-{i}", 0.0, messages, chosen, rejected))
        examples.append(Example(SFT, "synthetic", f"synthetic-{i}", 0.0, messages, chosen))
    store.write_batch("0000000000000-synthetic", examples, consumer="bench")
    version = store.seal()
    if version is None:
        version = store.versions()[-1]
    return version
