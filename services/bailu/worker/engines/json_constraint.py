"""Structured outputs for the `transformers` engine: constrained decoding to JSON, with xgrammar.

A request with `SamplingParams.json_schema` (or `json_object`) has its schema compiled to a grammar over the
tokenizer's vocabulary (`JsonGrammars.compile`, on a worker thread before the request joins a batch, so that a
schema the library cannot compile is a 400 before the first token). The batch it joins gets a `JsonConstraint`
among its logits processors: one grammar matcher per constrained row, which at every step first advances by the
token the row sampled last (the last column of `input_ids`), then masks every token the grammar does not allow
next. Once the JSON is complete only the end-of-sequence token is allowed, so the output always parses and
validates against the schema, unless `max_tokens` (finish reason `length`), a stop string or a cancellation
cuts it short. Rows without a constraint are not touched: constrained and free requests share batches.

Why xgrammar (0.2.9) rather than outlines-core (0.2.14), both maintained and running on CPU:
- `json_object` is a context-free language (objects nest without bound): xgrammar compiles JSON Schema to a
  grammar with a pushdown automaton, where outlines-core compiles schemas to a regular expression and an index
  over the vocabulary, which can only approximate arbitrary JSON to a fixed depth; on SmolLM2's 49k-token
  vocabulary that index took ~10 s to build for `{"type": "object"}`, against ~7 ms for xgrammar's grammar
  (and ~9 ms against ~110 ms for a small schema);
- recursive schemas (`$ref` to an enclosing definition, as pydantic emits for trees) are grammars, not regular
  expressions;
- the token mask costs microseconds per step on CPU (a C++ matcher and bitmask), and xgrammar is the default
  structured-output backend of vLLM and SGLang, and LmDeploy's, so every engine of Bailu decodes a schema alike.
Its cost: on Linux x86_64 its package requires `triton` (about 1 GB installed; GPU images of torch carry it
already), which the CPU path never imports.

Grammars are compiled once per schema: xgrammar's compiler keeps compiled grammars in a cache bounded by
`cache_limit_bytes`, keyed by the schema text and options. The output's layout is fixed (no free whitespace:
`any_whitespace=False`, OpenAI's `, ` and `: ` separators), so that a small model cannot fill `max_tokens` with
blanks. `json_schema` is decoded in xgrammar's strict mode (properties the schema does not declare are not
generated, which keeps the output valid); `json_object` is any JSON object. Where xgrammar cannot represent a
keyword exactly it says so on stderr and decodes to a superset (a `oneOf` whose branches overlap is decoded as
`anyOf`; `allOf` of several alternatives is partial): such outputs parse but may not validate.

Forced tool calls (`tool_choice` required or a named function) are decoded the same way, to the schema
`tool_calls.forced_schema` builds from the tools (`JsonGrammars.compile_tools`).
"""

from __future__ import annotations

import json
import threading
from typing import Any

import torch
import xgrammar as xgr
from transformers import LogitsProcessor

from bailu.common.errors import InvalidRequest
from bailu.common.types import JSON_SCHEMA_PARAM, TOOL_FUNCTION, SamplingParams, ToolUse
from bailu.worker.engines.tool_calls import forced_schema_text

# The JSON Schema that `json_object` compiles to (with strict mode off: any properties, any values).
JSON_OBJECT_SCHEMA = '{"type": "object"}'
# The bound on the compiled grammars the cache keeps.
DEFAULT_CACHE_LIMIT_BYTES = 64 << 20


class JsonGrammars:
    """Compiles a request's JSON constraint for one tokenizer, each schema once (cached)."""

    def __init__(
        self, tokenizer: Any, vocab_size: int, *, cache_limit_bytes: int = DEFAULT_CACHE_LIMIT_BYTES, threads: int = 1
    ) -> None:
        """`vocab_size` is the width of the model's logits (it may exceed the tokenizer's vocabulary)."""
        self.vocab_size = vocab_size
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self._compiler = xgr.GrammarCompiler(info, max_threads=threads, cache_limit_bytes=cache_limit_bytes)
        self._lock = threading.Lock()

    @property
    def cache_size_bytes(self) -> int:
        """What the compiled grammars kept use."""
        return int(self._compiler.get_cache_size_bytes())

    def compile(self, sampling: SamplingParams) -> xgr.CompiledGrammar | None:
        """The grammar of `sampling`'s constraint (None without one); raises `InvalidRequest` naming the schema
        when the library cannot compile it (a keyword it does not support, a `$ref` to nothing). Blocking."""
        if not sampling.json_schema and not sampling.json_object:
            return None
        schema, strict = (sampling.json_schema, True) if sampling.json_schema else (JSON_OBJECT_SCHEMA, False)
        try:
            return self._compile(schema, strict=strict)
        except (RuntimeError, ValueError) as exc:
            raise InvalidRequest(
                f"this engine cannot decode to the JSON Schema: {_reason(exc)}", param=JSON_SCHEMA_PARAM
            ) from exc

    def compile_tools(self, use: ToolUse) -> xgr.CompiledGrammar:
        """The grammar of `use`'s forced calls (`tool_calls.forced_schema`, strict like `json_schema`); raises
        `InvalidRequest` naming the tool whose parameters the library cannot compile. Blocking."""
        try:
            return self._compile(forced_schema_text(use), strict=True)
        except (RuntimeError, ValueError) as exc:
            failed, param = exc, "tools"
        # Which tool: the named one, else the first whose parameters alone do not compile.
        for i, tool in enumerate(use.tools):
            if use.choice == TOOL_FUNCTION and tool.name != use.function:
                continue
            try:
                self._compile(json.dumps(tool.parameters_schema), strict=True)
            except (RuntimeError, ValueError) as exc:
                failed, param = exc, f"tools[{i}].function.parameters"
                break
        raise InvalidRequest(
            f"this engine cannot decode to the function's parameters schema: {_reason(failed)}", param=param
        ) from failed

    def _compile(self, schema: str, *, strict: bool) -> xgr.CompiledGrammar:
        with self._lock:
            return self._compiler.compile_json_schema(schema, any_whitespace=False, strict_mode=strict)


def _reason(exc: Exception) -> str:
    """The last line of the library's error, bounded."""
    text = str(exc).strip()
    return (text.splitlines()[-1] if text else type(exc).__name__)[:300]


class JsonConstraint(LogitsProcessor):
    """Masks, on the constrained rows of a batch (`grammars`, by row), the tokens their grammar does not allow
    next (see the module docstring). A row whose matcher ends (the grammar terminated, or a token it refuses:
    the row was cancelled or finished otherwise) is left alone from then on."""

    def __init__(self, grammars: dict[int, xgr.CompiledGrammar], vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.matchers = {row: xgr.GrammarMatcher(grammar) for row, grammar in grammars.items()}
        self._bitmask: torch.Tensor | None = None
        self._started = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._started:
            for row, matcher in list(self.matchers.items()):
                # The token the row sampled last; one the grammar refuses ends the row's constraint.
                accepted = row < input_ids.shape[0] and matcher.accept_token(int(input_ids[row, -1]))
                if not accepted or matcher.is_terminated():
                    del self.matchers[row]
        self._started = True
        rows = [row for row in self.matchers if row < scores.shape[0]]
        if not rows:
            return scores
        if self._bitmask is None or self._bitmask.shape[0] < scores.shape[0]:
            self._bitmask = xgr.allocate_token_bitmask(scores.shape[0], self.vocab_size)
        for row in rows:
            self.matchers[row].fill_next_token_bitmask(self._bitmask, row)
        bitmask = self._bitmask if scores.device.type == "cpu" else self._bitmask.to(scores.device)
        width = min(self.vocab_size, scores.shape[-1])
        xgr.apply_token_bitmask_inplace(scores, bitmask, vocab_size=width, indices=rows)
        if scores.shape[-1] > width:  # logits beyond the grammar's vocabulary are never allowed
            scores[rows, width:] = -float("inf")
        return scores
