"""`candidate_requests`: the `n` generations of one request, with seeds that always fit the wire's int64."""

from __future__ import annotations

import pytest

from bailu.common import wire
from bailu.common.types import INT64_MAX, INT64_MIN, ChatMessage, GenerateRequest, SamplingParams
from bailu.gateway.lifecycle import candidate_requests
from bailu.gateway.schemas import MAX_CANDIDATES


def request(seed: int | None) -> GenerateRequest:
    return GenerateRequest("r", "m", messages=(ChatMessage("user", "hi"),), sampling=SamplingParams(seed=seed))


def test_one_candidate_is_the_request_itself() -> None:
    gen = request(7)
    assert candidate_requests(gen, 1) == [gen]


def test_candidates_get_their_own_ids_and_consecutive_seeds() -> None:
    candidates = candidate_requests(request(7), 3)
    assert [c.request_id for c in candidates] == ["r-0", "r-1", "r-2"]
    assert [c.sampling.seed for c in candidates] == [7, 8, 9]


def test_no_seed_stays_no_seed() -> None:
    assert {c.sampling.seed for c in candidate_requests(request(None), 4)} == {None}


@pytest.mark.parametrize("seed", [INT64_MAX, INT64_MAX - 3, INT64_MIN, -1])
@pytest.mark.parametrize("n", [2, MAX_CANDIDATES])
def test_seeds_wrap_around_within_int64_and_stay_distinct(seed: int, n: int) -> None:
    candidates = candidate_requests(request(seed), n)
    seeds = [c.sampling.seed for c in candidates]
    assert len(set(seeds)) == n
    assert all(s is not None and INT64_MIN <= s <= INT64_MAX for s in seeds)
    assert seeds[0] == seed
    for candidate in candidates:
        candidate.validate()
        # What crosses the gRPC hop: converting to protobuf must not overflow.
        assert wire.request_to_pb(candidate).sampling.seed == candidate.sampling.seed


def test_the_seed_after_the_largest_is_the_smallest() -> None:
    assert [c.sampling.seed for c in candidate_requests(request(INT64_MAX), 2)] == [INT64_MAX, INT64_MIN]
