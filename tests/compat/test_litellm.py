"""`litellm` as its users call an OpenAI-compatible server (`model="openai/<name>"`, `api_base`, `api_key`),
against the sim stack: plain, streamed (and rebuilt with `stream_chunk_builder`), `response_format` json_schema
(a dict and a pydantic model), and tools. The async `acompletion`, since the gateway serves in the test's own
event loop.

litellm fetches its model price list from the internet when imported unless `LITELLM_LOCAL_MODEL_COST_MAP` is
set: the `litellm` fixture sets it and imports litellm under `no_internet` (tests/compat/conftest.py), which fails
a test that reaches out, the import included."""

from __future__ import annotations

import importlib
import json
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any

import jsonschema
import pytest

from tests.compat.conftest import (
    FORECAST_PARAMETERS,
    FORECAST_TOOL,
    SIM_TEXT,
    SIM_TOKENS,
    TIDE_TOOL,
    Haiku,
    assert_valid_call,
)
from tests.conftest import MODEL, TEST_KEY, RunningGateway

PROMPT = [{"role": "user", "content": "a poem about dew"}]
# litellm's own pydantic models warn on import and on use; not this project's to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*ReadOnly.*:UserWarning"),
    pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince211"),
]
Complete = Callable[..., Awaitable[Any]]


@pytest.fixture
def litellm(monkeypatch: pytest.MonkeyPatch, no_internet: list[str]) -> ModuleType:
    """litellm, imported offline (its bundled price list), with no retries: each call is one request."""
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    module = importlib.import_module("litellm")
    monkeypatch.setattr(module, "suppress_debug_info", True)
    monkeypatch.setattr(module, "num_retries", 0, raising=False)
    return module


@pytest.fixture
def complete(litellm: ModuleType, gateway: RunningGateway) -> Complete:
    """`litellm.acompletion` pointed at the gateway (`messages`: `PROMPT` unless given)."""

    async def call(**kwargs: Any) -> Any:
        return await litellm.acompletion(
            model=f"openai/{MODEL}", api_base=gateway.url + "/v1", api_key=TEST_KEY, timeout=30, max_retries=0,
            **{"messages": PROMPT, **kwargs},
        )  # fmt: skip

    return call


async def test_completion_answers_the_sim_text(complete: Complete) -> None:
    response = await complete()
    [choice] = response.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == SIM_TEXT
    assert choice.finish_reason == "stop"
    assert response.usage.completion_tokens == SIM_TOKENS

    cut = await complete(max_tokens=2, temperature=0.0, seed=7, stop=["\n\n"])
    assert cut.choices[0].message.content == "white dew"
    assert cut.choices[0].finish_reason == "length"


async def test_streamed_completion_assembles_to_the_same_text(litellm: ModuleType, complete: Complete) -> None:
    stream = await complete(stream=True, stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    pieces = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    assert "".join(pieces) == SIM_TEXT
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    rebuilt = litellm.stream_chunk_builder(chunks, messages=PROMPT)
    assert rebuilt is not None
    assert rebuilt.choices[0].message.content == SIM_TEXT
    assert rebuilt.usage.completion_tokens == SIM_TOKENS


async def test_response_format_json_schema_validates(complete: Complete) -> None:
    schema = Haiku.model_json_schema()
    schema["additionalProperties"] = False
    response_format = {"type": "json_schema", "json_schema": {"name": "haiku", "schema": schema, "strict": True}}
    response = await complete(response_format=response_format)
    content = response.choices[0].message.content
    jsonschema.validate(json.loads(content), schema)

    # A pydantic model, which litellm turns into a json_schema response_format itself.
    typed = await complete(response_format=Haiku)
    assert Haiku.model_validate_json(typed.choices[0].message.content).lines


async def test_a_named_tool_call_validates_and_its_result_continues(complete: Complete) -> None:
    named = await complete(
        tools=[FORECAST_TOOL, TIDE_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_forecast"}},
    )
    assert named.choices[0].finish_reason == "tool_calls"
    [call] = named.choices[0].message.tool_calls
    assert call.function.name == "get_forecast"
    arguments = assert_valid_call(call.id, call.function.name, call.function.arguments)
    jsonschema.validate(arguments, FORECAST_PARAMETERS)

    # The call and its result sent back (litellm's message dumped as history; litellm drops its null `content`,
    # which OpenAI allows on an assistant turn with tool_calls), then a text answer.
    history = [
        *PROMPT,
        named.choices[0].message.model_dump(),
        {"role": "tool", "tool_call_id": call.id, "content": "clear at dawn"},
    ]
    answer = await complete(messages=history, tools=[FORECAST_TOOL, TIDE_TOOL])
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "stop"


async def test_auto_tool_choice_calls_the_tool_the_user_names(complete: Complete) -> None:
    messages = [{"role": "user", "content": "what does get_tide say for Dover?"}]
    auto = await complete(messages=messages, tools=[FORECAST_TOOL, TIDE_TOOL])
    assert auto.choices[0].finish_reason == "tool_calls"
    [call] = auto.choices[0].message.tool_calls
    assert call.function.name == "get_tide"
    assert_valid_call(call.id, call.function.name, call.function.arguments)


async def test_streamed_required_calls_rebuild_into_valid_calls(litellm: ModuleType, complete: Complete) -> None:
    stream = await complete(tools=[FORECAST_TOOL, TIDE_TOOL], tool_choice="required", stream=True)
    chunks = [chunk async for chunk in stream]
    rebuilt = litellm.stream_chunk_builder(chunks, messages=PROMPT)
    assert rebuilt is not None
    assert rebuilt.choices[0].finish_reason == "tool_calls"
    calls = rebuilt.choices[0].message.tool_calls
    assert calls
    for call in calls:
        assert_valid_call(call.id, call.function.name, call.function.arguments)
