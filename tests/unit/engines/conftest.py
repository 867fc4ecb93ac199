"""Recorded engine-server samples (tests/fixtures/engines; see its README for where each comes from)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bailu.common.types import FinishReason, GenerateChunk
from bailu.worker.engines.server import openai_http as oai
from bailu.worker.engines.server.openai_tools import ToolCallReader

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "engines"


def sample(engine: str, name: str) -> str:
    return (FIXTURES / engine / name).read_text()


def sample_json(engine: str, name: str) -> Any:
    return json.loads(sample(engine, name))


def expected(engine: str) -> dict[str, Any]:
    result: dict[str, Any] = sample_json(engine, "expected.json")
    return result


async def lines(text: str) -> AsyncIterator[str]:
    for line in text.split("\n"):
        yield line


async def replay(text: str, reader: ToolCallReader | None = None) -> list[GenerateChunk]:
    """What HttpEngine.generate does with a stream body, minus the connection."""
    assembler = oai.StreamAssembler("m", tools=reader or ToolCallReader())
    chunks = []
    async for payload in oai.sse_data(lines(text)):
        if payload.strip() == oai.DONE:
            break
        chunk = assembler.feed(payload)
        if chunk is not None:
            chunks.append(chunk)
    chunks.append(assembler.last())
    return chunks


def check_stream_contract(chunks: list[GenerateChunk], want: dict[str, Any]) -> None:
    """The engine's streaming contract on replayed `chunks`, against the sample's `expected.json` entry: the text,
    finish and usage on the last chunk only, and token counts that add up to the engine's usage (whether it
    reported usage per chunk or only at the end)."""
    *body, last = chunks
    assert "".join(c.text for c in chunks) == want["text"]
    assert all(c.finish_reason is None and c.usage is None for c in body)
    assert last.finish_reason is FinishReason(want["finish_reason"])
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (
        want["prompt_tokens"],
        want["completion_tokens"],
    )
    assert sum(c.token_count for c in chunks) == last.usage.completion_tokens
