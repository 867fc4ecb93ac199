"""The wire format of `POST /v1/feedback/batch`: the body (`{"events": [...]}`), the per-event results, and
how the OpenAPI document describes both.

The body is parsed here rather than by FastAPI, so that one invalid event is refused in its own result
(a 400 naming the field, as `POST /v1/feedback` would answer for it alone) while the others are recorded;
only a body that is not a batch at all (not JSON, not an object, no `events`, none or too many) is a 400
for the whole request.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, Field

from bailu.common.errors import BailuError, InvalidRequest
from bailu.gateway.errors import error_body
from bailu.gateway.feedback_record import Outcome
from bailu.gateway.responses import ErrorDetail

BATCH_FIELD = "events"
MAX_EVENTS_SETTING = "BAILU_GATEWAY_FEEDBACK_BATCH_MAX_EVENTS"
RESULT_STATUSES = (202, 400, 404, 409)


class FeedbackResult(BaseModel):
    """One event's result: 202 with its id, or the error `POST /v1/feedback` would answer for it alone."""

    index: int = Field(ge=0, description="The event's position in `events`.")
    status: Literal[202, 400, 404, 409] = Field(
        description="202: recorded (or, for a retry with the same `feedback_id` and body, recorded before); 400: "
        "invalid, or fields that do not fit its `type`; 404: a response that is unknown, expired or another API "
        "key's; 409: its `feedback_id` was used before with a different body."
    )
    id: str | None = Field(description="202: the feedback's id (a retry gets the id first given); else null.")
    error: ErrorDetail | None = Field(description="Else: the OpenAI-style error (`param` names the event's field).")


class FeedbackBatchResult(BaseModel):
    """`POST /v1/feedback/batch`: a result per event, in the order of `events`."""

    object: Literal["feedback.batch"] = "feedback.batch"
    data: list[FeedbackResult] = Field(description="One result per event, in order.")


def parse_batch(raw: bytes, max_events: int) -> list[Any]:
    """The events of a batch body, each as parsed JSON (validated one by one by the caller); raises
    `InvalidRequest` for a body that is not a batch of 1 to `max_events` events."""
    if not raw:
        raise InvalidRequest("the request body is missing: send a JSON object")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep
        raise InvalidRequest("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    extra = next((name for name in body if name != BATCH_FIELD), None)
    if extra is not None:
        raise InvalidRequest(f"unrecognized request argument supplied: {extra}", param=extra)
    if BATCH_FIELD not in body:
        raise InvalidRequest(f"missing required parameter: {BATCH_FIELD}", param=BATCH_FIELD)
    events = body[BATCH_FIELD]
    if not isinstance(events, list):
        raise InvalidRequest(f"invalid value for {BATCH_FIELD}: Input should be a valid list", param=BATCH_FIELD)
    if not events:
        raise InvalidRequest(f"{BATCH_FIELD} is empty: send at least one event", param=BATCH_FIELD)
    if len(events) > max_events:
        raise InvalidRequest(
            f"{BATCH_FIELD} holds {len(events)} events; a batch takes at most {max_events} ({MAX_EVENTS_SETTING})",
            param=BATCH_FIELD,
        )
    return events


def result_of(index: int, outcome: Outcome) -> dict[str, Any]:
    """One event's result as JSON (a `FeedbackResult`)."""
    if isinstance(outcome, BailuError):
        return {"index": index, "status": outcome.http_status, "id": None, "error": error_body(outcome)["error"]}
    return {"index": index, "status": 202, "id": outcome.id, "error": None}


def batch_body(outcomes: list[Outcome]) -> dict[str, Any]:
    """The response body (a `FeedbackBatchResult`) of these outcomes, in the order of the events."""
    return {"object": "feedback.batch", "data": [result_of(i, o) for i, o in enumerate(outcomes)]}


def request_body_schema(max_events: int, event_component: str) -> dict[str, Any]:
    """The route's `openapi_extra`: its request body, `{"events": [...]}` of 1 to `max_events` events, each an
    `event_component` (the schema of `POST /v1/feedback`'s body) with a `feedback_id`."""
    events = {
        "type": "array",
        "minItems": 1,
        "maxItems": max_events,
        "description": f"The events, 1 to {max_events} ({MAX_EVENTS_SETTING}). Each is a body of `POST "
        "/v1/feedback` and needs its `feedback_id`: the event's idempotency key (a retried batch records "
        "nothing twice; the same id with a different body is that event's 409).",
        "items": {"allOf": [{"$ref": f"#/components/schemas/{event_component}"}, {"required": ["feedback_id"]}]},
    }
    schema = {
        "title": "FeedbackBatchRequest",
        "type": "object",
        "additionalProperties": False,
        "required": [BATCH_FIELD],
        "properties": {BATCH_FIELD: events},
    }
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
