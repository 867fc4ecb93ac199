"""Hypothesis strategies for the worker's gRPC API and the one check of a failed call's status.

`cases(valid=...)` builds Generate calls: servable requests (arbitrary text, in-range numbers, any deadline) or
anything the message type holds (unknown models and adapters, bad roles, no input, NaN and inf, extreme ints,
huge strings, many stop strings); `raw_requests()` builds bytes that are no valid `GenerateRequest`. Used by
`test_worker_fuzz.py`; the status codes a call may end with are read from worker.proto's header comment.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import grpc
from hypothesis import HealthCheck, currently_in_test_context, event, settings
from hypothesis import strategies as st

from bailu.common.errors import ERROR_CLASSES
from bailu.common.grpc_errors import ERROR_KEY
from bailu.common.types import MAX_STOP_SEQUENCES, MAX_TOKENS_LIMIT, ROLES, TOP_K_LIMIT
from bailu.v1 import worker_pb2 as pb
from tests.conftest import MODEL, REPO

ADAPTER = "fuzz-adapter"
MAX_MODEL_LEN = 64  # small, so that long prompts reach the "prompt too long" path


def documented_codes() -> frozenset[grpc.StatusCode]:
    """The status codes the header comment of worker.proto documents, minus INTERNAL (a bug, never an answer
    to any input)."""
    header = (REPO / "proto" / "bailu" / "v1" / "worker.proto").read_text().split("syntax")[0]
    names = re.findall(r"^//\s+([A-Z][A-Z_]+)\s+[a-z]", header, flags=re.MULTILINE)
    return frozenset(grpc.StatusCode[name] for name in names) - {grpc.StatusCode.INTERNAL}


DOCUMENTED = documented_codes()

FUZZ = settings(
    deadline=None,
    database=None,  # no example database (derandomized: a failure reproduces anyway); caches go to .hypothesis/
    derandomize=True,
    print_blob=True,
    # One worker serves every example of a test on purpose: staying healthy across them is the property.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- strategies -------------------------------------------------------------------------------------------

INT64 = st.integers(-(1 << 63), (1 << 63) - 1)
UINT32 = st.integers(0, (1 << 32) - 1)


def texts(*likely: str, min_size: int = 0) -> st.SearchStrategy[str]:
    """Any unicode protobuf can carry (no lone surrogates), huge or not, or one of the `likely` values."""
    huge = st.builds(lambda piece, n: (piece * n)[:300_000], st.text(min_size=1, max_size=8), st.integers(1, 50_000))
    drawn = st.one_of(st.text(min_size=min_size, max_size=40), huge)
    return st.sampled_from(likely) | drawn if likely else drawn


def anything_or(valid: st.SearchStrategy[Any], anything: st.SearchStrategy[Any], valid_only: bool) -> Any:
    return valid if valid_only else valid | anything


ANY_DOUBLE = st.floats(allow_nan=True, allow_infinity=True)


@st.composite
def sampling_params(draw: st.DrawFn, valid: bool, max_tokens: int) -> pb.SamplingParams:
    """Sampling parameters: in range (`max_tokens` at most) when `valid`, else anything the field's type holds."""
    in_range: dict[str, st.SearchStrategy[Any]] = {
        "max_tokens": st.integers(1, max_tokens),
        "temperature": st.floats(0.0, 2.0),
        "top_p": st.floats(0.0, 1.0, exclude_min=True),
        "top_k": st.integers(0, TOP_K_LIMIT),
        "presence_penalty": st.floats(-2.0, 2.0),
        "frequency_penalty": st.floats(-2.0, 2.0),
        "repetition_penalty": st.floats(0.0, 10.0, exclude_min=True),
        "seed": INT64,
    }
    wire_type = {"max_tokens": UINT32, "top_k": UINT32, "seed": INT64}
    stops = st.lists(texts("dew", "the", "\n", min_size=1), max_size=MAX_STOP_SEQUENCES)
    msg = pb.SamplingParams(stop=draw(anything_or(stops, st.lists(texts(), max_size=8), valid)))
    for name, values in in_range.items():
        value = draw(st.none() | anything_or(values, wire_type.get(name, ANY_DOUBLE), valid))
        if value is not None:
            setattr(msg, name, value)
    return msg


def chat_messages(valid: bool) -> st.SearchStrategy[list[pb.ChatMessage]]:
    roles = anything_or(st.sampled_from(sorted(ROLES)), texts(), valid)
    messages = st.lists(st.builds(pb.ChatMessage, role=roles, content=texts("write about dew")), max_size=6)
    if not valid:
        return messages
    # At least one message, the last one not from the assistant; often a conversation every chat template takes.
    last = st.builds(pb.ChatMessage, role=st.sampled_from(["user", "system"]), content=texts())
    any_order = st.builds(lambda head, tail: [*head, tail], messages, last)
    return any_order | st.builds(conversation, st.booleans(), st.lists(texts("write about dew"), max_size=5))


def conversation(system: bool, contents: list[str]) -> list[pb.ChatMessage]:
    """An optional system message, then user and assistant turns alternating, ending with the user."""
    if len(contents) % 2 == 0:
        contents = [*contents, "write about dew"]
    turns = [pb.ChatMessage(role="assistant" if i % 2 else "user", content=c) for i, c in enumerate(contents)]
    return ([pb.ChatMessage(role="system", content="be brief")] if system else []) + turns


@dataclass(frozen=True)
class Case:
    """One Generate call: the message, how its deadline is set at call time, and when the caller hangs up."""

    request: pb.GenerateRequest
    deadline_from_now_ms: int | None  # set deadline_unix_ms to now + this at call time; None: as drawn
    cancel_after: int | None  # hang up after this many responses; None: read to the end

    def message(self) -> pb.GenerateRequest:
        msg = pb.GenerateRequest()
        msg.CopyFrom(self.request)
        if self.deadline_from_now_ms is not None:
            msg.deadline_unix_ms = int(time.time() * 1000) + self.deadline_from_now_ms
        return msg


@st.composite
def generate_requests(
    draw: st.DrawFn, valid: bool, adapters: tuple[str, ...] = ("", ADAPTER), max_tokens: int = MAX_TOKENS_LIMIT
) -> pb.GenerateRequest:
    """A request the worker should serve (`valid`: arbitrary text, in-range numbers, any deadline) or
    anything the message type can hold: unknown models and adapters, bad roles, no input, NaN, ..."""
    msg = pb.GenerateRequest(
        request_id=draw(texts("req-1")),
        model=draw(anything_or(st.just(MODEL), texts(MODEL.upper(), "other-model"), valid)),
        adapter=draw(anything_or(st.sampled_from(adapters), texts("missing-adapter"), valid)),
    )
    inputs = ["prompt", "chat"] if valid else ["prompt", "chat", "neither"]
    match draw(st.sampled_from(inputs)):
        case "prompt":
            msg.prompt = draw(texts("write about dew", " ", "dew " * MAX_MODEL_LEN, min_size=1 if valid else 0))
        case "chat":
            msg.chat.SetInParent()  # the oneof is set even when the list stays empty
            msg.chat.messages.extend(draw(chat_messages(valid)))
    if draw(st.booleans()):
        msg.sampling.CopyFrom(draw(sampling_params(valid, max_tokens)))
    if not valid:
        msg.deadline_unix_ms = draw(st.sampled_from([0, 1, -1]) | INT64)
    return msg


def cases(valid: bool, **served: Any) -> st.SearchStrategy[Case]:
    """Generate calls; `served` (adapters, max_tokens) narrows what a valid request asks of the worker."""
    # A servable request has no deadline, a future one, or (rarely) one that just passed.
    from_now = st.integers(-5_000, 86_400_000) if valid else st.integers(-86_400_000, 86_400_000)
    return st.builds(
        Case,
        request=generate_requests(valid, **served),
        deadline_from_now_ms=st.none() | from_now,
        cancel_after=st.none() | st.integers(0, 3),
    )


# Half of the requests are servable, so that generation, cancellation and admission are exercised too.
any_case = cases(valid=True) | cases(valid=False)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2), to build messages the generated code would refuse."""
    tag, length = _varint(number << 3 | 2), _varint(len(payload))
    return tag + length + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    """Bytes that are not a valid `GenerateRequest`, or barely are: random bytes, a valid message cut short
    or with bytes flipped, invalid UTF-8 in a (nested) string field, both oneof members on the wire."""
    valid = draw(generate_requests(valid=True)).SerializeToString()
    bad_utf8 = draw(st.binary(min_size=1, max_size=64))
    match draw(st.sampled_from(["random", "truncated", "flipped", "bad_utf8", "both_inputs"])):
        case "random":
            return draw(st.binary(max_size=256))
        case "truncated":
            return valid[: draw(st.integers(0, max(0, len(valid) - 1)))]
        case "flipped":
            data = bytearray(valid or b"\x00")
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
            return bytes(data)
        case "bad_utf8":
            target = draw(st.sampled_from(["request_id", "model", "adapter", "prompt", "role", "content", "stop"]))
            top_level = {"request_id": 1, "model": 2, "adapter": 3, "prompt": 5}
            if target in top_level:
                return valid + field(top_level[target], bad_utf8)
            if target == "stop":
                return valid + field(6, field(8, bad_utf8))
            return valid + field(4, field(1, field(1 if target == "role" else 2, bad_utf8)))
        case _:
            prompt = pb.GenerateRequest(model=MODEL, prompt="write about dew").SerializeToString()
            chat = pb.GenerateRequest(chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="hi")]))
            parts = [prompt, chat.SerializeToString()]
            return b"".join(parts if draw(st.booleans()) else parts[::-1])


def check_status(exc: grpc.aio.AioRpcError, *, cancelled_by_us: bool = False) -> None:
    """A failed call must end with a documented status that names the error class reporting it."""
    code = exc.code()
    count_outcome(f"status {code.name}")
    if cancelled_by_us and code is grpc.StatusCode.CANCELLED:
        return  # the client's own cancellation: no trailers come back
    assert code in DOCUMENTED, f"undocumented status {code}: {exc.details()!r}"
    entries = dict(exc.trailing_metadata() or ())
    name = entries.get(ERROR_KEY)
    assert name in ERROR_CLASSES, f"{code} without a {ERROR_KEY} class (a hang or a grpc-level failure?)"
    assert ERROR_CLASSES[str(name)].grpc_code is code, f"{name} reported as {code}"
    assert exc.details(), "an error without a message"


def count_outcome(label: str) -> None:
    """Count an outcome, for the spread that `pytest --hypothesis-show-statistics` prints (inside examples)."""
    if currently_in_test_context():
        event(label)
