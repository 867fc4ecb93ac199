"""OpenAI request bodies, validated strictly: wrong types and unknown fields are 400s naming the field.

Every value is checked here, at the edge, against what the rest of the way can carry: each string is
`WireText` (text that UTF-8, hence protobuf and Redis, can encode: no lone surrogate such as the legal JSON
`"\ud800"`), and each integer lies in the range its wire field holds (`max_tokens` and `top_k` well inside
uint32, `seed` in int64). A value that passes these models never fails further on for its encoding.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from bailu.common.errors import InvalidRequest
from bailu.common.types import (
    INT64_MAX,
    INT64_MIN,
    MAX_STOP_SEQUENCES,
    MAX_TOKENS_LIMIT,
    TOP_K_LIMIT,
    ChatMessage,
    SamplingParams,
)

MAX_CANDIDATES = 8
# The model the documented request examples name (the one `make dev` serves).
EXAMPLE_MODEL = "smollm2-135m-instruct"
MAX_MODEL_NAME_CHARS = 256
# The pydantic error type of a string that is not valid Unicode (`bailu.gateway.errors` words its 400).
INVALID_UNICODE = "invalid_unicode"


def _encodable(value: object) -> object:
    """`value` unless it is a string UTF-8 cannot encode: then a validation error giving the position of its
    first lone surrogate. (Run before pydantic's own string checks, which reject such text without saying where.)"""
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PydanticCustomError(
            INVALID_UNICODE, "not valid Unicode text (lone surrogate at position {position})", {"position": exc.start}
        ) from None
    return value


def _boolean(value: object) -> object:
    """Only a JSON boolean (`Literal[False]` alone would take `0`, which equals `False` in Python)."""
    if not isinstance(value, bool):
        raise PydanticCustomError("bool_type", "Input should be a valid boolean")
    return value


WireText = Annotated[str, BeforeValidator(_encodable)]
"""A string that crosses the gRPC hop or goes to Redis: valid Unicode (a lone surrogate is a 400)."""


class StrictBody(BaseModel):
    """A request body: wrong types and unknown fields are validation errors (400s naming the field)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(StrictBody):
    type: Literal["text"]
    text: WireText


class Message(StrictBody):
    role: Literal["system", "developer", "user", "assistant"]
    content: WireText | list[TextPart]
    name: WireText | None = None

    def to_domain(self) -> ChatMessage:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        # "developer" is OpenAI's newer name for the system role.
        return ChatMessage("system" if self.role == "developer" else self.role, text)


class StreamOptions(StrictBody):
    include_usage: bool = False


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
    n: int = Field(1, ge=1, le=MAX_CANDIDATES, description="How many candidates to generate (to compare them).")
    store: bool | None = Field(
        None, description="Whether to keep this completion for feedback and training (default: the deployment's)."
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: WireText | None = Field(None, max_length=256)

    def sampling(self, max_tokens: int | None) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
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
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
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
            ]
        }
    )

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: MaxTokens | None = None

    def messages_domain(self) -> tuple[ChatMessage, ...]:
        return tuple(m.to_domain() for m in self.messages)

    def effective_max_tokens(self) -> int | None:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise InvalidRequest("give max_tokens or max_completion_tokens, not both", param="max_tokens")
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    """`POST /v1/completions`."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": EXAMPLE_MODEL, "prompt": "White dew on the grass", "max_tokens": 16}]}
    )

    prompt: PromptText | Annotated[list[PromptText], Field(min_length=1, max_length=1)]
    echo: Annotated[Literal[False], BeforeValidator(_boolean)] = False

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]
