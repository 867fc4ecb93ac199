"""OpenAI request bodies, validated strictly: wrong types and unknown fields are 400s naming the field.

Every field of OpenAI's chat-completions and completions bodies is known: those served are declared on the
models below, the others in one table per body (`CHAT_FIELD_POLICY`, `COMPLETION_FIELD_POLICY`, and those of
a message and of `stream_options`; see `bailu.gateway.field_policy`), which accept them at their no-op values
(`null`, `[]`, the default) and refuse anything else as not supported. A field that becomes served leaves its
table for a declaration here. `null` is accepted for every optional field and means its default.

Every value is checked here, at the edge, against what the rest of the way can carry: each string is
`WireText` (`bailu.gateway.strict_body`: text that UTF-8, hence protobuf and Redis, can encode: no lone
surrogate such as the legal JSON `"\ud800"`), and each integer lies in the range its wire field holds
(`max_tokens` and `top_k` well inside uint32, `seed` in int64). A value that passes these models never fails
further on for its encoding.

Tools (`tools`, `tool_choice`, `parallel_tool_calls`, and in history assistant `tool_calls` and `tool` messages)
are OpenAI's function tools (their models: `bailu.gateway.tool_schemas`); what depends on several fields (a named
function among the tools, a forced call with a JSON `response_format`) is `ToolUse.validate`'s, when the gateway
builds the generation (a 400 all the same).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from bailu.common.errors import InvalidRequest
from bailu.common.types import (
    INT64_MAX,
    INT64_MIN,
    MAX_STOP_SEQUENCES,
    MAX_TOKENS_LIMIT,
    MAX_TOOLS,
    MAX_TOP_LOGPROBS,
    TOP_K_LIMIT,
    ChatMessage,
    SamplingParams,
    ToolCall,
    ToolUse,
)
from bailu.gateway.field_policy import FieldPolicy, Ignored, Unserved, not_supported, policy_model
from bailu.gateway.json_schemas import check_json_schema, schema_text
from bailu.gateway.strict_body import StrictBody, WireText, encodable, unicode_error
from bailu.gateway.tool_schemas import CallId, FunctionTool, MessageToolCall, ToolChoiceOption, tool_use

MAX_CANDIDATES = 8
# The model the documented request examples name (the one `make dev` serves).
EXAMPLE_MODEL = "smollm2-135m-instruct"
MAX_MODEL_NAME_CHARS = 256
# OpenAI's limits on `metadata`.
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
# Bounds on the strings that are accepted and ignored.
MAX_HINT_CHARS = 1024
MAX_SAFETY_IDENTIFIER_CHARS = 64
# OpenAI's bound on the legacy completions `logprobs` (alternatives per token).
MAX_COMPLETION_LOGPROBS = 5


def _null_is(default: object) -> BeforeValidator:
    """`null` read as the field's default (`n: null` is one candidate)."""
    return BeforeValidator(lambda value: default if value is None else value)


def _or_null(schema: dict[str, Any]) -> None:
    """The field's JSON Schema, with `null` also taken (for a field whose `null` means its default)."""
    inner = {k: schema.pop(k) for k in list(schema) if k not in ("default", "description", "title")}
    schema["anyOf"] = [inner, {"type": "null"}]


def _metadata_keys(value: object) -> object:
    """The key checks of `metadata` that pydantic would report under the key itself, worded for the field."""
    if not isinstance(value, dict):
        return value
    if len(value) > MAX_METADATA_PAIRS:
        raise PydanticCustomError(
            "too_long",
            "at most {limit} key-value pairs, not {count}",
            {"limit": MAX_METADATA_PAIRS, "count": len(value)},
        )
    for key in value:
        if not isinstance(key, str):
            continue
        try:
            key.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise unicode_error(exc, "a key has a ") from None
        if len(key) > MAX_METADATA_KEY_CHARS:
            raise PydanticCustomError(
                "string_too_long", "the key {key} is longer than {limit} characters",
                {"key": repr(key[:24] + "..."), "limit": MAX_METADATA_KEY_CHARS},
            )  # fmt: skip
    return value


Metadata = Annotated[
    dict[
        Annotated[str, Field(max_length=MAX_METADATA_KEY_CHARS), BeforeValidator(encodable)],
        Annotated[str, Field(max_length=MAX_METADATA_VALUE_CHARS), BeforeValidator(encodable)],
    ],
    Field(max_length=MAX_METADATA_PAIRS),
    BeforeValidator(_metadata_keys),
]
"""OpenAI's `metadata`: up to 16 string pairs (keys up to 64 characters, values up to 512)."""


class TextPart(StrictBody):
    type: Literal["text"]
    text: WireText


class UrlCitation(StrictBody):
    start_index: int
    end_index: int
    title: WireText
    url: WireText


class Annotation(StrictBody):
    type: Literal["url_citation"]
    url_citation: UrlCitation


# What an SDK echoes back of an assistant reply (`message.model_dump()`) besides its text.
MESSAGE_FIELD_POLICY: dict[str, FieldPolicy] = {
    "audio": Unserved("audio replies in history"),
    "function_call": Unserved("function calling (use tool_calls)"),
    "annotations": Ignored(list[Annotation], "an assistant reply's URL citations"),
}
ASSISTANT_FIELDS = ("refusal", "annotations")
# Roles OpenAI takes in history that need a feature this deployment does not serve.
UNSERVED_ROLES = {"function": "function results (role 'function'; use role 'tool')"}


class PromptCacheOptions(StrictBody):
    mode: Literal["implicit", "explicit"] | None = None
    ttl: Literal["30m"] | None = None


CHAT_FIELD_POLICY: dict[str, FieldPolicy] = {
    "audio": Unserved("audio output"),
    "function_call": Unserved("function calling", (None, "none", "auto")),
    "functions": Unserved("function calling", (None, [])),
    "logit_bias": Unserved("logit_bias", (None, {})),
    "modalities": Unserved("audio output", (None, ["text"])),
    "moderation": Unserved("moderation"),
    "prediction": Unserved("predicted outputs"),
    "prompt_cache_key": Ignored(
        Annotated[str, Field(max_length=MAX_HINT_CHARS), BeforeValidator(encodable)], "a prompt-cache hint"
    ),
    "prompt_cache_options": Ignored(PromptCacheOptions, "a prompt-cache hint"),
    "prompt_cache_retention": Ignored(Literal["in_memory", "24h"], "a prompt-cache hint"),
    "reasoning_effort": Unserved("reasoning effort", (None, "none")),
    "safety_identifier": Ignored(
        Annotated[str, Field(max_length=MAX_SAFETY_IDENTIFIER_CHARS), BeforeValidator(encodable)],
        "an end-user id for OpenAI's abuse checks",
    ),
    "service_tier": Unserved("service tiers", (None, "auto", "default")),
    "verbosity": Unserved("verbosity", (None, "medium")),
    "web_search_options": Unserved("web search"),
}
COMPLETION_FIELD_POLICY: dict[str, FieldPolicy] = {
    "best_of": Unserved("best_of (use n for candidates)", (None, 1)),
    "echo": Unserved("echo", (None, False)),
    "logit_bias": Unserved("logit_bias", (None, {})),
    "suffix": Unserved("suffix (insertion)", (None, "")),
}
STREAM_OPTIONS_FIELD_POLICY: dict[str, FieldPolicy] = {
    "include_obfuscation": Ignored(bool, "streams are not obfuscated"),
}

if TYPE_CHECKING:

    class _MessagePolicy(StrictBody): ...

    class _ChatPolicy(StrictBody): ...

    class _CompletionPolicy(StrictBody): ...

    class _StreamOptionsPolicy(StrictBody): ...

else:
    # Base classes with one field per table entry, built at import (mypy sees the empty classes above).
    _MessagePolicy = policy_model("MessageFieldPolicy", StrictBody, MESSAGE_FIELD_POLICY)
    _ChatPolicy = policy_model("ChatFieldPolicy", StrictBody, CHAT_FIELD_POLICY)
    _CompletionPolicy = policy_model("CompletionFieldPolicy", StrictBody, COMPLETION_FIELD_POLICY)
    _StreamOptionsPolicy = policy_model("StreamOptionsFieldPolicy", StrictBody, STREAM_OPTIONS_FIELD_POLICY)


class Message(_MessagePolicy):
    """One turn of `messages`. An assistant turn may be one of this API's replies echoed back as SDKs dump it
    (`refusal`, `annotations`, `audio`, `function_call` at their nulls, `tool_calls` null, empty or the calls
    it made); a `tool` turn is the result of one of those calls (`tool_call_id`)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: WireText | list[TextPart] | None = Field(
        None,
        description="Null or left out only on an assistant turn with `refusal` or `tool_calls` (as clients such as "
        "litellm send a call they echo back).",
    )
    name: WireText | None = None
    refusal: WireText | None = Field(None, description="An assistant turn's refusal: its text when `content` is null.")
    tool_calls: list[MessageToolCall] | None = Field(
        None, max_length=MAX_TOOLS, description="An assistant turn's function calls."
    )
    tool_call_id: CallId | None = Field(
        None, description="A tool turn's (required there): the `id` of the call whose result `content` is."
    )

    @field_validator("role", mode="before")
    @classmethod
    def _served_role(cls, role: object) -> object:
        if isinstance(role, str) and role in UNSERVED_ROLES:
            raise not_supported(UNSERVED_ROLES[role], "roles system, developer, user, assistant")
        return role

    @model_validator(mode="after")
    def _fits_the_role(self) -> Message:
        if self.role != "assistant":
            if self.content is None:
                raise PydanticCustomError("message_content", "a {role} message needs content", {"role": self.role})
            for name in ASSISTANT_FIELDS:
                if getattr(self, name) is not None:
                    raise _not_its_field(name, "an assistant", self.role)
            if self.tool_calls:
                raise _not_its_field("tool_calls", "an assistant", self.role)
        elif self.content is None and self.refusal is None and not self.tool_calls:
            raise PydanticCustomError("message_content", "an assistant message needs content, a refusal or tool_calls")
        if self.role == "tool" and self.tool_call_id is None:
            raise PydanticCustomError("message_content", "a tool message needs the tool_call_id of the call it answers")
        if self.role != "tool" and self.tool_call_id is not None:
            raise _not_its_field("tool_call_id", "a tool", self.role)
        return self

    def to_domain(self) -> ChatMessage:
        if self.content is None:
            text = self.refusal or ""
        else:
            text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in self.tool_calls or ())
        # "developer" is OpenAI's newer name for the system role.
        role = "system" if self.role == "developer" else self.role
        return ChatMessage(role, text, tool_calls=calls, tool_call_id=self.tool_call_id or "")


def _not_its_field(field: str, owner: str, role: str) -> PydanticCustomError:
    return PydanticCustomError(
        "message_field", "{field} is {owner} message's field, not a {role} message's",
        {"field": field, "owner": owner, "role": role},
    )  # fmt: skip


class JsonSchemaFormat(StrictBody):
    """OpenAI's `response_format.json_schema`."""

    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")] = Field(
        description="The format's name (letters, digits, `_` and `-`, up to 64): not used for decoding."
    )
    description: WireText | None = Field(None, max_length=MAX_HINT_CHARS, description="Accepted and ignored.")
    schema_: Annotated[dict[str, Any], AfterValidator(check_json_schema)] = Field(
        alias="schema",
        description="A JSON Schema (Draft 2020-12 unless `$schema` says otherwise; an object) that the output "
        "is decoded to match.",
    )
    strict: bool | None = Field(
        None, description="Accepted: the output always matches the schema (constrained decoding), strict or not."
    )


class ResponseFormat(StrictBody):
    """OpenAI's `response_format`: free text, a JSON object, or JSON matching a schema (structured outputs)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = Field(None, description="With type `json_schema` only.")

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise PydanticCustomError("response_format", "type json_schema needs json_schema")
        if self.type != "json_schema" and self.json_schema is not None:
            raise PydanticCustomError(
                "response_format", "json_schema goes with type json_schema, not {type}", {"type": self.type}
            )
        return self

    def constraint(self) -> tuple[bool, str]:
        """`SamplingParams.json_object` and `json_schema` for this format."""
        if self.json_schema is not None:
            return False, schema_text(self.json_schema.schema_)
        return self.type == "json_object", ""


class StreamOptions(_StreamOptionsPolicy):
    include_usage: Annotated[bool, _null_is(False)] = Field(False, json_schema_extra=_or_null)


StopText = Annotated[WireText, Field(min_length=1)]
Stop = StopText | Annotated[list[StopText], Field(max_length=MAX_STOP_SEQUENCES)] | None
MaxTokens = Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)]
PromptText = Annotated[WireText, Field(min_length=1)]


class _Sampling(StrictBody):
    model: WireText = Field(min_length=1, max_length=MAX_MODEL_NAME_CHARS)
    max_tokens: MaxTokens | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(
        None, ge=0, le=TOP_K_LIMIT, description="Extension: sample among the k most likely tokens."
    )
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, le=10, description="Extension, as in vLLM.")
    stop: Stop = None
    seed: int | None = Field(
        None, ge=INT64_MIN, le=INT64_MAX, description="Fixes the sampling; candidates (`n` > 1) get `seed + i`."
    )
    n: Annotated[int, Field(ge=1, le=MAX_CANDIDATES), _null_is(1)] = Field(
        1, description="How many candidates to generate (to compare them).", json_schema_extra=_or_null
    )
    store: bool | None = Field(
        None, description="Whether to keep this completion for feedback and training (default: the deployment's)."
    )
    stream: Annotated[bool, _null_is(False)] = Field(False, json_schema_extra=_or_null)
    stream_options: StreamOptions | None = None
    user: WireText | None = Field(None, max_length=256)
    metadata: Metadata | None = Field(
        None,
        description="Tags stored with the completion and carried into the datasets built from its feedback, to "
        "filter them by (up to 16 pairs; keys up to 64 characters, values up to 512). An extension on "
        "/v1/completions.",
    )

    def sampling(self, max_tokens: int | None) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        logprobs, top_logprobs = self.logprobs_wanted()
        json_object, json_schema = self.constraint()
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty,
            stop=stop,
            seed=self.seed,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            json_object=json_object,
            json_schema=json_schema,
        )

    def logprobs_wanted(self) -> tuple[bool, int]:
        """Whether log probabilities are asked for, and how many alternatives per token."""
        return False, 0

    def constraint(self) -> tuple[bool, str]:
        """The constraint on the output (`SamplingParams.json_object`, `json_schema`): none here."""
        return False, ""

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_ChatPolicy, _Sampling):
    """`POST /v1/chat/completions`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"model": EXAMPLE_MODEL, "messages": [{"role": "user", "content": "A short poem about dew"}]},
                {
                    "model": EXAMPLE_MODEL,
                    "messages": [{"role": "user", "content": "A haiku about autumn light"}],
                    "stream": True,
                    "stream_options": {"include_usage": True},
                    "n": 2,
                    "temperature": 0.8,
                    "max_tokens": 64,
                },
                {
                    # As SDKs that send every field do: the fields not served at their no-op values.
                    "model": EXAMPLE_MODEL,
                    "messages": [{"role": "user", "content": "A poem about frost"}],
                    "metadata": {"campaign": "autumn"},
                    "tools": [],
                    "tool_choice": "none",
                    "logit_bias": None,
                    "response_format": {"type": "text"},
                    "reasoning_effort": None,
                },
                {
                    # A forced call of a named function: its arguments match `parameters`.
                    "model": EXAMPLE_MODEL,
                    "messages": [{"role": "user", "content": "Will there be dew in Kyoto tomorrow?"}],
                    "tools": [
                        {
                            "type": "function",
                            "function": {
                                "name": "get_forecast",
                                "description": "Tomorrow's weather forecast for a city",
                                "parameters": {
                                    "type": "object",
                                    "properties": {"city": {"type": "string"}},
                                    "required": ["city"],
                                    "additionalProperties": False,
                                },
                            },
                        }
                    ],
                    "tool_choice": {"type": "function", "function": {"name": "get_forecast"}},
                },
            ]
        }
    )

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: MaxTokens | None = None
    logprobs: Annotated[bool, _null_is(False)] = Field(
        False, description="Return each output token's log probability.", json_schema_extra=_or_null
    )
    top_logprobs: int | None = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description="With `logprobs`, the most likely tokens to list at each position."
    )
    response_format: ResponseFormat | None = Field(
        None,
        description="Structured outputs: `json_object` (a JSON object) or `json_schema` (JSON valid against the "
        "schema), by constrained decoding; `text` (the default): free text. A 400 on a model whose engine cannot "
        "constrain its output.",
    )
    tools: list[FunctionTool] | None = Field(
        None, max_length=MAX_TOOLS, description=f"Functions the model may call (at most {MAX_TOOLS}, names unique)."
    )
    tool_choice: ToolChoiceOption | None = Field(
        None,
        description="`none`: a text answer, the tools not shown to the model; `auto` (the default with tools): the "
        "model decides; `required`: at least one call; a named function: exactly one call of it. Forced calls "
        "(`required`, named) are made by constrained decoding, so their arguments match the function's "
        "`parameters`. A 400 on a model whose engine cannot do what is asked.",
    )
    parallel_tool_calls: bool | None = Field(
        None, description="Whether the model may make several calls in one reply (null: true); false: at most one."
    )

    @field_validator("messages")
    @classmethod
    def _tool_results_answer_calls(cls, messages: list[Message]) -> list[Message]:
        """Each tool message answers a call that an earlier assistant message made, as OpenAI requires."""
        called: set[str] = set()
        for i, message in enumerate(messages):
            called.update(c.id for c in message.tool_calls or ())
            if message.role == "tool" and message.tool_call_id not in called:
                raise PydanticCustomError(
                    "tool_call_id", "messages[{i}] answers the tool call {id}, which no earlier assistant message made",
                    {"i": i, "id": json.dumps(message.tool_call_id)},
                )  # fmt: skip
        return messages

    def tool_use(self) -> ToolUse:
        """The tools offered and how they may be used (`GenerateRequest.tools`; see `tool_schemas.tool_use`)."""
        return tool_use(self.tools, self.tool_choice, self.parallel_tool_calls)

    def logprobs_wanted(self) -> tuple[bool, int]:
        return self.logprobs, self.top_logprobs or 0

    def constraint(self) -> tuple[bool, str]:
        return self.response_format.constraint() if self.response_format is not None else (False, "")

    def messages_domain(self) -> tuple[ChatMessage, ...]:
        return tuple(m.to_domain() for m in self.messages)

    def effective_max_tokens(self) -> int | None:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise InvalidRequest("give max_tokens or max_completion_tokens, not both", param="max_tokens")
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_CompletionPolicy, _Sampling):
    """`POST /v1/completions`."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": EXAMPLE_MODEL, "prompt": "White dew on the grass", "max_tokens": 16}]}
    )

    prompt: PromptText | Annotated[list[PromptText], Field(min_length=1, max_length=1)]
    logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_COMPLETION_LOGPROBS,
        description="Return each output token's log probability and this many most likely tokens at each position "
        "(0: the sampled token's alone).",
    )

    def logprobs_wanted(self) -> tuple[bool, int]:
        return self.logprobs is not None, self.logprobs or 0

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]
