"""The Responses API (`POST /v1/responses`, `GET /v1/responses/{id}`) through the official openai client, against
a real gateway, sim workers and a real redis-server: create, stream, continue, store, retrieve, rate."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pydantic
import pytest
from openai.types.responses import Response as OpenAIResponse
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter
from redis.asyncio import Redis

from bailu.common import redis_keys
from bailu.common.records import CompletionRecord
from tests.conftest import MODEL, OTHER_KEY, TEST_KEY
from tests.integration.test_feedback_gateway import feedback_events, stored, wait_for_record
from tests.integration.test_gateway import schema_validator

RESPONSES = "/v1/responses"
OPENAI_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
SIM_TEXT = "white dew settles on the grass"
STREAM_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    # one `response.output_text.delta` per token here
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


_clients: list[openai.AsyncOpenAI] = []


def client(gateway: Any, key: str = TEST_KEY) -> openai.AsyncOpenAI:
    """The official client of `gateway` with `key` (closed when the test ends)."""
    sdk = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=30)
    _clients.append(sdk)
    return sdk


@pytest.fixture(autouse=True)
async def close_clients():
    yield
    while _clients:
        await _clients.pop().close()


@pytest.fixture
async def stack(start_worker, start_gateway, redis_server):
    worker = await start_worker(sim_output_tokens=6)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"], redis_url=redis_server.url)
    redis = Redis.from_url(redis_server.url)
    async with httpx.AsyncClient(timeout=30) as http:
        document = (await http.get(gateway.url + "/openapi.json")).json()
        yield gateway, http, redis, document
    await redis.aclose()


async def record_of(redis: Redis, response_id: str) -> CompletionRecord:
    await wait_for_record(redis, response_id)
    record = await stored(redis, response_id)
    assert record is not None
    return record


def documented(document: dict[str, Any], status: str, path: str = RESPONSES, method: str = "post") -> dict[str, Any]:
    return document["paths"][path][method]["responses"][status]["content"]


async def raw_events(http: httpx.AsyncClient, gateway: Any, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A stream's events as sent: (the `event:` line, the parsed `data:`)."""
    events, name = [], None
    async with http.stream("POST", gateway.url + RESPONSES, json=body, headers=gateway.headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
                name = None
    return events


async def test_string_input_answers_a_response_that_is_stored_and_documented(stack) -> None:
    gateway, http, redis, document = stack
    sdk = client(gateway)
    response = await sdk.responses.create(model=MODEL, input="a poem about dew", max_output_tokens=32)
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.model == MODEL
    assert response.output_text == SIM_TEXT
    [item] = response.output
    assert item.type == "message"
    assert item.role == "assistant"
    assert item.status == "completed"
    assert response.usage is not None
    assert response.usage.output_tokens == 6
    assert response.usage.input_tokens == 4  # the sim counts words
    assert response.usage.total_tokens == 10
    assert response.max_output_tokens == 32

    raw = await http.post(gateway.url + RESPONSES, json={"model": MODEL, "input": "dew"}, headers=gateway.headers)
    schema_validator(document, documented(document, "200")["application/json"]["schema"]).validate(raw.json())
    assert OpenAIResponse.model_validate(raw.json()).output_text == "white dew settles on the grass"

    record = await record_of(redis, response.id)
    assert record.messages == [{"role": "user", "content": "a poem about dew"}]
    assert record.choices[0].text == SIM_TEXT
    assert record.sampling == {"max_tokens": 32}
    assert record.instructions is None
    assert record.previous_response_id is None


async def test_message_input_and_instructions_lead_the_conversation(stack) -> None:
    gateway, _, redis, _ = stack
    sdk = client(gateway)
    response = await sdk.responses.create(
        model=MODEL,
        instructions="Answer in one line.",
        input=[
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "input_text", "text": "a poem"}, {"type": "input_text", "text": "!"}],
            },
            {"role": "assistant", "content": "which kind?"},
            {"type": "message", "role": "user", "content": "about dew"},
        ],
    )
    assert response.instructions == "Answer in one line."
    assert response.output_text == SIM_TEXT
    record = await record_of(redis, response.id)
    assert record.messages == [
        {"role": "system", "content": "Answer in one line."},
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a poem!"},
        {"role": "assistant", "content": "which kind?"},
        {"role": "user", "content": "about dew"},
    ]
    assert record.instructions == "Answer in one line."


async def test_stream_sends_the_responses_events_in_order_and_the_client_helper_assembles_them(stack) -> None:
    gateway, http, redis, document = stack
    sdk = client(gateway)
    async with sdk.responses.stream(model=MODEL, input="a poem about dew") as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    kinds = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert [k for k in kinds if k != "response.output_text.delta"] == STREAM_EVENTS
    assert kinds[4 : 4 + len(deltas)] == ["response.output_text.delta"] * 6
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(d.delta for d in deltas) == SIM_TEXT
    assert all(d.snapshot for d in deltas)  # the helper accumulated them
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == SIM_TEXT
    assert final.output_text == SIM_TEXT
    assert final.status == "completed"
    assert final.usage is not None
    assert final.usage.output_tokens == 6
    assert len({e.response.id for e in events if hasattr(e, "response")}) == 1
    assert {getattr(e, "item_id", final.output[0].id) for e in events} == {final.output[0].id}
    record = await record_of(redis, final.id)
    assert record.choices[0].text == SIM_TEXT

    # As sent: each event named by its `event:` line, each as the schema documents it; no [DONE].
    sent = await raw_events(http, gateway, {"model": MODEL, "input": "dew", "stream": True})
    payload = documented(document, "200")["text/event-stream"]["schema"]["properties"]["data"]["contentSchema"]
    validator = schema_validator(document, payload)
    for name, data in sent:
        assert name == data["type"]
        validator.validate(data)
        OPENAI_EVENT.validate_python(data)  # as OpenAI's own types describe it, every field included
    assert sent[-1][0] == "response.completed"


async def test_a_response_cut_short_is_incomplete_streamed_and_not(stack) -> None:
    gateway, http, _, _ = stack
    response = await client(gateway).responses.create(model=MODEL, input="dew", max_output_tokens=2)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "white dew"
    sent = await raw_events(http, gateway, {"model": MODEL, "input": "dew", "stream": True, "max_output_tokens": 2})
    assert sent[-1][0] == "response.incomplete"
    assert sent[-1][1]["response"]["output"][0]["status"] == "incomplete"


async def test_previous_response_id_continues_the_stored_conversation_without_its_instructions(stack) -> None:
    gateway, _, redis, _ = stack
    sdk = client(gateway)
    first = await sdk.responses.create(model=MODEL, instructions="Be kind.", input="a poem about dew")
    second = await sdk.responses.create(
        model=MODEL, instructions="Be brief.", previous_response_id=first.id, input="now about frost"
    )
    assert second.previous_response_id == first.id
    assert second.usage is not None
    assert first.usage is not None
    # The sim counts the prompt's words: the earlier input and output are in this one.
    assert second.usage.input_tokens == 2 + 4 + 6 + 3
    record = await record_of(redis, second.id)
    assert record.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a poem about dew"},
        {"role": "assistant", "content": SIM_TEXT},
        {"role": "user", "content": "now about frost"},
    ]
    assert record.previous_response_id == first.id

    # A chain: the third sees both earlier turns, streamed as well.
    async with sdk.responses.stream(model=MODEL, previous_response_id=second.id, input="and rain") as stream:
        third = await stream.get_final_response()
    record = await record_of(redis, third.id)
    assert [m["content"] for m in record.messages or []] == [
        "a poem about dew", SIM_TEXT, "now about frost", SIM_TEXT, "and rain",
    ]  # fmt: skip


async def test_output_items_echoed_back_as_history_are_accepted(stack) -> None:
    # As the openai-agents SDK keeps a conversation: the earlier output items, dumped, go back as input.
    gateway, _, redis, _ = stack
    sdk = client(gateway)
    first = await sdk.responses.create(model=MODEL, input="a poem about dew")
    items = [item.model_dump() for item in first.output]
    assert items[0]["content"][0]["type"] == "output_text"
    second = await sdk.responses.create(
        model=MODEL,
        input=[{"role": "user", "content": "a poem about dew"}, *items, {"role": "user", "content": "more"}],
    )
    record = await record_of(redis, second.id)
    assert record.messages == [
        {"role": "user", "content": "a poem about dew"},
        {"role": "assistant", "content": SIM_TEXT},
        {"role": "user", "content": "more"},
    ]


async def test_store_false_is_neither_retrievable_nor_continuable(stack) -> None:
    gateway, _, redis, _ = stack
    sdk = client(gateway)
    private = await sdk.responses.create(model=MODEL, input="dew", store=False)
    kept = await sdk.responses.create(model=MODEL, input="dew")
    await wait_for_record(redis, kept.id)
    assert await stored(redis, private.id) is None
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(private.id)
    with pytest.raises(openai.NotFoundError) as info:
        await sdk.responses.create(model=MODEL, input="more", previous_response_id=private.id)
    assert info.value.code == "previous_response_not_found"
    assert info.value.param == "previous_response_id"
    assert isinstance(info.value.body, dict)
    assert private.id in info.value.body["message"]


async def test_retrieve_returns_the_stored_response_to_its_key_only(stack) -> None:
    gateway, http, redis, document = stack
    sdk = client(gateway)
    created = await sdk.responses.create(
        model=MODEL, input="dew", instructions="Be kind.", temperature=0.5, metadata={"campaign": "autumn"}
    )
    await wait_for_record(redis, created.id)
    retrieved = await sdk.responses.retrieve(created.id)
    assert retrieved.id == created.id
    assert retrieved.output_text == created.output_text
    assert retrieved.output_text  # sampled with the temperature (the sim starts elsewhere in its text)
    assert retrieved.output[0].id == created.output[0].id
    assert retrieved.metadata == created.metadata == {"campaign": "autumn"}
    assert retrieved.instructions == "Be kind."
    assert retrieved.temperature == 0.5
    assert retrieved.usage == created.usage
    assert retrieved.created_at == created.created_at
    raw = await http.get(f"{gateway.url}{RESPONSES}/{created.id}", headers=gateway.headers)
    schema_validator(document, documented(document, "200", RESPONSES + "/{response_id}", "get")[
        "application/json"]["schema"]).validate(raw.json())  # fmt: skip
    assert OpenAIResponse.model_validate(raw.json()).id == created.id

    other = client(gateway, OTHER_KEY)
    with pytest.raises(openai.NotFoundError):
        await other.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError) as info:
        await other.responses.create(model=MODEL, input="more", previous_response_id=created.id)
    assert info.value.code == "previous_response_not_found"
    # A chat completion's id is not a response of this API.
    chat = await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "dew"}])
    await wait_for_record(redis, chat.id)
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(chat.id)
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.create(model=MODEL, input="more", previous_response_id=chat.id)


async def test_metadata_is_stored_with_the_response(stack) -> None:
    gateway, _, redis, _ = stack
    response = await client(gateway).responses.create(
        model=MODEL, input="dew", metadata={"campaign": "autumn", "ab": "b"}
    )
    assert response.metadata == {"campaign": "autumn", "ab": "b"}
    assert (await record_of(redis, response.id)).metadata == {"campaign": "autumn", "ab": "b"}
    with pytest.raises(openai.BadRequestError) as info:
        await client(gateway).responses.create(model=MODEL, input="dew", metadata={f"k{i}": "v" for i in range(17)})
    assert info.value.param == "metadata"


async def test_feedback_on_a_response_id_reaches_the_feedback_stream(stack) -> None:
    gateway, http, redis, _ = stack
    response = await client(gateway).responses.create(model=MODEL, input="a poem about dew")
    rating = {"type": "rating", "response_id": response.id, "thumb": "up"}
    accepted = await http.post(gateway.url + "/v1/feedback", json=rating, headers=gateway.headers)
    assert accepted.status_code == 202, accepted.text
    [event] = await feedback_events(redis)
    assert event.kind == "rating"
    assert event.target is not None
    assert (event.target.response_id, event.target.choice_index) == (response.id, 0)
    other = await http.post(gateway.url + "/v1/feedback", json=rating, headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert other.status_code == 404
    assert await redis.xlen(redis_keys.FEEDBACK_STREAM) == 1


async def test_logprobs_are_returned_when_included_streamed_and_not(stack) -> None:
    gateway, _, _, _ = stack
    sdk = client(gateway)
    response = await sdk.responses.create(
        model=MODEL, input="dew", include=["message.output_text.logprobs"], top_logprobs=2
    )
    part = response.output[0].content[0]
    assert part.type == "output_text"
    assert part.logprobs is not None
    assert "".join(entry.token for entry in part.logprobs) == SIM_TEXT
    assert len(part.logprobs) == 6
    for entry in part.logprobs:
        assert entry.logprob < 0
        assert len(entry.top_logprobs) == 2
        assert all(top.logprob <= entry.logprob for top in entry.top_logprobs)
    async with sdk.responses.stream(model=MODEL, input="dew", include=["message.output_text.logprobs"]) as stream:
        deltas = [e for e in [event async for event in stream] if e.type == "response.output_text.delta"]
    assert "".join(lp.token for d in deltas for lp in d.logprobs) == SIM_TEXT
    plain = await sdk.responses.create(model=MODEL, input="dew")
    assert plain.output[0].content[0].logprobs == []  # type: ignore[union-attr]


NOOPS: dict[str, Any] = {
    "tools": [],
    "tool_choice": "auto",
    "parallel_tool_calls": True,
    "reasoning": {"effort": None, "summary": None},
    "text": {"format": {"type": "text"}, "verbosity": "medium"},
    "truncation": "disabled",
    "background": False,
    "service_tier": "auto",
    "include": ["reasoning.encrypted_content"],
    "prompt_cache_key": "c1",
    "safety_identifier": "u1",
    "stream_options": {"include_obfuscation": False},
    "max_tool_calls": 3,
    "conversation": None,
    "prompt": None,
    "user": "someone",
}


class Haiku(pydantic.BaseModel):
    title: str
    lines: list[str]


async def test_text_format_json_schema_is_structured_output_the_client_parses(stack) -> None:
    gateway, http, redis, _ = stack
    sdk = client(gateway)
    parsed = await sdk.responses.parse(model=MODEL, input="a haiku about dew", text_format=Haiku)
    assert isinstance(parsed.output_parsed, Haiku)
    assert parsed.output_parsed.lines
    assert Haiku.model_validate_json(parsed.output_text) == parsed.output_parsed
    record = await record_of(redis, parsed.id)
    assert json.loads(record.choices[0].text) == parsed.output_parsed.model_dump()

    async with sdk.responses.stream(model=MODEL, input="a haiku", text_format=Haiku) as stream:
        final = await stream.get_final_response()
    assert isinstance(final.output_parsed, Haiku)

    body = {"model": MODEL, "input": "dew", "text": {"format": {"type": "json_object"}}}
    answer = await http.post(gateway.url + RESPONSES, json=body, headers=gateway.headers)
    assert answer.status_code == 200, answer.text
    assert isinstance(json.loads(answer.json()["output"][0]["content"][0]["text"]), dict)


@pytest.mark.parametrize(("text_format", "param"), [
    ({"type": "json_schema", "name": "x"}, "text.format"),
    ({"type": "json_schema", "name": "x", "schema": {"type": 12}}, "text.format.schema"),
    ({"type": "json_object", "name": "x"}, "text.format"),
    ({"type": "xml"}, "text.format.type"),
])  # fmt: skip
async def test_text_formats_that_are_not_valid_are_400s(stack, text_format: dict[str, Any], param: str) -> None:
    gateway, http, _, _ = stack
    body = {"model": MODEL, "input": "dew", "text": {"format": text_format}}
    response = await http.post(gateway.url + RESPONSES, json=body, headers=gateway.headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


async def test_fields_at_their_no_op_values_are_accepted(stack) -> None:
    gateway, http, _, _ = stack
    body = {"model": MODEL, "input": "dew", **NOOPS, **{name: None for name in ("instructions", "temperature")}}
    response = await http.post(gateway.url + RESPONSES, json=body, headers=gateway.headers)
    assert response.status_code == 200, response.text
    assert response.json()["output"][0]["content"][0]["text"] == SIM_TEXT


@pytest.mark.parametrize(("field", "value", "param"), [
    ("tools", [{"type": "web_search"}], "tools[0]"),
    ("tools", [{"type": "file_search", "vector_store_ids": ["vs_1"]}], "tools[0]"),
    ("tool_choice", {"type": "allowed_tools", "mode": "auto", "tools": []}, "tool_choice"),
    ("tool_choice", {"type": "web_search_preview"}, "tool_choice"),
    ("reasoning", {"effort": "high"}, "reasoning.effort"),
    ("text", {"verbosity": "high"}, "text.verbosity"),
    ("truncation", "auto", "truncation"),
    ("background", True, "background"),
    ("conversation", "conv_1", "conversation"),
    ("input", [{"type": "custom_tool_call_output", "call_id": "c", "output": "4"}], "input[0]"),
    ("input", [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}], "input[0].content[0]"),
])  # fmt: skip
async def test_unserved_features_are_refused_as_unsupported(stack, field: str, value: Any, param: str) -> None:
    gateway, http, _, _ = stack
    body = {"model": MODEL, "input": "dew", field: value}
    response = await http.post(gateway.url + RESPONSES, json=body, headers=gateway.headers)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "unsupported_value"
    assert error["param"] == param
    assert "does not support" in error["message"]


async def test_errors_are_openai_errors(stack) -> None:
    gateway, http, _, _ = stack
    sdk = client(gateway)
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.responses.create(model=MODEL, input="dew", extra_body={"frequency_penalty": 1})
    assert "unrecognized request argument" in info.value.message
    assert info.value.param == "frequency_penalty"
    with pytest.raises(openai.NotFoundError) as missing:
        await sdk.responses.create(model="no-such-model", input="dew")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        await client(gateway, "wrong-key").responses.create(model=MODEL, input="dew")
    with pytest.raises(openai.BadRequestError) as empty:
        await sdk.responses.create(model=MODEL, input=[])
    assert empty.value.param == "input"
    with pytest.raises(openai.BadRequestError) as role:
        await sdk.responses.create(
            model=MODEL, input=[{"role": "user", "content": [{"type": "output_text", "text": "x", "annotations": []}]}]
        )
    assert role.value.param == "input[0]"
    unknown = await http.get(f"{gateway.url}{RESPONSES}/resp_unknown", headers=gateway.headers)
    assert unknown.status_code == 404
    assert set(unknown.json()["error"]) == {"message", "type", "param", "code"}


async def test_a_stream_failing_after_its_first_token_ends_with_response_failed(start_worker, start_gateway) -> None:
    worker = await start_worker(sim_output_tokens=30, sim_itl_ms=100)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    async with client(gateway).responses.stream(model=MODEL, input="dew") as stream:
        kinds = []
        async for event in stream:
            kinds.append(event.type)
            if kinds.count("response.output_text.delta") == 2:
                await worker.stop(0)
            if event.type == "response.failed":
                failed = event
    assert kinds[-1] == "response.failed"
    assert "response.completed" not in kinds
    assert failed.response.status == "failed"
    assert failed.response.error is not None
    assert failed.response.error.code == "server_error"
    assert failed.response.error.message
