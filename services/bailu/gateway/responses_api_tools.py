"""Function tools in the Responses API: `tools` (function definitions, flat beside their `type`), `tool_choice`,
and the input items of a call the model made (`function_call`, this API's output item echoed back) and of its
result (`function_call_output`), each checked at the edge as the chat completions' tools are
(`bailu.gateway.tool_schemas`, whose function definition they reuse).

A Responses request runs as a chat completion (`ResponseCreateRequest.chat_request`): its tools become chat
`tools`, a `function_call` an assistant turn's `tool_calls` (id = `call_id`), a `function_call_output` a `tool`
turn (`tool_call_id` = `call_id`). Built-in tools (web search, file search, computer use, MCP, code
interpreter, ...), custom tools and their calls are refused as not supported; so are the features of a function
tool this deployment does not serve (programmatic callers, deferred loading, output schemas, asynchronous
calls), except at the values that ask for nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

from pydantic import AliasChoices, BeforeValidator, Discriminator, Field, Tag, WithJsonSchema
from pydantic_core import PydanticCustomError

from bailu.common.errors import InvalidRequest
from bailu.common.types import ToolCall
from bailu.gateway.field_policy import FieldPolicy, Ignored, Unserved, not_supported, policy_model, value_schema
from bailu.gateway.strict_body import StrictBody, WireText
from bailu.gateway.tool_schemas import CallId, FunctionDefinition, FunctionName, tool_choice_branch

# The longest output item id taken back in `input` (this API's are "fc_" and about 35 characters).
MAX_ITEM_ID_CHARS = 128
ItemStatus = Literal["in_progress", "completed", "incomplete"]

# OpenAI's tool types besides functions (a dated variant such as `web_search_preview_2025_03_11` is its
# base type's), by what this deployment does not serve when a request names one.
UNSERVED_TOOLS = {
    "apply_patch": "the built-in apply_patch tool",
    "code_interpreter": "the built-in code interpreter",
    "computer": "computer use",
    "computer_use_preview": "computer use",
    "custom": "custom tools",
    "file_search": "file search",
    "image_generation": "the built-in image generation tool",
    "local_shell": "the built-in shell tools",
    "mcp": "remote MCP servers",
    "namespace": "tool namespaces",
    "programmatic_tool_calling": "programmatic tool calling",
    "shell": "the built-in shell tools",
    "tool_search": "tool search",
    "web_search": "web search",
    "web_search_preview": "web search",
}
# `tool_choice` objects that are not a function's: the built-in tools', and these.
UNSERVED_CHOICES = {**UNSERVED_TOOLS, "allowed_tools": "allowed_tools (send only the tools the model may call)"}
_DATED = re.compile(r"_\d{4}_\d{2}_\d{2}$")
UNSERVED_OUTPUT_PARTS = {"input_image": "image output of a function", "input_file": "file output of a function"}

CALLER_POLICY = Unserved("programmatic tool calling", (None, {"type": "direct"}))
FUNCTION_TOOL_FIELD_POLICY: dict[str, FieldPolicy] = {
    "allowed_callers": Unserved("programmatic tool calling", (None, ["direct"])),
    "defer_loading": Unserved("deferred tool loading (tool search)", (None, False)),
    "output_schema": Unserved("function output schemas"),
}
CALL_FIELD_POLICY: dict[str, FieldPolicy] = {
    "caller": CALLER_POLICY,
    "namespace": Unserved("tool namespaces"),
}
CALL_OUTPUT_FIELD_POLICY: dict[str, FieldPolicy] = {
    **CALL_FIELD_POLICY,
    "name": Ignored(FunctionName, "the call it answers names the function"),
}
TEXT_PART_FIELD_POLICY: dict[str, FieldPolicy] = {
    "prompt_cache_breakpoint": Ignored(dict[str, Any], "a prompt-cache hint"),
}

if TYPE_CHECKING:

    class _FunctionToolPolicy(FunctionDefinition): ...

    class _CallPolicy(StrictBody): ...

    class _CallOutputPolicy(StrictBody): ...

    class _TextPartPolicy(StrictBody): ...

else:
    _FunctionToolPolicy = policy_model("ResponsesFunctionToolPolicy", FunctionDefinition, FUNCTION_TOOL_FIELD_POLICY)
    _CallPolicy = policy_model("FunctionCallItemPolicy", StrictBody, CALL_FIELD_POLICY)
    _CallOutputPolicy = policy_model("FunctionCallOutputItemPolicy", StrictBody, CALL_OUTPUT_FIELD_POLICY)
    _TextPartPolicy = policy_model("FunctionOutputTextPolicy", StrictBody, TEXT_PART_FIELD_POLICY)

# `async` (a Python keyword, hence the field `async_`; the name the openai client's `model_dump()` writes is
# taken too): asynchronous calls, not served.
_ASYNC = Unserved("asynchronous function calls", (None, False))
AsyncFlag = Annotated[
    Any,
    BeforeValidator(_ASYNC.check),
    WithJsonSchema({"anyOf": [value_schema(v) for v in _ASYNC.noop]}),
]
ASYNC_ALIASES = AliasChoices("async", "async_")
ASYNC_DESCRIPTION = f"Not served ({_ASYNC.feature}): only values that ask for nothing are accepted: {_ASYNC.accepted}."


def _unserved_type(kind: str, unserved: dict[str, str]) -> str | None:
    return unserved.get(kind) or unserved.get(_DATED.sub("", kind))


def _function_tool(tool: object) -> object:
    """A tool that is not a function: not supported if it is one of OpenAI's, else an unknown type."""
    if isinstance(tool, dict) and isinstance(kind := tool.get("type"), str) and kind != "function":
        feature = _unserved_type(kind, UNSERVED_TOOLS)
        if feature is not None:
            raise not_supported(feature, "function tools")
        raise PydanticCustomError(
            "tool_type",
            'unknown tool type {kind}: the tools served are type "function"',
            {"kind": json.dumps(kind[:64])},
        )
    return tool


class ResponsesFunctionTool(_FunctionToolPolicy):
    """One of `tools`: a function the model may call, written flat (`{"type": "function", "name": ...}`)."""

    type: Literal["function"]
    async_: AsyncFlag = Field(None, validation_alias=ASYNC_ALIASES, description=ASYNC_DESCRIPTION)

    def chat_tool(self) -> dict[str, Any]:
        """The chat completion's tool of this function."""
        fields = ("name", "description", "parameters", "strict")
        return {"type": "function", "function": {name: getattr(self, name) for name in fields}}

    def echo(self) -> dict[str, Any]:
        """The tool as a response echoes it."""
        return {"type": "function", **self.chat_tool()["function"]}


FunctionToolItem = Annotated[ResponsesFunctionTool, BeforeValidator(_function_tool)]


class FunctionChoice(StrictBody):
    """`tool_choice` naming the function to call: exactly one call of it."""

    type: Literal["function"]
    name: FunctionName


def _served_choice(value: object) -> object:
    if isinstance(value, dict) and isinstance(kind := value.get("type"), str) and kind != "function":
        feature = _unserved_type(kind, UNSERVED_CHOICES)
        if feature is not None:
            raise not_supported(feature, '"none", "auto", "required" or a function')
    return value


ResponsesToolChoice = Annotated[
    Annotated[Literal["none", "auto", "required"], Tag("str")] | Annotated[FunctionChoice, Tag("function-named")],
    Discriminator(
        tool_choice_branch,
        custom_error_type="tool_choice",
        custom_error_message='must be "none", "auto", "required" or {"type": "function", "name": ...}',
    ),
    BeforeValidator(_served_choice),
]
"""The Responses API's `tool_choice`: a mode, or the function to call."""


class FunctionCallItem(_CallPolicy):
    """An input item: a call the model made (this API's `function_call` output item echoed back), which joins the
    assistant's turn before it."""

    type: Literal["function_call"]
    call_id: CallId = Field(description="The call's id, which its `function_call_output` names.")
    name: FunctionName
    arguments: WireText = Field(description="The arguments as the model wrote them: the JSON text of an object.")
    id: WireText | None = Field(None, max_length=MAX_ITEM_ID_CHARS, description="The output item's id (ignored).")
    status: ItemStatus | None = None
    async_: AsyncFlag = Field(None, validation_alias=ASYNC_ALIASES, description=ASYNC_DESCRIPTION)

    def chat_call(self) -> dict[str, Any]:
        """The call in a chat assistant turn's `tool_calls`."""
        return {"id": self.call_id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def _served_output_part(part: object) -> object:
    if isinstance(part, dict) and isinstance(kind := part.get("type"), str) and kind in UNSERVED_OUTPUT_PARTS:
        raise not_supported(UNSERVED_OUTPUT_PARTS[kind], "a string, or input_text parts")
    return part


def text_as_parts(value: object) -> object:
    """Content given as a string: its one `input_text` part (one type for both, so that an error in a part is
    reported at the part)."""
    return [{"type": "input_text", "text": value}] if isinstance(value, str) else value


def or_text(schema: dict[str, Any]) -> None:
    """The JSON Schema of a list of parts that may be given as a string (which `text_as_parts` reads as one part)."""
    inner = {k: schema.pop(k) for k in list(schema) if k not in ("default", "description", "title")}
    schema["anyOf"] = [{"type": "string"}, inner]


class OutputTextPart(_TextPartPolicy):
    type: Literal["input_text"]
    text: WireText


class FunctionCallOutputItem(_CallOutputPolicy):
    """An input item: the result of a call (`call_id`), the tool's turn that answers it."""

    type: Literal["function_call_output"]
    call_id: CallId = Field(description="The id of the call (made earlier in the conversation) this answers.")
    output: Annotated[
        list[Annotated[OutputTextPart, BeforeValidator(_served_output_part)]], BeforeValidator(text_as_parts)
    ] = Field(description="The result: text, or `input_text` parts (joined).", json_schema_extra=or_text)
    id: WireText | None = Field(None, max_length=MAX_ITEM_ID_CHARS, description="The item's id (ignored).")
    status: ItemStatus | None = None

    def chat_message(self) -> dict[str, Any]:
        """The chat completion's `tool` turn of this result."""
        return {"role": "tool", "tool_call_id": self.call_id, "content": "".join(part.text for part in self.output)}


def chat_call(call: ToolCall) -> dict[str, Any]:
    """A stored call (`ToolCall`) in a chat assistant turn's `tool_calls`."""
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def chat_turn(stored: dict[str, Any]) -> dict[str, Any]:
    """A turn of a stored conversation (`CompletionRecord.messages`) as a chat request's message: an assistant
    turn with its calls (its `content` null when it has no text), a tool turn with its `tool_call_id`."""
    turn: dict[str, Any] = {"role": stored["role"], "content": stored["content"]}
    if stored.get("tool_calls"):
        calls = [ToolCall(c["id"], c["name"], c["arguments"]) for c in stored["tool_calls"]]
        turn = {"role": "assistant", "content": stored["content"] or None, "tool_calls": [chat_call(c) for c in calls]}
    if stored.get("tool_call_id"):
        turn["tool_call_id"] = stored["tool_call_id"]
    return turn


def output_turn(text: str, calls: Sequence[ToolCall]) -> dict[str, Any]:
    """A response's output (its text, the calls it made) as the assistant's chat turn."""
    if not calls:
        return {"role": "assistant", "content": text}
    return {"role": "assistant", "content": text or None, "tool_calls": [chat_call(call) for call in calls]}


class ChatItem(Protocol):
    """An input message item: its chat message."""

    def chat_message(self) -> dict[str, Any]: ...


def with_items(
    messages: list[dict[str, Any]], items: Sequence[ChatItem | FunctionCallItem | FunctionCallOutputItem]
) -> list[dict[str, Any]]:
    """`messages` (a conversation so far, as chat messages) followed by the input `items`, a `function_call`
    joining the assistant turn before it (a turn of its own after any other). Raises `InvalidRequest` for a
    `function_call_output` that answers no call made before it (`input[i].call_id`), and for a call left without
    its output (as OpenAI does)."""
    answered: dict[str, bool] = {}  # each call made so far, in order: whether its output came
    for message in messages:
        answered.update((call["id"], False) for call in message.get("tool_calls") or ())
        if "tool_call_id" in message:
            answered[message["tool_call_id"]] = True
    for i, item in enumerate(items):
        if isinstance(item, FunctionCallItem):
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(item.chat_call())
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [item.chat_call()]})
            answered[item.call_id] = False
            continue
        if isinstance(item, FunctionCallOutputItem):
            if item.call_id not in answered:
                raise InvalidRequest(
                    f"no function call {json.dumps(item.call_id)} was made before this function_call_output (in "
                    "input, or in the previous response)",
                    param=f"input[{i}].call_id",
                )
            answered[item.call_id] = True
        messages.append(item.chat_message())
    unanswered = [call_id for call_id, done in answered.items() if not done]
    if unanswered:
        raise InvalidRequest(
            f"no function_call_output for the function call {json.dumps(unanswered[0])}: send each call's result in "
            "input",
            param="input",
        )
    return messages


def chat_tools(
    tools: Sequence[ResponsesFunctionTool] | None, choice: str | FunctionChoice | None, parallel: bool | None
) -> dict[str, Any]:
    """The chat completion's `tools`, `tool_choice` and `parallel_tool_calls` of a Responses request's. Raises
    `InvalidRequest`, naming this API's fields, for what the chat request would refuse naming its own: two tools
    of one name, a forced call without tools, a named function that is not among them."""
    names: set[str] = set()
    for i, tool in enumerate(tools or ()):
        if tool.name in names:
            raise InvalidRequest(f"two tools are named {json.dumps(tool.name)}", param=f"tools[{i}].name")
        names.add(tool.name)
    if (choice == "required" or isinstance(choice, FunctionChoice)) and not names:
        raise InvalidRequest("tool_choice asks for a call: give tools to call", param="tool_choice")
    if isinstance(choice, FunctionChoice) and choice.name not in names:
        raise InvalidRequest(
            f"tool_choice names the function {json.dumps(choice.name)}, which is not among the tools",
            param="tool_choice.name",
        )
    chat_choice = (
        {"type": "function", "function": {"name": choice.name}} if isinstance(choice, FunctionChoice) else choice
    )
    return {
        "tools": None if tools is None else [tool.chat_tool() for tool in tools],
        "tool_choice": chat_choice,
        "parallel_tool_calls": parallel,
    }


def tool_settings(
    tools: Sequence[ResponsesFunctionTool] | None, choice: str | FunctionChoice | None, parallel: bool | None
) -> dict[str, Any]:
    """`tools`, `tool_choice` and `parallel_tool_calls` as a response echoes them (OpenAI's defaults: no tools,
    `auto`, parallel calls allowed)."""
    return {
        "tools": [tool.echo() for tool in tools or ()],
        "tool_choice": {"type": "function", "name": choice.name}
        if isinstance(choice, FunctionChoice)
        else choice or "auto",
        "parallel_tool_calls": parallel is not False,
    }


# What a response echoes when its request said nothing of tools (or its record was written before tools).
NO_TOOL_SETTINGS = tool_settings(None, None, None)
