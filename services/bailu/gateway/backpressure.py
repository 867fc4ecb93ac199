"""Backpressure from a slow client back to the worker, with a bound at every hop.

A token travels worker → gRPC → gateway → HTTP → client. When the client reads slower than the worker
generates, each hop holds a bounded amount and then makes the hop before it wait:

- client ← gateway: uvicorn's `send` waits while its transport's write buffer is above its high-water
  mark (64 KiB), so the response body (and the completion's reading of the worker streams) waits with
  it. A send that cannot complete within `client_write_timeout_s` — the client stopped reading —
  abandons the response (`send_within` raises `ClientWriteTimeout`): the completion is closed, its
  worker streams cancelled, and uvicorn closes the connection.
- gateway (n > 1): the candidates' streams are merged through a queue of `stream_buffer_chunks`
  (`Completion.chunks`); when it is full the merge stops reading the worker streams.
- gateway ← worker: an unread gRPC stream holds at most its HTTP/2 flow-control window
  (`GRPC_FLOW_CONTROL_OPTIONS`: a fixed 16 KiB per stream); then the worker's send waits, and with it
  its generation (the servicer yields each chunk and the engine is pulled chunk by chunk).

gRPC's default BDP probing grows the receive window with the measured throughput of the connection,
without bound in practice: a gateway that stopped reading a fast stream kept accepting its tokens (into
the gRPC core's memory) while the worker generated the whole completion. With probing off, a stalled
stream holds its window: 16 KiB, about 750 one-token messages, which cost the gRPC core about 90 KiB of
memory in all (measured: 128 stalled streams on one channel, +11.5 MiB; with HTTP/2's default 64 KiB
window, ~3,000 messages, +30 MiB). 16 KiB per round trip is still hundreds of times a token stream's
rate. The connection's window is returned as data is buffered per stream, so stalled streams do not
hold back the others on the channel.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from starlette.types import Message, Send

from bailu.common.wire import STREAM_WINDOW_BYTES

# The receive window of one gRPC stream from a worker, fixed: no BDP probing.
GRPC_STREAM_WINDOW_BYTES = STREAM_WINDOW_BYTES
GRPC_FLOW_CONTROL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", GRPC_STREAM_WINDOW_BYTES),
]


class ClientWriteTimeout(Exception):
    """A send to the client did not complete within the write timeout: the client stopped reading.

    Not a `BailuError`: it is never reported to the client (who no longer reads); it ends the response. Not a
    `TimeoutError` either, which is an `OSError`: Starlette turns those into `ClientDisconnect`."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"the client read nothing for {timeout_s:g}s")
        self.timeout_s = timeout_s


def send_within(send: Send, timeout_s: float) -> Send:
    """`send`, raising `ClientWriteTimeout` when one message cannot be handed over within `timeout_s`
    (the server waits for the client to read while its write buffer is full)."""

    async def timed_send(message: Message) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await send(message)
        except TimeoutError:
            raise ClientWriteTimeout(timeout_s) from None

    return timed_send


class AbandonedResponses(logging.Filter):
    """A filter for uvicorn's error logger: uvicorn logs "ASGI callable returned without completing response."
    at ERROR for every response the gateway abandons on purpose (a client that stopped reading, already logged
    as a warning with its request id and counted). For each abandonment announced with `expect()`, the next such
    record within `window_s` is dropped; any other one (a response left unfinished by a bug) still shows."""

    MESSAGE = "ASGI callable returned without completing response."

    def __init__(self, window_s: float = 5.0) -> None:
        super().__init__()
        self.window_s = window_s
        self._expected: collections.deque[float] = collections.deque()  # deadlines, oldest first

    def expect(self) -> None:
        self._expected.append(time.monotonic() + self.window_s)

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        while self._expected and self._expected[0] < now:
            self._expected.popleft()  # uvicorn had seen the disconnect and logged nothing for that one
        if self._expected and record.getMessage() == self.MESSAGE:
            self._expected.popleft()
            return False
        return True


# One per process, on uvicorn's error logger (`install_log_filter`, called by the app factory; idempotent).
ABANDONED_RESPONSES = AbandonedResponses()


def install_log_filter() -> None:
    logging.getLogger("uvicorn.error").addFilter(ABANDONED_RESPONSES)
