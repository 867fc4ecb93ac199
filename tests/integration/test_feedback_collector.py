"""The collector service reading the next batch while the one before it is written, against a real
redis-server: batches still commit once each and in order, and a stop commits what was read ahead."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from redis.asyncio import Redis

from bailu.collector.service import CollectorService
from bailu.common import redis_keys
from bailu.common.records import DATA_FIELD, FeedbackEvent, ResponseRef
from bailu.datasets.store import DatasetStore
from tests.conftest import eventually
from tests.integration.test_collector import POEM, examples, put_completion, settings

EVENTS = 600
BATCH = 40


async def put_edits(redis: Redis, response: str, first: int, count: int) -> list[str]:
    ids = []
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(first, first + count):
            event = FeedbackEvent(
                id=f"fb-{i:05d}", created=time.time(), key_id="k", kind="edit", target=ResponseRef(response),
                edited_text=f"White dew at dawn, poem number {i}.",
            )  # fmt: skip
            ids.append(event.id)
            pipe.xadd(redis_keys.FEEDBACK_STREAM, {DATA_FIELD: event.to_json()})
        await pipe.execute()
    return ids


async def group(redis: Redis) -> dict[str, int]:
    pending = await redis.xpending(redis_keys.FEEDBACK_STREAM, redis_keys.COLLECTOR_GROUP)
    info = next(g for g in await redis.xinfo_groups(redis_keys.FEEDBACK_STREAM))
    return {"pending": int(pending["pending"]), "lag": int(info["lag"] or 0)}


async def test_a_stop_commits_what_was_read_ahead_and_a_restart_the_rest(redis, redis_server, tmp_path) -> None:
    response = await put_completion(redis, POEM)
    ids = await put_edits(redis, response, 0, EVENTS)
    store = DatasetStore(tmp_path / "data")
    service = CollectorService(settings(redis_server.url, tmp_path / "data", batch_size=BATCH))
    stop = asyncio.Event()
    runner = asyncio.create_task(service.run(stop))
    await eventually(lambda: len(store.batches()) >= 3, 30)
    stop.set()
    await asyncio.wait_for(runner, 30)
    state = await group(redis)
    # Whatever the stopped service had read (the batch read ahead included) is committed: nothing pending.
    assert state["pending"] == 0
    committed = len(examples(store)) // 2
    assert committed % BATCH == 0
    assert state["lag"] == EVENTS - committed > 0

    more = await put_edits(redis, response, EVENTS, BATCH)
    again = CollectorService(settings(redis_server.url, tmp_path / "data", batch_size=BATCH, consumer_name="c2"))
    stop = asyncio.Event()
    runner = asyncio.create_task(again.run(stop))

    async def drained() -> bool:
        return await group(redis) == {"pending": 0, "lag": 0}

    deadline = time.monotonic() + 60
    while not await drained():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(runner, 30)
    written = examples(store)
    per_event = Counter(e["event_id"] for e in written)
    assert set(per_event) == set(ids + more)
    assert set(per_event.values()) == {2}  # one SFT example and one pair per event: none lost, none twice
    # Batches commit in stream order: the events of each batch follow those of the batch before it.
    order = [e["event_id"] for e in written if e["kind"] == "sft"]
    assert order == sorted(order)
