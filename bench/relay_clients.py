"""The relay benchmark's clients: one way to stream a completion per mode, and the stand-in engine's counters."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from bailu.v1 import worker_pb2_grpc as pb_grpc
from bench.common import StreamResult, StreamTimer, http_text, make_request
from bench.relay_services import MODEL, Timing
from bench.sse_client import HttpError, SseClient

PROMPT = "Write a short poem about autumn light."
STREAM_TIMEOUT_S = 60.0


@dataclass
class Clients:
    """One way to stream a completion per mode; token-carrying events counted per mode."""

    timing: Timing
    engine: SseClient
    stub: pb_grpc.InferenceWorkerStub
    gateway: SseClient
    router: SseClient | None
    api_key: str
    events: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": self.timing.tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        self.body = json.dumps(body).encode()

    async def sse(self, mode: str, client: SseClient) -> StreamResult:
        """One streamed chat completion over HTTP. First token: the first event whose delta has non-empty
        content; tokens: the final usage's completion_tokens (an event may carry several), checked against the
        events seen."""
        timer = StreamTimer()
        usage: int | None = None
        events = 0
        done = False
        try:
            # Read to the end of the body (not only to [DONE]), so that the connection is kept alive and reused.
            async for payload in client.stream("/v1/chat/completions", self.body, self.api_key):
                if payload == b"[DONE]":
                    done = True
                    continue
                if payload.startswith(b'{"error"'):
                    return timer.result(f"sse error event: {payload[:200].decode(errors='replace')}")
                if b'"content":"' in payload and b'"content":""' not in payload:
                    events += 1
                    timer.token()
                if b'"choices":[]' in payload and b'"usage":{' in payload:
                    usage = int(json.loads(payload)["usage"]["completion_tokens"])
        except (OSError, asyncio.IncompleteReadError, HttpError, ValueError) as exc:
            return timer.result(f"{type(exc).__name__}: {exc}")
        self.events[mode] = self.events.get(mode, 0) + events
        if not done:
            return timer.result("the stream ended without [DONE]")
        if usage is None:
            return timer.result("no usage chunk")
        if usage < events:
            return timer.result(f"usage says {usage} completion tokens, {events} token events received")
        timer.tokens = usage
        return timer.result()

    async def worker(self, index: int) -> StreamResult:
        """One Generate call. First token: the first message with tokens; tokens: their token_count."""
        request = make_request(MODEL, PROMPT, max_tokens=self.timing.tokens, timeout_s=STREAM_TIMEOUT_S)
        timer = StreamTimer()
        events = 0
        try:
            metadata_ = (("x-request-id", request.request_id),)
            async for message in self.stub.Generate(request, timeout=STREAM_TIMEOUT_S, metadata=metadata_):
                if message.token_count or message.text_delta:
                    events += 1
                    timer.token(message.token_count)
        except grpc.aio.AioRpcError as exc:
            return timer.result(f"grpc {exc.code().name}: {exc.details()}")
        self.events["worker"] = self.events.get("worker", 0) + events
        return timer.result()

    async def fresh(self) -> None:
        """Close the idle HTTP connections. Servers close theirs after a few idle seconds (uvicorn after 5) and
        the benchmark client does not check, so each block starts on new ones and then keeps them alive."""
        for client in (self.engine, self.gateway, self.router):
            if client is not None:
                await client.close()

    def mode(self, name: str) -> Callable[[int], Awaitable[StreamResult]]:
        if name == "worker":
            return self.worker
        client = {"direct": self.engine, "gateway": self.gateway, "router": self.router}[name]
        assert client is not None

        async def one(index: int) -> StreamResult:
            return await self.sse(name, client)

        return one


def engine_stats(url: str) -> dict[str, Any]:
    """The stand-in engine's own counters (/standin/stats)."""
    try:
        return dict(json.loads(http_text(f"{url}/standin/stats")))
    except (OSError, ValueError):
        return {}


def counters_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    keys = ("connections", "requests", "streams_started", "streams_completed", "streams_aborted", "tokens_sent")
    return {k: int(after.get(k, 0)) - int(before.get(k, 0)) for k in keys}
