"""Recorded engine-server samples (tests/fixtures/engines; see its README for where each comes from)."""

from __future__ import annotations

import json
from collections.abc import Iterator
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


def pieces(text: str, size: int) -> Iterator[bytes]:
    """A stream body as the connection may deliver it: `size` bytes at a time (0: all at once)."""
    data = text.encode()
    if size <= 0:
        yield data
        return
    for start in range(0, len(data), size):
        yield data[start : start + size]


def payloads(text: str, size: int = 0) -> list[bytes]:
    """The SSE payloads of a stream body, through the splitter the worker reads engine streams with."""
    splitter = oai.SseSplitter()
    out = [p for piece in pieces(text, size) for p in splitter.feed(piece)]
    return out + splitter.close()


async def replay(text: str, reader: ToolCallReader | None = None, *, size: int = 7) -> list[GenerateChunk]:
    """What HttpEngine.generate does with a stream body, minus the connection: the body arrives `size` bytes
    at a time (0: all at once, so that every event is coalesced with the others), and the events that each
    piece completes are fed together."""
    assembler = oai.StreamAssembler("m", tools=reader or ToolCallReader())
    splitter = oai.SseSplitter()
    chunks: list[GenerateChunk] = []
    for piece in [*pieces(text, size), None]:
        batch = splitter.feed(piece) if piece is not None else splitter.close()
        got, done = assembler.feed_events(batch)
        chunks += got
        if done:
            break
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
