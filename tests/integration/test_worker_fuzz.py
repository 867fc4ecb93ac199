"""Property tests of the worker's gRPC API against real in-process workers (sim and transformers engines).

Arbitrary `GenerateRequest`s (every field, every oneof state, extreme numbers, any unicode, huge strings,
past and future deadlines, callers that cancel) and bytes that are no `GenerateRequest` at all (corrupt wire
format, invalid UTF-8 in string fields, both oneof members on the wire) are sent to one worker. Properties:
- every call ends OK, or with a status the proto documents, carrying the `bailu-error` class that maps to
  that very status (so it came from the error hierarchy, not from grpc or a crash; a client-side timeout,
  i.e. a hang, fails too); INTERNAL and UNKNOWN never;
- afterwards the worker still answers GetLoad and the health check, ready, with no request queued or
  running: no admission slot leaks.
Regression tests of what the fuzzing found sit at the end of the module.

Examples are bounded and derandomized (reproducible in CI) and hypothesis keeps no example database.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from bailu.common.errors import BailuError, InvalidRequest, ModelNotFound
from bailu.common.grpc_errors import from_status
from bailu.v1 import worker_pb2 as pb
from bailu.v1 import worker_pb2_grpc as pb_grpc
from bailu.worker.server import SERVICE_NAME, WorkerServer
from tests.conftest import MODEL, eventually
from tests.integration.grpc_strategies import (
    ADAPTER,
    DOCUMENTED,
    FUZZ,
    MAX_MODEL_LEN,
    Case,
    any_case,
    cases,
    check_status,
    count_outcome,
    field,
    raw_requests,
)

GENERATE = "/bailu.v1.InferenceWorker/Generate"
CALL_TIMEOUT_S = 15.0  # far above any answer's time: running into it means the worker hung
TRANSFORMERS_MAX_TOKENS = 8  # what a servable request asks of the (CPU) transformers engine at most


# --- the worker and the checks ----------------------------------------------------------------------------


@dataclass
class Fuzzed:
    server: WorkerServer
    channel: grpc.aio.Channel

    @property
    def stub(self) -> pb_grpc.InferenceWorkerStub:
        return pb_grpc.InferenceWorkerStub(self.channel)


@pytest.fixture
async def fuzzed(start_worker, tmp_path: Path) -> AsyncIterator[Fuzzed]:
    """A sim worker that is fast, small (2 slots, 2 queued, a 64-token context) and has one adapter loaded."""
    server = await start_worker(
        sim_ttft_ms=5,
        sim_itl_ms=1,
        sim_output_tokens=3,
        max_batch_size=2,
        max_queue=2,
        max_model_len=MAX_MODEL_LEN,
    )
    (tmp_path / ADAPTER).mkdir()
    (tmp_path / ADAPTER / "adapter_config.json").write_text('{"r": 8}')
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        await pb_grpc.InferenceWorkerStub(channel).LoadAdapter(
            pb.LoadAdapterRequest(name=ADAPTER, path=str(tmp_path / ADAPTER)), timeout=10
        )
        yield Fuzzed(server, channel)


@pytest.fixture
async def fuzzed_transformers(start_worker, tiny_model: Path) -> AsyncIterator[Fuzzed]:
    """The ms-swift transformers engine on the tiny random Llama: real sampling, chat templates, batching."""
    server = await start_worker(
        engine="transformers",
        model_path=str(tiny_model),
        max_batch_size=2,
        max_queue=2,
        max_model_len=2 * MAX_MODEL_LEN,
        default_max_tokens=TRANSFORMERS_MAX_TOKENS,
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield Fuzzed(server, channel)


@dataclass
class Outcome:
    responses: list[pb.GenerateResponse]
    completed: bool  # the stream ended OK and was read to its end


async def call(fuzzed: Fuzzed, case: Case) -> Outcome:
    """Make the call `case` describes; a failed one must end with a documented status (`check_status`)."""
    responses: list[pb.GenerateResponse] = []
    stream = fuzzed.stub.Generate(case.message(), timeout=CALL_TIMEOUT_S)
    try:
        async for response in stream:
            if case.cancel_after is not None and len(responses) >= case.cancel_after:
                stream.cancel()
                count_outcome("cancelled by the caller")
                return Outcome(responses, completed=False)
            responses.append(response)
    except grpc.aio.AioRpcError as exc:
        check_status(exc, cancelled_by_us=case.cancel_after is not None)
        return Outcome(responses, completed=False)
    count_outcome("status OK")
    return Outcome(responses, completed=True)


def check_stream(outcome: Outcome) -> None:
    """A stream read to its end follows the streaming contract: it ends with one message carrying
    finish_reason and usage, whose count matches the tokens streamed."""
    if not outcome.completed:
        return
    assert outcome.responses, "an OK stream without a single message"
    *body, last = outcome.responses
    assert last.finish_reason != pb.FINISH_REASON_UNSPECIFIED
    assert all(r.finish_reason == pb.FINISH_REASON_UNSPECIFIED for r in body)
    assert last.usage.completion_tokens == sum(r.token_count for r in outcome.responses)


async def check_healthy(fuzzed: Fuzzed) -> None:
    """The worker answers, is ready, and every admission slot was given back."""
    admission = fuzzed.server.admission
    await eventually(lambda: admission.queued == 0 and admission.running == 0, 5.0)
    load = await fuzzed.stub.GetLoad(pb.GetLoadRequest(), timeout=5)
    assert (load.queued, load.running, load.ready) == (0, 0, True)
    health = health_pb2_grpc.HealthStub(fuzzed.channel)
    status = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
    assert status.status == health_pb2.HealthCheckResponse.SERVING


async def expect_error(fuzzed: Fuzzed, msg: pb.GenerateRequest | bytes) -> BailuError:
    """The error a Generate call ends with, rebuilt as the gateway rebuilds it; the worker stays healthy."""
    rpc = fuzzed.channel.unary_stream(GENERATE) if isinstance(msg, bytes) else fuzzed.stub.Generate
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _ = [r async for r in rpc(msg, timeout=CALL_TIMEOUT_S)]
    check_status(info.value)
    await check_healthy(fuzzed)
    return from_status(info.value.code(), info.value.details(), info.value.trailing_metadata())


# --- properties: sim engine -------------------------------------------------------------------------------


def test_documented_codes_come_from_the_proto() -> None:
    expected = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}
    assert expected <= DOCUMENTED
    assert not DOCUMENTED & {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


@settings(FUZZ, max_examples=400)
@given(case=any_case)
async def test_any_generate_request_gets_a_documented_answer(fuzzed: Fuzzed, case: Case) -> None:
    check_stream(await call(fuzzed, case))
    await check_healthy(fuzzed)


@settings(FUZZ, max_examples=40)
@given(batch=st.lists(cases(valid=True) | any_case, min_size=2, max_size=12))
async def test_concurrent_requests_free_every_slot(fuzzed: Fuzzed, batch: list[Case]) -> None:
    """More requests at once than slots plus queue (2 + 2): some are refused, every admitted one is freed."""
    for outcome in await asyncio.gather(*(call(fuzzed, case) for case in batch)):
        check_stream(outcome)
    await check_healthy(fuzzed)


@settings(FUZZ, max_examples=300)
@given(data=raw_requests(), method=st.sampled_from([GENERATE, "/bailu.v1.InferenceWorker/GetLoad"]))
async def test_any_bytes_get_a_documented_answer(fuzzed: Fuzzed, data: bytes, method: str) -> None:
    """Identity serializers: the bytes reach the worker as they are."""
    try:
        if method == GENERATE:
            _ = [r async for r in fuzzed.channel.unary_stream(method)(data, timeout=CALL_TIMEOUT_S)]
        else:
            await fuzzed.channel.unary_unary(method)(data, timeout=CALL_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        check_status(exc)
    await check_healthy(fuzzed)


# --- properties: transformers engine ----------------------------------------------------------------------

SERVABLE_BY_TRANSFORMERS = cases(valid=True, adapters=("",), max_tokens=TRANSFORMERS_MAX_TOKENS)


@pytest.mark.slow
@settings(FUZZ, max_examples=40)
@given(case=st.one_of(SERVABLE_BY_TRANSFORMERS, SERVABLE_BY_TRANSFORMERS, cases(valid=False)))
async def test_transformers_engine_answers_any_request(fuzzed_transformers: Fuzzed, case: Case) -> None:
    """Sampling parameters reach a real sampler and chat turns a real template here (the sim ignores both)."""
    check_stream(await call(fuzzed_transformers, case))
    await check_healthy(fuzzed_transformers)


@pytest.mark.slow
@settings(FUZZ, max_examples=8)
@given(batch=st.lists(SERVABLE_BY_TRANSFORMERS, min_size=2, max_size=6))
async def test_transformers_engine_batches_free_every_slot(fuzzed_transformers: Fuzzed, batch: list[Case]) -> None:
    for outcome in await asyncio.gather(*(call(fuzzed_transformers, case) for case in batch)):
        check_stream(outcome)
    await check_healthy(fuzzed_transformers)


# --- regressions: what the fuzzing found ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fault"),
    [
        (b"\xff\xff\xff", "Wire format was corrupt"),
        (field(2, b"\xff\xfe"), "bad UTF-8"),  # model
        (field(4, field(1, field(2, b"\xc3\x28"))), "bad UTF-8"),  # chat.messages[0].content
    ],
)
async def test_undecodable_request_is_invalid_argument(fuzzed: Fuzzed, data: bytes, fault: str) -> None:
    """Bytes that do not parse were grpc's UNKNOWN, with the parser's exception in the details."""
    error = await expect_error(fuzzed, data)
    assert isinstance(error, InvalidRequest)
    assert fault in error.message
    assert "Unexpected" not in error.message
    assert "<class" not in error.message


@pytest.mark.parametrize("name", ["m" * 20_000, "模型" * 5_000])
async def test_error_echoing_a_huge_input_still_arrives(fuzzed: Fuzzed, name: str) -> None:
    """An unknown 20 KB model name was echoed into the status, over grpc's 8 KiB trailer limit: the caller got
    a bare RESOURCE_EXHAUSTED ("metadata size exceeds soft limit"), which reads as a full queue."""
    error = await expect_error(fuzzed, pb.GenerateRequest(model=name, prompt="write about dew"))
    assert isinstance(error, ModelNotFound)
    assert error.param == "model"
    assert error.message.startswith("model '")
    assert error.message.endswith("…")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("roles", "param"),
    [
        (["user", "system"], "messages[1].role"),
        (["system"], "messages"),
        (["user", "user"], "messages[1].role"),
        (["system", "user", "assistant", "system", "user"], "messages[3].role"),
    ],
)
async def test_turns_the_chat_template_cannot_render_are_invalid(
    fuzzed_transformers: Fuzzed, roles: list[str], param: str
) -> None:
    """ms-swift's template asserted on them deep in encode(): INTERNAL."""
    msg = pb.GenerateRequest(
        model=MODEL, chat=pb.ChatMessages(messages=[pb.ChatMessage(role=r, content="hi") for r in roles])
    )
    error = await expect_error(fuzzed_transformers, msg)
    assert isinstance(error, InvalidRequest)
    assert error.param == param


@pytest.mark.slow
@pytest.mark.parametrize(
    "sampling", [{"temperature": 1e-300}, {"temperature": 1.0, "repetition_penalty": 1e-300}], ids=["t", "rp"]
)
async def test_tiny_divisors_of_the_logits_do_not_wedge_the_engine(
    fuzzed_transformers: Fuzzed, sampling: dict[str, float]
) -> None:
    """The logits are divided by temperature and repetition penalty in float32, where 1e-300 is 0: sampling failed
    on NaN in ms-swift's generate thread, and that request and every later one hung (the admission slot too)."""
    for params in (sampling, {"temperature": 0.7}):
        msg = pb.GenerateRequest(model=MODEL, prompt="write about dew", sampling=pb.SamplingParams(max_tokens=4))
        for name, value in params.items():
            setattr(msg.sampling, name, value)
        outcome = await call(fuzzed_transformers, Case(msg, None, None))
        assert outcome.completed
        check_stream(outcome)
    await check_healthy(fuzzed_transformers)
