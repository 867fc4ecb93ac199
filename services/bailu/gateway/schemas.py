"""OpenAI request bodies, validated strictly: wrong types and unknown fields are 400s naming the field."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from bailu.common.errors import InvalidRequest
from bailu.common.types import MAX_STOP_SEQUENCES, ChatMessage, SamplingParams

MAX_CANDIDATES = 8


class StrictBody(BaseModel):
    """A request body: wrong types and unknown fields are validation errors (400s naming the field)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(StrictBody):
    type: Literal["text"]
    text: str


class Message(StrictBody):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def to_domain(self) -> ChatMessage:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        # "developer" is OpenAI's newer name for the system role.
        return ChatMessage("system" if self.role == "developer" else self.role, text)


class StreamOptions(StrictBody):
    include_usage: bool = False


Stop = str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None


class _Sampling(StrictBody):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, description="Extension: sample among the k most likely tokens.")
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, le=10, description="Extension, as in vLLM.")
    stop: Stop = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=MAX_CANDIDATES, description="How many candidates to generate (to compare them).")
    store: bool | None = Field(
        None, description="Whether to keep this completion for feedback and training (default: the deployment's)."
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)

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

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def messages_domain(self) -> tuple[ChatMessage, ...]:
        return tuple(m.to_domain() for m in self.messages)

    def effective_max_tokens(self) -> int | None:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise InvalidRequest("give max_tokens or max_completion_tokens, not both", param="max_tokens")
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    """`POST /v1/completions`."""

    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    echo: Literal[False] = False

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]
