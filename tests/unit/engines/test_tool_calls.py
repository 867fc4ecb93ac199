"""Tool use on the engine servers: the request each is sent, the launch flags and capabilities a tool-call parser
brings, the refusals, and recorded tool-call streams (tests/fixtures/engines/*/tool_*.sse) through the codec."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pydantic
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolChoiceOptionParam, ChatCompletionToolParam

from bailu.common import errors
from bailu.common.types import (
    TOOL_AUTO,
    TOOL_FUNCTION,
    TOOL_NONE,
    TOOL_REQUIRED,
    ChatMessage,
    FinishReason,
    GenerateChunk,
    GenerateRequest,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolUse,
)
from bailu.worker.engines.server import openai_http as oai
from bailu.worker.engines.server.dialects import DIALECTS, LMDEPLOY, Dialect, LaunchConfig
from bailu.worker.engines.server.http import HttpEngine
from bailu.worker.engines.server.openai_tools import ToolCallReader
from bailu.worker.settings import WorkerSettings
from tests.unit.engines.conftest import check_stream_contract, expected, replay, sample

pytestmark = pytest.mark.usefixtures("clean_bailu_env")

WEATHER = Tool(
    "get_weather",
    "The weather in a city.",
    json.dumps({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
)
CLOCK = Tool("get_time")  # no description, no parameters
TOOLS = (WEATHER, CLOCK)
# Per engine, with a tool-call parser: (tool_choice auto, forced calls), as dialects.py cites from the sources.
SERVED = {"vllm": (True, True), "sglang": (True, True), "lmdeploy": (True, False), "swift": (False, False)}
# Per engine: the flags that name the parser (ms-swift takes none: its agent template is another setting).
PARSER_FLAGS = {
    "vllm": ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"],
    "sglang": ["--tool-call-parser", "hermes"],
    "lmdeploy": ["--tool-call-parser", "hermes"],
    "swift": [],
}
STREAMS = [
    ("vllm", "tool_required_stream.sse"),
    ("vllm", "tool_named_stream.sse"),
    ("sglang", "tool_stream.sse"),
    ("lmdeploy", "tool_stream.sse"),
    ("swift", "tool_stream.sse"),
]
CONFIG = LaunchConfig(
    model_path=Path("/models/base/Qwen2.5-7B-Instruct"),
    served_name="qwen",
    host="127.0.0.1",
    port=31337,
    max_model_len=8192,
    max_batch_size=16,
    adapters={"poet-3f2a": "/models/adapters/poet/v3"},
)


def chat(use: ToolUse, *history: ChatMessage) -> GenerateRequest:
    messages = history or (ChatMessage("user", "Weather in Hangzhou?"),)
    return GenerateRequest("r", "qwen", messages=messages, tools=use)


def with_parser(parser: str, field: str = "tool_call_parser") -> LaunchConfig:
    return LaunchConfig(**{**{f: getattr(CONFIG, f) for f in CONFIG.__dataclass_fields__}, field: parser})


# --------------------------------------------------------------------------- request bodies


@pytest.mark.parametrize(
    ("use", "choice"),
    [
        (ToolUse(TOOLS, TOOL_AUTO), "auto"),
        (ToolUse(TOOLS, TOOL_REQUIRED, parallel=False), "required"),
        (ToolUse(TOOLS, TOOL_FUNCTION, WEATHER.name), {"type": "function", "function": {"name": WEATHER.name}}),
    ],
    ids=["auto", "required", "function"],
)
@pytest.mark.parametrize("dialect", list(DIALECTS.values()), ids=list(DIALECTS))
def test_active_tool_use_is_sent_as_openais_fields(dialect: Dialect, use: ToolUse, choice: object) -> None:
    body = oai.request_body(chat(use), "qwen", 64, dialect.stream_options)
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        },
        # No parameters: an object schema without properties (SGLang builds its constraint from it).
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
    ]
    assert body["tool_choice"] == choice
    assert body["parallel_tool_calls"] is use.parallel
    # The shapes are OpenAI's own (vLLM and SGLang validate against the same definitions).
    pydantic.TypeAdapter(list[ChatCompletionToolParam]).validate_python(body["tools"], strict=True)
    pydantic.TypeAdapter(ChatCompletionToolChoiceOptionParam).validate_python(body["tool_choice"], strict=True)
    assert body["stream"] is True


@pytest.mark.parametrize("use", [ToolUse(), ToolUse((WEATHER,), TOOL_NONE)], ids=["no-tools", "choice-none"])
def test_inactive_tool_use_shows_the_model_no_tools(use: ToolUse) -> None:
    body = oai.request_body(chat(use), "qwen", 64, {})
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(body)


@pytest.mark.parametrize("dialect", list(DIALECTS.values()), ids=list(DIALECTS))
def test_history_with_calls_and_results_is_sent_as_openai_messages(dialect: Dialect) -> None:
    history = (
        ChatMessage("user", "Weather in Hangzhou and Suzhou?"),
        ChatMessage(
            "assistant",
            "",
            tool_calls=(
                ToolCall("call_0123456789abcdef01234567", "get_weather", '{"city": "Hangzhou"}'),
                ToolCall("call_89abcdef0123456789abcdef", "get_weather", '{"city": "Suzhou"}'),
            ),
        ),
        ChatMessage("tool", "sunny", tool_call_id="call_0123456789abcdef01234567"),
        ChatMessage("tool", "misty", tool_call_id="call_89abcdef0123456789abcdef"),
        ChatMessage("assistant", "Checking once more.", tool_calls=(ToolCall("call_1", "get_time", "{}"),)),
        ChatMessage("tool", "06:10", tool_call_id="call_1"),
    )
    request = chat(ToolUse((WEATHER,), TOOL_NONE), *history)
    messages = oai.request_body(request, "qwen", 64, {}, null_call_content=dialect.null_call_content)["messages"]
    assert messages[1] == {
        "role": "assistant",
        # No text beside the calls: null, as OpenAI sends it, but "" for ms-swift (a 500 on null).
        "content": "" if dialect.kind == "swift" else None,
        "tool_calls": [
            {
                "id": "call_0123456789abcdef01234567",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Hangzhou"}'},
            },
            {
                "id": "call_89abcdef0123456789abcdef",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Suzhou"}'},
            },
        ],
    }
    assert messages[2] == {"role": "tool", "tool_call_id": "call_0123456789abcdef01234567", "content": "sunny"}
    assert messages[4]["content"] == "Checking once more."
    assert messages[0] == {"role": "user", "content": "Weather in Hangzhou and Suzhou?"}
    for message in messages:
        pydantic.TypeAdapter(ChatCompletionMessageParam).validate_python(message, strict=True)


# --------------------------------------------------------------------------- launch flags and capabilities


def test_every_engine_server_is_listed() -> None:
    assert set(SERVED) == set(DIALECTS) == set(PARSER_FLAGS)


@pytest.mark.parametrize("kind", sorted(DIALECTS))
def test_a_tool_call_parser_adds_the_engines_flags(kind: str) -> None:
    dialect = DIALECTS[kind]
    argv = dialect.argv(with_parser("hermes"))
    flags = PARSER_FLAGS[kind]
    if not flags:
        assert argv == dialect.argv(CONFIG)
        return
    start = argv.index(flags[0])
    assert argv[start : start + len(flags)] == flags
    assert argv.count(flags[-2]) == 1
    # Nothing else changes, and without a parser none of these flags is passed.
    assert [a for a in argv if a not in flags] == dialect.argv(CONFIG)
    assert not set(flags) & set(dialect.argv(CONFIG))


@pytest.mark.parametrize("kind", sorted(DIALECTS))
def test_only_ms_swift_takes_the_agent_template(kind: str) -> None:
    argv = DIALECTS[kind].argv(with_parser("react_en", "agent_template"))
    if kind == "swift":
        assert argv[argv.index("--agent_template") + 1] == "react_en"
        assert argv.index("--agent_template") < argv.index("--adapters")
    else:
        assert argv == DIALECTS[kind].argv(CONFIG)


def test_lmdeploy_adapters_stay_last_with_a_parser() -> None:
    argv = LMDEPLOY.argv(with_parser("qwen"))
    assert argv[argv.index("--adapters") :] == ["--adapters", "poet-3f2a=/models/adapters/poet/v3"]


@pytest.mark.parametrize("kind", sorted(SERVED))
def test_tool_capabilities_follow_the_parser(kind: str) -> None:
    dialect = DIALECTS[kind]
    auto, forced = SERVED[kind]
    launched = dialect.launched_capabilities(with_parser("hermes"))
    assert (launched.auto_tool_choice, launched.tool_calls) == (auto, forced)
    bare = dialect.launched_capabilities(CONFIG)
    assert (bare.auto_tool_choice, bare.tool_calls) == (False, False)
    assert (dialect.capabilities.auto_tool_choice, dialect.capabilities.tool_calls) == (False, False)
    # The parser changes nothing else.
    assert {**vars_of(launched), "tool_calls": False, "auto_tool_choice": False} == vars_of(bare)


def vars_of(capabilities: object) -> dict[str, Any]:
    return {name: getattr(capabilities, name) for name in capabilities.__dataclass_fields__}  # type: ignore[attr-defined]


def test_the_parser_setting_reaches_the_command_line_and_capabilities(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BAILU_WORKER_TOOL_CALL_PARSER", "llama3_json")
    engine = HttpEngine.from_settings(WorkerSettings(engine="vllm", model_path=tmp_path))
    argv = engine.server.argv()
    assert argv[argv.index("--enable-auto-tool-choice") + 1 : argv.index("--tool-call-parser") + 2] == [
        "--tool-call-parser",
        "llama3_json",
    ]
    assert (engine.capabilities.auto_tool_choice, engine.capabilities.tool_calls) == (True, True)
    assert WorkerSettings().tool_call_parser == "llama3_json"


@pytest.mark.parametrize("value", ["hermes --enable-lora", "a;b", "qwen\n"])
def test_a_parser_name_that_is_not_one_word_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("BAILU_WORKER_TOOL_CALL_PARSER", value)
    with pytest.raises(pydantic.ValidationError, match="tool_call_parser"):
        WorkerSettings()


@pytest.mark.parametrize(
    ("kind", "parser", "use", "message"),
    [
        ("vllm", "", ToolUse((WEATHER,), TOOL_AUTO), "tool_choice auto needs a tool-call parser"),
        ("sglang", "", ToolUse((WEATHER,), TOOL_REQUIRED), "tool_choice required needs a tool-call parser"),
        ("lmdeploy", "qwen", ToolUse((WEATHER,), TOOL_FUNCTION, "get_weather"), "cannot force tool calls"),
        ("swift", "hermes", ToolUse((WEATHER,), TOOL_AUTO), "the swift engine does not serve tool_choice auto"),
    ],
    ids=["vllm-no-parser", "sglang-no-parser", "lmdeploy-forced", "swift"],
)
async def test_tool_use_the_engine_does_not_serve_is_refused_before_sending(
    kind: str, parser: str, use: ToolUse, message: str, tmp_path: Path
) -> None:
    settings = WorkerSettings(engine=kind, model_name="qwen", model_path=tmp_path, tool_call_parser=parser)
    engine = HttpEngine.from_settings(settings)
    # The server was never started: the refusal comes first, without waiting for it.
    with pytest.raises(errors.UnsupportedValue) as info:
        await anext(engine.generate(chat(use)))
    assert info.value.param == "tool_choice"
    assert message in info.value.message


# --------------------------------------------------------------------------- recorded streams


def assemble(chunks: list[GenerateChunk]) -> list[dict[str, str]]:
    """The calls the pieces make, checking the piece contract: a call starts with its id and name (numbered in
    order), later pieces carry only more arguments."""
    calls: list[dict[str, str]] = []
    for delta in (d for c in chunks for d in c.tool_calls):
        if delta.index == len(calls):
            assert delta.id, delta
            assert delta.name, delta
            calls.append({"id": delta.id, "name": delta.name, "arguments": delta.arguments})
        else:
            assert delta.index < len(calls), delta
            assert (delta.id, delta.name) == ("", ""), delta
            assert delta.arguments, delta
            calls[delta.index]["arguments"] += delta.arguments
    return calls


@pytest.mark.parametrize(("engine", "name"), STREAMS, ids=[f"{e}/{n}" for e, n in STREAMS])
async def test_recorded_tool_stream_becomes_tool_call_pieces(engine: str, name: str) -> None:
    want = expected(engine)[name]
    chunks = await replay(sample(engine, name))
    assert assemble(chunks) == want["calls"]
    assert all(json.loads(call["arguments"]) for call in want["calls"])
    check_stream_contract(chunks, want)


async def test_without_parallel_calls_only_the_first_call_is_kept() -> None:
    chunks = await replay(sample("vllm", "tool_required_stream.sse"), ToolCallReader(parallel=False))
    calls = assemble(chunks)
    assert [c["name"] for c in calls] == ["get_weather"]
    assert calls[0]["arguments"] == '{"city": "Hangzhou", "unit": "celsius"}'
    assert chunks[-1].finish_reason is FinishReason.TOOL_CALLS


async def test_a_call_to_a_request_without_tools_is_an_error() -> None:
    with pytest.raises(errors.InternalError, match="offered no tools"):
        await replay(sample("vllm", "tool_named_stream.sse"), ToolCallReader(accept=False))


def event(tool_calls: object, finish: str | None = None) -> str:
    return json.dumps({"choices": [{"index": 0, "delta": {"tool_calls": tool_calls}, "finish_reason": finish}]})


def test_a_call_without_an_id_gets_one_in_openais_form() -> None:
    assembler = oai.StreamAssembler("m")
    piece = {"index": 3, "function": {"name": "get_time", "arguments": {"zone": "CST"}}}
    chunk = assembler.feed(event([piece], "stop"))
    assert chunk is not None
    (delta,) = chunk.tool_calls
    assert re.fullmatch(r"call_[0-9a-f]{24}", delta.id)
    # Renumbered from 0; arguments sent as an object become their JSON text.
    assert (delta.index, delta.name, json.loads(delta.arguments)) == (0, "get_time", {"zone": "CST"})
    assert assembler.last().finish_reason is FinishReason.TOOL_CALLS


@pytest.mark.parametrize(
    "tool_calls",
    [{"index": 0}, ["call"], [{"index": 0, "function": "get_time"}], [{"index": 0, "function": {"arguments": "{}"}}]],
    ids=["not-a-list", "not-an-object", "function-not-an-object", "no-name"],
)
def test_a_malformed_call_is_an_error(tool_calls: object) -> None:
    with pytest.raises(errors.InternalError, match=r"tool.call"):
        oai.StreamAssembler("m").feed(event(tool_calls))


@pytest.mark.parametrize(
    ("calls", "finish", "want"),
    [
        ([], "tool_calls", FinishReason.STOP),  # a finish reason that announces calls no piece made
        ([{"index": 0, "id": "c", "function": {"name": "get_time", "arguments": "{"}}], "length", FinishReason.LENGTH),
        (None, "stop", FinishReason.STOP),
    ],
    ids=["no-calls", "cut-off-call", "text"],
)
def test_the_finish_reason_follows_the_calls_made(calls: object, finish: str, want: FinishReason) -> None:
    assembler = oai.StreamAssembler("m")
    assembler.feed(json.dumps({"choices": [{"index": 0, "delta": {"content": "x", "tool_calls": calls}}]}))
    assembler.feed(json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}))
    assert assembler.last().finish_reason is want


def test_pieces_of_one_event_keep_their_order() -> None:
    assembler = oai.StreamAssembler("m")
    chunk = assembler.feed(
        event(
            [
                {"index": 0, "id": "a", "function": {"name": "get_time", "arguments": ""}},
                {"index": 0, "function": {"arguments": "{}"}},
                {"index": 1, "id": "b", "function": {"name": "get_weather", "arguments": '{"city": "Suzhou"}'}},
            ]
        )
    )
    assert chunk is not None
    assert chunk.tool_calls == (
        ToolCallDelta(0, "a", "get_time", ""),
        ToolCallDelta(0, arguments="{}"),
        ToolCallDelta(1, "b", "get_weather", '{"city": "Suzhou"}'),
    )
