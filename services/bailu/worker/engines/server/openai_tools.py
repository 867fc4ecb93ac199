"""Tool use in the engine servers' OpenAI protocol: the request fields, and the tool-call pieces of a stream.

Requests: a chat turn with calls is OpenAI's assistant message with `tool_calls` ([{id, type: function,
function: {name, arguments}}], `content` null when it has none), a tool result is a `role: tool` message with
`tool_call_id`; an active `ToolUse` adds `tools` ([{type: function, function: {name, description?,
parameters}}]), `tool_choice` ("auto", "required" or {type: function, function: {name}}) and
`parallel_tool_calls`. Inactive tool use (no tools, or tool_choice none) sends no tools at all, so that the
model is not shown them (vLLM renders them even for "none"). vLLM, SGLang and LmDeploy take these fields as
OpenAI defines them (`dialects.py` says which choices each serves).

Streams: each delta's `tool_calls` is a list of pieces {index, id?, type?, function: {name?, arguments?}},
absent fields sent as null by some servers (SGLang). The first piece of a call carries its id and name, and
often a first piece of its arguments (vLLM's forced calls); later pieces add arguments text; a server may
send a whole call in one piece (LmDeploy sends the arguments of each call whole, ms-swift whole calls without
an index at the end of the stream). Sources: vllm/tool_parsers/streaming.py (`extract_named_tool_call_streaming`,
`extract_required_tool_call_streaming`), sglang serving_chat.py (`_process_tool_call_stream`), lmdeploy
serve/parsers/tool_parser/tool_parser.py (`_decode_tool_incremental_json`), swift infer_engine/protocol.py.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from bailu.common.errors import InternalError
from bailu.common.types import TOOL_FUNCTION, ChatMessage, ToolCallDelta, ToolUse


def new_call_id() -> str:
    """A call id in OpenAI's form, for a call whose engine sent none."""
    return "call_" + uuid.uuid4().hex[:24]


def message(turn: ChatMessage, *, null_call_content: bool = True) -> dict[str, Any]:
    """One chat turn as an OpenAI message: a tool result with its `tool_call_id`, an assistant turn with its
    calls (and `content` null when it has no text, or "" without `null_call_content`)."""
    if turn.role == "tool":
        return {"role": "tool", "tool_call_id": turn.tool_call_id, "content": turn.content}
    if turn.tool_calls:
        calls = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in turn.tool_calls
        ]
        content = turn.content or (None if null_call_content else "")
        return {"role": turn.role, "content": content, "tool_calls": calls}
    return {"role": turn.role, "content": turn.content}


def request_fields(use: ToolUse) -> dict[str, Any]:
    """`tools`, `tool_choice` and `parallel_tool_calls` for active tool use; nothing otherwise."""
    if not use.active:
        return {}
    tools = []
    for tool in use.tools:
        function: dict[str, Any] = {"name": tool.name}
        if tool.description:
            function["description"] = tool.description
        function["parameters"] = tool.parameters_schema
        tools.append({"type": "function", "function": function})
    choice: str | dict[str, Any] = use.choice
    if use.choice == TOOL_FUNCTION:
        choice = {"type": "function", "function": {"name": use.function}}
    return {"tools": tools, "tool_choice": choice, "parallel_tool_calls": use.parallel}


@dataclass
class ToolCallReader:
    """Reads the `tool_calls` pieces of a stream's deltas into `ToolCallDelta`s: calls numbered 0, 1, ... in
    the order they start (whatever the engine's indices), the first piece of each with its id (the engine's, or
    a new one) and name. Without `parallel` only the first call is kept; without `accept` (the request offered
    no tools) a call is an error, since it would answer a request that cannot take one."""

    accept: bool = True
    parallel: bool = True
    # The engine's index of each started call (or a key of its own for a call sent without one) -> its number.
    _numbers: dict[object, int] = field(default_factory=dict)

    @property
    def called(self) -> bool:
        """Whether any call started."""
        return bool(self._numbers)

    def feed(self, pieces: object) -> list[ToolCallDelta]:
        """The `ToolCallDelta`s of one delta's `tool_calls` (None or absent: none). Raises `InternalError` on a
        malformed piece."""
        if pieces is None:
            return []
        if not isinstance(pieces, list):
            raise InternalError(f"the engine sent tool_calls that are not a list: {str(pieces)[:200]!r}")
        deltas = []
        for piece in pieces:
            delta = self._read(piece)
            if delta is not None and (self.parallel or delta.index == 0):
                deltas.append(delta)
        return deltas

    def _read(self, piece: object) -> ToolCallDelta | None:
        function = piece.get("function") if isinstance(piece, dict) else None
        if not isinstance(piece, dict) or not isinstance(function or {}, dict):
            raise InternalError(f"the engine sent a malformed tool call: {str(piece)[:200]!r}")
        function = function or {}
        arguments = function.get("arguments")
        if arguments is None:
            arguments = ""
        elif not isinstance(arguments, str):  # a server that sends the arguments as an object
            arguments = json.dumps(arguments, ensure_ascii=False)
        index = piece.get("index")
        key: object = index if isinstance(index, int) and not isinstance(index, bool) else ("whole", len(self._numbers))
        number = self._numbers.get(key)
        if number is not None:
            return ToolCallDelta(number, arguments=arguments) if arguments else None
        if not self.accept:
            raise InternalError("the engine answered with a tool call, but the request offered no tools")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InternalError(f"the engine started a tool call without a function name: {str(piece)[:200]!r}")
        number = self._numbers[key] = len(self._numbers)
        call_id = piece.get("id")
        if not isinstance(call_id, str) or not call_id:
            call_id = new_call_id()
        return ToolCallDelta(number, call_id, name, arguments)
