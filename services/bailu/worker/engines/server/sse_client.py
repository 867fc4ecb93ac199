"""A lean HTTP/1.1 client for the engine servers' streamed completions: the per-token hot path of the worker.

Every token an engine server generates crosses this code once, so it does the least per event that it can:
the response is parsed by httptools (C) straight from the transport's `data_received`, the body is split into
server-sent events as bytes (`openai_http.SseSplitter`), and the reader takes *every* event that arrived since its last
read at once (`SseResponse.events`). Tokens that arrived while the worker was still sending the previous
message over gRPC therefore go out together in the next one, and the first token, which finds nothing
queued, goes out alone and at once: coalescing without delay.

Connections are kept alive and reused (`SseConnectionPool`), per engine-server address; a connection is
reused only after a response was read to its end, so that a stream closed early (a cancelled request)
closes its connection, which is how the engines learn to abort the request. A reused connection that the
server closed while it was idle is retried once on a new connection, if nothing of the response arrived.

Backpressure: when the reader falls behind (the gRPC peer reads slowly), the transport stops reading once
`MAX_BUFFERED_EVENTS` events wait, so the kernel's socket buffer and then the engine hold the rest.

Control calls (health, metrics, adapters, the not-streamed probe) keep httpx: they are not per token.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import cast

import httptools

from bailu.worker.engines.server.openai_http import SseSplitter

# Events waiting for the reader before the transport stops reading (and reads again below half of it).
MAX_BUFFERED_EVENTS = 256
# A kept-alive connection idle for longer is not reused: servers close idle connections (uvicorn, which the
# engines' OpenAI servers run on, after 5 s by default), and a request sent as they do would be lost.
MAX_IDLE_S = 2.0
# An error body is read up to this size (an engine's error message is small; the rest is dropped).
MAX_ERROR_BODY = 64 * 1024


class EngineHTTPError(Exception):
    """The engine server could not be reached or the connection broke."""


class ConnectFailed(EngineHTTPError):
    """No connection could be made (refused, or not within the connect timeout)."""


class ConnectTimedOut(ConnectFailed):
    """The server did not accept the connection within the connect timeout."""


class ConnectionLost(EngineHTTPError):
    """The connection closed (or broke) before the response ended."""


class BadResponse(EngineHTTPError):
    """What came back is not HTTP/1.1."""


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: a request at a time, its response parsed as it arrives."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._response: SseResponse | None = None

    # --- asyncio.Protocol -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport is not a subclass

    def data_received(self, data: bytes) -> None:
        response = self._response
        if response is None:
            # Nothing was asked: the server is not speaking HTTP/1.1 as we do. Not reusable.
            self.close()
            return
        response._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._response is not None:
            self._response._lost(exc)

    # --- use ----------------------------------------------------------------------------------------------

    @property
    def reusable(self) -> bool:
        return not self.closed and self._response is None and time.monotonic() - self.idle_since < MAX_IDLE_S

    def send(self, head: bytes, body: bytes, response: SseResponse) -> None:
        assert self.transport is not None
        self._response = response
        self.transport.write(head + body)

    def release(self) -> None:
        self._response = None
        self.idle_since = time.monotonic()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class SseResponse:
    """A response from the engine server: its status and headers first (`wait_head`), then the events of
    its body (`events`) or, for an error status, its body (`read_body`). `close()` gives the connection back
    to the pool if the response was read to its end, else closes it."""

    def __init__(self, connection: _Connection, pool: SseConnectionPool, reused: bool) -> None:
        self._connection = connection
        self._pool = pool
        self.reused = reused
        self.status = 0
        self.keep_alive = False
        self.received_any = False
        self._parser = httptools.HttpResponseParser(self)
        self._splitter = SseSplitter()
        self._events: collections.deque[bytes] = collections.deque()
        self._body = bytearray()
        self._streaming = False  # a 200: the body is events; else it is kept whole (bounded)
        self._head_done = False
        self._complete = False
        self._error: EngineHTTPError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._released = False

    # --- httptools callbacks ------------------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()  # known only now: the parser resets after the body
        self._streaming = self.status == 200
        self._head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._streaming:
            payloads = self._splitter.feed(body)
            if payloads:
                self._events.extend(payloads)
                self._wake()
                if len(self._events) >= MAX_BUFFERED_EVENTS and not self._paused:
                    self._paused = True
                    transport = self._connection.transport
                    if transport is not None:
                        transport.pause_reading()
        elif len(self._body) < MAX_ERROR_BODY:
            self._body += body[: MAX_ERROR_BODY - len(self._body)]

    def on_message_complete(self) -> None:
        if self._streaming:
            self._events.extend(self._splitter.close())
        self._complete = True
        self._wake()

    # --- from the connection ------------------------------------------------------------------------------

    def _received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadResponse("the engine server answered with a protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"the engine server's response is not HTTP/1.1: {exc}"))

    def _lost(self, exc: Exception | None) -> None:
        if self._complete:
            return
        if exc is None and self._head_done and not self.keep_alive:
            # The server said it closes the connection after this response: a body without a length ends
            # here (one that was cut short still lacks its last event, which the reader notices).
            self.on_message_complete()
            return
        detail = f": {exc}" if exc else ""
        self._fail(ConnectionLost(f"the engine server closed the connection{detail}"))

    def _fail(self, error: EngineHTTPError) -> None:
        if self._error is None:
            self._error = error
        self._connection.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    # --- reading ------------------------------------------------------------------------------------------

    async def wait_head(self) -> None:
        """Until the status line and headers arrived; raises `EngineHTTPError` if the connection breaks first."""
        while not self._head_done:
            if self._error is not None:
                raise self._error
            await self._wait()

    @property
    def has_events(self) -> bool:
        """Whether `events()` would return at once (events are waiting, or the body ended or broke)."""
        return bool(self._events) or self._complete or self._error is not None

    async def events(self) -> list[bytes] | None:
        """Every event's data that arrived since the last call, waiting for at least one; None once the body
        ended (after its last events were returned). Raises `EngineHTTPError` if the connection broke first."""
        while not self._events:
            if self._complete:
                return None
            if self._error is not None:
                raise self._error
            await self._wait()
        batch = list(self._events)
        self._events.clear()
        if self._paused:
            self._paused = False
            transport = self._connection.transport
            if transport is not None and not self._connection.closed:
                transport.resume_reading()
        return batch

    async def read_body(self) -> bytes:
        """The whole body of a response that is not a stream (an error), up to `MAX_ERROR_BODY` bytes."""
        while not self._complete:
            if self._error is not None:
                break  # what arrived is the message
            await self._wait()
        return bytes(self._body)

    def close(self) -> None:
        """Done with the response: its connection goes back to the pool if it was read to its end and may be
        kept alive, else it is closed (which tells the engine to abort a request still generating)."""
        if self._released:
            return
        self._released = True
        connection = self._connection
        if self._complete and self._error is None and self.keep_alive and not connection.closed:
            connection.release()
            self._pool._give_back(connection)
        else:
            connection._response = None
            connection.close()


class SseConnectionPool:
    """Kept-alive HTTP/1.1 connections to one engine server, whose address may change (`address()` is read
    on every request: an engine server restarted on another port gets new connections)."""

    def __init__(self, address: Callable[[], tuple[str, int]], *, max_idle: int = 64) -> None:
        self.address = address
        self.max_idle = max_idle
        self._idle: list[_Connection] = []
        self.connections_made = 0

    async def post(self, path: str, body: bytes, *, connect_timeout_s: float = 5.0) -> SseResponse:
        """Send `POST path` with the JSON `body` and return the response once sent (its head is awaited with
        `wait_head()`). A reused connection that turns out closed before anything came back is retried once
        on a new one, in `wait_head` terms: see `open_stream`."""
        address = self.address()
        connection, reused = self._take(address)
        if connection is None:
            connection = await self._connect(address, connect_timeout_s)
        response = SseResponse(connection, self, reused)
        host, port = address
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1")
        connection.send(head, body, response)
        return response

    async def open_stream(self, path: str, body: bytes, *, connect_timeout_s: float = 5.0) -> SseResponse:
        """`post`, then its head; if a reused connection was closed by the server before any byte of the
        response came back (it timed out its keep-alive just then), the request goes once more on a new one."""
        response = await self.post(path, body, connect_timeout_s=connect_timeout_s)
        try:
            await response.wait_head()
        except ConnectionLost:
            response.close()
            if not (response.reused and not response.received_any):
                raise
            self.close_idle()
            response = await self.post(path, body, connect_timeout_s=connect_timeout_s)
            await response.wait_head()
        except BaseException:
            response.close()
            raise
        return response

    def close_idle(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()

    def _take(self, address: tuple[str, int]) -> tuple[_Connection | None, bool]:
        while self._idle:
            connection = self._idle.pop()
            if connection.address == address and connection.reusable:
                return connection, True
            connection.close()
        return None, False

    def _give_back(self, connection: _Connection) -> None:
        if len(self._idle) < self.max_idle and connection.address == self.address():
            self._idle.append(connection)
        else:
            connection.close()

    async def _connect(self, address: tuple[str, int], timeout_s: float) -> _Connection:
        loop = asyncio.get_running_loop()
        host, port = address
        try:
            async with asyncio.timeout(timeout_s):
                _, connection = await loop.create_connection(lambda: _Connection(address), host, port)
        except TimeoutError:
            raise ConnectTimedOut(f"no connection to {host}:{port} within {timeout_s:g}s") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
        self.connections_made += 1
        return connection
