"""Domain types that cross the gateway → worker hop.

Protobuf stops at the edges (`bailu.common.wire`); everything inside uses these.
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

from bailu.common.errors import InvalidRequest

MAX_STOP_SEQUENCES = 4
# The largest `max_tokens` and `top_k` accepted (the wire carries uint32) and the range of `seed` (int64).
MAX_TOKENS_LIMIT = 1 << 20
TOP_K_LIMIT = 1 << 20
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
# The most alternatives per token `top_logprobs` may ask for (OpenAI's chat-completions bound).
MAX_TOP_LOGPROBS = 20
# The longest JSON Schema (`SamplingParams.json_schema`, as compact JSON text) and its deepest nesting of
# objects and arrays: bounds on what the gateway checks and the engines compile.
MAX_JSON_SCHEMA_CHARS = 1 << 16
MAX_JSON_SCHEMA_DEPTH = 32
ROLES = frozenset({"system", "user", "assistant", "tool"})
# Tool use (OpenAI's `tools`, `tool_choice`): at most this many functions per request (OpenAI's bound), each
# named by `TOOL_NAME_PATTERN`. `tool_choice` is one of `TOOL_CHOICES`.
MAX_TOOLS = 128
TOOL_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"
TOOL_NONE, TOOL_AUTO, TOOL_REQUIRED, TOOL_FUNCTION = "none", "auto", "required", "function"
TOOL_CHOICES = (TOOL_NONE, TOOL_AUTO, TOOL_REQUIRED, TOOL_FUNCTION)
# Priority classes of a request (an API key's `priority`): interactive requests go before batch ones in a
# worker's queue, and batch ones are shed first under load.
INTERACTIVE, BATCH = "interactive", "batch"
PRIORITIES = (INTERACTIVE, BATCH)


class FinishReason(enum.StrEnum):
    """Why generation stopped (OpenAI's `finish_reason`)."""

    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the model made: its `id` ("call_..."), the function's `name`, and `arguments`, the JSON
    text of an object."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One turn: `role` is system, user, assistant or tool. An assistant turn may hold `tool_calls` (its
    `content` may then be empty); a tool turn holds the result of the call `tool_call_id`."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call: `parameters` is its arguments' JSON Schema as JSON text ("": none)."""

    name: str
    description: str = ""
    parameters: str = ""

    @property
    def parameters_schema(self) -> dict[str, Any]:
        """The arguments' JSON Schema (an object schema with no properties when none was given)."""
        schema = json.loads(self.parameters) if self.parameters else {}
        return schema if schema else {"type": "object", "properties": {}}


@dataclass(frozen=True, slots=True)
class ToolUse:
    """The functions a chat request offers and how the model may use them (OpenAI's `tools`, `tool_choice`,
    `parallel_tool_calls`): `choice` is one of `TOOL_CHOICES`, `function` the tool to call with
    `TOOL_FUNCTION`. No tools, or `TOOL_NONE`: a plain text answer."""

    tools: tuple[Tool, ...] = ()
    choice: str = TOOL_NONE
    function: str = ""
    parallel: bool = True

    @property
    def active(self) -> bool:
        """Whether the model is shown the tools and may (or must) call them."""
        return bool(self.tools) and self.choice != TOOL_NONE

    @property
    def forced(self) -> bool:
        """Whether a call is required (`required` or a named function): decoding is constrained to calls."""
        return self.active and self.choice in (TOOL_REQUIRED, TOOL_FUNCTION)

    def validate(self) -> None:
        """Raise `InvalidRequest` naming the first inconsistency."""
        if self.choice not in TOOL_CHOICES:
            raise InvalidRequest(f"tool_choice must be one of {', '.join(TOOL_CHOICES)}", param="tool_choice")
        if len(self.tools) > MAX_TOOLS:
            raise InvalidRequest(f"at most {MAX_TOOLS} tools are allowed", param="tools")
        names: set[str] = set()
        for i, tool in enumerate(self.tools):
            if not re.match(TOOL_NAME_PATTERN, tool.name):
                raise InvalidRequest(
                    "a function name has 1 to 64 letters, digits, '_' or '-'", param=f"tools[{i}].function.name"
                )
            if tool.name in names:
                raise InvalidRequest(f"two tools are named '{tool.name}'", param=f"tools[{i}].function.name")
            names.add(tool.name)
            if tool.parameters:
                _check_json_schema(tool.parameters, json_object=False, param=f"tools[{i}].function.parameters")
        if self.choice in (TOOL_REQUIRED, TOOL_FUNCTION) and not self.tools:
            raise InvalidRequest(f"tool_choice {self.choice} needs tools", param="tool_choice")
        if self.choice == TOOL_FUNCTION and self.function not in names:
            raise InvalidRequest(
                f"tool_choice names the function '{self.function}', which is not among the tools",
                param="tool_choice.function.name",
            )


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Sampling parameters; `None` means the engine's default."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # Report each generated token's log probability (`GenerateChunk.logprobs`), with the `top_logprobs` most
    # likely alternatives at each position (0: none).
    logprobs: bool = False
    top_logprobs: int = 0
    # Structured outputs, by constrained decoding: the output is a JSON object (`json_object`), or a JSON value
    # valid against `json_schema` (a JSON Schema as JSON text); neither: free text.
    json_object: bool = False
    json_schema: str = ""

    @property
    def response_format(self) -> str:
        """The constraint on the output, by its OpenAI `response_format` type: "json_schema", "json_object" or
        "text" (none)."""
        return "json_schema" if self.json_schema else "json_object" if self.json_object else "text"

    def requested(self) -> dict[str, Any]:
        """The parameters the request set (those that differ from their defaults), as the completion record
        keeps them."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}

    def validate(self) -> None:
        """Raise `InvalidRequest` naming the first out-of-range parameter."""
        _check_range("max_tokens", self.max_tokens, 1, MAX_TOKENS_LIMIT)
        _check_range("temperature", self.temperature, 0.0, 2.0)
        _check_range("top_p", self.top_p, 0.0, 1.0, low_open=True)
        _check_range("top_k", self.top_k, 0, TOP_K_LIMIT)
        _check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        _check_range("repetition_penalty", self.repetition_penalty, 0.0, 10.0, low_open=True)
        _check_range("seed", self.seed, INT64_MIN, INT64_MAX)
        if len(self.stop) > MAX_STOP_SEQUENCES:
            raise InvalidRequest(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed", param="stop")
        if any(not s for s in self.stop):
            raise InvalidRequest("stop sequences must be non-empty", param="stop")
        _check_range("top_logprobs", self.top_logprobs, 0, MAX_TOP_LOGPROBS)
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequest("top_logprobs requires logprobs to be true", param="top_logprobs")
        if self.json_schema:
            _check_json_schema(self.json_schema, json_object=self.json_object)


JSON_SCHEMA_PARAM = "response_format.json_schema.schema"


def _check_json_schema(text: str, *, json_object: bool, param: str = JSON_SCHEMA_PARAM) -> None:
    """Raise `InvalidRequest` unless `text` is a JSON object within the bounds (whether it is a valid JSON Schema
    is the gateway's check, and the engine's when it compiles it)."""
    if json_object:
        raise InvalidRequest("give json_object or json_schema, not both", param="response_format")
    if len(text) > MAX_JSON_SCHEMA_CHARS:
        raise InvalidRequest(f"the JSON Schema is longer than {MAX_JSON_SCHEMA_CHARS} characters", param=param)
    try:
        schema = json.loads(text)
    except (ValueError, RecursionError):
        schema = None
    if not isinstance(schema, dict):
        raise InvalidRequest("the JSON Schema must be a JSON object", param=param)
    if json_depth(schema) > MAX_JSON_SCHEMA_DEPTH:
        raise InvalidRequest(f"the JSON Schema nests deeper than {MAX_JSON_SCHEMA_DEPTH} levels", param=param)


def json_depth(value: object) -> int:
    """How deeply objects and arrays nest in a JSON value (a scalar: 0, `{}`: 1), counted without recursion."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        else:
            deepest = max(deepest, depth)
            continue
        deepest = max(deepest, depth + 1)
    return deepest


def _check_range(name: str, value: float | None, low: float, high: float, *, low_open: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(f"{name} must be a finite number", param=name)
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        bracket = "(" if low_open else "["
        raise InvalidRequest(f"{name} must be in {bracket}{low}, {high}], got {value}", param=name)


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """One completion to generate: chat messages or a raw prompt, never both (`is_chat` says which)."""

    request_id: str
    model: str
    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None
    adapter: str = ""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    deadline: float | None = None  # Unix time in seconds
    priority: str = INTERACTIVE  # one of PRIORITIES
    first_token_deadline: float | None = None  # Unix time in seconds by which the first token is wanted
    tools: ToolUse = field(default_factory=ToolUse)

    def validate(self) -> None:
        """Raise `InvalidRequest` for a request no engine could serve."""
        if self.priority not in PRIORITIES:
            raise InvalidRequest(f"priority must be one of {', '.join(PRIORITIES)}", param="priority")
        if (self.messages is None) == (self.prompt is None):
            raise InvalidRequest("exactly one of messages or prompt must be given", param="messages")
        if self.messages is not None:
            if not self.messages:
                raise InvalidRequest("messages must contain at least one message", param="messages")
            for i, message in enumerate(self.messages):
                if message.role not in ROLES:
                    raise InvalidRequest(
                        f"messages[{i}].role must be one of {sorted(ROLES)}", param=f"messages[{i}].role"
                    )
                if message.tool_calls and message.role != "assistant":
                    raise InvalidRequest(
                        "only an assistant message holds tool_calls", param=f"messages[{i}].tool_calls"
                    )
                if (message.role == "tool") != bool(message.tool_call_id):
                    raise InvalidRequest(
                        "a tool message, and only a tool message, names its tool_call_id",
                        param=f"messages[{i}].tool_call_id",
                    )
            if self.messages[-1].tool_calls:
                raise InvalidRequest(
                    "the last message holds tool calls: send their results as tool messages",
                    param=f"messages[{len(self.messages) - 1}].tool_calls",
                )
        elif not self.prompt:
            raise InvalidRequest("prompt must not be empty", param="prompt")
        elif self.tools.tools:
            raise InvalidRequest("tools go with chat messages, not a raw prompt", param="tools")
        self.sampling.validate()
        self.tools.validate()
        if self.tools.forced and self.continues_assistant:
            raise InvalidRequest(
                f"tool_choice {self.tools.choice} constrains the output to tool calls, which cannot continue a "
                "trailing assistant message",
                param="tool_choice",
            )
        if self.tools.forced and self.sampling.response_format != "text":
            raise InvalidRequest(
                f"tool_choice {self.tools.choice} constrains the output to tool calls: give it or response_format "
                "json_object/json_schema, not both",
                param="tool_choice",
            )

    @property
    def continues_assistant(self) -> bool:
        """Whether the last message is the assistant's: a prefix that the reply continues (the reply holds only
        what follows it). Engines that cannot continue a message refuse such requests."""
        return self.messages is not None and bool(self.messages) and self.messages[-1].role == "assistant"

    @property
    def is_chat(self) -> bool:
        """Whether the request carries chat messages (/v1/chat/completions) rather than a raw prompt."""
        return self.messages is not None

    @property
    def input_param(self) -> str:
        """The name of the request's input, for errors about it: "messages" or "prompt"."""
        return "messages" if self.is_chat else "prompt"

    def as_messages(self) -> tuple[ChatMessage, ...]:
        """The chat turns to render: the messages, or a raw prompt as one user turn (as ms-swift's own
        server serves /v1/completions)."""
        if self.messages is not None:
            return self.messages
        return (ChatMessage("user", self.prompt or ""),)

    @property
    def reported_model(self) -> str:
        """The name engines report (`GenerateChunk.served_model`) for the model and adapter this request runs
        on: "<model>:<adapter>", or the model alone."""
        return f"{self.model}:{self.adapter}" if self.adapter else self.model


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class TopLogprob:
    """One of the most likely tokens at a position: its text, natural-log probability and UTF-8 bytes."""

    token: str
    logprob: float
    token_bytes: bytes


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """The log probability of one generated token, with the most likely alternatives at its position (most
    likely first). `token_bytes` are exact even where `token`, a piece of a multi-byte character, is not."""

    token: str
    logprob: float
    token_bytes: bytes
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call as it streams: the first piece of call `index` carries its `id` and `name`, later
    pieces only more `arguments` text to append. An engine may send each call whole, in one piece."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class GenerateChunk:
    """A piece of a streamed completion; the last one has `finish_reason` and `usage`.

    With `SamplingParams.logprobs`, `logprobs` holds one entry per token the chunk covers (`token_count` of
    them), in output order; an engine that learns of a token's log probability late attaches it to a later
    chunk, at the latest the last one, so that every generated token has exactly one entry."""

    text: str
    token_count: int = 0
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    served_model: str = ""
    logprobs: tuple[TokenLogprob, ...] = ()
    tool_calls: tuple[ToolCallDelta, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelCard:
    name: str
    kind: str = "base"  # "base" or "adapter"
    base_model: str = ""
    max_model_len: int = 0


@dataclass(frozen=True, slots=True)
class EngineCapabilities:
    """What a worker's engine can do, so that routing and operators never depend on the engine's name.

    The defaults describe the in-process engines (transformers, sim): adapters load at run time without
    interrupting service, but a batch holds one adapter, there are no engine-native metrics, a raw
    prompt is served as one user turn of the chat template, the output can be constrained to JSON, and tools can
    be used.
    """

    # Serves LoRA adapters at all (LoadAdapter can succeed).
    adapters: bool = True
    # Loads and unloads adapters while serving, without restarting the engine.
    runtime_adapter_loading: bool = True
    # A LoadAdapter restarts the engine (requests wait, new adapters need a restart to apply).
    adapter_load_restarts_engine: bool = False
    # Requests for different adapters (and the base model) share one batch.
    mixed_adapter_batches: bool = False
    # The engine exports its own Prometheus metrics (queue, running, KV cache), mapped to bailu_worker_engine_*.
    native_metrics: bool = False
    # A raw prompt (/v1/completions) is given to the model verbatim, not wrapped in the chat template.
    raw_completions: bool = False
    # Chat requests can constrain the output to a JSON object or a JSON Schema (`SamplingParams.json_object`,
    # `json_schema`) by constrained decoding; without it the gateway refuses them rather than send free text.
    structured_outputs: bool = True
    # Chat requests can force tool calls (`tool_choice` required or a named function) by constrained decoding.
    tool_calls: bool = True
    # Chat requests can leave the choice to the model (`tool_choice` auto): calls are read out of its free output
    # by a tool parser (the in-process engines: ms-swift's agent template; engine servers: their --tool-call-parser).
    auto_tool_choice: bool = True


@dataclass(frozen=True, slots=True)
class LoadReport:
    """A worker's load: requests `queued` for a slot (`queued_batch` of them batch), `running`, the engine's
    `capacity` and `max_queue`, and `service_s`, the mean time a request holds a slot (0: not measured yet)."""

    queued: int
    running: int
    capacity: int
    max_queue: int
    ready: bool
    queued_batch: int = 0
    service_s: float = 0.0

    @property
    def free_slots(self) -> int:
        """How many more requests the worker takes before they wait or are refused."""
        return self.capacity + self.max_queue - self.queued - self.running
