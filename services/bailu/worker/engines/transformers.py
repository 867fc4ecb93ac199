"""The `transformers` engine: ms-swift's TransformersEngine on CPU (or a GPU).

Serving goes through ms-swift so that prompts are built with the same chat
templates as training; LoRA adapters are selected per request with
ms-swift's `AdapterRequest`. ms-swift batches requests that share sampling
parameters and adapter (`max_batch_size`).

Cancellation: every request's row in a batch is tagged with a private id
(carried in `InferRequest.objects`); a logits processor installed through
ms-swift's `pre_infer_hook` forces end-of-sequence on rows whose request is
no longer live, so a cancelled request stops generating at the next token
without disturbing the other rows of its batch.

Log probabilities: a batch holding a request with `logprobs` also gets a `LogprobRecorder` (see
`token_logprobs.py`), and the template's `generate` is wrapped (on this engine's own template object) so that
the recorder sees every sampled token before ms-swift's streamer does. ms-swift's own `RequestConfig.logprobs`
is not used: it replaces the batch's logits processors, which would drop the cancellation above.

Structured outputs: a request with `json_schema` or `json_object` has its grammar compiled first (once per
schema, `json_constraint.py`), and its batch gets a `JsonConstraint` as its first logits processor: the
cancellation's forced end-of-sequence comes after it (and wins), and the log-probability recorder, last, sees
the constrained scores the sampler draws from.

Tools (`tool_calls.py` holds the rules): with tools active, the request's tools go to ms-swift as
`InferRequest.tools`, so that its agent template (the chat template's own, else `BAILU_WORKER_AGENT_TEMPLATE`)
writes them into the system prompt; calls and results in the history are rendered by the same template.
- Forced calls (required, a named function) are decoded under the grammar of `tool_calls.forced_schema`, in the
  same batch-safe way as `json_schema`. The JSON is not streamed as text: chunks carry token counts (and log
  probabilities) with empty text, and the last one the calls and finish reason `tool_calls`. If `max_tokens` cuts
  the JSON, the finish reason is `length` and there are no calls. Stop sequences do not apply to forced calls
  (they could only cut the JSON into something that does not parse).
- With tool_choice auto the model writes freely and ms-swift's agent template reads calls out of its output. The
  text is held back until the end, not streamed: until the output is complete, text may still turn out to be call
  markup (`<tool_call>...`), which must not reach the client; chunks carry token counts meanwhile, and the last ones
  the text before the call markup and the calls (`tool_calls.auto_reply`). Without tools, or with tool_choice none,
  text streams as always.

A trailing assistant message is a prefix to continue: ms-swift renders it without closing the turn, so the
model's output goes on from its last token (the reply holds only the continuation).
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from bailu.common.checkpoint import require_checkpoint
from bailu.common.errors import InternalError, InvalidRequest, ModelNotFound, RequestTooLarge
from bailu.common.logging import reclaim_logging
from bailu.common.types import (
    ChatMessage,
    FinishReason,
    GenerateChunk,
    GenerateRequest,
    ModelCard,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)
from bailu.worker.engines.adapters import engine_adapter_name
from bailu.worker.engines.base import Engine
from bailu.worker.engines.json_constraint import JsonConstraint, JsonGrammars
from bailu.worker.engines.stops import StopStringFilter
from bailu.worker.engines.token_logprobs import LogprobRecorder, LogprobSink, TeeStreamer, TokenText
from bailu.worker.engines.tool_calls import auto_reply, forced_calls, swift_messages, swift_tools
from bailu.worker.settings import WorkerSettings

log = logging.getLogger(__name__)

_ROW_TAG = "bailu_row"
# The key under which a batch's `LogprobRecorder` travels from the pre-infer hook to the wrapped `generate`.
_RECORDER_KEY = "bailu_logprob_recorder"
# A temperature below this is raised to it, as vLLM does (`_MAX_TEMP` in vllm/sampling_params.py), and so is a
# repetition penalty: the logits are divided by them in float32, where 1e-300 is 0, so a tinier one makes them
# inf; sampling then fails on NaN probabilities in ms-swift's generate thread, and ms-swift's stream never ends:
# the request, and every batch after it, would hang.
MIN_TEMPERATURE = 1e-2
# The agent template (tool-call format) of a chat template that has none, such as chatml, unless
# BAILU_WORKER_AGENT_TEMPLATE names another: SmolLM2's own tool format is hermes' <tool_call> markup.
DEFAULT_AGENT_TEMPLATE = "hermes"
MIN_REPETITION_PENALTY = 1e-2


class _StopCancelledRows(LogitsProcessor):
    """Force end-of-sequence on the rows of a batch whose request was cancelled."""

    def __init__(self, tags: list[str], live: set[str], eos_token_id: int) -> None:
        self.tags = tags
        self.live = live
        self.eos_token_id = eos_token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row, tag in enumerate(self.tags):
            if tag not in self.live and row < scores.shape[0]:
                scores[row, :] = -float("inf")
                scores[row, self.eos_token_id] = 0.0
        return scores


class TransformersEngine(Engine):
    def __init__(
        self,
        model_name: str,
        model_path: Path,
        *,
        model_type: str,
        template: str,
        agent_template: str = "",
        max_model_len: int,
        default_max_tokens: int,
        max_batch_size: int,
        batch_wait_s: float = 0.0,
        torch_threads: int = 0,
    ) -> None:
        super().__init__(model_name, max_model_len, default_max_tokens)
        self.model_path = model_path
        self.model_type = model_type
        self.template_type = template
        self.agent_template = agent_template
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self._window: asyncio.Event | None = None
        self._window_size = 0
        self.torch_threads = torch_threads
        self._swift: Any = None
        self._eos_token_id = 0
        # Tags of requests still wanted: changed on the event loop only, read by ms-swift's generate thread.
        self._live: set[str] = set()
        # Tags of live requests that asked for log probabilities, and where their entries go.
        self._logprob_sinks: dict[str, LogprobSink] = {}
        self._token_text: TokenText | None = None
        # Tags of live requests with a JSON constraint, and its compiled grammar.
        self._grammar_of: dict[str, Any] = {}
        self._grammars: JsonGrammars | None = None

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> TransformersEngine:
        if settings.model_path is None:
            raise ValueError("BAILU_WORKER_MODEL_PATH must name a model directory for the transformers engine")
        return cls(
            settings.model_name,
            settings.model_path,
            model_type=settings.model_type,
            template=settings.template,
            agent_template=settings.agent_template,
            max_model_len=settings.max_model_len,
            default_max_tokens=settings.default_max_tokens,
            max_batch_size=settings.max_batch_size,
            batch_wait_s=settings.batch_wait_ms / 1000,
            torch_threads=settings.torch_threads,
        )

    @property
    def capacity(self) -> int:
        return self.max_batch_size

    @property
    def continues_assistant(self) -> bool:
        return True

    async def start(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        require_checkpoint(self.model_path)
        # Local files only: the hubs are never contacted.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("USE_HF", "1")
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        from swift.infer_engine import TransformersEngine as SwiftTransformersEngine

        reclaim_logging("swift", "modelscope")
        self._swift = SwiftTransformersEngine(
            str(self.model_path),
            model_type=self.model_type,
            template_type=self.template_type,
            max_batch_size=self.max_batch_size,
            use_hf=True,
        )
        self._swift.max_model_len = self.max_model_len
        self._swift.template.max_length = self.max_model_len
        self._use_agent_template(self._swift.template)
        eos = self._swift.tokenizer.eos_token_id
        self._eos_token_id = int(eos[0] if isinstance(eos, list) else eos)
        self._token_text = TokenText(self._swift.tokenizer)
        config = self._swift.model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        vocab_size = int(getattr(text_config, "vocab_size", 0) or len(self._swift.tokenizer))
        self._grammars = JsonGrammars(self._swift.tokenizer, vocab_size, threads=max(1, self.torch_threads or 1))
        self._tap_generate(self._swift.template)
        log.info("model loaded", extra={"model_path": str(self.model_path), "model": self.model_name})

    def _use_agent_template(self, template: Any) -> None:
        """Give ms-swift's `template` the configured agent template unless its chat template names its own (ms-swift
        takes one only when the template is built, which its engine does for us: its `_agent_template` is set)."""
        from swift.agent_template import agent_template_map

        if self.agent_template and self.agent_template not in agent_template_map:
            raise ValueError(
                f"BAILU_WORKER_AGENT_TEMPLATE '{self.agent_template}' is not one of ms-swift's agent templates: "
                f"{', '.join(sorted(agent_template_map))}"
            )
        if not hasattr(template, "_agent_template"):
            raise RuntimeError("this ms-swift version's Template has no _agent_template: update the engine")
        if template._agent_template is None:
            template._agent_template = self.agent_template or DEFAULT_AGENT_TEMPLATE
        log.info("agent template", extra={"agent_template": template._agent_template})

    def _infer_request(self, request: GenerateRequest, tag: str) -> Any:
        from swift.infer_engine import InferRequest

        return InferRequest(
            messages=swift_messages(request.as_messages()),
            tools=swift_tools(request.tools),
            objects={_ROW_TAG: [tag]},
        )

    def _count_prompt_tokens(self, request: GenerateRequest) -> int:
        from swift.template.base import MaxLengthError

        try:
            encoded = self._swift.template.encode(self._infer_request(request, "count"))
        except MaxLengthError as exc:
            raise RequestTooLarge(
                f"the prompt is longer than this model's context of {self.max_model_len} tokens",
                param=request.input_param,
            ) from exc
        return len(encoded["input_ids"])

    def _pre_infer_hook(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        tags = [inputs.objects.get(_ROW_TAG, [""])[0] for inputs in kwargs["template_inputs"]]
        processors: list[LogitsProcessor] = []
        grammars = {row: self._grammar_of[tag] for row, tag in enumerate(tags) if tag in self._grammar_of}
        if grammars and self._grammars is not None:
            # First: the cancellation below overrides its mask, and the recorder sees what it left.
            processors.append(JsonConstraint(grammars, self._grammars.vocab_size))
        processors.append(_StopCancelledRows(tags, self._live, self._eos_token_id))
        sinks = {row: self._logprob_sinks[tag] for row, tag in enumerate(tags) if tag in self._logprob_sinks}
        if sinks and self._token_text is not None:
            # Last, so that it sees the scores every other processor left: the ones the sampler draws from.
            recorder = LogprobRecorder(sinks, self._token_text)
            processors.append(recorder)
            kwargs["inputs"][_RECORDER_KEY] = recorder
        kwargs["inputs"]["logits_processor"] = LogitsProcessorList(processors)
        return kwargs

    @staticmethod
    def _tap_generate(template: Any) -> None:
        """Wrap `template.generate` (this instance only) to pass a batch's sampled tokens to its recorder."""
        plain = template.generate

        def generate(model: Any, *args: Any, **kwargs: Any) -> Any:
            recorder = kwargs.pop(_RECORDER_KEY, None)
            if recorder is not None and kwargs.get("streamer") is not None:
                kwargs["streamer"] = TeeStreamer(kwargs["streamer"], recorder)
            return plain(model, *args, **kwargs)

        template.generate = generate

    def _request_config(self, request: GenerateRequest, max_tokens: int) -> Any:
        """ms-swift's sampling parameters for `request` (requests with equal ones share batches)."""
        from swift.infer_engine import RequestConfig

        s = request.sampling
        temperature = s.temperature if not s.temperature else max(s.temperature, MIN_TEMPERATURE)  # 0: greedy
        penalty = s.repetition_penalty
        repetition_penalty = None if penalty is None else max(penalty, MIN_REPETITION_PENALTY)
        return RequestConfig(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=s.top_p,
            top_k=s.top_k or None,
            repetition_penalty=repetition_penalty,
            presence_penalty=s.presence_penalty or 0.0,
            frequency_penalty=s.frequency_penalty or 0.0,
            stop=[] if request.tools.forced else list(s.stop),
            seed=s.seed,
            stream=True,
        )

    async def _gather(self) -> None:
        """While the engine is idle, hold requests up to `batch_wait_s` (or until a batch is full) so that
        requests arriving together start in one batch: ms-swift runs a batch to completion, and a request
        that misses it waits for all of it. A request arriving while a batch runs is submitted at once: it
        waits for that batch anyway and then starts with everything that queued meanwhile."""
        if self.batch_wait_s <= 0 or self.max_batch_size == 1 or self._live:
            return
        if self._window is None or self._window.is_set():
            self._window, self._window_size = asyncio.Event(), 0
            asyncio.get_running_loop().call_later(self.batch_wait_s, self._window.set)
        window = self._window
        self._window_size += 1
        if self._window_size >= self.max_batch_size:
            window.set()
        await window.wait()

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerateChunk, None]:
        from swift.infer_engine import AdapterRequest

        template_meta = self._swift.template.template_meta
        check_turns(request.as_messages(), system_allowed=template_meta.support_system)
        prompt_tokens = await asyncio.to_thread(self._count_prompt_tokens, request)
        if prompt_tokens >= self.max_model_len:
            raise RequestTooLarge(
                f"the prompt has {prompt_tokens} tokens; this model's context is {self.max_model_len}",
                param=request.input_param,
            )
        max_tokens = self.max_new_tokens(request, prompt_tokens)
        assert self._grammars is not None
        use = request.tools
        grammar: Any = None  # None: unconstrained
        if use.forced:
            grammar = await asyncio.to_thread(self._grammars.compile_tools, use)
        else:
            grammar = await asyncio.to_thread(self._grammars.compile, request.sampling)
        # Checked again: the adapter may have been unloaded while the request waited for a slot.
        self.check_target(request)
        adapter_request = None
        if request.adapter:
            # ms-swift caches adapters by name: a new path gets a new internal name.
            path = self.adapters[request.adapter]
            adapter_request = AdapterRequest(engine_adapter_name(request.adapter, path), path)
        await self._gather()
        tag = uuid.uuid4().hex
        self._live.add(tag)
        if grammar is not None:
            self._grammar_of[tag] = grammar
        sink = None
        if request.sampling.logprobs:
            sink = self._logprob_sinks[tag] = LogprobSink(request.sampling.top_logprobs)

        def logprobs(count: int) -> tuple[TokenLogprob, ...]:
            return sink.take(count) if sink is not None else ()

        stops = StopStringFilter(() if use.forced else request.sampling.stop)
        # With tools active the output is held until the end (see the module docstring).
        held: list[str] | None = [] if use.active else None
        served = request.reported_model
        completion_tokens = 0
        try:
            stream = await self._swift.infer_async(
                self._infer_request(request, tag),
                self._request_config(request, max_tokens),
                adapter_request=adapter_request,
                pre_infer_hook=self._pre_infer_hook,
            )
            async for response in stream:
                choice = response.choices[0]
                tokens = response.usage.completion_tokens - completion_tokens
                completion_tokens = response.usage.completion_tokens
                text = stops.feed(choice.delta.content or "")
                done = choice.finish_reason is not None or stops.stopped
                if done:
                    text += stops.flush()
                if held is not None:
                    held.append(text)
                    text = ""
                if not done:
                    if text or tokens:
                        yield GenerateChunk(text, tokens, served_model=served, logprobs=logprobs(tokens))
                    continue
                stopped = stops.stopped or choice.finish_reason == "stop"
                finish = FinishReason.STOP if stopped else FinishReason.LENGTH
                calls: tuple[ToolCallDelta, ...] = ()
                if held is not None:
                    text, calls, finish = self._tool_reply(request, "".join(held), finish)
                if text:
                    yield GenerateChunk(text, tokens, served_model=served, logprobs=logprobs(tokens))
                    tokens = 0
                usage = Usage(prompt_tokens, completion_tokens)
                yield GenerateChunk("", tokens, finish, usage, served, logprobs(tokens), calls)
                return
        finally:
            self._live.discard(tag)
            self._logprob_sinks.pop(tag, None)
            self._grammar_of.pop(tag, None)

    def _tool_reply(
        self, request: GenerateRequest, output: str, finish: FinishReason
    ) -> tuple[str, tuple[ToolCallDelta, ...], FinishReason]:
        """The text, calls and finish reason of a request with tools active, from its whole output.

        Forced calls: the output is the constrained JSON, read back as the calls (finish reason `tool_calls`);
        JSON that `max_tokens` cut short gives no calls and finish reason `length`. Auto: `tool_calls.auto_reply`
        with this model's agent template."""
        use = request.tools
        if not use.forced:
            return auto_reply(output, finish, use, self._swift.template.agent_template)
        try:
            return "", forced_calls(use, output), FinishReason.TOOL_CALLS
        except ValueError as exc:
            if finish == FinishReason.LENGTH:
                return "", (), finish
            raise InternalError("the constrained output is not the forced calls' JSON") from exc

    async def load_adapter(self, name: str, path: str) -> ModelCard:
        if self.adapters.get(name) == path:
            return self._card(name)
        config = Path(path) / "adapter_config.json"
        if not config.is_file():
            raise ModelNotFound(f"no LoRA adapter at '{path}' (adapter_config.json missing)", param="path")
        try:
            from peft import PeftConfig

            await asyncio.to_thread(PeftConfig.from_pretrained, path)
        except (ValueError, OSError) as exc:
            raise InvalidRequest(f"'{path}' is not a valid LoRA adapter: {exc}", param="path") from exc
        self.adapters[name] = path
        return self._card(name)


def check_turns(messages: Sequence[ChatMessage], *, system_allowed: bool) -> None:
    """Raise `InvalidRequest` unless ms-swift's templates can render `messages`: an optional system message
    first (if the template has a system slot), then user and assistant turns alternating (it may open with
    the assistant). An assistant turn with tool calls may be followed by tool messages (the results), which
    the template renders as the query of the assistant's next turn: after them comes the assistant, never
    the user. The last message is the user's or a tool's, or the assistant's (without calls) as a prefix to
    continue. ms-swift checks this with bare `assert`s deep in `Template.encode`, which would be an internal
    error."""
    turns = list(messages)
    if turns and turns[0].role == "system":
        if not system_allowed:
            raise InvalidRequest("this model's chat template has no system message", param="messages[0].role")
        turns.pop(0)
    if not turns:
        raise InvalidRequest("messages must contain a user message after the system message", param="messages")
    offset = len(messages) - len(turns)
    previous = ""  # the role before, "calls" for an assistant turn with tool calls
    for i, turn in enumerate(turns):
        param = f"messages[{i + offset}].role"
        if turn.role == "tool":
            if previous not in ("calls", "tool"):
                raise InvalidRequest(
                    f"messages[{i + offset}] is a tool result without a call: a tool message follows an assistant "
                    "message with tool_calls, or another tool message",
                    param=param,
                )
        elif turn.role == "user" and previous == "tool":
            raise InvalidRequest(
                f"messages[{i + offset}].role must be 'assistant': this engine's chat template renders tool results "
                "as the query the assistant answers next, so the assistant's answer comes before another user message",
                param=param,
            )
        elif turn.role == "system" or turn.role == previous or (turn.role == "assistant" and previous == "calls"):
            expected = {"user": "assistant", "tool": "assistant", "calls": "tool"}.get(previous, "user")
            raise InvalidRequest(
                f"messages[{i + offset}].role must be '{expected}': this engine takes one system message first, "
                "then user and assistant messages alternating (tool results after an assistant's tool calls)",
                param=param,
            )
        previous = "calls" if turn.role == "assistant" and turn.tool_calls else turn.role
    if previous == "calls":
        raise InvalidRequest(
            "the last message holds tool calls: send their results as tool messages, or continue without calls",
            param=f"messages[{len(messages) - 1}].tool_calls",
        )
