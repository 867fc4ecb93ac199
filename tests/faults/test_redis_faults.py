"""Redis restarted (AOF persistence, as the chart runs it) while clients send feedback and completions: no
feedback the gateway acknowledged (2xx) is lost, feedback during the outage is refused with 503 (never a
500), and generation is unaffected throughout."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from redis.asyncio import Redis

from tests.integration.test_feedback_gateway import feedback_events, wait_for_record
from tests.integration.test_gateway import CHAT, chat_body

pytestmark = pytest.mark.faults


async def test_redis_restart_loses_no_acknowledged_feedback(start_worker, start_gateway, redis_server, redis) -> None:
    worker = await start_worker(sim_output_tokens=4)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"], redis_url=redis_server.url, redis_timeout_s=0.5)
    async with httpx.AsyncClient(timeout=30) as http:
        first = await http.post(gateway.url + CHAT, json=chat_body(), headers=gateway.headers)
        assert first.status_code == 200, first.text
        response_id = first.json()["id"]
        await wait_for_record(redis, response_id)

        accepted: list[tuple[float, str]] = []
        feedback_statuses: list[int] = []
        completion_statuses: list[int] = []
        stop = asyncio.Event()

        async def send_feedback() -> None:
            body = {"type": "rating", "response_id": response_id, "thumb": "up"}
            while not stop.is_set():
                reply = await http.post(gateway.url + "/v1/feedback", json=body, headers=gateway.headers)
                feedback_statuses.append(reply.status_code)
                if reply.is_success:
                    accepted.append((time.monotonic(), reply.json()["id"]))
                await asyncio.sleep(0.01)

        async def complete() -> None:
            while not stop.is_set():
                reply = await http.post(gateway.url + CHAT, json=chat_body(max_tokens=2), headers=gateway.headers)
                completion_statuses.append(reply.status_code)

        tasks = [asyncio.create_task(send_feedback()), asyncio.create_task(complete())]
        await asyncio.sleep(1.0)
        # Some feedback acknowledged before the outage (on a loaded machine the first second may not suffice).
        ready_by = time.monotonic() + 20
        while len(accepted) < 3:
            assert time.monotonic() < ready_by, f"no feedback accepted before the outage: {feedback_statuses[-5:]}"
            await asyncio.sleep(0.1)
        stopped_at = time.monotonic()
        redis_server.stop()  # SIGTERM: Redis appends and syncs its AOF before it exits
        await asyncio.sleep(1.0)
        redis_server.start()  # same port and directory: the AOF is replayed
        restarted = time.monotonic()
        deadline = restarted + 20
        while not any(at > restarted for at, _ in accepted):
            assert time.monotonic() < deadline, f"no feedback accepted after the restart: {feedback_statuses[-5:]}"
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks)

    assert set(feedback_statuses) <= {202, 503}, feedback_statuses
    assert 503 in feedback_statuses  # the outage was seen...
    assert set(completion_statuses) == {200}  # ...and generation never noticed it
    fresh = Redis.from_url(redis_server.url)  # the fixture's connection died with the first server
    try:
        recorded = {event.id for event in await feedback_events(fresh)}
    finally:
        await fresh.aclose()
    missing = [fid for _, fid in accepted if fid not in recorded]
    assert not missing, f"{len(missing)} of {len(accepted)} acknowledged feedback events were lost"
    assert any(at < stopped_at for at, _ in accepted)
