"""`POST /v1/feedback`: ratings, comparisons and edits, recorded once on a Redis stream."""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Annotated, Literal

from pydantic import Field
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bailu.common import redis_keys
from bailu.common.errors import Conflict, InvalidRequest, NotFound, Unavailable
from bailu.common.metrics import GatewayMetrics
from bailu.common.records import DATA_FIELD, CompletionRecord, FeedbackEvent, ResponseRef
from bailu.common.redis_values import as_text
from bailu.gateway.completion_log import CompletionLog
from bailu.gateway.responses import FeedbackAccepted
from bailu.gateway.schemas import StrictBody, WireText

IDEMPOTENCY_HEADER = "Idempotency-Key"

# Atomically: if the idempotency key was seen, return what it recorded; else append the event and
# remember the key. KEYS: stream, idempotency key (or ""). ARGV: feedback id, body hash, data, ttl, data field.
_RECORD_ONCE = """
if KEYS[2] ~= '' then
  local seen = redis.call('GET', KEYS[2])
  if seen then return seen end
end
redis.call('XADD', KEYS[1], '*', ARGV[5], ARGV[3])
if KEYS[2] ~= '' then
  redis.call('SET', KEYS[2], ARGV[1] .. '|' .. ARGV[2], 'EX', tonumber(ARGV[4]))
end
return 'new'
"""


class ResponseRefIn(StrictBody):
    response_id: WireText = Field(
        min_length=1,
        max_length=128,
        description="The `id` of a completion or of a Responses API response (`resp_...`).",
    )
    choice_index: int = Field(0, ge=0, le=15, description="Which candidate of that response (`n` > 1).")


Tag = Annotated[WireText, Field(min_length=1, max_length=64)]


class FeedbackRequest(StrictBody):
    """One piece of feedback. `type` says which fields apply:

    - `rating`: `response_id` (+ `choice_index`) and either `thumb` ("up"/"down") or `score` (1-5);
    - `comparison`: `chosen` and `rejected`, two candidates answering the same prompt;
    - `edit`: `response_id` (+ `choice_index`) and `edited_text`, the text the user kept.
    """

    type: Literal["rating", "comparison", "edit"]
    response_id: WireText | None = Field(None, min_length=1, max_length=128, description="rating, edit: the response.")
    choice_index: int = Field(0, ge=0, le=15, description="rating, edit: the candidate of that response.")
    thumb: Literal["up", "down"] | None = Field(None, description="rating: thumbs up or down.")
    score: int | None = Field(None, ge=1, le=5, description="rating: a score from 1 (worst) to 5 (best).")
    chosen: ResponseRefIn | None = Field(None, description="comparison: the preferred candidate.")
    rejected: ResponseRefIn | None = Field(None, description="comparison: the other candidate.")
    edited_text: WireText | None = Field(None, min_length=1, max_length=20_000, description="edit: the kept text.")
    comment: WireText | None = Field(None, max_length=2_000, description="A free-text comment.")
    tags: list[Tag] = Field(default_factory=list, max_length=16, description="Labels, e.g. `too-long`.")
    feedback_id: WireText | None = Field(
        None, min_length=1, max_length=128, description="A client-chosen id: a retried POST with it is recorded once."
    )

    def check(self) -> None:
        """Raise `InvalidRequest` naming the field that does not fit the feedback's type."""
        allowed = {
            "rating": {"response_id", "thumb", "score"},
            "comparison": {"chosen", "rejected"},
            "edit": {"response_id", "edited_text"},
        }[self.type]
        for name in ("response_id", "thumb", "score", "chosen", "rejected", "edited_text"):
            if getattr(self, name) is not None and name not in allowed:
                raise InvalidRequest(f"{name} does not apply to {self.type} feedback", param=name)
        required = {"rating": ("response_id",), "comparison": ("chosen", "rejected"), "edit": ("response_id",)}
        for name in (*required[self.type], *(("edited_text",) if self.type == "edit" else ())):
            if getattr(self, name) is None:
                raise InvalidRequest(f"{self.type} feedback needs {name}", param=name)
        if self.type == "rating" and (self.thumb is None) == (self.score is None):
            raise InvalidRequest("a rating needs exactly one of thumb or score", param="thumb")
        if self.type == "comparison" and self.chosen == self.rejected:
            raise InvalidRequest("chosen and rejected must be different candidates", param="rejected")


class FeedbackHandler:
    def __init__(
        self, redis: Redis, completion_log: CompletionLog, metrics: GatewayMetrics, *, idempotency_ttl_s: int
    ) -> None:
        self.redis = redis
        self.completion_log = completion_log
        self.metrics = metrics
        self.idempotency_ttl_s = idempotency_ttl_s
        self._script = redis.register_script(_RECORD_ONCE)

    async def _response(self, ref: ResponseRef, key_id: str, param: str) -> CompletionRecord:
        record = await self.completion_log.lookup_for(key_id, ref.response_id)
        if record is None:
            raise NotFound(f"no response '{ref.response_id}' that this API key can give feedback on", param=param)
        if record.choice(ref.choice_index) is None:
            raise InvalidRequest(f"response '{ref.response_id}' has no candidate {ref.choice_index}", param=param)
        return record

    async def accept(self, body: FeedbackRequest, key_id: str, idempotency_key: str | None) -> FeedbackAccepted:
        body.check()
        try:
            event = await self._event(body, key_id)
            body_hash = hashlib.sha256(body.model_dump_json().encode()).hexdigest()[:16]
            idem = idempotency_key or body.feedback_id
            result = await self._script(
                keys=[redis_keys.FEEDBACK_STREAM, redis_keys.idempotency_key(key_id, idem) if idem else ""],
                args=[event.id, body_hash, event.to_json(), self.idempotency_ttl_s, DATA_FIELD],
            )
        except RedisError as exc:
            raise Unavailable(f"feedback cannot be stored right now ({type(exc).__name__})") from exc
        result = as_text(result)
        if result == "new":
            self.metrics.feedback.labels(body.type, "accepted").inc()
            return FeedbackAccepted(id=event.id)
        earlier_id, _, earlier_hash = result.partition("|")
        if earlier_hash != body_hash:
            # The header wins over the body's `feedback_id` (`idem` above): name what actually conflicted.
            param = IDEMPOTENCY_HEADER if idempotency_key else "feedback_id"
            raise Conflict("this idempotency key was already used with a different body", param=param)
        self.metrics.feedback.labels(body.type, "duplicate").inc()
        return FeedbackAccepted(id=earlier_id)

    async def _event(self, body: FeedbackRequest, key_id: str) -> FeedbackEvent:
        common = {"id": f"fb-{uuid.uuid4().hex}", "created": time.time(), "key_id": key_id, "kind": body.type}
        extra = {"comment": body.comment, "tags": list(body.tags)}
        if body.type == "comparison":
            assert body.chosen is not None
            assert body.rejected is not None
            chosen = ResponseRef(body.chosen.response_id, body.chosen.choice_index)
            rejected = ResponseRef(body.rejected.response_id, body.rejected.choice_index)
            first = await self._response(chosen, key_id, "chosen.response_id")
            second = await self._response(rejected, key_id, "rejected.response_id")
            if first.prompt_hash != second.prompt_hash:
                raise InvalidRequest("chosen and rejected must answer the same prompt", param="rejected.response_id")
            return FeedbackEvent(**common, chosen=chosen, rejected=rejected, **extra)  # type: ignore[arg-type]
        assert body.response_id is not None
        target = ResponseRef(body.response_id, body.choice_index)
        await self._response(target, key_id, "response_id")
        if body.type == "rating":
            return FeedbackEvent(**common, target=target, thumb=body.thumb, score=body.score, **extra)  # type: ignore[arg-type]
        return FeedbackEvent(**common, target=target, edited_text=body.edited_text, **extra)  # type: ignore[arg-type]


def feedback_disabled() -> Unavailable:
    return Unavailable("feedback is not enabled on this deployment (no Redis configured)")
