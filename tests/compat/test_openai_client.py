"""The official `openai` client as its users call it, against the sim stack: chat (plain, streamed, `parse` with a
pydantic model, log probabilities, tools named, required and auto, history from `model_dump()`), legacy
completions, models, and the Responses API (create, stream, `previous_response_id`), plus every optional field an
SDK may send at its no-op value."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import openai
import pydantic
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
from tests.integration.test_openai_fields import EVERY_OPTIONAL_FIELD_AT_ITS_NO_OP
from tests.integration.test_responses_api import NOOPS as RESPONSES_NOOPS

PROMPT = [{"role": "user", "content": "a poem about dew"}]
FORECAST_CHOICE = {"type": "function", "function": {"name": "get_forecast"}}


@pytest.fixture
async def sdk(gateway: RunningGateway) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=30) as c:
        yield c


@pytest.fixture
async def stored_sdk(stored_gateway: RunningGateway) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=stored_gateway.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=30
    ) as client:
        yield client


# --------------------------------------------------------------------------- chat completions


async def test_chat_create_answers_the_sim_text(sdk: openai.AsyncOpenAI) -> None:
    completion = await sdk.chat.completions.create(model=MODEL, messages=PROMPT)
    assert completion.object == "chat.completion"
    assert completion.id
    assert completion.model == MODEL
    [choice] = completion.choices
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == SIM_TEXT
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == SIM_TOKENS
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + SIM_TOKENS

    cut = await sdk.chat.completions.create(model=MODEL, messages=PROMPT, max_completion_tokens=2, n=2)
    assert [(c.index, c.message.content, c.finish_reason) for c in cut.choices] == [
        (0, "white dew", "length"),
        (1, "white dew", "length"),
    ]


async def test_streamed_chat_assembles_to_the_same_text(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model=MODEL, messages=PROMPT, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk.id for chunk in chunks}) == 1
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) == SIM_TOKENS  # a token at a time
    assert "".join(pieces) == SIM_TEXT
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == SIM_TOKENS

    # The SDK's own stream helper accumulates the same reply.
    async with sdk.chat.completions.stream(model=MODEL, messages=PROMPT) as helper:
        deltas = [event.delta async for event in helper if event.type == "content.delta"]
        final = await helper.get_final_completion()
    assert "".join(deltas) == SIM_TEXT
    assert final.choices[0].message.content == SIM_TEXT
    assert final.choices[0].finish_reason == "stop"


async def test_parse_with_a_pydantic_model_gives_an_instance(sdk: openai.AsyncOpenAI) -> None:
    completion = await sdk.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "a haiku about dew, as JSON"}], response_format=Haiku
    )
    message = completion.choices[0].message
    assert isinstance(message.parsed, Haiku)
    assert message.parsed.lines
    assert Haiku.model_validate_json(message.content or "") == message.parsed
    assert completion.choices[0].finish_reason == "stop"

    # Streamed, the helper parses the assembled JSON the same way.
    async with sdk.chat.completions.stream(model=MODEL, messages=PROMPT, response_format=Haiku) as stream:
        final = await stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Haiku)

    # json_object: any JSON object.
    loose = await sdk.chat.completions.create(model=MODEL, messages=PROMPT, response_format={"type": "json_object"})
    assert isinstance(json.loads(loose.choices[0].message.content or ""), dict)


async def test_logprobs_cover_each_emitted_token_streamed_and_not(sdk: openai.AsyncOpenAI) -> None:
    completion = await sdk.chat.completions.create(model=MODEL, messages=PROMPT, logprobs=True, top_logprobs=3)
    choice = completion.choices[0]
    assert choice.logprobs is not None
    entries = choice.logprobs.content or []
    assert completion.usage is not None
    assert len(entries) == completion.usage.completion_tokens == SIM_TOKENS
    assert "".join(entry.token for entry in entries) == choice.message.content == SIM_TEXT
    for entry in entries:
        assert entry.logprob <= 0
        assert entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 3
        ranked = [top.logprob for top in entry.top_logprobs]
        assert ranked == sorted(ranked, reverse=True)
        assert all(top.logprob <= 0 for top in entry.top_logprobs)

    stream = await sdk.chat.completions.create(model=MODEL, messages=PROMPT, logprobs=True, stream=True)
    streamed = [
        entry
        async for chunk in stream
        if chunk.choices and chunk.choices[0].logprobs
        for entry in chunk.choices[0].logprobs.content or []
    ]
    assert "".join(entry.token for entry in streamed) == SIM_TEXT
    assert [e.logprob for e in streamed] == [e.logprob for e in entries]  # the same tokens, the same numbers

    plain = await sdk.chat.completions.create(model=MODEL, messages=PROMPT)
    assert plain.choices[0].logprobs is None


# --------------------------------------------------------------------------- tools


async def test_a_named_tool_call_validates_and_its_result_continues_the_conversation(sdk: openai.AsyncOpenAI) -> None:
    question = {"role": "user", "content": "Will there be dew in Kyoto tomorrow?"}
    reply = await sdk.chat.completions.create(
        model=MODEL, messages=[question], tools=[FORECAST_TOOL, TIDE_TOOL], tool_choice=FORECAST_CHOICE
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "get_forecast"
    assert_valid_call(call.id, call.function.name, call.function.arguments)

    # History kept as SDK users keep it: the reply's full dump, nulls and all, then the tool's result.
    history: list[Any] = [
        question,
        choice.message.model_dump(),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"forecast": "clear, 4 °C at dawn"})},
    ]
    answer = await sdk.chat.completions.create(model=MODEL, messages=history, tools=[FORECAST_TOOL, TIDE_TOOL])
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content  # after a tool result the sim answers in text
    assert answer.choices[0].message.tool_calls is None
    assert answer.usage is not None
    assert reply.usage is not None
    assert answer.usage.prompt_tokens > reply.usage.prompt_tokens  # the call and its result reached the prompt


async def test_a_hand_written_call_history_without_content_is_accepted(sdk: openai.AsyncOpenAI) -> None:
    # OpenAI's own examples (and litellm) send the assistant turn that made calls without a `content` key.
    history: list[Any] = [
        {"role": "user", "content": "Will there be dew in Kyoto tomorrow?"},
        {
            "role": "assistant",
            "tool_calls": [{
                "id": "call_0123456789abcdef01234567", "type": "function",
                "function": {"name": "get_forecast", "arguments": '{"city": "Kyoto", "unit": "celsius", "days": 1}'},
            }],
        },
        {"role": "tool", "tool_call_id": "call_0123456789abcdef01234567", "content": "clear, 4 °C at dawn"},
    ]  # fmt: skip
    answer = await sdk.chat.completions.create(model=MODEL, messages=history, tools=[FORECAST_TOOL])
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "stop"


async def test_required_tool_choice_makes_at_least_one_valid_call(sdk: openai.AsyncOpenAI) -> None:
    messages = [{"role": "user", "content": "Plan a morning walk by the sea."}]
    reply = await sdk.chat.completions.create(
        model=MODEL, messages=messages, tools=[FORECAST_TOOL, TIDE_TOOL], tool_choice="required"
    )
    assert reply.choices[0].finish_reason == "tool_calls"
    calls = reply.choices[0].message.tool_calls or []
    assert calls
    for call in calls:
        assert_valid_call(call.id, call.function.name, call.function.arguments)
    assert len({call.id for call in calls}) == len(calls)

    single = await sdk.chat.completions.create(
        model=MODEL, messages=messages, tools=[FORECAST_TOOL, TIDE_TOOL], tool_choice="required",
        parallel_tool_calls=False,
    )  # fmt: skip
    [call] = single.choices[0].message.tool_calls or []
    assert_valid_call(call.id, call.function.name, call.function.arguments)


async def test_auto_tool_choice_calls_a_named_tool_or_answers_in_text(sdk: openai.AsyncOpenAI) -> None:
    asked = await sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Call get_forecast for Kyoto, please."}],
        tools=[FORECAST_TOOL, TIDE_TOOL],
    )
    assert asked.choices[0].finish_reason == "tool_calls"
    [call] = asked.choices[0].message.tool_calls or []
    assert call.function.name == "get_forecast"
    assert_valid_call(call.id, call.function.name, call.function.arguments)

    chatted = await sdk.chat.completions.create(
        model=MODEL, messages=PROMPT, tools=[FORECAST_TOOL, TIDE_TOOL], tool_choice="auto"
    )
    assert chatted.choices[0].finish_reason == "stop"
    assert chatted.choices[0].message.content == SIM_TEXT
    assert chatted.choices[0].message.tool_calls is None


class Forecast(pydantic.BaseModel):
    """A pydantic function tool (`openai.pydantic_function_tool`): strict parameters the SDK parses back."""

    city: str
    days: int = pydantic.Field(ge=1, le=7)


async def test_streamed_tool_calls_assemble_in_the_sdk_helper(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model=MODEL, messages=PROMPT, tools=[FORECAST_TOOL], tool_choice=FORECAST_CHOICE, stream=True
    )
    pieces = [
        piece
        async for chunk in stream
        if chunk.choices and chunk.choices[0].delta.tool_calls
        for piece in chunk.choices[0].delta.tool_calls
    ]
    assert pieces
    first = pieces[0]
    assert first.index == 0
    assert first.id is not None
    assert first.function is not None
    assert first.function.name == "get_forecast"
    arguments = "".join(p.function.arguments or "" for p in pieces if p.function)
    jsonschema.validate(json.loads(arguments), FORECAST_PARAMETERS)

    tool = openai.pydantic_function_tool(Forecast, name="get_forecast")
    async with sdk.chat.completions.stream(
        model=MODEL, messages=PROMPT, tools=[tool], tool_choice=FORECAST_CHOICE
    ) as helper:
        final = await helper.get_final_completion()
    [call] = final.choices[0].message.tool_calls or []
    assert isinstance(call.function.parsed_arguments, Forecast)
    assert final.choices[0].finish_reason == "tool_calls"


# --------------------------------------------------------------------------- legacy completions, models


async def test_legacy_completions_with_logprobs(sdk: openai.AsyncOpenAI) -> None:
    completion = await sdk.completions.create(model=MODEL, prompt="White dew", max_tokens=4, logprobs=2)
    [choice] = completion.choices
    assert choice.text == "white dew settles on"
    assert choice.finish_reason == "length"
    assert choice.logprobs is not None
    assert "".join(choice.logprobs.tokens or []) == choice.text
    assert all(lp <= 0 for lp in choice.logprobs.token_logprobs or [])
    assert [len(top) for top in choice.logprobs.top_logprobs or []] == [2] * 4

    with pytest.raises(openai.BadRequestError) as info:
        await sdk.completions.create(model=MODEL, prompt="White dew", echo=True)
    assert (info.value.param, info.value.code) == ("echo", "unsupported_value")


async def test_models_are_listed_and_retrieved(sdk: openai.AsyncOpenAI) -> None:
    listed = [model.id async for model in sdk.models.list()]
    assert listed == [MODEL]
    retrieved = await sdk.models.retrieve(MODEL)
    assert (retrieved.id, retrieved.object) == (MODEL, "model")
    with pytest.raises(openai.NotFoundError):
        await sdk.models.retrieve("no-such-model")


# --------------------------------------------------------------------------- every field at its no-op


async def test_every_optional_field_at_its_no_op_is_accepted(sdk: openai.AsyncOpenAI) -> None:
    chat = await sdk.chat.completions.create(model=MODEL, messages=PROMPT, **EVERY_OPTIONAL_FIELD_AT_ITS_NO_OP)
    assert chat.choices[0].message.content == SIM_TEXT
    text = await sdk.completions.create(
        model=MODEL, prompt="White dew", max_tokens=2, echo=False, best_of=1, suffix=None, logit_bias=None,
        logprobs=None, seed=None, stop=None, stream=False, temperature=None, top_p=None, user=None,
        frequency_penalty=None, presence_penalty=None, n=None,
    )  # fmt: skip
    assert text.choices[0].text == "white dew"
    response = await sdk.responses.create(model=MODEL, input="a poem about dew", **RESPONSES_NOOPS)
    assert response.output_text == SIM_TEXT


# --------------------------------------------------------------------------- Responses API


async def test_responses_create_with_text_and_message_input(sdk: openai.AsyncOpenAI) -> None:
    plain = await sdk.responses.create(model=MODEL, input="a poem about dew", instructions="Answer in one line.")
    assert plain.object == "response"
    assert plain.id.startswith("resp_")
    assert plain.status == "completed"
    assert plain.instructions == "Answer in one line."
    assert plain.output_text == SIM_TEXT
    assert plain.usage is not None
    assert plain.usage.output_tokens == SIM_TOKENS

    conversation = await sdk.responses.create(
        model=MODEL,
        instructions="Be brief.",
        input=[
            {"role": "user", "content": "a poem"},
            {"role": "assistant", "content": "which kind?"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "about dew"}]},
        ],
        max_output_tokens=2,
    )
    assert conversation.status == "incomplete"
    assert conversation.incomplete_details is not None
    assert conversation.incomplete_details.reason == "max_output_tokens"
    assert conversation.output_text == "white dew"


async def test_responses_stream_with_the_helper_and_with_stream_true(sdk: openai.AsyncOpenAI) -> None:
    async with sdk.responses.stream(model=MODEL, input="a poem about dew") as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert len(deltas) == SIM_TOKENS
    assert "".join(deltas) == final.output_text == SIM_TEXT

    raw = await sdk.responses.create(model=MODEL, input="a poem about dew", stream=True)
    sent = [event async for event in raw]
    assert [e.sequence_number for e in sent] == list(range(len(sent)))
    text = "".join(e.delta for e in sent if e.type == "response.output_text.delta")
    assert text == SIM_TEXT
    completed = sent[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == SIM_TEXT


async def test_previous_response_id_continues_a_stored_response(stored_sdk: openai.AsyncOpenAI) -> None:
    first = await stored_sdk.responses.create(model=MODEL, input="a poem about dew")
    second = await stored_sdk.responses.create(model=MODEL, input="now about frost", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    assert second.output_text
    assert first.usage is not None
    assert second.usage is not None
    # The earlier turn (its input and the sim's answer) is in the second prompt.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    retrieved = await stored_sdk.responses.retrieve(second.id)
    assert retrieved.output_text == second.output_text
    with pytest.raises(openai.NotFoundError):
        await stored_sdk.responses.create(model=MODEL, input="more", previous_response_id="resp_" + "0" * 32)
