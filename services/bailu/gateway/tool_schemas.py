"""OpenAI's function tools in a chat request: `tools`, `tool_choice`, and the calls of an assistant turn in
history, each checked at the edge; `tool_use` turns them into the domain's `ToolUse`.

OpenAI's other tool kinds (`custom` tools, an `allowed_tools` choice) are known and refused as not supported.
A function's `parameters` is a valid JSON Schema of an object (the arguments), sent to the worker as compact
JSON text in the client's key order. Whether the choice fits the tools (a named function among them, `required`
with some) is `ToolUse.validate`'s, when the gateway builds the generation: a 400 all the same.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Discriminator, Field, Tag
from pydantic_core import PydanticCustomError

from bailu.common.types import TOOL_AUTO, TOOL_FUNCTION, TOOL_NAME_PATTERN, TOOL_NONE, Tool, ToolUse
from bailu.gateway.field_policy import not_supported
from bailu.gateway.json_schemas import INVALID_JSON_SCHEMA, check_json_schema, schema_text
from bailu.gateway.strict_body import StrictBody, WireText, encodable

# The longest tool call id taken in history (OpenAI's are "call_" and 24 characters; other APIs' differ).
MAX_TOOL_CALL_ID_CHARS = 256
# OpenAI's tool types besides functions, which this deployment does not serve.
UNSERVED_TOOL_TYPES = {"custom": "custom tools", "allowed_tools": "allowed_tools"}

FunctionName = Annotated[str, Field(pattern=TOOL_NAME_PATTERN)]
CallId = Annotated[str, Field(min_length=1, max_length=MAX_TOOL_CALL_ID_CHARS), BeforeValidator(encodable)]


def _function_type(value: object) -> object:
    """A tool type (of a tool, a call, a `tool_choice`) other than "function": not supported if it is OpenAI's."""
    if isinstance(value, str) and value in UNSERVED_TOOL_TYPES:
        raise not_supported(UNSERVED_TOOL_TYPES[value], 'type "function"')
    return value


FunctionType = Annotated[Literal["function"], BeforeValidator(_function_type)]


class CalledFunction(StrictBody):
    name: FunctionName
    arguments: WireText = Field(description="The arguments as the model wrote them: the JSON text of an object.")


class MessageToolCall(StrictBody):
    """One call of an assistant turn in history (`choices[].message.tool_calls[]` echoed back)."""

    id: CallId
    type: FunctionType
    function: CalledFunction


def _object_parameters(schema: dict[str, Any]) -> dict[str, Any]:
    """A function's `parameters`: a valid JSON Schema (`check_json_schema`) of an object (the arguments)."""
    check_json_schema(schema)
    if "type" in schema and schema["type"] != "object":
        raise PydanticCustomError(
            INVALID_JSON_SCHEMA, 'the parameters schema must describe an object (type "object"), not type {type}',
            {"type": json.dumps(schema["type"])},
        )  # fmt: skip
    return schema


class FunctionDefinition(StrictBody):
    name: FunctionName = Field(description="The function's name: 1 to 64 letters, digits, `_` or `-`.")
    description: WireText | None = Field(None, description="What the function does: shown to the model.")
    parameters: Annotated[dict[str, Any], AfterValidator(_object_parameters)] | None = Field(
        None,
        description="The arguments' JSON Schema (of an object; Draft 2020-12 unless `$schema` says otherwise). "
        "None: a function without arguments.",
    )
    strict: bool | None = Field(
        None, description="Accepted: a forced call's arguments always match the schema (constrained decoding)."
    )


class FunctionTool(StrictBody):
    """One of `tools`: a function the model may call."""

    type: FunctionType
    function: FunctionDefinition


class NamedFunction(StrictBody):
    name: FunctionName


class NamedToolChoice(StrictBody):
    """`tool_choice` naming the function to call: exactly one call of it."""

    type: FunctionType
    function: NamedFunction


def tool_choice_branch(value: Any) -> str | None:
    """The branch of a `tool_choice` union (chat's, the Responses API's): a mode, or the function to call. Its tags
    are ones `bailu.gateway.errors` leaves out of an error's `param`, as it does pydantic's own union branches
    (`str`, `function-...`), so that a bad name is `tool_choice.function.name` (`tool_choice.name`)."""
    if isinstance(value, str):
        return "str"
    if isinstance(value, dict):
        return "function-named"
    return None


ToolChoiceOption = Annotated[
    Annotated[Literal["none", "auto", "required"], Tag("str")] | Annotated[NamedToolChoice, Tag("function-named")],
    Discriminator(
        tool_choice_branch,
        custom_error_type="tool_choice",
        custom_error_message='must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}',
    ),
]
"""OpenAI's `tool_choice`: a mode, or the function to call."""


def tool_use(
    tools: list[FunctionTool] | None, tool_choice: str | NamedToolChoice | None, parallel: bool | None
) -> ToolUse:
    """The tools a request offers and how they may be used (`GenerateRequest.tools`). OpenAI's defaults: choice
    `auto` with tools, `none` without; parallel calls allowed. No tools and no forced call (`tools: []` as SDKs
    send it): no tool use at all."""
    function = ""
    if isinstance(tool_choice, NamedToolChoice):
        choice, function = TOOL_FUNCTION, tool_choice.function.name
    else:
        choice = tool_choice or (TOOL_AUTO if tools else TOOL_NONE)
    if not tools and choice in (TOOL_NONE, TOOL_AUTO):
        return ToolUse()
    offered = tuple(
        Tool(
            t.function.name,
            t.function.description or "",
            schema_text(t.function.parameters) if t.function.parameters is not None else "",
        )
        for t in tools or ()
    )
    return ToolUse(offered, choice, function, parallel is not False)
