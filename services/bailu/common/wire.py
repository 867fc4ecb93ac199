"""Conversions between protobuf messages and domain types: the only place both meet."""

from __future__ import annotations

from bailu.common.types import (
    BATCH,
    INTERACTIVE,
    TOOL_AUTO,
    TOOL_FUNCTION,
    TOOL_NONE,
    TOOL_REQUIRED,
    ChatMessage,
    EngineCapabilities,
    FinishReason,
    GenerateChunk,
    GenerateRequest,
    LoadReport,
    ModelCard,
    SamplingParams,
    TokenLogprob,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolUse,
    TopLogprob,
    Usage,
)
from bailu.v1 import worker_pb2 as pb

# The most bytes of one completion's chunks a worker keeps sent and unread by the gateway: the fixed HTTP/2
# receive window of a Generate call (gateway/backpressure.py), and the per-stream credit of a Relay call
# (worker/relay.py), so that both paths hold a stalled completion back alike.
STREAM_WINDOW_BYTES = 16 * 1024

_FINISH_TO_PB = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.TOOL_CALLS: pb.FINISH_REASON_TOOL_CALLS,
}
_FINISH_FROM_PB = {v: k for k, v in _FINISH_TO_PB.items()}
_PRIORITY_TO_PB = {INTERACTIVE: pb.PRIORITY_INTERACTIVE, BATCH: pb.PRIORITY_BATCH}
# PRIORITY_UNSPECIFIED (an older gateway) and values newer than this code are served as interactive.
_PRIORITY_FROM_PB = {pb.PRIORITY_BATCH: BATCH}
_TOOL_CHOICE_TO_PB = {
    TOOL_NONE: pb.TOOL_CHOICE_NONE,
    TOOL_AUTO: pb.TOOL_CHOICE_AUTO,
    TOOL_REQUIRED: pb.TOOL_CHOICE_REQUIRED,
    TOOL_FUNCTION: pb.TOOL_CHOICE_FUNCTION,
}
_TOOL_CHOICE_FROM_PB = {v: k for k, v in _TOOL_CHOICE_TO_PB.items()}
_OPTIONAL_SAMPLING = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "seed",
)


def request_to_pb(req: GenerateRequest) -> pb.GenerateRequest:
    s = req.sampling
    sampling = pb.SamplingParams(
        stop=list(s.stop),
        logprobs=s.logprobs,
        top_logprobs=s.top_logprobs,
        json_object=s.json_object,
        json_schema=s.json_schema,
    )
    for name in _OPTIONAL_SAMPLING:
        value = getattr(s, name)
        if value is not None:
            setattr(sampling, name, value)
    msg = pb.GenerateRequest(
        request_id=req.request_id,
        model=req.model,
        adapter=req.adapter,
        sampling=sampling,
        deadline_unix_ms=int(req.deadline * 1000) if req.deadline else 0,
        priority=_PRIORITY_TO_PB.get(req.priority, pb.PRIORITY_UNSPECIFIED),
        first_token_deadline_unix_ms=int(req.first_token_deadline * 1000) if req.first_token_deadline else 0,
    )
    if req.is_chat:
        msg.chat.messages.extend(_message_to_pb(m) for m in req.as_messages())
    elif req.prompt is not None:  # neither: the oneof stays unset, for the worker's validation to refuse
        msg.prompt = req.prompt
    use = req.tools
    if use.tools or use.choice != TOOL_NONE:
        msg.tools.extend(pb.Tool(name=t.name, description=t.description, parameters=t.parameters) for t in use.tools)
        msg.tool_choice = _TOOL_CHOICE_TO_PB[use.choice]
        msg.tool_function = use.function
        msg.parallel_tool_calls = use.parallel
    return msg


def _message_to_pb(m: ChatMessage) -> pb.ChatMessage:
    return pb.ChatMessage(
        role=m.role,
        content=m.content,
        tool_calls=[pb.ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in m.tool_calls],
        tool_call_id=m.tool_call_id,
    )


def _message_from_pb(m: pb.ChatMessage) -> ChatMessage:
    calls = tuple(ToolCall(c.id, c.name, c.arguments) for c in m.tool_calls)
    return ChatMessage(m.role, m.content, calls, m.tool_call_id)


def _tools_from_pb(msg: pb.GenerateRequest) -> ToolUse:
    tools = tuple(Tool(t.name, t.description, t.parameters) for t in msg.tools)
    # Unset (an older gateway, or none given): auto with tools, none without, as OpenAI defaults it.
    choice = _TOOL_CHOICE_FROM_PB.get(msg.tool_choice, TOOL_AUTO if tools else TOOL_NONE)
    parallel = msg.parallel_tool_calls if msg.HasField("parallel_tool_calls") else True
    return ToolUse(tools, choice, msg.tool_function, parallel)


def request_from_pb(msg: pb.GenerateRequest) -> GenerateRequest:
    s = msg.sampling
    sampling = SamplingParams(
        stop=tuple(s.stop),
        logprobs=s.logprobs,
        top_logprobs=s.top_logprobs,
        json_object=s.json_object,
        json_schema=s.json_schema,
        **{name: getattr(s, name) for name in _OPTIONAL_SAMPLING if s.HasField(name)},
    )
    which = msg.WhichOneof("input")
    return GenerateRequest(
        request_id=msg.request_id,
        model=msg.model,
        adapter=msg.adapter,
        messages=tuple(_message_from_pb(m) for m in msg.chat.messages) if which == "chat" else None,
        prompt=msg.prompt if which == "prompt" else None,
        sampling=sampling,
        deadline=msg.deadline_unix_ms / 1000 if msg.deadline_unix_ms else None,
        priority=_PRIORITY_FROM_PB.get(msg.priority, INTERACTIVE),
        first_token_deadline=msg.first_token_deadline_unix_ms / 1000 if msg.first_token_deadline_unix_ms else None,
        tools=_tools_from_pb(msg),
    )


def chunk_to_pb(chunk: GenerateChunk) -> pb.GenerateResponse:
    msg = pb.GenerateResponse(text_delta=chunk.text, token_count=chunk.token_count, served_model=chunk.served_model)
    if chunk.finish_reason is not None:
        msg.finish_reason = _FINISH_TO_PB[chunk.finish_reason]
    if chunk.usage is not None:
        msg.usage.prompt_tokens = chunk.usage.prompt_tokens
        msg.usage.completion_tokens = chunk.usage.completion_tokens
    for entry in chunk.logprobs:
        msg.logprobs.append(
            pb.TokenLogprob(
                token=entry.token,
                logprob=entry.logprob,
                bytes=entry.token_bytes,
                top=[pb.TopLogprob(token=t.token, logprob=t.logprob, bytes=t.token_bytes) for t in entry.top],
            )
        )
    msg.tool_calls.extend(
        pb.ToolCallDelta(index=d.index, id=d.id, name=d.name, arguments=d.arguments) for d in chunk.tool_calls
    )
    return msg


def chunk_from_pb(msg: pb.GenerateResponse) -> GenerateChunk:
    return GenerateChunk(
        text=msg.text_delta,
        token_count=msg.token_count,
        finish_reason=_FINISH_FROM_PB.get(msg.finish_reason),
        usage=Usage(msg.usage.prompt_tokens, msg.usage.completion_tokens) if msg.HasField("usage") else None,
        served_model=msg.served_model,
        logprobs=tuple(
            TokenLogprob(e.token, e.logprob, e.bytes, tuple(TopLogprob(t.token, t.logprob, t.bytes) for t in e.top))
            for e in msg.logprobs
        ),
        tool_calls=tuple(ToolCallDelta(d.index, d.id, d.name, d.arguments) for d in msg.tool_calls),
    )


def card_to_pb(card: ModelCard) -> pb.ModelCard:
    return pb.ModelCard(name=card.name, kind=card.kind, base_model=card.base_model, max_model_len=card.max_model_len)


def card_from_pb(msg: pb.ModelCard) -> ModelCard:
    return ModelCard(name=msg.name, kind=msg.kind, base_model=msg.base_model, max_model_len=msg.max_model_len)


def load_to_pb(load: LoadReport) -> pb.LoadReport:
    return pb.LoadReport(
        queued=load.queued,
        running=load.running,
        capacity=load.capacity,
        max_queue=load.max_queue,
        ready=load.ready,
        queued_batch=load.queued_batch,
        service_s=load.service_s,
    )


def load_from_pb(msg: pb.LoadReport) -> LoadReport:
    return LoadReport(
        queued=msg.queued,
        running=msg.running,
        capacity=msg.capacity,
        max_queue=msg.max_queue,
        ready=msg.ready,
        queued_batch=msg.queued_batch,
        service_s=msg.service_s,
    )


_CAPABILITY_FIELDS = (
    "adapters",
    "runtime_adapter_loading",
    "adapter_load_restarts_engine",
    "mixed_adapter_batches",
    "native_metrics",
    "raw_completions",
    "structured_outputs",
    "tool_calls",
    "auto_tool_choice",
)


def capabilities_to_pb(capabilities: EngineCapabilities) -> pb.Capabilities:
    return pb.Capabilities(**{name: getattr(capabilities, name) for name in _CAPABILITY_FIELDS})


def capabilities_from_pb(msg: pb.Capabilities) -> EngineCapabilities:
    return EngineCapabilities(**{name: getattr(msg, name) for name in _CAPABILITY_FIELDS})
