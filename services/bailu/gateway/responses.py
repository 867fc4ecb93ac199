"""The gateway's response bodies as pydantic models: what `/openapi.json` documents for each route.

The completion bodies are built as dicts on the hot path (`bailu.gateway.openai_format`); these models
describe them (the OpenAI shapes), and the tests validate real responses against the published schema.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

FinishReasonName = Literal["stop", "length"]
ChatFinishReasonName = Literal["stop", "length", "tool_calls"]


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong, for a person to read.")
    type: str = Field(description="OpenAI's error type, e.g. `invalid_request_error`.")
    param: str | None = Field(description="The offending field (a JSON path such as `messages[0].content`).")
    code: str | None = Field(description="A stable code, e.g. `model_not_found`, `request_too_large`.")


class ErrorResponse(BaseModel):
    """Every error, at every status (and as the event that ends a stream failing after its first token)."""

    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


class TopLogprob(BaseModel):
    token: str
    logprob: float = Field(le=0, description="Natural log of the token's probability (-9999.0 for -inf).")
    bytes: list[int] | None = Field(description="The token's UTF-8 bytes (a token may be part of a character).")


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(description="The most likely tokens at this position (`top_logprobs`).")


class ChatLogprobs(BaseModel):
    """`logprobs: true`: one entry per generated token."""

    content: list[TokenLogprob] | None
    refusal: None = None


class TextLogprobs(BaseModel):
    """Completions' `logprobs: k` (the legacy format): parallel lists, one entry per generated token."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class ReplyFunction(BaseModel):
    name: str
    arguments: str = Field(description="The JSON text of an object: the call's arguments.")


class ReplyToolCall(BaseModel):
    """A function call of a reply (`message.tool_calls[]`)."""

    id: str = Field(description='"call_" and 24 hexadecimal digits.')
    type: Literal["function"]
    function: ReplyFunction


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None = Field(description="The text; null when the reply is tool calls alone.")
    tool_calls: list[ReplyToolCall] | None = Field(None, description="The function calls made (absent: none).")


class ChatChoice(BaseModel):
    index: int = Field(ge=0, description="Which candidate (`n` > 1).")
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: ChatFinishReasonName


class ChatCompletion(BaseModel):
    """`POST /v1/chat/completions` without `stream`."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str = Field(description="The model that answered, as resolved (e.g. `bailu-poet@v0003`).")
    choices: list[ChatChoice]
    usage: Usage | None


class DeltaFunction(BaseModel):
    name: str | None = Field(None, description="On the call's first piece only.")
    arguments: str = Field(description="More of the arguments' JSON text, to append.")


class DeltaToolCall(BaseModel):
    """A piece of a tool call: the first piece of call `index` has its `id`, `type` and name, later pieces
    only more arguments."""

    index: int = Field(ge=0, description="Which call of the candidate's.")
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunction


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = Field(None, description="In each candidate's first chunk only.")
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatChunkChoice(BaseModel):
    index: int = Field(ge=0)
    delta: ChatDelta
    logprobs: ChatLogprobs | None
    finish_reason: ChatFinishReasonName | None


class ChatCompletionChunk(BaseModel):
    """One `data:` event of a streamed chat completion. With `stream_options.include_usage` the last one
    before `[DONE]` has no choices and carries `usage`."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class TextChoice(BaseModel):
    index: int = Field(ge=0)
    text: str
    logprobs: TextLogprobs | None
    finish_reason: FinishReasonName | None


class TextCompletion(BaseModel):
    """`POST /v1/completions` without `stream` (every `finish_reason` set)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage | None


class TextCompletionChunk(BaseModel):
    """One `data:` event of a streamed text completion (as OpenAI, `object` is `text_completion`)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage | None = None


class Model(BaseModel):
    id: str = Field(description="The name to send as `model`.")
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "bailu"
    parent: str | None = Field(None, description="For an adapter: the base model it runs on.")
    max_model_len: int | None = Field(None, description="The model's context length, when the worker reports it.")


class ModelList(BaseModel):
    """`GET /v1/models`: what the workers serve, then the registry adapter names they can serve."""

    object: Literal["list"] = "list"
    data: list[Model]


class FeedbackAccepted(BaseModel):
    """`POST /v1/feedback`: the feedback is recorded (or was, for a retry with the same key)."""

    id: str = Field(description="The feedback's id.")
    object: Literal["feedback"] = "feedback"
    status: Literal["accepted"] = "accepted"


# Described in the schema beside the routes (each is one server-sent event's `data`).
STREAM_EVENTS: tuple[type[BaseModel], ...] = (ChatCompletionChunk, TextCompletionChunk)
