"""`POST /v1/feedback` and `/v1/feedback/batch`: ratings, comparisons and edits, recorded once on a Redis stream."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import Counter
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bailu.common.errors import BailuError, InvalidRequest, Unavailable
from bailu.common.metrics import GatewayMetrics
from bailu.common.records import FeedbackEvent, ResponseRef
from bailu.gateway.completion_log import CompletionLog
from bailu.gateway.errors import from_validation_error
from bailu.gateway.feedback_record import FeedbackRecorder, Outcome, Recording
from bailu.gateway.responses import FeedbackAccepted
from bailu.gateway.schemas import StrictBody, WireText

IDEMPOTENCY_HEADER = "Idempotency-Key"


class ResponseRefIn(StrictBody):
    response_id: WireText = Field(
        min_length=1,
        max_length=128,
        description="The `id` of a completion or of a Responses API response (`resp_...`).",
    )
    choice_index: int = Field(0, ge=0, le=15, description="Which candidate of that response (`n` > 1).")


FeedbackKind = Literal["rating", "comparison", "edit"]
KINDS = frozenset(get_args(FeedbackKind))
Tag = Annotated[WireText, Field(min_length=1, max_length=64)]


class FeedbackRequest(StrictBody):
    """One piece of feedback. `type` says which fields apply:

    - `rating`: `response_id` (+ `choice_index`) and either `thumb` ("up"/"down") or `score` (1-5);
    - `comparison`: `chosen` and `rejected`, two candidates answering the same prompt;
    - `edit`: `response_id` (+ `choice_index`) and `edited_text`, the text the user kept.
    """

    type: FeedbackKind
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
    """Feedback events in, each recorded once on the feedback stream (`FeedbackRecorder`): one at a time
    (`POST /v1/feedback`) or a batch (`POST /v1/feedback/batch`), both counted in the `feedback` metric by
    kind and outcome (accepted, duplicate, or the error's name)."""

    def __init__(
        self,
        redis: Redis,
        completion_log: CompletionLog,
        metrics: GatewayMetrics,
        *,
        idempotency_ttl_s: int,
    ) -> None:
        self.metrics = metrics
        self.recorder = FeedbackRecorder(redis, completion_log, idempotency_ttl_s=idempotency_ttl_s)

    async def accept(self, body: FeedbackRequest, key_id: str, idempotency_key: str | None) -> FeedbackAccepted:
        """Record one event; raises the error it is refused with."""
        try:
            recording = self._recording(body, key_id, idempotency_key)
        except InvalidRequest as exc:
            self._count([(body.type, exc)])
            raise
        [outcome] = await self._record(key_id, [recording])
        self._count([(body.type, outcome)])
        if isinstance(outcome, BailuError):
            raise outcome
        return FeedbackAccepted(id=outcome.id)

    async def accept_batch(self, events: list[Any], key_id: str) -> list[Outcome]:
        """Record the events of a batch (`feedback_batch.parse_batch`), each validated on its own as a body of
        `POST /v1/feedback` with a `feedback_id` (its idempotency key); each one's outcome, in order."""
        outcomes: list[Outcome | None] = [None] * len(events)
        recordings: list[Recording] = []
        at: list[int] = []
        for index, item in enumerate(events):
            try:
                recordings.append(self._recording(batch_event(item), key_id, None))
            except InvalidRequest as exc:
                outcomes[index] = exc
                continue
            at.append(index)
        if recordings:
            for index, outcome in zip(at, await self._record(key_id, recordings), strict=True):
                outcomes[index] = outcome
        done = [outcome for outcome in outcomes if outcome is not None]
        self._count([(kind_of(item), outcome) for item, outcome in zip(events, done, strict=True)])
        return done

    async def _record(self, key_id: str, recordings: list[Recording]) -> list[Outcome]:
        try:
            return await self.recorder.record(key_id, recordings)
        except RedisError as exc:
            raise Unavailable(f"feedback cannot be stored right now ({type(exc).__name__})") from exc

    def _count(self, outcomes: list[tuple[str, Outcome]]) -> None:
        """Count outcomes by kind: accepted, duplicate, or the error's name (once per label, not per event)."""
        counts = Counter(
            (kind, o.name if isinstance(o, BailuError) else "duplicate" if o.duplicate else "accepted")
            for kind, o in outcomes
        )
        for (kind, outcome), count in counts.items():
            self.metrics.feedback.labels(kind, outcome).inc(count)

    @staticmethod
    def _recording(body: FeedbackRequest, key_id: str, idempotency_key: str | None) -> Recording:
        """What recording `body` takes: checked (`InvalidRequest`), its event built, its idempotency key
        (the header's, else the body's `feedback_id`)."""
        body.check()
        common = {"id": f"fb-{uuid.uuid4().hex}", "created": time.time(), "key_id": key_id, "kind": body.type}
        extra = {"comment": body.comment, "tags": list(body.tags)}
        refs: tuple[tuple[ResponseRef, str], ...]
        if body.type == "comparison":
            assert body.chosen is not None
            assert body.rejected is not None
            chosen = ResponseRef(body.chosen.response_id, body.chosen.choice_index)
            rejected = ResponseRef(body.rejected.response_id, body.rejected.choice_index)
            event = FeedbackEvent(**common, chosen=chosen, rejected=rejected, **extra)  # type: ignore[arg-type]
            refs = ((chosen, "chosen.response_id"), (rejected, "rejected.response_id"))
        else:
            assert body.response_id is not None
            target = ResponseRef(body.response_id, body.choice_index)
            if body.type == "rating":
                event = FeedbackEvent(**common, target=target, thumb=body.thumb, score=body.score, **extra)  # type: ignore[arg-type]
            else:
                event = FeedbackEvent(**common, target=target, edited_text=body.edited_text, **extra)  # type: ignore[arg-type]
            refs = ((target, "response_id"),)
        return Recording(
            refs=refs,
            feedback_id=event.id,
            body_hash=hashlib.sha256(body.model_dump_json().encode()).hexdigest()[:16],
            data=event.to_json(),
            idempotency=idempotency_key or body.feedback_id or "",
            # The header wins over the body's `feedback_id`: name what actually conflicted.
            conflict_param=IDEMPOTENCY_HEADER if idempotency_key else "feedback_id",
        )


def kind_of(item: Any) -> str:
    """The `type` of an event as parsed JSON, for the metric's label: one of KINDS, else "unknown"."""
    kind = item.get("type") if isinstance(item, dict) else None
    return kind if isinstance(kind, str) and kind in KINDS else "unknown"


def batch_event(item: Any) -> FeedbackRequest:
    """One event of a batch as a `FeedbackRequest` with a `feedback_id`; else `InvalidRequest` naming its field
    (the field's path within the event, as `POST /v1/feedback` names it)."""
    if not isinstance(item, dict):
        raise InvalidRequest("an event must be a JSON object (a body of POST /v1/feedback)")
    try:
        body = FeedbackRequest.model_validate(item)
    except ValidationError as exc:
        raise from_validation_error(list(exc.errors())) from None
    if body.feedback_id is None:
        raise InvalidRequest(
            "missing required parameter: feedback_id (each event of a batch needs one: its idempotency key)",
            param="feedback_id",
        )
    return body


def feedback_disabled() -> Unavailable:
    return Unavailable("feedback is not enabled on this deployment (no Redis configured)")
