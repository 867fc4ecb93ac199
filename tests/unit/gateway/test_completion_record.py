"""Completion records keep the version that served them, and records of other code versions stay readable."""

from __future__ import annotations

import json

from bailu.common.records import Choice, CompletionRecord
from bailu.common.types import ToolCall


def record(**overrides: object) -> CompletionRecord:
    values: dict[str, object] = {
        "id": "chatcmpl-1",
        "created": 1.0,
        "key_id": "k",
        "model": "bailu-poet",
        "served_model": "base:bailu-poet@v0003",
        "messages": [{"role": "user", "content": "dew"}],
        "prompt": None,
        "choices": [Choice(0, "white dew", "stop")],
        "sampling": {},
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "ttft_ms": 1.0,
        "total_ms": 2.0,
        "request_id": "r",
        "resolved_model": "bailu-poet@v0003",
    }
    values.update(overrides)
    return CompletionRecord(**values)  # type: ignore[arg-type]


def test_round_trip_keeps_the_resolved_version() -> None:
    original = record()
    again = CompletionRecord.from_json(original.to_json())
    assert again == original
    assert (again.model, again.resolved_model) == ("bailu-poet", "bailu-poet@v0003")


def test_a_record_written_before_resolved_model_existed_reads_with_it_empty() -> None:
    old = json.loads(record().to_json())
    del old["resolved_model"]
    del old["prompt_hash"]
    read = CompletionRecord.from_json(json.dumps(old))
    assert read.resolved_model == ""
    assert read.model == "bailu-poet"
    assert read.choices[0].text == "white dew"


def test_fields_of_a_newer_writer_are_ignored() -> None:
    newer = json.loads(record().to_json())
    newer["experiment"] = "blue"
    assert CompletionRecord.from_json(json.dumps(newer)) == record()


def test_metadata_round_trips_and_old_records_read_without_it() -> None:
    tagged = record(metadata={"campaign": "autumn", "user_tier": "pro"})
    assert CompletionRecord.from_json(tagged.to_json()).metadata == {"campaign": "autumn", "user_tier": "pro"}
    old = json.loads(record().to_json())
    del old["metadata"]
    assert CompletionRecord.from_json(json.dumps(old)).metadata == {}


CALL = ToolCall("call_" + "c" * 24, "get_forecast", '{"city": "Kyoto"}')


def test_a_candidates_tool_calls_round_trip() -> None:
    called = record(choices=[Choice(0, "", "tool_calls", (CALL,)), Choice(1, "dew", "stop")])
    again = CompletionRecord.from_json(called.to_json())
    assert again == called
    assert again.choices[0].tool_calls == (CALL,)
    assert json.loads(called.to_json())["choices"][0]["tool_calls"] == [
        {"id": CALL.id, "name": "get_forecast", "arguments": '{"city": "Kyoto"}'}
    ]


def test_a_choice_written_before_tool_calls_existed_reads_with_none() -> None:
    old = json.loads(record().to_json())
    for choice in old["choices"]:
        del choice["tool_calls"]
    assert CompletionRecord.from_json(json.dumps(old)) == record()


def test_fields_of_a_newer_writer_in_a_choice_are_ignored() -> None:
    newer = json.loads(record().to_json())
    newer["choices"][0]["reasoning"] = "thought about dew"
    assert CompletionRecord.from_json(json.dumps(newer)) == record()
