"""Stop strings cut streamed text, even when they arrive split across deltas."""

from __future__ import annotations

import pytest

from bailu.worker.engines.stops import StopStringFilter


def run(stops: tuple[str, ...], deltas: list[str]) -> tuple[list[str], str, bool]:
    """What the filter lets out for each delta, what flush() gives, and whether it stopped."""
    f = StopStringFilter(stops)
    out = [f.feed(d) for d in deltas]
    return out, f.flush(), f.stopped


def test_no_stops_passes_text_through_at_once() -> None:
    out, rest, stopped = run((), ["Hel", "lo", " world"])
    assert out == ["Hel", "lo", " world"]
    assert rest == ""
    assert not stopped


def test_empty_stop_strings_are_ignored() -> None:
    out, rest, stopped = run(("",), ["abc", "def"])
    assert out == ["abc", "def"]
    assert rest == ""
    assert not stopped


def test_stop_inside_one_delta() -> None:
    out, rest, stopped = run(("END",), ["Hello END of story"])
    assert "".join(out) + rest == "Hello "
    assert stopped


def test_stop_at_the_start() -> None:
    out, rest, stopped = run(("\n",), ["\nmore"])
    assert "".join(out) + rest == ""
    assert stopped


def test_stop_split_across_deltas() -> None:
    out, rest, stopped = run(("STOP",), ["Hello ST", "O", "P and more"])
    assert "".join(out) + rest == "Hello "
    assert stopped
    assert "ST" not in "".join(out)


def test_text_that_might_start_a_stop_is_held_back() -> None:
    f = StopStringFilter(("</s>",))
    assert f.feed("abc</") == "ab"  # "c</" could still become "</s>"
    assert f.feed("s>") == "c"  # it did: what preceded the stop comes out, the stop does not
    assert f.stopped


def test_partial_prefix_that_is_not_a_stop_comes_out_intact() -> None:
    out, rest, stopped = run(("world!",), ["hello wor", "m", " and worl"])
    assert "".join(out) + rest == "hello worm and worl"
    assert not stopped
    assert rest  # the tail was held until the end


def test_earliest_of_several_stops_wins() -> None:
    out, rest, stopped = run(("three", "two", "one"), ["zero two one three"])
    assert "".join(out) + rest == "zero "
    assert stopped


def test_shorter_stop_found_while_a_longer_one_is_held() -> None:
    out, rest, _ = run(("LONGSTOP", "X"), ["abc", "X", "LONGSTOP"])
    assert "".join(out) + rest == "abc"


def test_nothing_after_the_stop() -> None:
    f = StopStringFilter(("STOP",))
    emitted = f.feed("before STOP after")
    assert emitted == "before "
    assert f.feed("more text") == ""
    assert f.feed("STOP") == ""
    assert f.flush() == ""


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_any_chunking_gives_the_same_text(size: int) -> None:
    text = "The cat sat. The dog sat. ### The end"
    deltas = [text[i : i + size] for i in range(0, len(text), size)]
    out, rest, stopped = run(("###", "bird"), deltas)
    assert "".join(out) + rest == "The cat sat. The dog sat. "
    assert stopped


@pytest.mark.parametrize("size", [1, 4, 7])
def test_any_chunking_without_a_stop_keeps_every_character(size: int) -> None:
    text = "no stop string anywhere in here: #, ##, but never three"
    deltas = [text[i : i + size] for i in range(0, len(text), size)]
    out, rest, stopped = run(("###",), deltas)
    assert "".join(out) + rest == text
    assert not stopped
