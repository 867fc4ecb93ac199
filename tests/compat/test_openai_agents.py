"""The openai-agents SDK's agent loop against the sim stack, on the Responses API (`OpenAIResponsesModel`): an agent
with a `function_tool` calls it (its arguments validated by the SDK against the tool's schema before it runs the
function), gets its result back and answers in text; with the whole conversation sent each turn (the SDK's
default) and chained through `previous_response_id` (stored responses). Tracing off: nothing leaves the machine."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from agents import Agent, ModelSettings, RunConfig, Runner, function_tool
from agents.items import ToolCallItem, ToolCallOutputItem
from agents.models.openai_responses import OpenAIResponsesModel

from tests.compat.conftest import CALL_ID, SIM_TEXT
from tests.conftest import MODEL, TEST_KEY, RunningGateway

RUN_CONFIG = RunConfig(tracing_disabled=True)
asked: list[dict[str, Any]] = []


@function_tool
def get_forecast(city: str, days: int) -> str:
    """Tomorrow's weather forecast for a city, `days` days ahead."""
    asked.append({"city": city, "days": days})
    return f"dew in {city} for {days} days"


@pytest.fixture(autouse=True)
def forget_calls() -> None:
    asked.clear()


async def recorded_client(gateway: RunningGateway, paths: list[dict[str, Any]]) -> openai.AsyncOpenAI:
    """The official client of `gateway`, recording each request body it sends."""

    async def record(request: httpx.Request) -> None:
        paths.append({"path": request.url.path, **json.loads(request.content or b"{}")})

    http = httpx.AsyncClient(event_hooks={"request": [record]}, timeout=30)
    return openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=30, http_client=http
    )


def agent(sdk: openai.AsyncOpenAI, **settings: Any) -> Agent[Any]:
    return Agent(
        name="forecaster",
        instructions="Answer weather questions with the tool.",
        model=OpenAIResponsesModel(MODEL, openai_client=sdk),
        tools=[get_forecast],
        model_settings=ModelSettings(**settings),
    )


@pytest.fixture
async def sent(gateway: RunningGateway) -> AsyncIterator[tuple[openai.AsyncOpenAI, list[dict[str, Any]]]]:
    bodies: list[dict[str, Any]] = []
    sdk = await recorded_client(gateway, bodies)
    yield sdk, bodies
    await sdk.close()


def assert_the_tool_ran(result: Any) -> None:
    """The run called the tool once with arguments valid against its schema, then answered in text."""
    calls = [item for item in result.new_items if isinstance(item, ToolCallItem)]
    outputs = [item for item in result.new_items if isinstance(item, ToolCallOutputItem)]
    assert len(calls) == len(outputs) == 1
    raw = calls[0].raw_item
    assert CALL_ID.match(raw.call_id)
    jsonschema.validate(json.loads(raw.arguments), get_forecast.params_json_schema)
    assert len(asked) == 1
    assert outputs[0].output == f"dew in {asked[0]['city']} for {asked[0]['days']} days"
    assert result.final_output == SIM_TEXT


async def test_an_agent_calls_its_function_tool_and_answers_with_its_result(sent) -> None:
    sdk, bodies = sent
    result = await Runner.run(agent(sdk), "Ask get_forecast about Kyoto", run_config=RUN_CONFIG)
    assert_the_tool_ran(result)
    assert [b["path"] for b in bodies] == ["/v1/responses", "/v1/responses"]
    # The second turn sent the whole conversation: the call echoed back, then its output.
    kinds = [item.get("type", "message") for item in bodies[1]["input"]]
    assert kinds[-2:] == ["function_call", "function_call_output"]


async def test_a_forced_tool_choice_is_a_call_whose_arguments_the_sdk_accepts(sent) -> None:
    sdk, _ = sent
    result = await Runner.run(agent(sdk, tool_choice="get_forecast"), "Dew in Kyoto?", run_config=RUN_CONFIG)
    assert_the_tool_ran(result)


async def test_a_run_chained_through_previous_response_id(stored_gateway: RunningGateway) -> None:
    bodies: list[dict[str, Any]] = []
    sdk = await recorded_client(stored_gateway, bodies)
    try:
        result = await Runner.run(
            agent(sdk, tool_choice="required"), "Dew in Kyoto?", run_config=RUN_CONFIG, auto_previous_response_id=True
        )
    finally:
        await sdk.close()
    assert_the_tool_ran(result)
    first, second = bodies
    assert "previous_response_id" not in first or first["previous_response_id"] is None
    assert second["previous_response_id"] == result.raw_responses[0].response_id
    assert [item["type"] for item in second["input"]] == ["function_call_output"]
