"""Log probabilities across the gRPC hop: the new fields round-trip, and their proto3 defaults mean "none"."""

from __future__ import annotations

import pytest

from bailu.common import wire
from bailu.common.errors import InvalidRequest
from bailu.common.types import (
    ChatMessage,
    FinishReason,
    GenerateChunk,
    GenerateRequest,
    SamplingParams,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from bailu.v1 import worker_pb2 as pb


def test_request_and_chunk_round_trip() -> None:
    req = GenerateRequest(
        "r", "m", messages=(ChatMessage("user", "hi"),), sampling=SamplingParams(logprobs=True, top_logprobs=2)
    )
    assert wire.request_from_pb(wire.request_to_pb(req)).sampling == req.sampling
    entry = TokenLogprob("\ufffd", -0.5, b"\xe6", (TopLogprob("\ufffd", -0.5, b"\xe6"), TopLogprob(" a", -3.0, b" a")))
    chunk = GenerateChunk("", 1, FinishReason.STOP, Usage(3, 1), "m", (entry,))
    assert wire.chunk_from_pb(pb.GenerateResponse.FromString(wire.chunk_to_pb(chunk).SerializeToString())) == chunk


def test_an_older_peer_asks_for_and_sends_none() -> None:
    assert wire.request_from_pb(pb.GenerateRequest(prompt="x")).sampling.logprobs is False
    assert wire.chunk_from_pb(pb.GenerateResponse(text_delta="a", token_count=1)).logprobs == ()


@pytest.mark.parametrize("params", [SamplingParams(top_logprobs=1), SamplingParams(logprobs=True, top_logprobs=21)])
def test_bounds_name_top_logprobs(params: SamplingParams) -> None:
    with pytest.raises(InvalidRequest) as info:
        params.validate()
    assert info.value.param == "top_logprobs"
