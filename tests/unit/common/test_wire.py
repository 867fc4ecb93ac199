"""Protobuf conversions: what crosses the gateway -> worker hop comes back unchanged."""

from __future__ import annotations

import pytest

from bailu.common import wire
from bailu.common.types import (
    ChatMessage,
    FinishReason,
    GenerateChunk,
    GenerateRequest,
    LoadReport,
    ModelCard,
    SamplingParams,
    Usage,
)
from bailu.v1 import worker_pb2 as pb


def _through_the_wire(request: GenerateRequest) -> GenerateRequest:
    """Serialise to bytes and back, as gRPC does."""
    data = wire.request_to_pb(request).SerializeToString()
    return wire.request_from_pb(pb.GenerateRequest.FromString(data))


def test_chat_request_round_trip() -> None:
    # Floats are float32 on the wire: use values float32 represents exactly.
    request = GenerateRequest(
        request_id="req-1",
        model="base",
        adapter="poet",
        messages=(ChatMessage("system", "be brief"), ChatMessage("user", "héllo 世界")),
        sampling=SamplingParams(
            max_tokens=64,
            temperature=0.5,
            top_p=0.25,
            top_k=40,
            presence_penalty=-1.5,
            frequency_penalty=0.75,
            repetition_penalty=1.125,
            stop=("\n\n", "END"),
            seed=-(1 << 40),
        ),
        deadline=1_700_000_000.25,
    )
    assert _through_the_wire(request) == request


def test_prompt_request_round_trip() -> None:
    request = GenerateRequest(request_id="req-2", model="base", prompt="Once upon a time")
    back = _through_the_wire(request)
    assert back == request
    assert back.messages is None
    assert back.prompt == "Once upon a time"


def test_chat_and_prompt_use_the_oneof() -> None:
    chat = wire.request_to_pb(GenerateRequest("r", "m", messages=(ChatMessage("user", "hi"),)))
    prompt = wire.request_to_pb(GenerateRequest("r", "m", prompt="hi"))
    assert chat.WhichOneof("input") == "chat"
    assert prompt.WhichOneof("input") == "prompt"


def test_empty_chat_stays_chat() -> None:
    # An empty message list is invalid, but it must reach the worker's validation as chat, not as "no input".
    back = _through_the_wire(GenerateRequest("r", "m", messages=()))
    assert back.messages == ()
    assert back.prompt is None


def test_unset_sampling_fields_stay_none() -> None:
    back = _through_the_wire(GenerateRequest("r", "m", prompt="x", sampling=SamplingParams(temperature=1.0)))
    assert back.sampling == SamplingParams(temperature=1.0)
    for name in wire._OPTIONAL_SAMPLING:
        if name != "temperature":
            assert getattr(back.sampling, name) is None, name


def test_zero_sampling_values_are_kept_distinct_from_unset() -> None:
    sampling = SamplingParams(temperature=0.0, top_k=0, presence_penalty=0.0, frequency_penalty=0.0, seed=0)
    back = _through_the_wire(GenerateRequest("r", "m", prompt="x", sampling=sampling))
    assert back.sampling == sampling


def test_float_sampling_values_are_float32_on_the_wire() -> None:
    back = _through_the_wire(GenerateRequest("r", "m", prompt="x", sampling=SamplingParams(temperature=0.7)))
    assert back.sampling.temperature == pytest.approx(0.7, rel=1e-6)


def test_deadline_is_sent_in_milliseconds() -> None:
    msg = wire.request_to_pb(GenerateRequest("r", "m", prompt="x", deadline=1_700_000_000.1234))
    assert msg.deadline_unix_ms == 1_700_000_000_123
    assert wire.request_from_pb(msg).deadline == pytest.approx(1_700_000_000.123)


def test_no_deadline_is_zero_on_the_wire_and_none_back() -> None:
    msg = wire.request_to_pb(GenerateRequest("r", "m", prompt="x"))
    assert msg.deadline_unix_ms == 0
    assert wire.request_from_pb(msg).deadline is None


def test_intermediate_chunk_round_trip() -> None:
    chunk = GenerateChunk(text="Hel", token_count=2, served_model="base:poet")
    msg = pb.GenerateResponse.FromString(wire.chunk_to_pb(chunk).SerializeToString())
    assert not msg.HasField("usage")
    assert msg.finish_reason == pb.FINISH_REASON_UNSPECIFIED
    assert wire.chunk_from_pb(msg) == chunk


@pytest.mark.parametrize("reason", list(FinishReason))
def test_last_chunk_round_trip(reason: FinishReason) -> None:
    chunk = GenerateChunk(text="", token_count=0, finish_reason=reason, usage=Usage(12, 0), served_model="base")
    msg = pb.GenerateResponse.FromString(wire.chunk_to_pb(chunk).SerializeToString())
    back = wire.chunk_from_pb(msg)
    assert back == chunk
    assert back.usage is not None
    assert back.usage.completion_tokens == 0


@pytest.mark.parametrize(
    "card",
    [ModelCard("base", "base", "", 4096), ModelCard("poet", "adapter", "base", 2048), ModelCard("x")],
    ids=["base", "adapter", "defaults"],
)
def test_model_card_round_trip(card: ModelCard) -> None:
    assert wire.card_from_pb(pb.ModelCard.FromString(wire.card_to_pb(card).SerializeToString())) == card


@pytest.mark.parametrize("ready", [True, False])
def test_load_report_round_trip(ready: bool) -> None:
    load = LoadReport(queued=3, running=4, capacity=4, max_queue=32, ready=ready)
    assert wire.load_from_pb(pb.LoadReport.FromString(wire.load_to_pb(load).SerializeToString())) == load


@pytest.mark.parametrize("priority", ["interactive", "batch"])
def test_priority_and_first_token_deadline_round_trip(priority: str) -> None:
    request = GenerateRequest(
        "r", "base", prompt="hi", deadline=1_700_000_100.0, priority=priority, first_token_deadline=1_700_000_010.25
    )
    assert _through_the_wire(request) == request


def test_a_request_from_an_older_gateway_is_interactive_without_a_first_token_deadline() -> None:
    message = pb.GenerateRequest(request_id="r", model="base", prompt="hi")  # fields 8 and 9 unset
    request = wire.request_from_pb(pb.GenerateRequest.FromString(message.SerializeToString()))
    assert (request.priority, request.first_token_deadline) == ("interactive", None)
    # A priority value newer than this worker is served as interactive too.
    message.priority = 7  # type: ignore[assignment]
    assert wire.request_from_pb(pb.GenerateRequest.FromString(message.SerializeToString())).priority == "interactive"


def test_load_report_figures_for_the_wait_estimate_round_trip() -> None:
    load = LoadReport(queued=5, running=4, capacity=4, max_queue=32, ready=True, queued_batch=3, service_s=1.375)
    assert wire.load_from_pb(pb.LoadReport.FromString(wire.load_to_pb(load).SerializeToString())) == load


def test_a_load_report_from_an_older_worker_has_no_batch_count_nor_service_time() -> None:
    message = pb.LoadReport(queued=2, running=4, capacity=4, max_queue=8, ready=True)
    load = wire.load_from_pb(pb.LoadReport.FromString(message.SerializeToString()))
    assert (load.queued_batch, load.service_s) == (0, 0.0)
