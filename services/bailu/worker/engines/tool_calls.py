"""Tool use in the in-process engines (transformers, sim): the one place for its rules.

Forced calls (`tool_choice` required or a named function) are decoded under a JSON Schema (`forced_schema`):
- a named function: the function's parameters schema; the output IS the call's arguments object;
- required: an array of calls (at least one; exactly one with `parallel_tool_calls` false), each an object
  `{"name": <const tool name>, "arguments": <that tool's parameters schema>}`, one `anyOf` branch per tool (the
  shape vLLM decodes `required` to, with "arguments" for its "parameters"). A tool's `$ref`s are rewritten to
  point into its branch, so that recursive schemas and `$defs` keep working there.
The constrained output is read back with `forced_calls`; `auto_reply` reads calls out of free output with
ms-swift's agent template (`get_toolcall`) and keeps the text before the call markup as the reply's content.

Calls get fresh ids ("call_" and 24 hex digits) and their arguments as compact JSON text. `swift_messages` and
`swift_tools` give ms-swift's template a chat with tools: an assistant turn's calls become ms-swift's `tool_call`
messages after its text, and the agent template writes them (and the tools, into the system prompt) in the
model's markup, as in training.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any

from bailu.common.errors import InvalidRequest
from bailu.common.types import (
    TOOL_FUNCTION,
    TOOL_REQUIRED,
    ChatMessage,
    FinishReason,
    Tool,
    ToolCallDelta,
    ToolUse,
)

CALL_ID_PREFIX = "call_"
# ReAct's call keyword: every ms-swift agent template falls back to ReAct when its own markup is not found.
REACT_MARKER = "Action:"
# The function name a probe call is rendered with to find an agent template's call markup.
_PROBE = "bailu_probe_function"
# Keywords whose values are data, not schemas: a "$ref" inside them is not a reference.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})
# Keywords whose values map names (a property named "default", say) to schemas.
_NAMED_SCHEMAS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})


def new_call_id() -> str:
    """A fresh call id, "call_" and 24 hex digits (OpenAI's shape)."""
    return CALL_ID_PREFIX + secrets.token_hex(12)


def arguments_text(arguments: Any) -> str:
    """A call's arguments as compact JSON text; a string that is not JSON is kept as it is."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return arguments
    return json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))


def call_deltas(calls: Sequence[tuple[str, Any]]) -> tuple[ToolCallDelta, ...]:
    """Whole calls `(name, arguments)` as one `ToolCallDelta` each, indexed in order, with fresh ids."""
    return tuple(
        ToolCallDelta(index, new_call_id(), name, arguments_text(arguments))
        for index, (name, arguments) in enumerate(calls)
    )


def _tool(use: ToolUse, name: str) -> Tool:
    return next(tool for tool in use.tools if tool.name == name)


def _rebase_refs(schema: Any, base: str) -> Any:
    """`schema` with every local `$ref` ("#...") rewritten to start at `base` (a JSON pointer into the document
    it is embedded in) instead of the document's root."""
    if isinstance(schema, list):
        return [_rebase_refs(item, base) for item in schema]
    if not isinstance(schema, dict):
        return schema
    rebased: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "$ref" and isinstance(value, str) and value.startswith("#"):
            rebased[key] = base + value[1:]
        elif key in _NAMED_SCHEMAS and isinstance(value, dict):  # names map to schemas, whatever the name
            rebased[key] = {name: _rebase_refs(sub, base) for name, sub in value.items()}
        else:
            rebased[key] = value if key in _DATA_KEYWORDS else _rebase_refs(value, base)
    return rebased


def forced_schema(use: ToolUse) -> dict[str, Any]:
    """The JSON Schema forced calls are decoded to (see the module docstring); `use.forced` must hold."""
    if use.choice == TOOL_FUNCTION:
        return _tool(use, use.function).parameters_schema
    if use.choice != TOOL_REQUIRED:
        raise ValueError(f"tool_choice {use.choice} does not force calls")
    branches = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool.name},
                "arguments": _rebase_refs(tool.parameters_schema, f"#/items/anyOf/{i}/properties/arguments"),
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for i, tool in enumerate(use.tools)
    ]
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": branches}}
    if not use.parallel:
        schema["maxItems"] = 1
    return schema


def forced_schema_text(use: ToolUse) -> str:
    """`forced_schema` as compact JSON text (the key the grammar cache knows it by)."""
    return json.dumps(forced_schema(use), ensure_ascii=False, separators=(",", ":"))


def forced_calls(use: ToolUse, output: str) -> tuple[ToolCallDelta, ...]:
    """The calls in `output`, a complete constrained output of `forced_schema(use)`; `ValueError` if it is not
    one (only a cut-short output is not: decoding under the grammar cannot produce anything else)."""
    value = json.loads(output)
    if use.choice == TOOL_FUNCTION:
        if not isinstance(value, dict):
            raise ValueError("the arguments of a forced call are not a JSON object")
        return call_deltas([(use.function, value)])
    names = {tool.name for tool in use.tools}
    if not isinstance(value, list) or not value:
        raise ValueError("forced calls are not a non-empty JSON array")
    calls: list[tuple[str, Any]] = []
    for item in value:
        if not isinstance(item, dict) or item.get("name") not in names or not isinstance(item.get("arguments"), dict):
            raise ValueError("a forced call is not an object naming a tool, with arguments")
        calls.append((item["name"], item["arguments"]))
    return call_deltas(calls)


def swift_tools(use: ToolUse) -> list[dict[str, Any]] | None:
    """The tools in OpenAI's function format for ms-swift's `InferRequest.tools` (its agent template writes them
    into the system prompt); None when the model is not to see them (no tools, or tool_choice none)."""
    if not use.active:
        return None
    return [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": t.parameters_schema},
        }
        for t in use.tools
    ]


def _past_arguments(text: str, param: str) -> Any:
    """The arguments of a call in the history, parsed: ms-swift's agent templates render them from a JSON
    object (its `assert` on anything else would be an internal error). "" is an empty object."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequest("the arguments of a tool call must be a JSON object", param=param)
    return value


def swift_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """`messages` as ms-swift's template takes them: an assistant turn with `tool_calls` becomes its text (if
    any) followed by one `tool_call` message per call (content: the JSON of {"name", "arguments"}); tool
    results stay `tool` messages, which ms-swift renders by position, so a complete set of results is put in
    the order of the calls (as ms-swift orders OpenAI messages itself). Raises `InvalidRequest` for a call
    whose arguments are not a JSON object."""
    turns = list(messages)
    out: list[dict[str, Any]] = []
    i = 0
    while i < len(turns):
        message = turns[i]
        if message.role != "assistant" or not message.tool_calls:
            out.append({"role": message.role, "content": message.content})
            i += 1
            continue
        if message.content:
            out.append({"role": "assistant", "content": message.content})
        for j, call in enumerate(message.tool_calls):
            arguments = _past_arguments(call.arguments, f"messages[{i}].tool_calls[{j}].function.arguments")
            content = json.dumps({"name": call.name, "arguments": arguments}, ensure_ascii=False)
            out.append({"role": "tool_call", "content": content})
        end = i + 1
        while end < len(turns) and turns[end].role == "tool":
            end += 1
        results = turns[i + 1 : end]
        order = {call.id: k for k, call in enumerate(message.tool_calls)}
        if len(order) == len(results) == len(message.tool_calls) and set(order) == {r.tool_call_id for r in results}:
            results = sorted(results, key=lambda r: order[r.tool_call_id])
        out.extend({"role": "tool", "content": r.content} for r in results)
        i = end
    return out


def call_markers(agent_template: Any) -> tuple[str, ...]:
    """Where a call starts in free output for ms-swift's `agent_template`: the text its markup puts before a
    call's JSON or name (hermes: "<tool_call>", qwen_en: "✿FUNCTION✿:"), found by rendering a probe call, and
    ReAct's "Action:", which every agent template also parses."""
    markers = [REACT_MARKER]
    try:
        probe = json.dumps({"name": _PROBE, "arguments": {}})
        rendered = str(agent_template._format_tool_calls([{"role": "tool_call", "content": probe}]))
    except Exception:  # an agent template that cannot render a call still parses ReAct
        return tuple(markers)
    head = rendered.split(_PROBE, 1)[0] if _PROBE in rendered else ""
    head = head.split("{", 1)[0].strip()
    if head and head not in markers:
        markers.insert(0, head)
    return tuple(markers)


def text_before_calls(text: str, markers: Sequence[str]) -> str:
    """`text` up to the first call marker (trailing whitespace dropped), or all of it without one."""
    cut = min((text.find(m) for m in markers if m in text), default=-1)
    return text if cut < 0 else text[:cut].rstrip()


def auto_reply(
    text: str, finish: FinishReason, use: ToolUse, agent_template: Any
) -> tuple[str, tuple[ToolCallDelta, ...], FinishReason]:
    """The reply to a request with tool_choice auto, from the model's whole free output `text`: its content,
    its calls and its finish reason.

    Calls are read with the agent template's `get_toolcall`; a call naming a function that is not among the
    tools, or whose arguments are not a JSON object, is not a call. With calls, the content is the text before
    the first call's markup (possibly empty) and the finish reason `tool_calls`; without, the text as written.
    An output cut by `max_tokens` (`length`) gives no calls: its content is the text before any call markup
    (a half-written call is dropped, never shown as text)."""
    markers = call_markers(agent_template)
    if finish == FinishReason.LENGTH:
        return text_before_calls(text, markers), (), finish
    try:
        functions = agent_template.get_toolcall(text) or []
    except Exception:  # a parser that fails on odd output found no calls
        functions = []
    names = {tool.name for tool in use.tools}
    calls: list[tuple[str, Any]] = []
    for function in functions:
        name, arguments = getattr(function, "name", None), getattr(function, "arguments", None)
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                arguments = None
        if name in names and isinstance(arguments, dict):
            calls.append((name, arguments))
    if not calls:
        return text, (), finish
    return text_before_calls(text, markers), call_deltas(calls), FinishReason.TOOL_CALLS
