"""The batch body and results of `POST /v1/feedback/batch`, without I/O."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from bailu.common.errors import Conflict, InvalidRequest, NotFound
from bailu.gateway.feedback import FeedbackRequest, batch_event, kind_of
from bailu.gateway.feedback_batch import FeedbackBatchResult, batch_body, parse_batch, request_body_schema
from bailu.gateway.feedback_record import Outcome, Recorded
from tests.unit.gateway.test_openapi import openapi_document

EVENT = {"type": "rating", "response_id": "chatcmpl-1", "thumb": "up", "feedback_id": "f1"}


def test_a_batch_of_one_to_the_limit_parses() -> None:
    assert parse_batch(json.dumps({"events": [EVENT]}).encode(), 2) == [EVENT]
    assert parse_batch(json.dumps({"events": [EVENT, "x"]}).encode(), 2) == [EVENT, "x"]


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"", None),
        (b"\xff\xfe", None),  # not UTF-8
        (b"null", None),
        (b'{"events": null}', "events"),
        (b'{"events": []}', "events"),
        (json.dumps({"events": [EVENT] * 3}).encode(), "events"),
        (b'{"event": []}', "event"),
        (b"[" * 50_000, None),
    ],
)
def test_a_body_that_is_not_a_batch(raw: bytes, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_batch(raw, 2)
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("item", "param"),
    [
        ({**EVENT, "score": 9}, "score"),
        ({**EVENT, "extra": 1}, "extra"),
        ({**EVENT, "tags": ["x" * 65]}, "tags[0]"),
        ({k: v for k, v in EVENT.items() if k != "feedback_id"}, "feedback_id"),
        ({**EVENT, "feedback_id": ""}, "feedback_id"),
        ([EVENT], None),
    ],
)
def test_an_invalid_event_names_its_own_field(item: object, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as caught:
        batch_event(item)
    assert caught.value.param == param


def test_an_event_is_what_the_single_route_takes() -> None:
    assert batch_event(EVENT) == FeedbackRequest(**EVENT)  # type: ignore[arg-type]
    assert [kind_of(EVENT), kind_of({"type": ["rating"]}), kind_of("rating"), kind_of({"type": "x"})] == [
        "rating",
        "unknown",
        "unknown",
        "unknown",
    ]


def test_results_match_their_model_and_the_document() -> None:
    outcomes: list[Outcome] = [
        Recorded("fb-1", duplicate=False),
        Recorded("fb-0", duplicate=True),
        NotFound("no response 'x'", param="response_id"),
        Conflict("used", param="feedback_id"),
        InvalidRequest("bad"),
    ]
    body = batch_body(outcomes)
    parsed = FeedbackBatchResult.model_validate(body)
    assert [(r.index, r.status, r.id) for r in parsed.data] == [
        (0, 202, "fb-1"),
        (1, 202, "fb-0"),
        (2, 404, None),
        (3, 409, None),
        (4, 400, None),
    ]
    assert parsed.data[2].error is not None
    assert (parsed.data[2].error.code, parsed.data[2].error.param) == ("not_found", "response_id")
    document = openapi_document()
    jsonschema.Draft202012Validator({**document, "$ref": "#/components/schemas/FeedbackBatchResult"}).validate(body)


def test_the_documented_request_body_takes_events_with_a_feedback_id_up_to_the_limit() -> None:
    document = openapi_document()
    schema = request_body_schema(2, "FeedbackRequest")["requestBody"]["content"]["application/json"]["schema"]
    validator = jsonschema.Draft202012Validator({**document, **schema})
    validator.validate({"events": [EVENT, EVENT]})
    wrongs: list[dict[str, Any]] = [
        {"events": []},
        {"events": [EVENT] * 3},
        {"events": [{k: v for k, v in EVENT.items() if k != "feedback_id"}]},
        {"events": [EVENT], "more": 1},
    ]
    for wrong in wrongs:
        assert not validator.is_valid(wrong), wrong
    served = document["paths"]["/v1/feedback/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert served["properties"]["events"]["maxItems"] == 256  # the setting's default
