"""Reading the engine servers' log probabilities. The fixtures are written by hand from the engines' sources
(vLLM's `_create_chat_logprobs` / `CompletionLogProbs`, SGLang's and LmDeploy's `ChoiceLogprobs` / `LogProbs`,
ms-swift's `_get_logprobs`), not captured from running servers."""

from __future__ import annotations

import json

from bailu.common.types import ChatMessage, GenerateRequest, SamplingParams
from bailu.worker.engines.server import openai_http as oai
from bailu.worker.engines.server import openai_logprobs

# A vLLM / SGLang / LmDeploy chat stream event with logprobs: true, top_logprobs: 2.
CHAT_EVENT = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "choices": [
        {
            "index": 0,
            "delta": {"content": " dew"},
            "logprobs": {
                "content": [
                    {
                        "token": " dew",
                        "logprob": -0.25,
                        "bytes": [32, 100, 101, 119],
                        "top_logprobs": [
                            {"token": " rain", "logprob": -2.5, "bytes": [32, 114, 97, 105, 110]},
                            {"token": " dew", "logprob": -0.25, "bytes": [32, 100, 101, 119]},
                        ],
                    }
                ]
            },
            "finish_reason": None,
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
}
# vLLM's legacy /v1/completions stream event with logprobs: 1.
LEGACY_EVENT = {
    "object": "text_completion",
    "choices": [
        {
            "index": 0,
            "text": "白",
            "logprobs": {
                "text_offset": [0, 1],
                "token_logprobs": [-1.0, None],
                "tokens": ["\ufffd", "白"],
                "top_logprobs": [{"\ufffd": -1.0}, None],
            },
            "finish_reason": None,
        }
    ],
}


def test_chat_format_with_sorted_capped_alternatives() -> None:
    [entry] = openai_logprobs.parse(CHAT_EVENT["choices"][0]["logprobs"], 1)
    assert (entry.token, entry.logprob, entry.token_bytes) == (" dew", -0.25, b" dew")
    assert [t.token for t in entry.top] == [" dew"]  # most likely first, at most top_logprobs


def test_legacy_format_missing_values_floor_at_vllms_minimum() -> None:
    entries = openai_logprobs.parse(LEGACY_EVENT["choices"][0]["logprobs"], 5)
    assert [e.token for e in entries] == ["\ufffd", "白"]
    assert [e.logprob for e in entries] == [-1.0, -9999.0]
    assert entries[0].top[0].logprob == -1.0
    assert entries[1].top == ()


def test_unknown_shapes_give_nothing() -> None:
    assert openai_logprobs.parse(None, 3) == []
    assert openai_logprobs.parse({"content": [{"logprob": -1}]}, 3) == []
    assert openai_logprobs.parse("x", 3) == []


def test_request_fields_per_endpoint_and_dialect() -> None:
    s = SamplingParams(logprobs=True, top_logprobs=3)
    assert openai_logprobs.request_fields(s, chat=True, legacy_completions=True) == {
        "logprobs": True,
        "top_logprobs": 3,
    }
    assert openai_logprobs.request_fields(s, chat=False, legacy_completions=True) == {"logprobs": 3}
    assert openai_logprobs.request_fields(s, chat=False, legacy_completions=False)["logprobs"] is True
    assert openai_logprobs.request_fields(SamplingParams(), chat=True, legacy_completions=True) == {}
    chat = GenerateRequest("r", "m", messages=(ChatMessage("user", "hi"),), sampling=s)
    assert oai.request_body(chat, "m", 16, {})["top_logprobs"] == 3


def test_assembler_keeps_logprobs_of_textless_events_for_the_next_chunk() -> None:
    assembler = oai.StreamAssembler("m", top_logprobs=2)
    chunk = assembler.feed(json.dumps(CHAT_EVENT))
    assert chunk is not None
    assert [e.token for e in chunk.logprobs] == [" dew"]
    eos = {
        "choices": [
            {
                "index": 0,
                "delta": {"content": ""},
                "logprobs": {"content": [{"token": "<|im_end|>", "logprob": -0.1, "bytes": None, "top_logprobs": []}]},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2},
    }
    assert assembler.feed(json.dumps(eos)) is None
    last = assembler.last()
    assert [e.token for e in last.logprobs] == ["<|im_end|>"]
    assert last.logprobs[0].token_bytes == b"<|im_end|>"
    assert last.token_count == 1
