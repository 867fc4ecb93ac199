"""The JSON constraint of SamplingParams: its bounds, and its carriage over gRPC."""

from __future__ import annotations

import json

import pytest

from bailu.common import wire
from bailu.common.errors import InvalidRequest
from bailu.common.types import (
    JSON_SCHEMA_PARAM,
    MAX_JSON_SCHEMA_CHARS,
    MAX_JSON_SCHEMA_DEPTH,
    ChatMessage,
    GenerateRequest,
    SamplingParams,
    json_depth,
)
from bailu.v1 import worker_pb2 as pb

SCHEMA = '{"type":"object","properties":{"b":{"type":"integer"},"a":{"type":"string"}}}'


def request(sampling: SamplingParams) -> GenerateRequest:
    return GenerateRequest("r", "m", messages=(ChatMessage("user", "hi"),), sampling=sampling)


@pytest.mark.parametrize(
    "sampling",
    [SamplingParams(json_schema=SCHEMA), SamplingParams(json_object=True), SamplingParams()],
)
def test_the_constraint_round_trips_over_protobuf(sampling: SamplingParams) -> None:
    msg = pb.GenerateRequest.FromString(wire.request_to_pb(request(sampling)).SerializeToString())
    decoded = wire.request_from_pb(msg)
    assert decoded.sampling == sampling
    assert decoded.sampling.json_schema == sampling.json_schema  # the text, byte for byte (key order kept)


def test_an_older_gateway_sends_free_text() -> None:
    sampling = wire.request_from_pb(pb.GenerateRequest(sampling=pb.SamplingParams())).sampling
    assert sampling.response_format == "text"


@pytest.mark.parametrize(
    ("sampling", "param", "words"),
    [
        (SamplingParams(json_object=True, json_schema=SCHEMA), "response_format", "not both"),
        (SamplingParams(json_schema="[1]"), JSON_SCHEMA_PARAM, "must be a JSON object"),
        (SamplingParams(json_schema="{not json"), JSON_SCHEMA_PARAM, "must be a JSON object"),
        (SamplingParams(json_schema="[" * 100_000), JSON_SCHEMA_PARAM, "longer than"),
        (SamplingParams(json_schema=json.dumps({"d": "x" * MAX_JSON_SCHEMA_CHARS})), JSON_SCHEMA_PARAM, "longer than"),
        (
            SamplingParams(json_schema='{"a":' * (MAX_JSON_SCHEMA_DEPTH + 1) + "1" + "}" * (MAX_JSON_SCHEMA_DEPTH + 1)),
            JSON_SCHEMA_PARAM,
            "nests deeper",
        ),
    ],
)
def test_the_worker_refuses_a_constraint_out_of_bounds(sampling: SamplingParams, param: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        request(sampling).validate()
    assert info.value.param == param
    assert words in info.value.message


def test_json_depth() -> None:
    assert json_depth(1) == 0
    assert json_depth({}) == 1
    assert json_depth({"a": [1, {"b": []}]}) == 4
    assert json_depth([[[]], 1]) == 3
