"""A synthetic engine with configurable speed, for load and autoscaling tests.

It produces words from a fixed text at a set pace. It is a tool for
measuring the platform around the model, never a stand-in for a model in a
test that claims to test generation.

Adapters are checked as the real engine checks them (a directory holding
`adapter_config.json`, which must be JSON), so that a missing version fails the
same way. A request to an adapter starts with the adapter's fingerprint (the
first 8 hex digits of the SHA-256 of its `adapter_config.json`) as its first
word, so that tests can tell which version actually generated a text.

Log probabilities (`SamplingParams.logprobs`) are synthetic but consistent: each word is one token whose
log probability is a deterministic function of the word and its position, in [-1, -0.01]; its alternatives
are other words of the text, each less likely than the one before and than the emitted word, so that the
probabilities never add up to more than 1 and the emitted word is always the most likely.

Structured outputs (`SamplingParams.json_object`, `json_schema`): the reply is one deterministic JSON instance
of the schema (see `sim_json.py` for the keywords it honours), streamed a token (a word, a space run or a
punctuation mark) at a time at the same pace, the whole document whatever `sim_output_tokens` says; only
`max_tokens` cuts it short (finish reason `length`, the JSON then incomplete, as with a real engine).

Tools (`sim_calls`), deterministic:
- forced calls (tool_choice required or a named function): the sim's instance of `tool_calls.forced_schema` (so
  the arguments validate wherever `sim_json` honours the schema): a named function is called once; required calls
  the first tool, once;
- auto: if the last message is the user's and names tools (their names appear in its text), the sim calls them
  (arguments: the instance of each one's parameters schema), in the tools' order, only the first with
  `parallel_tool_calls` false; otherwise, and always after a tool result, it answers in text as without tools.
Calls are paced like text, a token per piece of their JSON (`[{"name": ..., "arguments": ...}]`) sent as a chunk
with empty text, and arrive whole on the last chunk with finish reason `tool_calls`; `max_tokens` cutting that JSON
gives finish reason `length` and no calls.

A trailing assistant message is continued: the text goes on as if that message's words were the sim's first
words (it starts that many words further into its text).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections.abc import AsyncGenerator
from typing import Any

from bailu.common.errors import RequestTooLarge
from bailu.common.types import (
    TOOL_FUNCTION,
    FinishReason,
    GenerateChunk,
    GenerateRequest,
    ModelCard,
    SamplingParams,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
    Usage,
)
from bailu.worker.engines.adapters import read_adapter_config
from bailu.worker.engines.base import Engine
from bailu.worker.engines.sim_json import json_instance, json_object_instance, json_tokens
from bailu.worker.engines.tool_calls import call_deltas, forced_schema
from bailu.worker.settings import WorkerSettings

_TEXT = [
    "white",
    "dew",
    "settles",
    "on",
    "the",
    "grass",
    "at",
    "dawn",
    "the",
    "light",
    "is",
    "thin",
    "and",
    "gold",
    "a",
    "heron",
    "lifts",
    "from",
    "the",
    "reeds",
    "and",
    "the",
    "river",
    "carries",
    "the",
    "last",
    "of",
    "the",
    "night",
    "away",
]


class SimEngine(Engine):
    def __init__(
        self,
        model_name: str,
        *,
        ttft_s: float,
        itl_s: float,
        output_tokens: int,
        capacity: int,
        max_model_len: int = 4096,
        default_max_tokens: int = 256,
        load_s: float = 0.0,
    ) -> None:
        super().__init__(model_name, max_model_len, default_max_tokens)
        self.ttft_s = ttft_s
        self.itl_s = itl_s
        self.output_tokens = output_tokens
        self._capacity = capacity
        self.load_s = load_s
        self.active = 0  # generations in progress, observable by tests
        self.tokens_generated = 0
        self._sampled = 0
        self._fingerprints: dict[str, str] = {}

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> SimEngine:
        return cls(
            settings.model_name,
            ttft_s=settings.sim_ttft_ms / 1000,
            itl_s=settings.sim_itl_ms / 1000,
            output_tokens=settings.sim_output_tokens,
            capacity=settings.max_batch_size,
            max_model_len=settings.max_model_len,
            default_max_tokens=settings.default_max_tokens,
            load_s=settings.sim_load_s,
        )

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def continues_assistant(self) -> bool:
        return True

    async def start(self) -> None:
        await asyncio.sleep(self.load_s)

    async def load_adapter(self, name: str, path: str) -> ModelCard:
        self._fingerprints[name] = await asyncio.to_thread(adapter_fingerprint, path)
        self.adapters[name] = path
        return self._card(name)

    async def unload_adapter(self, name: str) -> None:
        await super().unload_adapter(name)
        self._fingerprints.pop(name, None)

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerateChunk, None]:
        text = " ".join(m.content for m in request.as_messages())
        prompt_tokens = max(1, len(text.split()))
        if prompt_tokens >= self.max_model_len:
            raise RequestTooLarge(
                f"the prompt has {prompt_tokens} tokens; this model accepts at most {self.max_model_len - 1}",
                param=request.input_param,
            )
        limit = self.max_new_tokens(request, prompt_tokens)
        n = min(self.output_tokens, limit)
        served = request.reported_model
        prefix: list[str] = []
        # Checked again: the adapter may have been unloaded while the request waited for a slot.
        self.check_target(request)
        if request.adapter:
            prefix.append(self._fingerprints[request.adapter])
        # Greedy requests always get the same text; sampled ones (temperature > 0) each start further
        # into it, so that candidates differ as they would with a real model.
        offset = 0
        if request.sampling.temperature:
            self._sampled += 1
            offset = self._sampled
        # Continuing the assistant's message: its words count as the sim's first ones.
        spaced = False
        if request.continues_assistant:
            continued = request.as_messages()[-1].content
            offset += len(continued.split())
            spaced = bool(continued) and not continued[-1].isspace()
        words = [*prefix, *(_TEXT[(offset + i) % len(_TEXT)] for i in range(len(_TEXT)))]
        calls = sim_calls(request, words)
        # Structured outputs and calls: the whole JSON document (within max_tokens), whatever sim_output_tokens says.
        document = structured_tokens(request.sampling, words) if calls is None else calls_tokens(calls)
        truncated = False
        if document is not None:
            truncated = len(document) > limit
            document = document[:limit]
            n = len(document)
        self.active += 1
        try:
            start = time.monotonic()
            for i in range(n):
                # Sleep to an absolute schedule so that the pace holds under load.
                due = start + self.ttft_s + i * self.itl_s
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                self.tokens_generated += 1
                if document is not None:
                    token = document[i]
                else:
                    word = prefix[i] if i < len(prefix) else _TEXT[(offset + i - len(prefix)) % len(_TEXT)]
                    token = " " + word if i > 0 or spaced else word
                logprobs = (sim_logprob(token, i, request.sampling),) if request.sampling.logprobs else ()
                shown = token if calls is None else ""  # calls do not stream as text
                yield GenerateChunk(text=shown, token_count=1, served_model=served, logprobs=logprobs)
            length = truncated if document is not None else n == request.sampling.max_tokens
            finish = FinishReason.LENGTH if length else FinishReason.STOP
            deltas: tuple[ToolCallDelta, ...] = ()
            if calls is not None and not length:
                finish, deltas = FinishReason.TOOL_CALLS, call_deltas(calls)
            yield GenerateChunk("", 0, finish, Usage(prompt_tokens, n), served, tool_calls=deltas)
        finally:
            self.active -= 1


def sim_calls(request: GenerateRequest, words: list[str]) -> list[tuple[str, Any]] | None:
    """The calls `(name, arguments)` the sim makes for `request` (see the module docstring); None: it answers in
    text."""
    use = request.tools
    if use.forced:
        value = json_instance(forced_schema(use), words)
        if use.choice == TOOL_FUNCTION:
            return [(use.function, value)]
        return [(call["name"], call["arguments"]) for call in value]
    last = request.as_messages()[-1]
    if not use.active or last.role != "user":
        return None
    named = [tool for tool in use.tools if tool.name in last.content]
    if not named:
        return None
    if not use.parallel:
        named = named[:1]
    return [(tool.name, json_instance(tool.parameters_schema, words)) for tool in named]


def calls_tokens(calls: list[tuple[str, Any]]) -> list[str]:
    """The tokens the sim spends on `calls`: the pieces of their JSON."""
    return json_tokens([{"name": name, "arguments": arguments} for name, arguments in calls])


def structured_tokens(sampling: SamplingParams, words: list[str]) -> list[str] | None:
    """The tokens of the sim's JSON reply to a constrained request (`sim_json`); None when unconstrained."""
    if sampling.json_schema:
        return json_tokens(json_instance(json.loads(sampling.json_schema), words))
    if sampling.json_object:
        return json_tokens(json_object_instance(words))
    return None


def sim_logprob(token: str, position: int, sampling: SamplingParams) -> TokenLogprob:
    """The synthetic log probability of `token` at `position` (see the module docstring)."""
    digest = hashlib.sha256(f"{position}:{token}".encode()).digest()
    logprob = -0.01 - 0.99 * digest[0] / 255
    spaced = token.startswith(" ")
    alternatives = [w for w in dict.fromkeys(_TEXT) if w != token.strip()]
    start = digest[1] % len(alternatives)
    top = [TopLogprob(token, logprob, token.encode())]
    rest = math.log1p(-math.exp(logprob))  # the probability mass left to the other tokens
    for k in range(max(0, sampling.top_logprobs - 1)):
        other = (" " if spaced else "") + alternatives[(start + k) % len(alternatives)]
        # Halving shares of the rest add up to less than it; the first, rest / 2, is below the emitted word's
        # probability, which is at least exp(-1) > 1/3.
        top.append(TopLogprob(other, rest - (k + 1) * math.log(2), other.encode()))
    return TokenLogprob(token, logprob, token.encode(), tuple(top[: sampling.top_logprobs]))


def adapter_fingerprint(path: str) -> str:
    """What the real engine checks before accepting an adapter, and the sim's stand-in for its weights."""
    data, _ = read_adapter_config(path)
    return hashlib.sha256(data).hexdigest()[:8]
