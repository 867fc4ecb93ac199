"""The engine interface every worker engine implements."""

from __future__ import annotations

import abc
import time
import uuid
from collections.abc import AsyncGenerator

from prometheus_client import CollectorRegistry

from bailu.common.errors import InvalidRequest, ModelNotFound
from bailu.common.types import (
    ChatMessage,
    EngineCapabilities,
    GenerateChunk,
    GenerateRequest,
    ModelCard,
    SamplingParams,
)


class Engine(abc.ABC):
    """A text-generation engine for one base model and its LoRA adapters.

    Lifecycle: `start()` loads the model (it may take minutes), `warmup()`
    runs one short generation, then `generate()` serves requests until
    `close()`. All methods are called from the worker's event loop; blocking
    work belongs in threads.

    Streaming contract of `generate()`:
    - It is an async generator of `GenerateChunk`s in output order. Every chunk
      but the last has `finish_reason=None`; the last has `finish_reason` and
      `usage` set, and nothing follows it.
    - Errors about the request itself (unknown adapter: `ModelNotFound`; a
      prompt longer than the context: `RequestTooLarge`; a bad parameter:
      `InvalidRequest`) are raised before the first chunk. Other failures raise
      a `BailuError` or any exception (reported as INTERNAL) at any point.
    - Cancellation: when the consumer stops early (it calls `aclose()` on the
      iterator, or the task consuming it is cancelled), the engine stops
      generating for this request promptly and frees what it held; other
      requests are unaffected.
    - The caller enforces admission control: at most `capacity` calls run at
      once.

    Health: `ready` is False while the engine cannot take requests (an engine
    server restarting after a crash or to load adapters), `alive` is False once
    it gave up (the worker should then be restarted). In-process engines are
    always both once started.
    """

    def __init__(self, model_name: str, max_model_len: int, default_max_tokens: int) -> None:
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.default_max_tokens = default_max_tokens
        self.adapters: dict[str, str] = {}

    @property
    @abc.abstractmethod
    def capacity(self) -> int:
        """How many requests this engine generates at once."""

    @property
    def kind(self) -> str:
        """The engine's name as the worker reports it (ListModels), e.g. "transformers" or "vllm"."""
        return type(self).__name__.removesuffix("Engine").lower()

    @property
    def capabilities(self) -> EngineCapabilities:
        """What this engine can do; the default is what the in-process engines (transformers, sim) can."""
        return EngineCapabilities()

    @property
    def continues_assistant(self) -> bool:
        """Whether a chat whose last message is the assistant's is continued from that message (a response
        prefix: `GenerateRequest.continues_assistant`); an engine without it refuses such requests (the servicer
        checks). The in-process engines render the message unclosed and generate on from it."""
        return False

    @property
    def ready(self) -> bool:
        """Whether the engine takes requests now (False while an engine server restarts)."""
        return True

    @property
    def alive(self) -> bool:
        """False once the engine failed for good (its server kept crashing): restart the worker."""
        return True

    def register_metrics(self, metrics_registry: CollectorRegistry) -> None:  # noqa: B027 - optional hook
        """Export the engine's own metrics (bailu_worker_engine_*) on the worker's metrics registry."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model; raises if it cannot be loaded."""

    @abc.abstractmethod
    def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerateChunk, None]:
        """Stream the completion of one validated request (see the class docstring)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Free the engine's resources."""

    async def warmup(self) -> None:
        """Run one short generation so that the first real request is not slow."""
        request = GenerateRequest(
            request_id=f"warmup-{uuid.uuid4().hex[:8]}",
            model=self.model_name,
            messages=(ChatMessage("user", "Write one word about the morning."),),
            sampling=SamplingParams(max_tokens=4, temperature=0.0),
            deadline=time.time() + 600,
        )
        async for _ in self.generate(request):
            pass

    def models(self) -> list[ModelCard]:
        """The base model, then the loaded adapters."""
        return [ModelCard(self.model_name, "base", "", self.max_model_len)] + [
            ModelCard(name, "adapter", self.model_name, self.max_model_len) for name in sorted(self.adapters)
        ]

    def _card(self, name: str) -> ModelCard:
        """The card of loaded adapter (or base model) `name`."""
        return next(card for card in self.models() if card.name == name)

    def check_target(self, request: GenerateRequest) -> None:
        """Raise `ModelNotFound` unless this engine serves the requested model and adapter."""
        if request.model != self.model_name:
            raise ModelNotFound(f"model '{request.model}' is not served by this worker", param="model")
        if request.adapter and request.adapter not in self.adapters:
            raise ModelNotFound(f"adapter '{request.adapter}' is not loaded", param="model")

    async def load_adapter(self, name: str, path: str) -> ModelCard:
        """Make adapter `name` (a PEFT directory at `path`) available; idempotent for the same path."""
        raise InvalidRequest(f"the {type(self).__name__} engine does not serve LoRA adapters", param="name")

    async def unload_adapter(self, name: str) -> None:
        """Forget adapter `name`; later requests for it fail with `ModelNotFound`."""
        if self.adapters.pop(name, None) is None:
            raise ModelNotFound(f"adapter '{name}' is not loaded", param="name")

    def max_new_tokens(self, request: GenerateRequest, prompt_tokens: int) -> int:
        """The request's max_tokens (or the default), capped by what is left of the context."""
        wanted = request.sampling.max_tokens or self.default_max_tokens
        return max(1, min(wanted, self.max_model_len - prompt_tokens))
