"""A candidate's text while it streams: held in a bounded number of pieces, not one object per token."""

from __future__ import annotations

import tracemalloc

from bailu.common.types import GenerateChunk
from bailu.gateway.openai_format import TEXT_JOIN_EVERY, Candidate, ResponseBuilder

TOKENS = 4000  # one candidate of the soak's slow n=8 readers


def test_a_long_candidate_keeps_its_whole_text_in_few_pieces() -> None:
    candidate = Candidate(0)
    pieces = [f" w{i}" for i in range(TOKENS)]
    for piece in pieces:
        candidate.add(GenerateChunk(piece, 1))
    assert candidate.text == "".join(pieces)
    assert candidate.tokens == TOKENS
    assert 1 <= len(candidate.parts) <= TEXT_JOIN_EVERY


def test_a_streamed_candidate_holds_about_its_text_not_an_object_per_token() -> None:
    """What a stream leaves in the candidate (the completion record's text): one `str` per token held ~60 bytes
    each (~240 KB here, 2 MB for n=8), freed only when the request ended."""
    builder, candidate = ResponseBuilder("chat", "sim-model", "chatcmpl-1"), Candidate(0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(TOKENS):
            builder.event(candidate, GenerateChunk(f" w{i % 10}", 1))  # the chunk and its event dropped, as streamed
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert candidate.text == "".join(f" w{i % 10}" for i in range(TOKENS))
    assert held < 64 * 1024, f"the candidate holds {held} bytes for {len(candidate.text)} characters of text"
