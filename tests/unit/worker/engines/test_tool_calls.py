"""Tool logic of the in-process engines (`tool_calls.py`): the forced-call schemas (compiled by xgrammar on
SmolLM2's tokenizer, instances from the sim validate and parse back), the history as ms-swift's template takes
it, and calls read out of free output by ms-swift's real agent templates."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import xgrammar as xgr
from swift.agent_template import agent_template_map
from transformers import AutoConfig, AutoTokenizer

from bailu.common.errors import InvalidRequest
from bailu.common.types import ChatMessage as Msg
from bailu.common.types import FinishReason, Tool, ToolCall, ToolUse
from bailu.worker.engines.json_constraint import JsonGrammars
from bailu.worker.engines.sim_json import json_instance
from bailu.worker.engines.tool_calls import (
    arguments_text,
    auto_reply,
    call_markers,
    forced_calls,
    forced_schema,
    forced_schema_text,
    new_call_id,
    swift_messages,
    swift_tools,
    text_before_calls,
)

WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
# A recursive schema (`$ref` to the root) with `$defs`: both must keep working inside the `required` wrapper.
TREE_PARAMS = {
    "type": "object",
    "properties": {
        "label": {"$ref": "#/$defs/label"},
        "kids": {"type": "array", "items": {"$ref": "#"}, "maxItems": 2},
        "note": {"const": {"$ref": "#/not/a/reference"}},  # data, not a schema: left alone
        "default": {"$ref": "#/$defs/label"},  # a property named like a data keyword is a schema
    },
    "required": ["label", "kids"],
    "$defs": {"label": {"type": "string", "maxLength": 8}},
}
WEATHER = Tool("get_weather", "The forecast for a city", json.dumps(WEATHER_PARAMS))
TREE = Tool("make_tree", "Build a tree", json.dumps(TREE_PARAMS))
NOARGS = Tool("ping")  # no parameters: an object with no properties
TOOLS = (WEATHER, TREE, NOARGS)
WORDS = ["white", "dew", "settles"]


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def grammars(tokenizer: Any, tiny_model: Path) -> JsonGrammars:
    return JsonGrammars(tokenizer, AutoConfig.from_pretrained(tiny_model).vocab_size)


Accepts = Callable[[ToolUse, str], bool]


@pytest.fixture(scope="module")
def accepts(grammars: JsonGrammars, tokenizer: Any) -> Accepts:
    """Whether decoding under the forced grammar of a `ToolUse` can spell a text and then end there."""

    def check(use: ToolUse, text: str) -> bool:
        matcher = xgr.GrammarMatcher(grammars.compile_tools(use))
        return bool(matcher.accept_string(text)) and bool(matcher.accept_token(tokenizer.eos_token_id))

    return check


def compact(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "))  # the separators the grammar allows (any_whitespace off)


def test_a_named_function_decodes_to_its_parameters() -> None:
    use = ToolUse(TOOLS, "function", "get_weather")
    assert forced_schema(use) == WEATHER_PARAMS
    assert forced_schema(ToolUse(TOOLS, "function", "ping")) == {"type": "object", "properties": {}}


@pytest.mark.parametrize("parallel", [True, False])
def test_required_decodes_to_an_array_of_calls_one_branch_per_tool(parallel: bool) -> None:
    schema = forced_schema(ToolUse(TOOLS, "required", parallel=parallel))
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["minItems"] == 1
    assert schema.get("maxItems") == (None if parallel else 1)
    branches = schema["items"]["anyOf"]
    assert [b["properties"]["name"] for b in branches] == [{"const": t.name} for t in TOOLS]
    weather, tree, ping = (b["properties"]["arguments"] for b in branches)
    assert weather == WEATHER_PARAMS
    assert ping == {"type": "object", "properties": {}}
    # The tree's references point into its own branch now; the const's data is not a reference.
    assert tree["properties"]["kids"]["items"]["$ref"] == "#/items/anyOf/1/properties/arguments"
    assert tree["properties"]["label"]["$ref"] == "#/items/anyOf/1/properties/arguments/$defs/label"
    assert tree["properties"]["note"] == {"const": {"$ref": "#/not/a/reference"}}
    assert tree["properties"]["default"]["$ref"] == tree["properties"]["label"]["$ref"]
    calls = [
        {"name": "make_tree", "arguments": {"label": "root", "kids": [{"label": "leaf", "kids": []}]}},
        {"name": "get_weather", "arguments": {"city": "Kyoto", "unit": "celsius"}},
    ]
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid(calls) is parallel
    assert validator.is_valid(calls[:1])
    assert not validator.is_valid([])
    assert not validator.is_valid([{"name": "make_tree", "arguments": {"label": 3, "kids": []}}])
    assert not validator.is_valid([{"name": "get_weather", "arguments": {"city": "Kyoto"}}])  # unit is required


def test_forced_schemas_compile_and_their_grammar_spells_exactly_the_calls(accepts: Accepts) -> None:
    one = ToolUse(TOOLS, "required", parallel=False)
    many = ToolUse(TOOLS, "required")
    tree_call = {"name": "make_tree", "arguments": {"label": "root", "kids": [{"label": "leaf", "kids": []}]}}
    ping_call = {"name": "ping", "arguments": {}}
    assert accepts(one, compact([tree_call]))
    assert accepts(many, compact([tree_call, ping_call]))
    assert not accepts(one, compact([tree_call, ping_call]))  # parallel_tool_calls false: one call
    assert not accepts(many, compact([{"name": "nope", "arguments": {}}]))
    assert not accepts(many, "[]")
    named = ToolUse(TOOLS, "function", "get_weather")
    assert accepts(named, compact({"city": "Oslo", "unit": "fahrenheit", "days": 2}))
    assert not accepts(named, compact({"city": "Oslo", "unit": "kelvin"}))
    assert not accepts(named, compact({"city": "Oslo", "unit": "celsius"})[:-1])  # cannot end unfinished
    assert not accepts(named, compact([ping_call]))


def test_a_parameters_schema_the_library_cannot_compile_is_a_400_naming_the_tool(grammars: JsonGrammars) -> None:
    broken = Tool("broken", parameters=json.dumps({"type": "object", "properties": {"a": {"$ref": "#/$defs/none"}}}))
    for use, param in [
        (ToolUse((WEATHER, broken), "function", "broken"), "tools[1].function.parameters"),
        (ToolUse((WEATHER, broken), "required"), "tools[1].function.parameters"),
    ]:
        with pytest.raises(InvalidRequest) as info:
            grammars.compile_tools(use)
        assert info.value.param == param
        assert "cannot decode to the function's parameters schema" in info.value.message


@pytest.mark.parametrize(
    "use",
    [ToolUse(TOOLS, "function", "get_weather"), ToolUse(TOOLS, "required"), ToolUse(TOOLS, "required", parallel=False)],
    ids=["function", "required", "required-one"],
)
def test_the_sims_instance_of_a_forced_schema_validates_and_parses_back(use: ToolUse, accepts: Accepts) -> None:
    schema = forced_schema(use)
    instance = json_instance(schema, WORDS)
    jsonschema.validate(instance, schema)
    assert accepts(use, compact(instance))
    calls = forced_calls(use, json.dumps(instance))
    assert calls
    for index, call in enumerate(calls):
        assert call.index == index
        tool = next(t for t in TOOLS if t.name == call.name)
        jsonschema.validate(json.loads(call.arguments), tool.parameters_schema)
    if use.choice == "function":
        assert [c.name for c in calls] == ["get_weather"]
        assert json.loads(calls[0].arguments) == instance


@pytest.mark.parametrize(
    ("use", "output"),
    [
        (ToolUse(TOOLS, "function", "get_weather"), '{"city": "Osl'),  # cut short by max_tokens
        (ToolUse(TOOLS, "function", "get_weather"), '["city"]'),
        (ToolUse(TOOLS, "required"), "[]"),
        (ToolUse(TOOLS, "required"), '[{"name": "nope", "arguments": {}}]'),
        (ToolUse(TOOLS, "required"), '[{"name": "ping", "arguments": 3}]'),
        (ToolUse(TOOLS, "required"), '{"name": "ping", "arguments": {}}'),
    ],
)
def test_output_that_is_not_the_forced_calls_is_a_value_error(use: ToolUse, output: str) -> None:
    with pytest.raises(ValueError, match=r"forced call|JSON|Expecting|Unterminated"):
        forced_calls(use, output)


def test_calls_get_fresh_ids_and_compact_arguments() -> None:
    ids = {new_call_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", i) for i in ids)
    (call,) = forced_calls(ToolUse(TOOLS, "function", "get_weather"), '{"city": "Ōsaka", "unit": "celsius"}')
    assert call.arguments == '{"city":"Ōsaka","unit":"celsius"}'
    assert arguments_text({"a": [1, 2]}) == '{"a":[1,2]}'
    assert arguments_text('{"a": 1}') == '{"a":1}'
    assert arguments_text("not json") == "not json"
    assert json.loads(forced_schema_text(ToolUse(TOOLS, "required"))) == forced_schema(ToolUse(TOOLS, "required"))


def test_tools_reach_the_template_only_when_the_model_may_call_them() -> None:
    assert swift_tools(ToolUse(TOOLS, "none")) is None
    assert swift_tools(ToolUse()) is None
    tools = swift_tools(ToolUse(TOOLS, "auto"))
    assert tools is not None
    assert tools[0] == {
        "type": "function",
        "function": {"name": "get_weather", "description": "The forecast for a city", "parameters": WEATHER_PARAMS},
    }
    assert tools[2]["function"] == {
        "name": "ping",
        "description": "",
        "parameters": {"type": "object", "properties": {}},
    }


def test_the_history_becomes_ms_swift_messages_with_results_in_the_order_of_the_calls() -> None:
    calls = (ToolCall("call_a", "get_weather", '{"city": "Kyoto"}'), ToolCall("call_b", "ping", ""))
    messages = (
        Msg("user", "Weather in Kyoto?"),
        Msg("assistant", "Let me look.", calls),
        Msg("tool", "pong", tool_call_id="call_b"),
        Msg("tool", "sunny", tool_call_id="call_a"),
        Msg("assistant", "Sunny."),
        Msg("user", "And now?"),
        Msg("assistant", "", calls[:1]),
        Msg("tool", "rain", tool_call_id="call_x"),  # an id that is not the call's: kept where it is
    )
    assert swift_messages(messages) == [
        {"role": "user", "content": "Weather in Kyoto?"},
        {"role": "assistant", "content": "Let me look."},
        {"role": "tool_call", "content": '{"name": "get_weather", "arguments": {"city": "Kyoto"}}'},
        {"role": "tool_call", "content": '{"name": "ping", "arguments": {}}'},
        {"role": "tool", "content": "sunny"},
        {"role": "tool", "content": "pong"},
        {"role": "assistant", "content": "Sunny."},
        {"role": "user", "content": "And now?"},
        {"role": "tool_call", "content": '{"name": "get_weather", "arguments": {"city": "Kyoto"}}'},
        {"role": "tool", "content": "rain"},
    ]


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", "null", '"text"'])
def test_past_arguments_that_are_not_a_json_object_are_a_400_naming_them(arguments: str) -> None:
    messages = (
        Msg("user", "hi"),
        Msg("assistant", "", (ToolCall("call_a", "ping", "{}"), ToolCall("c", "x", arguments))),
    )
    with pytest.raises(InvalidRequest) as info:
        swift_messages(messages)
    assert info.value.param == "messages[1].tool_calls[1].function.arguments"


def test_call_markers_come_from_each_agent_templates_own_markup() -> None:
    markers = {name: call_markers(agent_template_map[name]()) for name in ("hermes", "react_en", "qwen_en", "llama3")}
    assert markers["hermes"] == ("<tool_call>", "Action:")
    assert markers["react_en"] == ("Action:",)
    assert markers["qwen_en"][0] == "✿FUNCTION✿:"
    assert markers["llama3"] == ("Action:",)  # bare JSON: no markup before the call


HERMES_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Kyoto", "unit": "celsius"}}\n</tool_call>'


def test_auto_reads_calls_out_of_hermes_markup_and_keeps_the_text_before_it() -> None:
    hermes = agent_template_map["hermes"]()
    use = ToolUse(TOOLS, "auto")
    text, calls, finish = auto_reply(f"Let me check.\n{HERMES_CALL}\n{HERMES_CALL}", FinishReason.STOP, use, hermes)
    assert (text, finish) == ("Let me check.", FinishReason.TOOL_CALLS)
    assert [(c.index, c.name, c.arguments) for c in calls] == [
        (0, "get_weather", '{"city":"Kyoto","unit":"celsius"}'),
        (1, "get_weather", '{"city":"Kyoto","unit":"celsius"}'),
    ]
    assert calls[0].id != calls[1].id
    # A call alone: no content.
    assert auto_reply(HERMES_CALL, FinishReason.STOP, use, hermes)[0] == ""
    # ReAct, which every agent template also reads.
    react = "Thought: look it up\nAction: ping\nAction Input: {}"
    text, calls, finish = auto_reply(react, FinishReason.STOP, use, hermes)
    assert (text, [c.name for c in calls], finish) == ("Thought: look it up", ["ping"], FinishReason.TOOL_CALLS)


def test_auto_without_a_valid_call_is_the_text_as_written() -> None:
    hermes = agent_template_map["hermes"]()
    use = ToolUse(TOOLS, "auto")
    for text in (
        "Dew settles on the grass.",
        '<tool_call>\n{"name": "unknown_tool", "arguments": {}}\n</tool_call>',  # not one of the tools
        '<tool_call>\n{"name": "ping", "arguments": [1]}\n</tool_call>',  # arguments not an object
        '<tool_call>\n{"name": "ping", "argu',  # unfinished
    ):
        assert auto_reply(text, FinishReason.STOP, use, hermes) == (text, (), FinishReason.STOP)


def test_auto_cut_by_max_tokens_gives_no_calls_and_hides_the_markup() -> None:
    hermes = agent_template_map["hermes"]()
    use = ToolUse(TOOLS, "auto")
    assert auto_reply(f"Looking.\n{HERMES_CALL}\nmore", FinishReason.LENGTH, use, hermes) == (
        "Looking.",
        (),
        FinishReason.LENGTH,
    )
    assert auto_reply("Dew on the", FinishReason.LENGTH, use, hermes) == ("Dew on the", (), FinishReason.LENGTH)
    assert text_before_calls("a Action: b <tool_call>", ("<tool_call>", "Action:")) == "a"
