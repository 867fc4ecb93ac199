"""`POST /v1/responses`: OpenAI's Responses API request, validated as strictly as the chat completions body, and
turned into a chat completion request so that it runs the same way (routing, quotas, completion log,
structured outputs).

Every field of OpenAI's `ResponseCreateParams` is known. Those served: `model`, `input` (a string, or a list of
items: message items (`user`, `system`, `developer` and `assistant` turns, assistant turns also as this API's own
output items echoed back), the `function_call` items of calls the model made and the `function_call_output`
items of their results), `instructions`, `previous_response_id`, `max_output_tokens`, `temperature`, `top_p`,
`top_logprobs` and `include` (`message.output_text.logprobs`), `text.format` (`text`, `json_object`,
`json_schema`), `tools` (function tools), `tool_choice`, `parallel_tool_calls` (see
`bailu.gateway.responses_api_tools`), `store`, `stream`, `metadata`, `user`. The others
follow the field policy (`bailu.gateway.field_policy`): accepted at the values that ask for nothing, refused
otherwise as not supported, in one table per object (`RESPONSES_FIELD_POLICY` and its siblings).

`instructions` lead the conversation as its system message; a follow-up through `previous_response_id` gets
the earlier response's input and output (the calls it made included) as history, but not its instructions nor
its tools (as OpenAI does). As OpenAI requires, each `function_call_output` answers a call made before it, and
each call made gets its output before the model goes on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from bailu.common.records import CompletionRecord
from bailu.common.types import MAX_TOOLS, MAX_TOP_LOGPROBS
from bailu.gateway.field_policy import FieldPolicy, Ignored, Unserved, not_supported, policy_model
from bailu.gateway.json_schemas import check_json_schema
from bailu.gateway.responses_api_tools import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionToolItem,
    ResponsesToolChoice,
    chat_tools,
    chat_turn,
    or_text,
    output_turn,
    text_as_parts,
    tool_settings,
    with_items,
)
from bailu.gateway.schemas import (
    CHAT_FIELD_POLICY,
    EXAMPLE_MODEL,
    MAX_HINT_CHARS,
    MAX_MODEL_NAME_CHARS,
    ChatCompletionRequest,
    MaxTokens,
    Metadata,
    PromptText,
    StrictBody,
    WireText,
)

# The `include` value that asks for the output text's log probabilities; the others name data of output items
# this deployment never produces (built-in tool calls, reasoning, images), so there is nothing to include.
LOGPROBS_INCLUDE = "message.output_text.logprobs"
Includable = Literal[
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
]
RESPONSE_ID_PREFIX = "resp_"
MAX_RESPONSE_ID_CHARS = 128

# Input items that need a feature this deployment does not serve, by their `type`.
UNSERVED_ITEMS = {
    "custom_tool_call": "custom tools",
    "custom_tool_call_output": "custom tools",
    "reasoning": "reasoning items",
    "item_reference": "item references (send the item itself, or use previous_response_id)",
    "compaction": "context compaction",
}
BUILT_IN_TOOL_SUFFIXES = ("_call", "_call_output", "_list_tools", "_approval_request", "_approval_response")
UNSERVED_PARTS = {
    "input_image": "image input",
    "input_file": "file input",
    "input_audio": "audio input",
}

STREAM_OPTIONS_FIELD_POLICY: dict[str, FieldPolicy] = {
    "include_obfuscation": Ignored(bool, "streams are not obfuscated"),
}
TEXT_FIELD_POLICY: dict[str, FieldPolicy] = {
    "verbosity": Unserved("verbosity", (None, "medium")),
}
REASONING_FIELD_POLICY: dict[str, FieldPolicy] = {
    "context": Unserved("reasoning", (None, "auto")),
    "effort": Unserved("reasoning effort", (None, "none")),
    "generate_summary": Unserved("reasoning summaries"),
    "mode": Unserved("reasoning modes", (None, "standard")),
    "summary": Unserved("reasoning summaries"),
}
PART_FIELD_POLICY: dict[str, FieldPolicy] = {
    "prompt_cache_breakpoint": Ignored(dict[str, Any], "a prompt-cache hint"),
}
RESPONSES_FIELD_POLICY: dict[str, FieldPolicy] = {
    "access_programs": Unserved("access programs", (None, {})),
    "background": Unserved("background responses", (None, False)),
    "background_options": Unserved("background responses", (None, {})),
    "context_management": Unserved("context management", (None, [])),
    "conversation": Unserved("conversations (use previous_response_id)"),
    "image": Unserved("image input", (None, {})),
    "max_tool_calls": Ignored(Annotated[int, Field(ge=0)], "no built-in tool runs"),
    "moderation": Unserved("moderation"),
    "prompt": Unserved("prompt templates"),
    "prompt_cache_key": CHAT_FIELD_POLICY["prompt_cache_key"],
    "prompt_cache_options": Ignored(dict[str, Any], "a prompt-cache hint"),
    "prompt_cache_retention": CHAT_FIELD_POLICY["prompt_cache_retention"],
    "safety_identifier": CHAT_FIELD_POLICY["safety_identifier"],
    "service_tier": CHAT_FIELD_POLICY["service_tier"],
    "truncation": Unserved("truncation (a prompt too long for the model is a 400)", (None, "disabled")),
}

if TYPE_CHECKING:

    class _ResponsesPolicy(StrictBody): ...

    class _StreamOptionsPolicy(StrictBody): ...

    class _TextPolicy(StrictBody): ...

    class _ReasoningPolicy(StrictBody): ...

    class _PartPolicy(StrictBody): ...

else:
    # Base classes with one field per table entry, built at import (mypy sees the empty classes above).
    _ResponsesPolicy = policy_model("ResponsesFieldPolicy", StrictBody, RESPONSES_FIELD_POLICY)
    _StreamOptionsPolicy = policy_model("ResponsesStreamOptionsPolicy", StrictBody, STREAM_OPTIONS_FIELD_POLICY)
    _TextPolicy = policy_model("ResponsesTextPolicy", StrictBody, TEXT_FIELD_POLICY)
    _ReasoningPolicy = policy_model("ResponsesReasoningPolicy", StrictBody, REASONING_FIELD_POLICY)
    _PartPolicy = policy_model("ResponsesContentPartPolicy", StrictBody, PART_FIELD_POLICY)


class ResponsesStreamOptions(_StreamOptionsPolicy):
    pass


NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"


class TextFormat(StrictBody):
    """`text.format`: free text, a JSON object, or JSON valid against `schema` (structured outputs, by
    constrained decoding: chat completions' `response_format`, flattened as the Responses API writes it)."""

    type: Literal["text", "json_object", "json_schema"]
    name: Annotated[str, Field(pattern=NAME_PATTERN)] | None = Field(
        None, description="json_schema: the format's name (not used for decoding)."
    )
    schema_: Annotated[dict[str, Any], AfterValidator(check_json_schema)] | None = Field(
        None, alias="schema", description="json_schema: the JSON Schema (an object) the output is decoded to match."
    )
    description: WireText | None = Field(None, max_length=MAX_HINT_CHARS, description="Accepted and ignored.")
    strict: bool | None = Field(None, description="Accepted: the output always matches the schema.")

    @model_validator(mode="after")
    def _fields_of_the_type(self) -> TextFormat:
        schema_fields = {"name": self.name, "schema": self.schema_, "description": self.description,
                         "strict": self.strict}  # fmt: skip
        if self.type == "json_schema":
            for name in ("name", "schema"):
                if schema_fields[name] is None:
                    raise PydanticCustomError("text_format", "type json_schema needs {field}", {"field": name})
        else:
            for name, value in schema_fields.items():
                if value is not None:
                    raise PydanticCustomError(
                        "text_format",
                        "{field} goes with type json_schema, not {type}",
                        {"field": name, "type": self.type},
                    )
        return self

    def response_format(self) -> dict[str, Any]:
        """The chat completion's `response_format` of this format."""
        if self.type != "json_schema":
            return {"type": self.type}
        spec = {"name": self.name, "schema": self.schema_, "description": self.description, "strict": self.strict}
        return {"type": "json_schema", "json_schema": {k: v for k, v in spec.items() if v is not None}}


# What `TextFormat` accepts, as the document says it: one shape per `type` (the validator's rules).
TEXT_FORMAT_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {"type": "object", "properties": {"type": {"const": kind}}, "required": ["type"], "additionalProperties": False}
        for kind in ("text", "json_object")
    ]
    + [
        {
            "type": "object",
            "properties": {
                "type": {"const": "json_schema"},
                "name": {"type": "string", "pattern": NAME_PATTERN},
                "schema": {"type": "object", "description": "The JSON Schema the output is decoded to match."},
                "description": {"anyOf": [{"type": "string", "maxLength": MAX_HINT_CHARS}, {"type": "null"}]},
                "strict": {"anyOf": [{"type": "boolean"}, {"type": "null"}]},
            },
            "required": ["type", "name", "schema"],
            "additionalProperties": False,
        }
    ],
    "description": TextFormat.__doc__,
}


class TextConfig(_TextPolicy):
    """`text`: the output's format and its verbosity."""

    format: Annotated[TextFormat, WithJsonSchema(TEXT_FORMAT_SCHEMA)] | None = None


class ReasoningConfig(_ReasoningPolicy):
    """`reasoning`: accepted only at values that ask for no reasoning (the models served do not reason)."""


# Which fields each kind of content part has (besides `type`).
PART_FIELDS = {
    "input_text": ("text", "prompt_cache_breakpoint"),
    "output_text": ("text", "annotations", "logprobs"),
    "refusal": ("refusal",),
}


def _served_part(part: object) -> object:
    # `type` may be anything JSON holds (a dict is unhashable): only a string can name an unserved kind.
    if isinstance(part, dict) and isinstance(kind := part.get("type"), str) and kind in UNSERVED_PARTS:
        raise not_supported(UNSERVED_PARTS[part["type"]], "input_text, output_text and refusal parts")
    return part


class ContentPart(_PartPolicy):
    """One part of a message's content: `input_text`, or an assistant's `output_text` or `refusal` (this API's
    output echoed back; its `annotations` and `logprobs` are accepted and ignored). One model for the three
    kinds, so that an error is reported at the part's own field."""

    type: Literal["input_text", "output_text", "refusal"]
    text: WireText | None = None
    refusal: WireText | None = None
    annotations: list[Any] | None = Field(None, description="output_text: accepted and ignored.")
    logprobs: list[Any] | None = Field(None, description="output_text: accepted and ignored.")

    @model_validator(mode="after")
    def _fits_the_type(self) -> ContentPart:
        needed = "refusal" if self.type == "refusal" else "text"
        if getattr(self, needed) is None:
            raise PydanticCustomError("part_field", "{kind} parts need {field}", {"kind": self.type, "field": needed})
        for name in ("text", "refusal", "annotations", "logprobs", "prompt_cache_breakpoint"):
            if getattr(self, name) is not None and name not in PART_FIELDS[self.type]:
                raise PydanticCustomError(
                    "part_field", "{field} is not a field of {kind} parts", {"field": name, "kind": self.type}
                )
        return self

    @property
    def content(self) -> str:
        return (self.refusal if self.type == "refusal" else self.text) or ""


def _part_schemas() -> dict[str, Any]:
    """What `ContentPart` accepts, as the document says it: one shape per `type`, with the fields `PART_FIELDS`
    gives it and the one it needs (not null), derived from the model's own field schemas."""
    properties = ContentPart.model_json_schema()["properties"]

    def not_null(schema: dict[str, Any]) -> dict[str, Any]:
        branches = [b for b in schema.get("anyOf", [schema]) if b.get("type") != "null"]
        return branches[0] if len(branches) == 1 else {"anyOf": branches}

    shapes = []
    for kind, names in PART_FIELDS.items():
        needed = "refusal" if kind == "refusal" else "text"
        shape = {name: not_null(properties[name]) if name == needed else properties[name] for name in names}
        shapes.append(
            {
                "type": "object",
                "properties": {"type": {"const": kind}, **shape},
                "required": ["type", needed],
                "additionalProperties": False,
            }
        )
    return {"oneOf": shapes, "description": ContentPart.__doc__}


CONTENT_PART_SCHEMA = _part_schemas()
DocumentedPart = Annotated[ContentPart, BeforeValidator(_served_part), WithJsonSchema(CONTENT_PART_SCHEMA)]


class InputMessage(StrictBody):
    """One message item of `input`: a turn as a client writes it (`content` a string or parts), or one of this
    API's output messages echoed back (with its `id`, `status`, `output_text` parts)."""

    type: Literal["message"] | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: Annotated[
        list[DocumentedPart],
        BeforeValidator(text_as_parts),
    ] = Field(
        description="The text, or a list of parts (`input_text`; an assistant's `output_text` and `refusal`).",
        json_schema_extra=or_text,
    )
    id: WireText | None = Field(None, max_length=MAX_RESPONSE_ID_CHARS, description="An output item's id (ignored).")
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    phase: Literal["commentary", "final_answer"] | None = None

    @model_validator(mode="after")
    def _fits_the_role(self) -> InputMessage:
        if self.role != "assistant":
            for part in self.content:
                if part.type != "input_text":
                    raise PydanticCustomError(
                        "message_part", "{kind} parts belong to assistant messages, not to {role} messages",
                        {"kind": part.type, "role": self.role},
                    )  # fmt: skip
        return self

    def text(self) -> str:
        return "".join(part.content for part in self.content)

    def chat_message(self) -> dict[str, Any]:
        """The chat completion's message of this one."""
        return {"role": self.role, "content": self.text()}


# The input items served, by `type` (a message may leave it out), each with its tag (a name `bailu.gateway.errors`
# leaves out of an error's `param`, as pydantic's own union branches: `input[0].call_id`).
SERVED_ITEMS = {
    "message": "function-message",
    "function_call": "function-call",
    "function_call_output": "function-call-output",
}
SERVED_ITEM_NAMES = "message, function_call and function_call_output items"


def _served_item(item: object) -> object:
    """An input item of a kind not served: not supported (custom tools, reasoning, references, built-in tools'
    calls) or unknown."""
    if not isinstance(item, dict):
        return item
    kind = item.get("type")
    if kind is None or (isinstance(kind, str) and kind in SERVED_ITEMS):
        return item
    if isinstance(kind, str) and kind in UNSERVED_ITEMS:
        raise not_supported(UNSERVED_ITEMS[kind], SERVED_ITEM_NAMES)
    if isinstance(kind, str) and kind.endswith(BUILT_IN_TOOL_SUFFIXES):
        raise not_supported("built-in tools", SERVED_ITEM_NAMES)
    raise PydanticCustomError("input_item", "unknown input item type {kind}", {"kind": repr(kind)})


def _item_branch(item: Any) -> str | None:
    if not isinstance(item, dict):
        return None
    kind = item.get("type")
    return SERVED_ITEMS["message"] if kind is None else SERVED_ITEMS.get(kind) if isinstance(kind, str) else None


InputItem = Annotated[
    Annotated[InputMessage, Tag(SERVED_ITEMS["message"])]
    | Annotated[FunctionCallItem, Tag(SERVED_ITEMS["function_call"])]
    | Annotated[FunctionCallOutputItem, Tag(SERVED_ITEMS["function_call_output"])],
    Discriminator(
        _item_branch,
        custom_error_type="input_item",
        custom_error_message="an input item is an object: a message, a function_call or a function_call_output",
    ),
    BeforeValidator(_served_item),
]
"""One item of `input`: a message, a call the model made, or a call's result."""


class ResponseCreateRequest(_ResponsesPolicy):
    """`POST /v1/responses`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"model": EXAMPLE_MODEL, "input": "A short poem about dew"},
                {
                    "model": EXAMPLE_MODEL,
                    "instructions": "Answer in one line.",
                    "input": [{"role": "user", "content": "A haiku about autumn light"}],
                    "stream": True,
                    "max_output_tokens": 64,
                    "metadata": {"campaign": "autumn"},
                },
                {"model": EXAMPLE_MODEL, "previous_response_id": "resp_0123", "input": "And one about frost"},
                {
                    # A forced call of a named function: its arguments match `parameters`.
                    "model": EXAMPLE_MODEL,
                    "input": "Will there be dew in Kyoto tomorrow?",
                    "tools": [
                        {
                            "type": "function",
                            "name": "get_forecast",
                            "description": "Tomorrow's weather forecast for a city",
                            "parameters": {
                                "type": "object",
                                "properties": {"city": {"type": "string"}},
                                "required": ["city"],
                                "additionalProperties": False,
                            },
                            "strict": True,
                        }
                    ],
                    "tool_choice": {"type": "function", "name": "get_forecast"},
                },
                {
                    # The call's result sent back (the call echoed, as a client keeps the conversation).
                    "model": EXAMPLE_MODEL,
                    "input": [
                        {"role": "user", "content": "Will there be dew in Kyoto tomorrow?"},
                        {
                            "type": "function_call",
                            "call_id": "call_0123456789abcdef01234567",
                            "name": "get_forecast",
                            "arguments": '{"city":"Kyoto"}',
                        },
                        {
                            "type": "function_call_output",
                            "call_id": "call_0123456789abcdef01234567",
                            "output": "Dew likely before dawn, 4 C.",
                        },
                    ],
                },
            ]
        }
    )

    model: WireText = Field(min_length=1, max_length=MAX_MODEL_NAME_CHARS)
    input: PromptText | Annotated[list[InputItem], Field(min_length=1)] = Field(
        description="The user's text, or the conversation as message items."
    )
    instructions: WireText | None = Field(
        None, description="The system message, not carried over to follow-ups through `previous_response_id`."
    )
    previous_response_id: WireText | None = Field(
        None,
        min_length=1,
        max_length=MAX_RESPONSE_ID_CHARS,
        description="Continue a stored response of this API key: its input and output come before `input`.",
    )
    max_output_tokens: MaxTokens | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_logprobs: int | None = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description="The most likely tokens to list at each output position."
    )
    include: list[Includable] | None = Field(
        None,
        description=f"`{LOGPROBS_INCLUDE}` returns each output token's log probability; the other values name "
        "data of output items this deployment does not produce, and include nothing.",
    )
    store: bool | None = Field(
        None, description="Keep the response (retrievable, continuable, rated by feedback); default: the deployment's."
    )
    stream: bool | None = Field(None, description="Stream the response as the Responses API's server-sent events.")
    stream_options: ResponsesStreamOptions | None = None
    metadata: Metadata | None = Field(
        None, description="Tags stored with the response and carried into the datasets built from its feedback."
    )
    user: WireText | None = Field(None, max_length=256)
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    tools: list[FunctionToolItem] | None = Field(
        None,
        max_length=MAX_TOOLS,
        description=f"Functions the model may call (at most {MAX_TOOLS}, names unique). Built-in tools are not served.",
    )
    tool_choice: ResponsesToolChoice | None = Field(
        None,
        description="`none`: a text answer, the tools not shown to the model; `auto` (the default): the model "
        "decides; `required`: at least one call; a named function: exactly one call of it. Forced calls "
        "(`required`, named) are made by constrained decoding, so their arguments match the function's "
        "`parameters`. A 400 on a model whose engine cannot do what is asked.",
    )
    parallel_tool_calls: bool | None = Field(
        None, description="Whether the model may make several calls in one response (null: true); false: at most one."
    )

    @property
    def logprobs(self) -> bool:
        """Log probabilities are asked for: by `include`, or by a `top_logprobs` above 0."""
        return LOGPROBS_INCLUDE in (self.include or ()) or bool(self.top_logprobs)

    def tool_settings(self) -> dict[str, Any]:
        """`tools`, `tool_choice` and `parallel_tool_calls` as the response echoes them."""
        return tool_settings(self.tools, self.tool_choice, self.parallel_tool_calls)

    @property
    def asks_for_tools(self) -> bool:
        """Whether the request says anything about tools (then its response is stored with its tool settings)."""
        return bool(self.tools) or self.tool_choice is not None or self.parallel_tool_calls is not None

    def chat_messages(self, previous: CompletionRecord | None) -> list[dict[str, Any]]:
        """The chat messages: the instructions, the previous response's conversation (its messages without its
        instructions, then its output), then `input` (see `with_items`)."""
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.instructions}] if self.instructions else []
        if previous is not None:
            messages.extend(history(previous))
        if isinstance(self.input, str):
            messages.append({"role": "user", "content": self.input})
            return with_items(messages, [])
        return with_items(messages, self.input)

    def chat_request(self, previous: CompletionRecord | None) -> ChatCompletionRequest:
        """The chat completion this response runs as (`chat_messages`, the tools, the sampling)."""
        return ChatCompletionRequest.model_validate(
            {
                "model": self.model,
                "messages": self.chat_messages(previous),
                "max_completion_tokens": self.max_output_tokens,
                "temperature": self.temperature,
                "top_p": self.top_p,
                "logprobs": self.logprobs,
                "top_logprobs": self.top_logprobs if self.logprobs else None,
                "store": self.store,
                "stream": bool(self.stream),
                "metadata": self.metadata,
                "user": self.user,
                "response_format": self.text.format.response_format() if self.text and self.text.format else None,
                **chat_tools(self.tools, self.tool_choice, self.parallel_tool_calls),
            }
        )


def history(record: CompletionRecord) -> list[dict[str, Any]]:
    """The conversation of a stored response, as a follow-up continues it (chat messages): its messages without
    the instructions that led them, then its output as the assistant's turn, with the calls it made."""
    messages = [chat_turn(stored) for stored in record.messages or []]
    if record.instructions is not None and messages:
        messages = messages[1:]
    choice = record.choice(0)
    return [*messages, output_turn(choice.text, choice.tool_calls) if choice else {"role": "assistant", "content": ""}]
