"""Hostile input at the gateway, over real HTTP with a sim worker and a real Redis: the cases found by hand and
by fuzzing, each a 4xx naming the field, never a 500.

JSON can carry text that UTF-8 cannot (a lone surrogate, `"\\ud800"`); bodies are sent as raw bytes here so
that the client's own encoder does not refuse them first.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from bailu.common import redis_keys
from bailu.common.types import INT64_MAX, INT64_MIN, MAX_TOKENS_LIMIT
from tests.conftest import MODEL
from tests.integration.test_gateway import CHAT, chat_body, sse_events

COMPLETIONS = "/v1/completions"
FEEDBACK = "/v1/feedback"
LONE = "\ud800"
USER = {"role": "user", "content": "a poem about dew"}


@pytest.fixture
async def stack(start_worker, start_gateway, redis_server):
    worker = await start_worker(sim_output_tokens=5)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"], redis_url=redis_server.url)
    async with httpx.AsyncClient(timeout=30) as http:
        yield gateway, http


async def post_raw(gateway, http: httpx.AsyncClient, path: str, body: Any, **headers: str) -> httpx.Response:
    """POST `body` as JSON with `\\uXXXX` escapes (what a client sends for a lone surrogate)."""
    content = json.dumps(body).encode("ascii")
    return await http.post(
        gateway.url + path, content=content, headers={**gateway.headers, "Content-Type": "application/json", **headers}
    )


def assert_error(response: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert "None" not in error["message"], error
    return error


def text_completion(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "White dew", **fields}


SURROGATE_CASES = [
    (CHAT, chat_body(messages=[{"role": "user", "content": "dew" + LONE}]), "messages[0].content", 3),
    (
        CHAT,
        chat_body(messages=[USER, {"role": "user", "content": [{"type": "text", "text": LONE + "x"}]}]),
        "messages[1].content[0].text",
        0,
    ),
    (CHAT, chat_body(messages=[{**USER, "name": "a" + LONE}]), "messages[0].name", 1),
    (CHAT, chat_body(model=MODEL + LONE), "model", len(MODEL)),
    (CHAT, chat_body(stop=LONE), "stop", 0),
    (CHAT, chat_body(stop=["ok", "x" + LONE]), "stop[1]", 1),
    (CHAT, chat_body(user=LONE), "user", 0),
    (COMPLETIONS, text_completion(prompt="a\udfff"), "prompt", 1),
    (COMPLETIONS, text_completion(prompt=["\udc00"]), "prompt[0]", 0),
    (COMPLETIONS, text_completion(stop=[LONE]), "stop[0]", 0),
]


@pytest.mark.parametrize(
    ("path", "body", "param", "position"), SURROGATE_CASES, ids=[f"{c[0]}:{c[2]}" for c in SURROGATE_CASES]
)
async def test_lone_surrogate_is_a_400_naming_the_field(stack, path, body, param, position) -> None:
    gateway, http = stack
    error = assert_error(await post_raw(gateway, http, path, body), 400, param)
    assert error["message"] == f"{param} is not valid Unicode text (lone surrogate at position {position})"
    assert error["type"] == "invalid_request_error"


async def test_lone_surrogate_in_a_field_name_is_a_400(stack) -> None:
    gateway, http = stack
    cases = [({**chat_body(), "x" + LONE: 1}, None), (chat_body(messages=[{**USER, LONE: "x"}]), "messages[0]")]
    for body, param in cases:
        error = assert_error(await post_raw(gateway, http, CHAT, body), 400, param)
        assert error["message"] == f"a field name in {param or 'the request body'} is not valid Unicode text"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("n", [2, 8])
@pytest.mark.parametrize("seed", [INT64_MAX, INT64_MAX - 1, INT64_MIN])
async def test_seed_at_the_int64_edges_with_candidates(stack, seed: int, n: int, stream: bool) -> None:
    gateway, http = stack
    body = chat_body(seed=seed, n=n, stream=stream, max_tokens=3)
    response = await http.post(gateway.url + CHAT, json=body, headers=gateway.headers)
    assert response.status_code == 200, response.text
    if stream:
        events = await sse_events(response)
        assert events[-1] == "[DONE]"
        assert all("error" not in e for e in events[:-1]), events
        indexes = {c["index"] for e in events[:-1] for c in e["choices"]}
    else:
        indexes = {c["index"] for c in response.json()["choices"]}
    assert indexes == set(range(n))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", INT64_MAX + 1),
        ("seed", INT64_MIN - 1),
        ("seed", 1 << 70),
        ("max_tokens", 1 << 32),
        ("max_tokens", MAX_TOKENS_LIMIT + 1),
        ("max_completion_tokens", 1 << 40),
        ("top_k", 1 << 32),
        ("n", 1 << 64),
    ],
)
async def test_integers_beyond_the_wire_are_a_400(stack, field: str, value: int) -> None:
    gateway, http = stack
    response = await http.post(gateway.url + CHAT, json=chat_body(**{field: value}), headers=gateway.headers)
    assert_error(response, 400, field)


async def test_body_over_the_limit_is_request_too_large(stack) -> None:
    gateway, http = stack
    body = chat_body(messages=[{"role": "user", "content": "x" * 2_000_000}])
    response = await http.post(gateway.url + CHAT, json=body, headers=gateway.headers)
    error = assert_error(response, 413, None)
    assert error["code"] == "request_too_large"


async def test_prompt_over_the_limit_is_still_context_length(stack) -> None:
    gateway, http = stack
    body = chat_body(messages=[{"role": "user", "content": "x" * 40_000}])
    response = await http.post(gateway.url + CHAT, json=body, headers=gateway.headers)
    assert assert_error(response, 413, "messages")["code"] == "context_length_exceeded"


@pytest.mark.parametrize("payload", [b"", b"null", b'"text"', b"[]", b"{"])
async def test_body_that_is_no_object_never_prints_none(stack, payload: bytes) -> None:
    gateway, http = stack
    response = await http.post(
        gateway.url + CHAT, content=payload, headers={**gateway.headers, "Content-Type": "application/json"}
    )
    assert_error(response, 400, None)


async def test_405_lists_the_allowed_methods(stack) -> None:
    gateway, http = stack
    response = await http.get(gateway.url + CHAT, headers=gateway.headers)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"]["message"] == f"method GET is not allowed on {CHAT}"
    delete = await http.delete(gateway.url + "/v1/models", headers=gateway.headers)
    assert delete.status_code == 405
    assert delete.headers["allow"] == "GET"


async def completion_id(gateway, http) -> str:
    response = await http.post(gateway.url + CHAT, json=chat_body(), headers=gateway.headers)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


FEEDBACK_CASES = [
    ({"type": "rating", "response_id": "chatcmpl-" + LONE, "thumb": "up"}, "response_id"),
    ({"type": "rating", "thumb": "up", "comment": "lovely" + LONE}, "comment"),
    ({"type": "rating", "thumb": "up", "tags": ["ok", LONE]}, "tags[1]"),
    ({"type": "rating", "thumb": "up", "feedback_id": LONE}, "feedback_id"),
    ({"type": "edit", "edited_text": "White dew" + LONE}, "edited_text"),
    ({"type": "comparison", "chosen": {"response_id": LONE}, "rejected": {"response_id": "x"}}, "chosen.response_id"),
]


@pytest.mark.parametrize(("fields", "param"), FEEDBACK_CASES, ids=[c[1] for c in FEEDBACK_CASES])
async def test_lone_surrogate_in_feedback_is_a_400_and_nothing_is_written(stack, redis, fields, param) -> None:
    gateway, http = stack
    body = {"response_id": await completion_id(gateway, http), **fields}
    if fields["type"] == "comparison":
        body.pop("response_id")
    error = assert_error(await post_raw(gateway, http, FEEDBACK, body), 400, param)
    assert "not valid Unicode text" in error["message"]
    assert await redis.xlen(redis_keys.FEEDBACK_STREAM) == 0


async def test_idempotency_conflicts_name_what_conflicted(stack) -> None:
    gateway, http = stack
    body = {"type": "rating", "response_id": await completion_id(gateway, http), "thumb": "up"}
    first = await post_raw(gateway, http, FEEDBACK, body, **{"Idempotency-Key": "k-1"})
    assert first.status_code == 202, first.text
    by_header = await post_raw(gateway, http, FEEDBACK, {**body, "thumb": "down"}, **{"Idempotency-Key": "k-1"})
    assert assert_error(by_header, 409, "Idempotency-Key")["code"] == "idempotency_key_reused"
    assert (await post_raw(gateway, http, FEEDBACK, {**body, "feedback_id": "f-1"})).status_code == 202
    by_body = await post_raw(gateway, http, FEEDBACK, {**body, "thumb": "down", "feedback_id": "f-1"})
    assert_error(by_body, 409, "feedback_id")


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 100_000 + b"]" * 100_000,  # nesting deeper than the JSON parser recurses
        b'{"model": "\xff\xfe", "messages": []}',  # not UTF-8
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 1e400}',
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1' + b"0" * 5000 + b"}",
    ],
    ids=["deep nesting", "invalid utf-8", "infinite float", "5000-digit integer"],
)
async def test_malformed_bodies_are_a_400(stack, payload: bytes) -> None:
    gateway, http = stack
    response = await http.post(
        gateway.url + CHAT, content=payload, headers={**gateway.headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_idempotency_key_too_long_names_the_header(stack) -> None:
    gateway, http = stack
    body = {"type": "rating", "response_id": "x", "thumb": "up"}
    response = await post_raw(gateway, http, FEEDBACK, body, **{"Idempotency-Key": "k" * 129})
    assert_error(response, 400, "Idempotency-Key")
