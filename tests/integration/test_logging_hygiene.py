"""No prompt, completion, feedback text, API key or Redis password in the logs (docs/security.md).

The gateway and a sim worker run in this process against a real redis-server that requires a password;
every logger records at DEBUG through the services' own JSON formatter while requests carry sentinel
strings, on the paths that log: success, streaming, validation errors, static keys and keys in Redis
(wrong, revoked, lacking a scope, with quotas), feedback, and Redis going away under the gateway (the
failures are where connection strings and bodies tend to leak).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import httpx
import pytest
from redis.asyncio import Redis

from bailu.common.logging import JsonFormatter
from bailu.keys.model import FEEDBACK, Limits
from bailu.keys.store import KeyRegistry
from tests.conftest import MODEL, TEST_KEY, eventually
from tests.integration.test_feedback_gateway import wait_for_record
from tests.integration.test_gateway import CHAT, sse_events

PROMPT = "sentinel-prompt-7c1e: a poem about the heron"
USER = "sentinel-user-3b9d"
COMMENT = "sentinel-comment-5a2f"
EDITED = "sentinel-edited-text-9e4c"
WRONG_KEY = "bailu-sentinel-wrong-key-2d8a"
PASSWORD = "sentinel-redis-password-6f0b"
# What the sim worker writes for six tokens: the completion itself must not be logged either.
OUTPUT = "white dew settles on the grass"
# Loggers that a library may have raised above DEBUG (setup_logging does for some): opened up for the test.
LOGGERS = ("", "bailu", "uvicorn", "uvicorn.error", "uvicorn.access", "httpx", "httpcore", "grpc", "redis", "asyncio")


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Every record of every logger, formatted as the services write them (message, extra fields, traceback)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test"))
    handler.setLevel(logging.DEBUG)
    loggers = [logging.getLogger(name) for name in LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def assert_clean(text: str, *keys: str) -> None:
    assert text, "nothing was logged: the capture is broken, so the test would prove nothing"
    for secret in (PROMPT, "sentinel-prompt-7c1e", USER, COMMENT, EDITED, WRONG_KEY, TEST_KEY, PASSWORD, OUTPUT, *keys):
        lines = [line for line in text.splitlines() if secret in line]
        assert not lines, f"{secret!r} was logged:\n" + "\n".join(lines[:5])


async def test_no_content_or_secret_reaches_the_logs(
    start_worker, start_gateway, redis_server, json_log: io.StringIO
) -> None:
    admin = Redis.from_url(redis_server.url)
    await admin.config_set("requirepass", PASSWORD)
    await admin.aclose()
    url = redis_server.url.replace("redis://", f"redis://:{PASSWORD}@")
    # Keys `bailu keys` manages: one with quotas, one without the generate scope, one revoked.
    redis = Redis.from_url(url)
    registry = KeyRegistry(redis)
    limited, _ = await registry.create("tenant", limits=Limits(rpm=100, tpm=100_000, concurrency=4))
    rater, _ = await registry.create("rater", scopes=frozenset({FEEDBACK}))
    revoked, record = await registry.create("gone")
    await registry.revoke(record.id)
    await redis.aclose()
    worker = await start_worker(sim_output_tokens=6)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"], redis_url=url)
    messages = [{"role": "user", "content": PROMPT}]
    chat = {"model": MODEL, "messages": messages, "user": USER}
    auth = gateway.headers
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(gateway.url + CHAT, json={**chat, "n": 2}, headers=auth)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["choices"][0]["message"]["content"] == OUTPUT
        async with http.stream("POST", gateway.url + CHAT, json={**chat, "stream": True}, headers=auth) as response:
            assert response.status_code == 200
            assert (await sse_events(response))[-1] == "[DONE]"
        raw = {"model": MODEL, "prompt": PROMPT, "max_tokens": 6}
        assert (await http.post(gateway.url + "/v1/completions", json=raw, headers=auth)).status_code == 200
        # Refused requests: five stops (at most four), and a key nobody issued.
        too_many_stops = {**chat, "stop": ["a", "b", "c", "d", PROMPT]}
        assert (await http.post(gateway.url + CHAT, json=too_many_stops, headers=auth)).status_code == 400
        for key, status in ((WRONG_KEY, 401), (revoked, 401), (rater, 403), (limited, 200)):
            response = await http.post(gateway.url + CHAT, json=chat, headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == status, response.text

        # Feedback carrying text of its own, through a Redis that wants the password.
        redis = Redis.from_url(url)
        await wait_for_record(redis, body["id"])
        await redis.aclose()
        feedback = [
            {"type": "rating", "response_id": body["id"], "thumb": "up", "comment": COMMENT},
            {"type": "edit", "response_id": body["id"], "edited_text": EDITED},
            {
                "type": "comparison",
                "chosen": {"response_id": body["id"], "choice_index": 1},
                "rejected": {"response_id": body["id"], "choice_index": 0},
                "comment": COMMENT,
            },
        ]
        for item in feedback:
            response = await http.post(gateway.url + "/v1/feedback", json=item, headers=auth)
            assert response.status_code == 202, response.text

        # Redis goes away: the completion log's write fails and feedback is refused, both logged.
        redis_server.stop()
        assert (await http.post(gateway.url + CHAT, json=chat, headers=auth)).status_code == 200
        log = gateway.app.state.completion_log
        await eventually(lambda: log._queue.empty(), 10)
        item = {"type": "edit", "response_id": body["id"], "edited_text": EDITED}
        assert (await http.post(gateway.url + "/v1/feedback", json=item, headers=auth)).status_code == 503

    text = json_log.getvalue()
    # The capture saw the requests (the access log and the worker's line per generation), with their ids.
    assert '"msg": "request"' in text
    assert '"msg": "generate"' in text
    assert "completion log write failed" in text
    assert_clean(text, limited, rater, revoked)
