"""The Responses API's bodies as pydantic models: what `/openapi.json` documents for `/v1/responses`.

As for the completions (`bailu.gateway.responses`), the bodies are built as dicts on the hot path
(`bailu.gateway.responses_api_format`); these models describe them, the subset of OpenAI's `Response` and
stream events that this deployment produces, and the tests validate real responses against the published
schema.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from bailu.gateway.responses import TokenLogprob

ItemStatus = Literal["in_progress", "completed", "incomplete"]


class ResponseOutputText(BaseModel):
    type: Literal["output_text"]
    text: str
    annotations: list[dict[str, Any]]
    logprobs: list[TokenLogprob] = Field(
        description="Empty unless asked for (`include: ['message.output_text.logprobs']`, or `top_logprobs`); "
        "not kept with a stored response."
    )


class ResponseOutputMessage(BaseModel):
    """An output item: the assistant's message (absent from a response of calls alone)."""

    id: str = Field(description="`msg_` and the response id's suffix.")
    type: Literal["message"]
    role: Literal["assistant"]
    status: ItemStatus
    content: list[ResponseOutputText]


class ResponseFunctionCall(BaseModel):
    """An output item: a function call the model made (after the message, if it also wrote text). Sent back in
    `input` with its `function_call_output`, it continues the conversation."""

    id: str = Field(description="`fc_`, the response id's suffix and the call's position.")
    type: Literal["function_call"]
    call_id: str = Field(description="The call's id (OpenAI's shape: \"call_\" and 24 hexadecimal digits).")
    name: str
    arguments: str = Field(description='The arguments: the JSON text of an object (`""` while in progress).')
    status: ItemStatus


OutputItem = Annotated[ResponseOutputMessage | ResponseFunctionCall, Field(discriminator="type")]


class FunctionToolEcho(BaseModel):
    """A function of the request's `tools`, as the response echoes it."""

    type: Literal["function"]
    name: str
    description: str | None
    parameters: dict[str, Any] | None
    strict: bool | None


class FunctionChoiceEcho(BaseModel):
    type: Literal["function"]
    name: str


class InputTokensDetails(BaseModel):
    cached_tokens: int = Field(ge=0)
    cache_write_tokens: int = Field(ge=0)


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = Field(ge=0)


class ResponseUsage(BaseModel):
    input_tokens: int = Field(ge=0)
    input_tokens_details: InputTokensDetails
    output_tokens: int = Field(ge=0)
    output_tokens_details: OutputTokensDetails
    total_tokens: int = Field(ge=0)


class ResponseErrorInfo(BaseModel):
    """Why a streamed response failed after its first token."""

    code: Literal["server_error", "rate_limit_exceeded"]
    message: str
    param: str | None
    type: str | None = Field(description="The gateway's error code (e.g. `upstream_stalled`), else its type.")


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseObject(BaseModel):
    """A response: `POST /v1/responses` without `stream`, `GET /v1/responses/{id}`, and the `response` of
    the lifecycle events of a stream."""

    id: str = Field(description="`resp_...`: also a `response_id` for `POST /v1/feedback`.")
    object: Literal["response"]
    created_at: float
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: ResponseErrorInfo | None
    incomplete_details: IncompleteDetails | None
    instructions: str | None
    max_output_tokens: int | None
    model: str = Field(description="The model that answered, as resolved (e.g. `bailu-poet@v0003`).")
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: str | None
    reasoning: dict[str, None]
    temperature: float | None
    text: dict[str, Any]
    tool_choice: Literal["none", "auto", "required"] | FunctionChoiceEcho = Field(
        description="The request's (`auto` when it gave none)."
    )
    tools: list[FunctionToolEcho] = Field(description="The request's function tools.")
    top_logprobs: int | None
    top_p: float | None
    truncation: Literal["disabled"]
    usage: ResponseUsage | None
    user: str | None
    metadata: dict[str, str]


class LifecycleEvent(BaseModel):
    """The stream's first two events, and its last: `completed`, `incomplete` (cut short by
    `max_output_tokens`) or `failed` (its `response.error` says why)."""

    type: Literal[
        "response.created", "response.in_progress", "response.completed", "response.incomplete", "response.failed"
    ]
    sequence_number: int = Field(ge=0)
    response: ResponseObject


class OutputItemEvent(BaseModel):
    """An output item opens (`added`: a call's arguments still empty) or closes (`done`: the item whole)."""

    type: Literal["response.output_item.added", "response.output_item.done"]
    sequence_number: int = Field(ge=0)
    output_index: int = Field(ge=0)
    item: OutputItem


class ContentPartEvent(BaseModel):
    type: Literal["response.content_part.added", "response.content_part.done"]
    sequence_number: int = Field(ge=0)
    item_id: str
    output_index: int = Field(ge=0)
    content_index: Literal[0]
    part: ResponseOutputText


class TextDeltaEvent(BaseModel):
    type: Literal["response.output_text.delta"]
    sequence_number: int = Field(ge=0)
    item_id: str
    output_index: int = Field(ge=0)
    content_index: Literal[0]
    delta: str
    logprobs: list[TokenLogprob]


class TextDoneEvent(BaseModel):
    type: Literal["response.output_text.done"]
    sequence_number: int = Field(ge=0)
    item_id: str
    output_index: int = Field(ge=0)
    content_index: Literal[0]
    text: str
    logprobs: list[TokenLogprob]


class FunctionCallArgumentsDeltaEvent(BaseModel):
    """More of a call's arguments: append `delta`."""

    type: Literal["response.function_call_arguments.delta"]
    sequence_number: int = Field(ge=0)
    item_id: str
    output_index: int = Field(ge=0)
    delta: str


class FunctionCallArgumentsDoneEvent(BaseModel):
    """A call's arguments, whole."""

    type: Literal["response.function_call_arguments.done"]
    sequence_number: int = Field(ge=0)
    item_id: str
    output_index: int = Field(ge=0)
    arguments: str


# Described in the schema beside the route (each is one server-sent event's `data`).
RESPONSES_STREAM_EVENTS: tuple[type[BaseModel], ...] = (
    LifecycleEvent,
    OutputItemEvent,
    ContentPartEvent,
    TextDeltaEvent,
    TextDoneEvent,
    FunctionCallArgumentsDeltaEvent,
    FunctionCallArgumentsDoneEvent,
)
