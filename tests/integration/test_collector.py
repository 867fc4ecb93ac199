"""The feedback collector against a real redis-server: examples and pairs, quality filters,
exactly-once under crashes and reclaims, dead letters, trimming, dataset versions."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from bailu.collector.consumer import FeedbackConsumer
from bailu.collector.service import CollectorService
from bailu.collector.settings import CollectorSettings
from bailu.common import redis_keys
from bailu.common.metrics import CollectorMetrics
from bailu.common.records import DATA_FIELD, Choice, CompletionRecord, FeedbackEvent, ResponseRef, prompt_hash
from bailu.datasets.store import DatasetStore
from tests.conftest import eventually, free_port
from tests.integration.test_gateway import CHAT, chat_body

POEM = "White dew settles on the grass at dawn, the light is thin and gold."


def settings(redis_url: str, dataset_dir: Path, **overrides: Any) -> CollectorSettings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "dataset_dir": dataset_dir,
        "consumer_name": "c1",
        "http_port": 0,
        "host": "127.0.0.1",
        "block_ms": 50,
        "claim_idle_ms": 1000,
    }
    values.update(overrides)
    return CollectorSettings(**values)


def examples(store: DatasetStore) -> list[dict[str, Any]]:
    """Every record written, with its kind and source (from the batches' meta files)."""
    out = []
    for batch in store.batches():
        folder = store.shards / batch
        lines: dict[str, list[dict[str, Any]]] = {}
        for kind in ("sft", "preference"):
            path = folder / f"{kind}.jsonl"
            lines[kind] = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        counters = {"sft": 0, "preference": 0}
        for meta in store.batch_meta(batch)["records"]:
            record = lines[meta["kind"]][counters[meta["kind"]]]
            counters[meta["kind"]] += 1
            out.append({**meta, "record": record})
    return out


async def put_completion(
    redis: Redis, text: str | list[str], prompt: str = "a poem about dew", key_id: str = "k"
) -> str:
    texts = [text] if isinstance(text, str) else text
    messages = [{"role": "user", "content": prompt}]
    record = CompletionRecord(
        id=f"chatcmpl-{uuid.uuid4().hex}", created=time.time(), key_id=key_id, model="m", served_model="m",
        messages=messages, prompt=None, choices=[Choice(i, t, "stop") for i, t in enumerate(texts)], sampling={},
        prompt_tokens=5, completion_tokens=10, ttft_ms=1.0, total_ms=2.0, request_id="r",
        prompt_hash=prompt_hash(messages, None),
    )  # fmt: skip
    await redis.set(redis_keys.response_key(record.id), record.to_json())
    return record.id


async def put_event(redis: Redis, kind: str, **fields: Any) -> str:
    event = FeedbackEvent(id=f"fb-{uuid.uuid4().hex}", created=time.time(), key_id="k", kind=kind, **fields)
    await redis.xadd(redis_keys.FEEDBACK_STREAM, {DATA_FIELD: event.to_json()})
    return event.id


async def drain(consumer: FeedbackConsumer) -> None:
    while messages := await consumer.read():
        await consumer.process(messages)


def new_consumer(redis: Redis, redis_url: str, path: Path, **overrides: Any) -> FeedbackConsumer:
    s = settings(redis_url, path, **overrides)
    return FeedbackConsumer(s, redis, DatasetStore(path), CollectorMetrics(CollectorRegistry()))


async def test_feedback_through_the_gateway_becomes_examples_and_pairs(
    start_worker, start_gateway, redis_server, tmp_path
) -> None:
    worker = await start_worker(sim_output_tokens=12)
    gateway = await start_gateway([f"127.0.0.1:{worker.port}"], redis_url=redis_server.url)
    service = CollectorService(settings(redis_server.url, tmp_path / "data"))
    stop = asyncio.Event()
    runner = asyncio.create_task(service.run(stop))
    try:
        async with httpx.AsyncClient(timeout=30) as http:

            async def complete(**kw: Any) -> dict[str, Any]:
                # Sampled: the sim engine then gives each candidate a different text.
                body = chat_body(temperature=1.0, **kw)
                response = await http.post(gateway.url + CHAT, json=body, headers=gateway.headers)
                return response.json()

            async def feedback(body: dict[str, Any]) -> None:
                response = await http.post(gateway.url + "/v1/feedback", json=body, headers=gateway.headers)
                assert response.status_code == 202, response.text

            pair = await complete(n=2)
            single = await complete()
            other = await complete(messages=[{"role": "user", "content": "a poem about rain"}])
            await asyncio.sleep(0.2)  # let the completion log flush
            await feedback({"type": "rating", "response_id": pair["id"], "choice_index": 0, "thumb": "up"})
            await feedback({"type": "rating", "response_id": pair["id"], "choice_index": 1, "score": 1})
            await feedback({"type": "comparison", "chosen": {"response_id": single["id"]},
                            "rejected": {"response_id": pair["id"], "choice_index": 1}})  # fmt: skip
            await feedback({"type": "edit", "response_id": other["id"], "edited_text": POEM})
            await feedback({"type": "edit", "response_id": other["id"], "edited_text": POEM.upper() + "!!"})
            await feedback({"type": "edit", "response_id": single["id"],
                            "edited_text": "a moment's light, a moment's light, a moment's light"})  # fmt: skip
            await feedback({"type": "rating", "response_id": single["id"], "thumb": "down"})
        store = service.store
        await eventually(lambda: len(examples(store)) >= 6, 10)
        await asyncio.sleep(0.3)
        written = examples(store)
    finally:
        stop.set()
        await runner
    by_source = sorted((e["kind"], e["source"]) for e in written)
    assert by_source == [
        ("preference", "comparison"),
        ("preference", "edit"),
        ("preference", "ratings"),
        ("preference", "ratings"),
        ("sft", "edit"),
        ("sft", "rating"),
    ]
    sft_edit = next(e for e in written if e["source"] == "edit" and e["kind"] == "sft")["record"]
    assert sft_edit["messages"] == [
        {"role": "user", "content": "a poem about rain"},
        {"role": "assistant", "content": POEM},
    ]
    pref_edit = next(e for e in written if e["source"] == "edit" and e["kind"] == "preference")["record"]
    assert pref_edit["messages"][-1]["content"] == POEM
    assert pref_edit["rejected_response"] == other["choices"][0]["message"]["content"]
    # Ratings of the same prompt pair up, higher over lower: thumbs up (candidate 0) over score 1
    # (candidate 1), then over the thumbs down given to the other response to that prompt.
    ratings_pairs = [e["record"] for e in written if e["source"] == "ratings"]
    best = pair["choices"][0]["message"]["content"]
    assert [p["messages"][-1]["content"] for p in ratings_pairs] == [best, best]
    assert [p["rejected_response"] for p in ratings_pairs] == [
        pair["choices"][1]["message"]["content"],
        single["choices"][0]["message"]["content"],
    ]
    metrics = service.metrics
    # The shouted copy of the edit is a near-duplicate; the degenerate edit fails the repetition filter.
    assert metrics.rejected.labels("duplicate")._value.get() == 2
    assert metrics.rejected.labels("repetition")._value.get() == 2

    version = service.store.seal()
    assert version == "v000001"
    manifest = service.store.manifest(version)
    assert manifest["counts"] == {"sft": 2, "preference": 4}
    assert manifest["files"]["preference.jsonl"]["records"] == 4
    assert manifest["sources"]["preference/comparison"] == 1
    assert service.store.seal() is None  # nothing new


async def test_quality_filters_and_dead_letters(redis, redis_server, tmp_path) -> None:
    collector = new_consumer(redis, redis_server.url, tmp_path, block_list=["forbidden phrase"])
    await collector.setup()
    good = await put_completion(redis, POEM)
    await put_event(redis, "edit", target=ResponseRef(good), edited_text="short")
    await put_event(redis, "edit", target=ResponseRef(good), edited_text="A poem with a Forbidden Phrase in it, sadly.")
    await put_event(redis, "edit", target=ResponseRef(good), edited_text="x 1234567890 1234567890 1234567890")
    await put_event(redis, "rating", target=ResponseRef("chatcmpl-expired"), thumb="up")
    await redis.xadd(redis_keys.FEEDBACK_STREAM, {DATA_FIELD: b"{not json"})
    await drain(collector)
    assert examples(collector.store) == []
    rejected = collector.metrics.rejected
    assert rejected.labels("too_short")._value.get() == 2
    assert rejected.labels("blocked")._value.get() == 2
    assert rejected.labels("charset")._value.get() == 2
    dead = await redis.xrange(redis_keys.DEADLETTER_STREAM)
    reasons = sorted(fields[b"reason"].decode().split(":")[0] for _, fields in dead)
    assert reasons == ["completion_missing", "malformed"]
    assert all(fields[DATA_FIELD.encode()] for _, fields in dead)  # the event itself is kept
    summary = await redis.xpending(redis_keys.FEEDBACK_STREAM, redis_keys.COLLECTOR_GROUP)
    assert summary["pending"] == 0


async def test_crash_between_files_and_commit_is_completed_on_restart(redis, redis_server, tmp_path) -> None:
    first = new_consumer(redis, redis_server.url, tmp_path)
    await first.setup()
    response = await put_completion(redis, POEM)
    await put_event(redis, "edit", target=ResponseRef(response), edited_text="The grass is silver with white dew.")
    messages = await first.read()
    plan = await first.plan(messages)
    name = "0000000000001-c1-crashed"
    # The first two steps of a commit happen, then the process dies.
    await redis.hset(first.intents, name, json.dumps(plan.intent("c1")))
    first.store.write_batch(name, plan.examples, "c1")
    restarted = new_consumer(redis, redis_server.url, tmp_path)
    await restarted.setup()
    assert await redis.hlen(first.intents) == 0
    summary = await redis.xpending(redis_keys.FEEDBACK_STREAM, redis_keys.COLLECTOR_GROUP)
    assert summary["pending"] == 0  # acknowledged by the recovery
    assert len(examples(restarted.store)) == 2
    assert await redis.scard(redis_keys.SEEN_SET) == 2


async def test_crash_before_files_redelivers(redis, redis_server, tmp_path) -> None:
    first = new_consumer(redis, redis_server.url, tmp_path)
    await first.setup()
    response = await put_completion(redis, POEM)
    await put_event(redis, "edit", target=ResponseRef(response), edited_text="The grass is silver with white dew.")
    plan = await first.plan(await first.read())
    await redis.hset(first.intents, "0000000000001-c1-lost", json.dumps(plan.intent("c1")))
    # Died before the batch directory was renamed into place: a half-written one may be there.
    (first.store.shards / ".tmp-0000000000001-c1-lost").mkdir(parents=True)
    restarted = new_consumer(redis, redis_server.url, tmp_path, claim_idle_ms=1000)
    await restarted.setup()
    assert await redis.hlen(first.intents) == 0
    assert not list(first.store.shards.glob(".tmp-*"))
    await asyncio.sleep(1.1)
    assert await restarted.reclaim() == 1
    written = examples(restarted.store)
    assert [(e["kind"], e["source"]) for e in written] == [("sft", "edit"), ("preference", "edit")]


async def test_second_consumer_reclaims_pending_events_exactly_once(redis, redis_server, tmp_path) -> None:
    dead = new_consumer(redis, redis_server.url, tmp_path, consumer_name="dead")
    await dead.setup()
    response = await put_completion(redis, POEM)
    ids = [
        await put_event(redis, "edit", target=ResponseRef(response), edited_text=f"White dew, version {i} of it.")
        for i in range(30)
    ]
    assert len(await dead.read()) == 30  # delivered to "dead", which never commits
    alive = new_consumer(redis, redis_server.url, tmp_path, consumer_name="alive")
    await alive.setup()
    assert await alive.read() == []  # nothing new: all 30 are pending with "dead"
    assert await alive.reclaim() == 0  # not idle long enough yet
    await asyncio.sleep(1.1)
    assert await alive.reclaim() == 30
    await alive.reclaim()
    written = examples(alive.store)
    assert sorted(e["event_id"] for e in written if e["kind"] == "sft") == sorted(ids)
    assert len(written) == 60


async def test_trim_keeps_unacknowledged_events(redis, redis_server, tmp_path) -> None:
    collector = new_consumer(redis, redis_server.url, tmp_path)
    await collector.setup()
    response = await put_completion(redis, POEM)
    for i in range(10):
        await put_event(redis, "edit", target=ResponseRef(response), edited_text=f"Dew on the grass, take {i}.")
    await drain(collector)
    await put_event(redis, "edit", target=ResponseRef(response), edited_text="Dew on the grass, the last take.")
    pending = await collector.read()  # delivered, not committed
    await collector.trim()
    assert await redis.xlen(redis_keys.FEEDBACK_STREAM) == 1
    await collector.process(pending)
    await collector.trim()
    assert await redis.xlen(redis_keys.FEEDBACK_STREAM) == 0


def spawn_collector(redis_url: str, dataset: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "BAILU_COLLECTOR_REDIS_URL": redis_url,
        "BAILU_COLLECTOR_DATASET_DIR": str(dataset),
        "BAILU_COLLECTOR_CONSUMER_NAME": "crashy",
        "BAILU_COLLECTOR_HTTP_PORT": str(free_port()),
        "BAILU_COLLECTOR_BATCH_SIZE": "40",
        "BAILU_COLLECTOR_BLOCK_MS": "100",
        "BAILU_COLLECTOR_CLAIM_IDLE_MS": "1000",
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bailu.collector"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


@pytest.mark.faults  # part of the fault suite (tests/faults/, `make test-faults`)
async def test_sigkill_mid_batch_loses_and_duplicates_nothing(redis, redis_server, tmp_path) -> None:
    """The collector is killed with SIGKILL three times while it works through 1,200 events, and
    restarted each time: every event ends up in the dataset exactly once."""
    dataset, log = tmp_path / "data", tmp_path / "collector.log"
    response = await put_completion(redis, POEM)
    ids = []
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(1200):
            text = f"White dew at dawn, poem number {i}."
            event = FeedbackEvent(
                id=f"fb-{i:05d}", created=time.time(), key_id="k", kind="edit", target=ResponseRef(response),
                edited_text=text,
            )  # fmt: skip
            ids.append(event.id)
            pipe.xadd(redis_keys.FEEDBACK_STREAM, {DATA_FIELD: event.to_json()})
        await pipe.execute()
    store = DatasetStore(dataset)
    kills = 0
    process = spawn_collector(redis_server.url, dataset, log)
    try:
        for threshold in (150, 500, 900):
            running = process
            await eventually(lambda t=threshold, p=running: len(store.batches()) * 40 >= t or p.poll() is not None, 60)
            assert process.poll() is None, log.read_text()
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
            process = spawn_collector(redis_server.url, dataset, log)

        async def done() -> bool:
            pending = await redis.xpending(redis_keys.FEEDBACK_STREAM, redis_keys.COLLECTOR_GROUP)
            groups = await redis.xinfo_groups(redis_keys.FEEDBACK_STREAM)
            return pending["pending"] == 0 and groups[0]["lag"] == 0

        deadline = time.monotonic() + 60
        while not await done():
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            assert process.poll() is None, log.read_text()[-3000:]
            await asyncio.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)
    written = examples(store)
    sft_ids = sorted(e["event_id"] for e in written if e["kind"] == "sft")
    pair_ids = sorted(e["event_id"] for e in written if e["kind"] == "preference")
    assert kills == 3
    assert sft_ids == sorted(ids)  # every event once: none lost, none twice
    assert pair_ids == sorted(ids)
    assert len({e["hash"] for e in written}) == len(written) == 2400
    assert int(await redis.hget(redis_keys.COUNTS_HASH, "preference")) == 1200


async def test_enough_new_pairs_seal_a_version_and_start_a_training_run(redis, redis_server, tmp_path) -> None:
    dataset = tmp_path / "data"
    command = (
        f"{sys.executable} -c \"import pathlib, sys; pathlib.Path(sys.argv[2], 'requested').write_text(sys.argv[1])\""
        " {dataset_version} {dataset_dir}"
    )
    service = CollectorService(
        settings(
            redis_server.url, dataset, runner="local", local_command=command, trigger_interval_s=0.1,
            trigger_min_new_pairs=3, trigger_cooldown_s=3600, trigger_peak_window="",
        )
    )  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        response = await put_completion(redis, POEM)
        for i in range(2):
            await put_event(redis, "edit", target=ResponseRef(response), edited_text=f"Dew at dawn, edit {i}.")
        await eventually(lambda: len(service.store.batches()) >= 1, 10)
        await asyncio.sleep(0.5)
        assert service.store.versions() == []  # 2 pairs < 3: not due
        await put_event(redis, "edit", target=ResponseRef(response), edited_text="Dew at dawn, edit three.")
        await eventually(lambda: (dataset / "requested").exists(), 15)
        assert (dataset / "requested").read_text() == "v000001"
        assert service.store.manifest("v000001")["counts"] == {"sft": 3, "preference": 3}
        # Cooling down: more pairs start nothing new.
        for i in range(3):
            await put_event(redis, "edit", target=ResponseRef(response), edited_text=f"Later dew, edit {i}.")
        await asyncio.sleep(1.0)
        assert service.store.versions() == ["v000001"]
    finally:
        stop.set()
        await task
