"""The gateway over real HTTP and real gRPC workers (sim engine): routing, streaming, errors."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from typing import Any

import httpx
import pytest

from bailu.common import metrics as metric_names
from bailu.common.logging import JsonFormatter
from bailu.worker.engines.sim import SimEngine
from tests.conftest import MODEL, TEST_KEY, eventually
from tests.unit.gateway.test_openapi import schema_validator

CHAT = "/v1/chat/completions"


def chat_body(**kwargs: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "a poem about dew"}]}
    body.update(kwargs)
    return body


async def sse_events(response: httpx.Response) -> list[Any]:
    events = []
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


@pytest.fixture
async def http():
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


async def test_chat_completion_non_streaming(start_worker, start_gateway, http) -> None:
    worker = await start_worker(sim_output_tokens=7)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    response = await http.post(gateway.url + CHAT, json=chat_body(), headers=gateway.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == MODEL
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split()) == 7
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 7
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 7
    assert response.headers["x-request-id"]


async def test_chat_completion_streaming(start_worker, start_gateway, http) -> None:
    worker = await start_worker(sim_output_tokens=5)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    body = chat_body(stream=True, stream_options={"include_usage": True}, max_tokens=5)
    async with http.stream("POST", gateway.url + CHAT, json=body, headers=gateway.headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = await sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content.split() == ["white", "dew", "settles", "on", "the"]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "length"
    assert set(finishes[:-1]) == {None}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 5
    assert len({c["id"] for c in chunks}) == 1


async def test_text_completion_and_models(start_worker, start_gateway, http) -> None:
    worker = await start_worker(sim_output_tokens=100)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    response = await http.post(
        gateway.url + "/v1/completions", json={"model": MODEL, "prompt": "Once"}, headers=gateway.headers
    )
    body = response.json()
    assert body["object"] == "text_completion"
    # OpenAI's default max_tokens for completions is 16.
    assert body["usage"]["completion_tokens"] == 16
    assert body["choices"][0]["finish_reason"] == "length"
    models = (await http.get(gateway.url + "/v1/models", headers=gateway.headers)).json()
    assert [m["id"] for m in models["data"]] == [MODEL]


async def test_request_id_is_kept(start_worker, start_gateway, http) -> None:
    worker = await start_worker()
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    headers = {**gateway.headers, "X-Request-Id": "client-chosen-id-42"}
    response = await http.post(gateway.url + CHAT, json=chat_body(), headers=headers)
    assert response.headers["x-request-id"] == "client-chosen-id-42"


async def test_least_loaded_worker_is_chosen(start_worker, start_gateway, http) -> None:
    busy = await start_worker(sim_ttft_ms=1500, max_batch_size=1, max_queue=8)
    idle = await start_worker(sim_ttft_ms=1500, max_batch_size=1, max_queue=8)
    gateway = await start_gateway([f"127.0.0.1:{busy.port}", f"127.0.0.1:{idle.port}"])
    tasks = [
        asyncio.create_task(http.post(gateway.url + CHAT, json=chat_body(), headers=gateway.headers)) for _ in range(2)
    ]
    await eventually(lambda: busy.admission.running + idle.admission.running == 2, 5.0)
    # Two requests, two workers with one slot each: one each, nobody queued.
    assert busy.admission.running == idle.admission.running == 1
    assert busy.admission.queued == idle.admission.queued == 0
    for task in tasks:
        assert (await task).status_code == 200


async def test_client_disconnect_cancels_the_worker_stream(start_worker, start_gateway) -> None:
    worker = await start_worker(sim_output_tokens=100_000, sim_itl_ms=5)
    engine = worker.engine
    assert isinstance(engine, SimEngine)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    async with httpx.AsyncClient(timeout=30) as client:
        body = chat_body(stream=True, max_tokens=100_000)
        async with client.stream("POST", gateway.url + CHAT, json=body, headers=gateway.headers) as response:
            lines = 0
            async for line in response.aiter_lines():
                lines += line.startswith("data: ")
                if lines >= 5:
                    break
        assert engine.active == 1
    await eventually(lambda: engine.active == 0, 5.0)
    produced = engine.tokens_generated
    await asyncio.sleep(0.2)
    assert engine.tokens_generated == produced < 5000


async def test_non_streaming_client_disconnect_cancels_too(start_worker, start_gateway) -> None:
    worker = await start_worker(sim_output_tokens=100_000, sim_itl_ms=5)
    engine = worker.engine
    assert isinstance(engine, SimEngine)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    async with httpx.AsyncClient(timeout=0.5) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(gateway.url + CHAT, json=chat_body(max_tokens=100_000), headers=gateway.headers)
    await eventually(lambda: engine.active == 0, 5.0)


async def test_deadline_gives_504(start_worker, start_gateway, http) -> None:
    worker = await start_worker(sim_ttft_ms=3000)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"], request_timeout_s=0.3)
    response = await http.post(gateway.url + CHAT, json=chat_body(), headers=gateway.headers)
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "timeout"
    await eventually(lambda: worker.admission.running == 0, 2.0)


async def test_saturated_workers_give_429_with_retry_after(start_worker, start_gateway, http) -> None:
    worker = await start_worker(sim_ttft_ms=1000, max_batch_size=1, max_queue=0)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    first = asyncio.create_task(http.post(gateway.url + CHAT, json=chat_body(), headers=gateway.headers))
    await eventually(lambda: worker.admission.running == 1, 2.0)
    response = await http.post(gateway.url + CHAT, json=chat_body(), headers=gateway.headers)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "server_overloaded"
    assert int(response.headers["retry-after"]) >= 1
    assert (await first).status_code == 200


async def test_no_ready_worker_gives_503(start_gateway, http) -> None:
    gateway = await start_gateway(["127.0.0.1:1"], wait_ready=False)  # nothing listens there
    assert (await http.get(gateway.url + "/readyz")).status_code == 503
    response = await http.post(gateway.url + CHAT, json=chat_body(), headers=gateway.headers)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable"
    assert "retry-after" in response.headers


async def test_unknown_model_gives_404(start_worker, start_gateway, http) -> None:
    worker = await start_worker()
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    response = await http.post(gateway.url + CHAT, json=chat_body(model="gpt-17"), headers=gateway.headers)
    assert response.status_code == 404
    assert response.json()["error"] == {
        "message": "the model 'gpt-17' does not exist",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


async def test_metrics_use_the_defined_names(start_worker, start_gateway, http) -> None:
    worker = await start_worker()
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    await http.post(gateway.url + CHAT, json=chat_body(), headers=gateway.headers)
    text = (await http.get(gateway.url + "/metrics")).text
    for name in (metric_names.GATEWAY_REQUESTS, metric_names.GATEWAY_TTFT, metric_names.GATEWAY_WORKERS_READY):
        assert name in text
    assert f'{metric_names.GATEWAY_REQUESTS}{{route="/v1/chat/completions",status="200"}} 1.0' in text
    async with httpx.AsyncClient() as client:
        probe = await client.get(f"http://127.0.0.1:{worker.probes.port}/metrics")
        ready = await client.get(f"http://127.0.0.1:{worker.probes.port}/readyz")
    assert f"{metric_names.WORKER_READY} 1.0" in probe.text
    assert ready.status_code == 200
    assert 'bailu_worker_requests_total{outcome="ok"} 1.0' in probe.text


BAD_INPUTS = [
    ("malformed json", b'{"model": ', 400, None),
    ("not an object", b"[1, 2]", 400, None),
    ("wrong type", json.dumps(chat_body(temperature="hot")).encode(), 400, "temperature"),
    ("content not text", json.dumps(chat_body(messages=[{"role": "user", "content": 5}])).encode(), 400, None),
    ("empty messages", json.dumps(chat_body(messages=[])).encode(), 400, "messages"),
    ("negative max_tokens", json.dumps(chat_body(max_tokens=-1)).encode(), 400, "max_tokens"),
    ("unknown field", json.dumps(chat_body(frobnicate=True)).encode(), 400, "frobnicate"),
    ("missing model", json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), 400, "model"),
    ("bad role", json.dumps(chat_body(messages=[{"role": "robot", "content": "x"}])).encode(), 400, None),
    ("huge prompt", json.dumps(chat_body(messages=[{"role": "user", "content": "x" * 40_000}])).encode(), 413, None),
    ("huge body", b'{"model": "' + b"x" * 2_000_000 + b'"}', 413, None),
    ("nan", b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}', 400, None),
]


@pytest.mark.parametrize(("name", "payload", "status", "param"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
async def test_bad_input_gets_a_clear_error(start_worker, start_gateway, http, name, payload, status, param) -> None:
    worker = await start_worker()
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    response = await http.post(
        gateway.url + CHAT, content=payload, headers={**gateway.headers, "Content-Type": "application/json"}
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    assert error["type"] == "invalid_request_error"
    assert "Traceback" not in response.text
    if param is not None:
        assert error["param"] == param


async def test_auth_and_unknown_routes(start_worker, start_gateway, http) -> None:
    worker = await start_worker()
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    missing = await http.post(gateway.url + CHAT, json=chat_body())
    wrong = await http.post(gateway.url + CHAT, json=chat_body(), headers={"Authorization": "Bearer nope"})
    models = await http.get(gateway.url + "/v1/models")
    for response in (missing, wrong, models):
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
    unknown = await http.get(gateway.url + "/v1/nothing-here", headers=gateway.headers)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"
    method = await http.get(gateway.url + CHAT, headers={"Authorization": f"Bearer {TEST_KEY}"})
    assert method.status_code == 405
    assert "error" in method.json()


async def test_workers_found_through_dns(start_worker, start_gateway, http) -> None:
    worker = await start_worker()
    gateway = await start_gateway([], workers_dns=[f"localhost:{worker.port}"], discovery_interval_s=0.2)
    await gateway.wait_workers_ready(1)
    assert f"127.0.0.1:{worker.port}" in gateway.app.state.pool.workers
    response = await http.post(gateway.url + CHAT, json=chat_body(), headers=gateway.headers)
    assert response.status_code == 200


async def test_request_id_crosses_the_grpc_hop(start_worker, start_gateway, http) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test"))
    servicer_log = logging.getLogger("bailu.worker.servicer")
    servicer_log.addHandler(handler)
    servicer_log.setLevel(logging.INFO)
    try:
        worker = await start_worker(sim_output_tokens=3)
        gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
        headers = {**gateway.headers, "X-Request-Id": "trace-me-7"}
        assert (await http.post(gateway.url + CHAT, json=chat_body(), headers=headers)).status_code == 200
    finally:
        servicer_log.removeHandler(handler)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    done = [r for r in records if r["msg"] == "generate"]
    assert len(done) == 1
    assert done[0]["request_id"] == "trace-me-7"
    assert done[0]["outcome"] == "ok"
    assert done[0]["completion_tokens"] == 3


async def test_failed_dns_lookup_keeps_known_workers(start_worker) -> None:
    from bailu.gateway.workers import WorkerPool

    worker = await start_worker()
    pool = WorkerPool([], [f"localhost:{worker.port}"], poll_interval_s=0.1)
    try:
        await pool.discover()
        known = set(pool.workers)
        assert f"127.0.0.1:{worker.port}" in known
        # The name stops resolving: nobody is removed on a failed lookup.
        pool.dns_targets = ["no-such-host.invalid:50051"]
        await pool.discover()
        assert set(pool.workers) == known
    finally:
        await pool.close()


async def assert_documented(document: dict[str, Any], method: str, path: str, response: httpx.Response) -> None:
    """`response` is one the schema documents for this operation: its status, content type and body (each
    event's data, for a stream)."""
    documented = document["paths"][path][method]["responses"]
    status = str(response.status_code)
    assert status in documented, (status, response.text)
    media_type = response.headers["content-type"].split(";")[0]
    content = documented[status]["content"]
    assert media_type in content, (media_type, list(content))
    if media_type == "text/event-stream":
        events = await sse_events(response)
        assert events[-1] == "[DONE]"
        payload = content[media_type]["schema"]["properties"]["data"]["anyOf"][1]["contentSchema"]
        for event in events[:-1]:
            schema_validator(document, payload).validate(event)
    elif media_type == "application/json":
        await response.aread()
        schema_validator(document, content[media_type]["schema"]).validate(response.json())


async def test_real_responses_match_the_openapi_schema(start_worker, start_gateway, http) -> None:
    worker = await start_worker(sim_output_tokens=3)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"])
    document = (await http.get(gateway.url + "/openapi.json")).json()
    headers = gateway.headers
    text = {"model": MODEL, "prompt": "White dew", "max_tokens": 3}
    calls: list[tuple[str, str, dict[str, Any] | None, dict[str, str]]] = [
        ("post", CHAT, chat_body(n=2), headers),
        ("post", CHAT, chat_body(n=2, stream=True, stream_options={"include_usage": True}), headers),
        ("post", CHAT, chat_body(stream=True), headers),
        ("post", "/v1/completions", text, headers),
        ("post", "/v1/completions", {**text, "stream": True, "n": 2}, headers),
        ("post", CHAT, chat_body(model="no-such-model"), headers),
        ("post", CHAT, chat_body(temperature=9), headers),
        ("post", CHAT, chat_body(messages=[{"role": "user", "content": "x" * 40_000}]), headers),
        ("post", CHAT, chat_body(), {}),
        ("get", "/v1/models", None, headers),
        ("get", "/v1/models", None, {"Authorization": "Bearer wrong"}),
        ("post", "/v1/feedback", {"type": "rating", "response_id": "x", "thumb": "up"}, headers),
        ("get", "/healthz", None, {}),
        ("get", "/readyz", None, {}),
        ("get", "/metrics", None, {}),
    ]
    statuses = set()
    for method, path, body, call_headers in calls:
        request = http.build_request(method.upper(), gateway.url + path, json=body, headers=call_headers)
        response = await http.send(request, stream=True)
        try:
            await assert_documented(document, method, path, response)
        finally:
            await response.aclose()
        statuses.add(response.status_code)
    # The calls above reach each kind of answer.
    assert statuses == {200, 400, 401, 404, 413, 503}
