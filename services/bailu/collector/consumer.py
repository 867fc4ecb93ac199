"""The collector's consumer: feedback events in, committed dataset batches out, exactly once.

Each batch of events is processed and then committed in this order:
  1. a write-ahead intent (batch name, event ids, content hashes, state updates) is stored in Redis;
  2. the batch directory is written and renamed into place (the commit point on disk);
  3. one Redis transaction records the content hashes, updates the ratings state, sends dead letters,
     acknowledges (XACK) the events and deletes the intent — only if the intent is still there.
A crash between 1 and 3 leaves the events pending and the intent behind: on restart (or, for a dead
replica, once its events have been idle for `claim_idle_ms`) the intent is completed if its batch
exists, or dropped if not, before the events are reclaimed (XAUTOCLAIM) and processed again. Content
hashes already recorded are never written twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError, WatchError

from bailu.collector.builder import Built, Rating, build
from bailu.collector.settings import CollectorSettings
from bailu.common import redis_keys
from bailu.common.metrics import CollectorMetrics
from bailu.common.records import DATA_FIELD, CompletionRecord, FeedbackEvent
from bailu.common.redis_values import as_text
from bailu.datasets import quality
from bailu.datasets.format import Example
from bailu.datasets.store import DatasetStore

log = logging.getLogger(__name__)

Message = tuple[bytes, dict[bytes, bytes]]


@dataclass
class Plan:
    """What committing one batch of events records."""

    ids: list[str] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    ratings: dict[str, dict[str, str]] = field(default_factory=dict)  # ratings key -> {ref: json}
    dead: list[tuple[str, str, str]] = field(default_factory=list)  # (event id, data, reason)
    rejected: list[str] = field(default_factory=list)

    def intent(self, consumer: str) -> dict[str, Any]:
        return {
            "consumer": consumer,
            "created": time.time(),
            "ids": self.ids,
            "hashes": [e.hash for e in self.examples],
            "kinds": [e.kind for e in self.examples],
            "ratings": self.ratings,
            "dead": self.dead,
        }


@dataclass
class Batch:
    """A batch of events as read (`ids`, in order), decoded (`events`; `malformed` ones become dead letters),
    with the completion records they refer to (`records`; a missing one is absent) and what each event that is
    no rating yields (`built`, by position in `events`: its examples, or the error building them raised).
    Ratings are built when the batch is planned: they pair with the ratings earlier batches committed."""

    ids: list[str] = field(default_factory=list)
    events: list[tuple[str, FeedbackEvent]] = field(default_factory=list)
    malformed: list[tuple[str, str, str]] = field(default_factory=list)  # (event id, data, reason)
    records: dict[str, CompletionRecord] = field(default_factory=dict)
    built: dict[int, Built | Exception] = field(default_factory=dict)


class FeedbackConsumer:
    """One consumer of the collector's group on the feedback stream: turns batches of events into committed
    dataset batches, exactly once (the order of writes is in the module docstring)."""

    def __init__(
        self, settings: CollectorSettings, redis: Redis, store: DatasetStore, metrics: CollectorMetrics
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.store = store
        self.metrics = metrics
        self.consumer = settings.consumer_name
        blocked = list(settings.block_list)
        if settings.block_list_file is not None:
            blocked += [line.strip() for line in settings.block_list_file.read_text().splitlines() if line.strip()]
        self.quality = quality.QualityFilter.create(
            min_chars=settings.min_chars,
            max_repeats=settings.max_repeats,
            min_letter_share=settings.min_letter_share,
            blocked=blocked,
        )
        self.intents = redis_keys.intents_key(self.consumer)
        self.batches_done = 0

    # setup and recovery

    async def setup(self) -> None:
        """Create the consumer group if needed, drop half-written files, finish this replica's own intents."""
        try:
            await self.redis.xgroup_create(
                redis_keys.FEEDBACK_STREAM, redis_keys.COLLECTOR_GROUP, id="0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self.store.ensure()
        removed = await asyncio.to_thread(self.store.remove_stale_tmp)
        if removed:
            log.info("removed half-written batches", extra={"count": removed})
        await self.recover(self.consumer)

    async def recover(self, consumer: str) -> int:
        """Complete or drop the intents a consumer left behind; the number handled."""
        key = redis_keys.intents_key(consumer)
        intents: dict[Any, Any] = await self.redis.hgetall(key)
        for name, data in intents.items():
            batch = as_text(name)
            if self.store.batch_exists(batch):
                await self._commit(key, batch, json.loads(data))
                log.info("completed a batch left by a crash", extra={"batch": batch, "consumer": consumer})
            else:
                await self.redis.hdel(key, batch)
                log.info("dropped an uncommitted batch; its events will be redelivered", extra={"batch": batch})
        return len(intents)

    async def reclaim(self) -> int:
        """Take over events idle for `claim_idle_ms` with other consumers (after finishing their intents)."""
        idle = self.settings.claim_idle_ms
        consumers: list[dict[str, Any]] = await self.redis.xinfo_consumers(
            redis_keys.FEEDBACK_STREAM, redis_keys.COLLECTOR_GROUP
        )
        for info in consumers:
            name = as_text(info["name"])
            if name != self.consumer and int(info["idle"]) >= idle:
                await self.recover(name)
        await self._dead_letter_poison(idle)
        claimed: list[Message] = []
        start = "0-0"
        while True:
            result: Any = await self.redis.xautoclaim(
                redis_keys.FEEDBACK_STREAM,
                redis_keys.COLLECTOR_GROUP,
                self.consumer,
                idle,
                start,
                count=self.settings.batch_size,
            )
            start, messages = result[0], result[1]
            claimed += [m for m in messages if m[1]]
            if start in (b"0-0", "0-0") or not messages:
                break
        if claimed:
            self.metrics.reclaimed.inc(len(claimed))
            log.info("reclaimed events", extra={"count": len(claimed)})
            for i in range(0, len(claimed), self.settings.batch_size):
                await self.process(claimed[i : i + self.settings.batch_size])
        return len(claimed)

    async def _dead_letter_poison(self, idle: int) -> None:
        """Events delivered `max_deliveries` times without being committed go to the dead-letter stream."""
        pending: list[dict[str, Any]] = await self.redis.xpending_range(
            redis_keys.FEEDBACK_STREAM, redis_keys.COLLECTOR_GROUP, min="-", max="+", count=1000, idle=idle
        )
        for entry in pending:
            if int(entry["times_delivered"]) < self.settings.max_deliveries:
                continue
            msg_id = as_text(entry["message_id"])
            found: Any = await self.redis.xrange(redis_keys.FEEDBACK_STREAM, msg_id, msg_id)
            data = found[0][1].get(DATA_FIELD.encode(), b"").decode(errors="replace") if found else ""
            plan = Plan(ids=[msg_id], dead=[(msg_id, data, "too_many_deliveries")])
            await self._commit(None, None, plan.intent(self.consumer))
            self.metrics.deadlettered.labels("too_many_deliveries").inc()

    # the main loop

    async def read(self) -> list[Message]:
        result: Any = await self.redis.xreadgroup(
            redis_keys.COLLECTOR_GROUP,
            self.consumer,
            {redis_keys.FEEDBACK_STREAM: ">"},
            count=self.settings.batch_size,
            block=self.settings.block_ms,
        )
        return [m for _, messages in result for m in messages] if result else []

    async def prepare(self, messages: list[Message]) -> Batch:
        """Decode a batch of events, fetch the completion records they refer to and build the examples of those
        that are no ratings: all that planning it needs besides the state earlier batches commit (seen hashes,
        ratings), so that the service can prepare the next batch while this one is written
        (`CollectorService`)."""
        batch = Batch()
        for raw_id, fields in messages:
            msg_id = raw_id.decode()
            batch.ids.append(msg_id)
            data = fields.get(DATA_FIELD.encode(), b"")
            try:
                batch.events.append((msg_id, FeedbackEvent.from_json(data)))
            except (ValueError, TypeError, KeyError):
                batch.malformed.append((msg_id, data.decode(errors="replace"), "malformed"))
        batch.records = await self._records({ref.response_id for _, e in batch.events for ref in e.refs()})
        for position, (_, event) in enumerate(batch.events):
            if event.kind != "rating":
                try:
                    batch.built[position] = self._build(event, batch.records, [])
                except Exception as exc:  # raised again where the batch is planned, and handled there
                    batch.built[position] = exc
        return batch

    def _build(self, event: FeedbackEvent, records: dict[str, CompletionRecord], earlier: list[Rating]) -> Built:
        return build(event, records, earlier, sft_min_score=self.settings.sft_min_score, check=self.quality)

    async def process(self, messages: list[Message] | Batch) -> None:
        """Process and commit one batch of events (read, or read and prepared)."""
        started = time.monotonic()
        plan = await self.plan(messages)
        name = None
        intent = plan.intent(self.consumer)
        if plan.examples:
            name = f"{int(time.time() * 1000):013d}-{self.consumer}-{uuid.uuid4().hex[:8]}"
            await self.redis.hset(self.intents, name, json.dumps(intent))
            await asyncio.to_thread(self.store.write_batch, name, plan.examples, self.consumer)
        committed = await self._commit(self.intents if name else None, name, intent)
        if committed:  # counted per label, not per example: a batch holds hundreds
            for kind, count in Counter(e.kind for e in plan.examples).items():
                self.metrics.examples.labels(kind).inc(count)
            for reason, count in Counter(plan.rejected).items():
                self.metrics.rejected.labels(reason).inc(count)
            for reason, count in Counter(reason for _, _, reason in plan.dead).items():
                self.metrics.deadlettered.labels(reason).inc(count)
            self.metrics.events.labels("committed").inc(len(plan.ids) - len(plan.dead))
            self.metrics.events.labels("deadlettered").inc(len(plan.dead))
        self.batches_done += 1
        self.metrics.batch_seconds.observe(time.monotonic() - started)

    async def plan(self, messages: list[Message] | Batch) -> Plan:
        batch = messages if isinstance(messages, Batch) else await self.prepare(messages)
        plan = Plan(ids=list(batch.ids), dead=list(batch.malformed))
        events, records = batch.events, batch.records
        rated = [e.target.response_id for _, e in events if e.kind == "rating" and e.target is not None]
        ratings = await self._ratings({records[r].prompt_hash for r in rated if r in records})
        seen_in_batch: set[str] = set()
        candidates: list[Example] = []
        for position, (msg_id, event) in enumerate(events):
            try:
                prompt_key = ""
                earlier: list[Rating] = []
                if event.kind == "rating" and event.target and event.target.response_id in records:
                    prompt_key = redis_keys.ratings_key(records[event.target.response_id].prompt_hash)
                    earlier = ratings.setdefault(prompt_key, [])
                ready = batch.built.get(position)
                if isinstance(ready, Exception):
                    raise ready
                built = ready if ready is not None else self._build(event, records, earlier)
            except KeyError as exc:
                plan.dead.append((msg_id, event.to_json(), f"completion_missing: {exc}"[:200]))
                continue
            except Exception as exc:  # a bug must not block the stream: keep the event, with the reason
                log.exception("could not process a feedback event", extra={"event": event.id})
                plan.dead.append((msg_id, event.to_json(), f"error: {type(exc).__name__}"))
                continue
            if built.rating is not None and prompt_key:
                earlier.append(built.rating)
                plan.ratings.setdefault(prompt_key, {})[built.rating.ref] = built.rating.to_json()
            plan.rejected += built.rejected
            candidates += built.examples
        hashes = [c.hash for c in candidates]
        seen = await self.redis.smismember(redis_keys.SEEN_SET, hashes) if hashes else []
        for candidate, already in zip(candidates, seen, strict=True):
            if already or candidate.hash in seen_in_batch:
                plan.rejected.append(quality.DUPLICATE)
            else:
                seen_in_batch.add(candidate.hash)
                plan.examples.append(candidate)
        return plan

    async def _records(self, response_ids: set[str]) -> dict[str, CompletionRecord]:
        if not response_ids:
            return {}
        ordered = sorted(response_ids)
        values: list[Any] = await self.redis.mget([redis_keys.response_key(r) for r in ordered])
        return {rid: CompletionRecord.from_json(v) for rid, v in zip(ordered, values, strict=True) if v is not None}

    async def _ratings(self, prompt_hashes: set[str]) -> dict[str, list[Rating]]:
        result: dict[str, list[Rating]] = defaultdict(list)
        for prompt_hash in prompt_hashes:
            key = redis_keys.ratings_key(prompt_hash)
            stored: dict[Any, Any] = await self.redis.hgetall(key)
            for ref, data in stored.items():
                value = json.loads(data)
                result[key].append(Rating(as_text(ref), int(value["score"]), value["text"]))
        return result

    async def _commit(self, intents_key: str | None, batch: str | None, intent: dict[str, Any]) -> bool:
        """Record a batch's effects and acknowledge its events in one transaction. With an intent, only if
        the intent still exists (so that a batch is never recorded twice). True if this call committed."""
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    if intents_key is not None and batch is not None:
                        await pipe.watch(intents_key)
                        if not await pipe.hexists(intents_key, batch):
                            await pipe.reset()
                            return False
                        pipe.multi()
                        pipe.hdel(intents_key, batch)
                    if intent["hashes"]:
                        pipe.sadd(redis_keys.SEEN_SET, *intent["hashes"])
                        for kind in set(intent["kinds"]):
                            pipe.hincrby(redis_keys.COUNTS_HASH, kind, intent["kinds"].count(kind))
                    for key, values in intent["ratings"].items():
                        pipe.hset(key, mapping=values)
                        pipe.expire(key, self.settings.ratings_ttl_s)
                    for msg_id, data, reason in intent["dead"]:
                        fields: dict[Any, Any] = {DATA_FIELD: data, "reason": reason, "event_id": msg_id}
                        pipe.xadd(redis_keys.DEADLETTER_STREAM, fields, maxlen=100_000, approximate=True)
                    if intent["ids"]:
                        pipe.xack(redis_keys.FEEDBACK_STREAM, redis_keys.COLLECTOR_GROUP, *intent["ids"])
                    await pipe.execute()
                    return True
                except WatchError:
                    continue

    async def trim(self) -> None:
        """Drop events the group has acknowledged from the feedback stream (never an unacknowledged one)."""
        summary = await self.redis.xpending(redis_keys.FEEDBACK_STREAM, redis_keys.COLLECTOR_GROUP)
        if summary["pending"]:
            min_id = as_text(summary["min"])
        else:
            groups = await self.redis.xinfo_groups(redis_keys.FEEDBACK_STREAM)
            group = next(g for g in groups if as_text(g["name"]) == redis_keys.COLLECTOR_GROUP)
            ms, _, seq = as_text(group["last-delivered-id"]).partition("-")
            min_id = f"{ms}-{int(seq) + 1}"
        await self.redis.xtrim(redis_keys.FEEDBACK_STREAM, minid=min_id, approximate=False)

    async def update_gauges(self) -> None:
        summary: Any = await self.redis.xpending(redis_keys.FEEDBACK_STREAM, redis_keys.COLLECTOR_GROUP)
        self.metrics.pending.set(int(summary["pending"]))
        group = await self._group()
        if group is not None and group.get("lag") is not None:
            self.metrics.lag.set(int(group["lag"]))

    async def _group(self) -> dict[str, Any] | None:
        groups: list[dict[str, Any]] = await self.redis.xinfo_groups(redis_keys.FEEDBACK_STREAM)
        return next((g for g in groups if as_text(g["name"]) == redis_keys.COLLECTOR_GROUP), None)

    async def pairs_total(self) -> int:
        return int(await self.redis.hget(redis_keys.COUNTS_HASH, "preference") or 0)
