"""The worker's lean client for engine-server streams, against real HTTP/1.1 servers on loopback (asyncio
streams written here, each answering the way an engine server may): events in batches, keep-alive reuse,
early close, a kept-alive connection the server closed, backpressure, errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from bailu.worker.engines.server import sse_client
from bailu.worker.engines.server.sse_client import (
    MAX_BUFFERED_EVENTS,
    ConnectFailed,
    ConnectionLost,
    SseConnectionPool,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]


class Server:
    """A loopback HTTP/1.1 server running `handler` per connection; it records the requests it read."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[tuple[str, bytes]] = []
        self.closed_by_client = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        # Cancelled when the test closes the server: end quietly (asyncio logs a handler task's cancellation).
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            await self.handler(reader, writer, self)
        writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bool:
        """Read one request; False at the end of the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            self.closed_by_client.set()
            return False
        lines = head.decode().split("\r\n")
        length = next(int(v) for k, _, v in (line.partition(": ") for line in lines) if k.lower() == "content-length")
        self.requests.append((lines[0], await reader.readexactly(length)))
        return True


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def event(text: str) -> bytes:
    return b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}).encode() + b"\n\n"


STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


async def stream_words(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
    """Answers each request on the connection with three events and [DONE], chunked, kept alive."""
    while await server.read_request(reader):
        writer.write(STREAM_HEAD)
        for word in ("white", " dew", " at dawn"):
            writer.write(chunked(event(word)))
            await writer.drain()
        writer.write(chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()


@contextlib.asynccontextmanager
async def running(handler: Handler) -> AsyncIterator[tuple[Server, SseConnectionPool]]:
    server = Server(handler)
    await server.start()
    pool = SseConnectionPool(lambda: ("127.0.0.1", server.port))
    try:
        yield server, pool
    finally:
        pool.close_idle()
        await server.close()


async def read_all(pool: SseConnectionPool, body: bytes = b"{}") -> list[bytes]:
    response = await pool.open_stream("/v1/chat/completions", body)
    assert response.status == 200
    got: list[bytes] = []
    try:
        while (batch := await response.events()) is not None:
            got += batch
    finally:
        response.close()
    return got


async def test_events_are_read_and_the_connection_is_reused() -> None:
    async with running(stream_words) as (server, pool):
        for _ in range(3):
            got = await read_all(pool, b'{"stream": true}')
            assert [json.loads(p)["choices"][0]["delta"]["content"] for p in got[:-1]] == ["white", " dew", " at dawn"]
            assert got[-1] == b"data: [DONE]"[6:]
        assert server.connections == 1
        assert pool.connections_made == 1
        assert server.requests[0] == ("POST /v1/chat/completions HTTP/1.1", b'{"stream": true}')


async def test_events_that_arrived_together_are_returned_together() -> None:
    async def burst(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(STREAM_HEAD + b"".join(chunked(event(str(i))) for i in range(5)))
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(chunked(event("later")) + chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()

    async with running(burst) as (_, pool):
        response = await pool.open_stream("/v1/completions", b"{}")
        await asyncio.sleep(0.05)  # the burst has arrived meanwhile
        first = await response.events()
        second = await response.events()
        assert first is not None
        assert len(first) == 5
        assert second is not None
        assert len(second) == 2
        assert await response.events() is None
        response.close()


async def test_a_stream_closed_early_closes_its_connection() -> None:
    noticed = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(STREAM_HEAD)
        try:
            while True:
                writer.write(chunked(event("x")))
                await writer.drain()
                await asyncio.sleep(0.01)
        except ConnectionError:
            noticed.set()  # what an engine server takes as "the client left": it aborts the request

    async with running(endless) as (server, pool):
        response = await pool.open_stream("/v1/completions", b"{}")
        assert await response.events()
        response.close()  # a cancelled request
        await asyncio.wait_for(noticed.wait(), 5)
        # And the next request goes on a new connection, not on the one left mid-body.
        again = await pool.open_stream("/v1/completions", b"{}")
        assert await again.events()
        again.close()
        assert (pool.connections_made, server.connections) == (2, 2)


async def test_a_kept_alive_connection_the_server_closed_is_retried_on_a_new_one() -> None:
    async def one_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        # Answers one request, keeps the connection "alive", then closes it without a word: a server
        # whose keep-alive timeout ran out just as the client reused the connection.
        await server.read_request(reader)
        writer.write(STREAM_HEAD + chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")  # the client's second request arrives... and is dropped

    async with running(one_per_connection) as (server, pool):
        assert await read_all(pool) == [b"[DONE]"]
        assert await read_all(pool) == [b"[DONE]"]
        assert server.connections == 2
        assert len(server.requests) == 2  # each answered once: nothing was sent twice to a live server


async def test_a_slow_reader_stops_the_transport_reading() -> None:
    sent = 0

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        nonlocal sent
        await server.read_request(reader)
        writer.write(STREAM_HEAD)
        while sent < 200_000:
            writer.write(chunked(event("token")))
            sent += 1
            if sent % 100 == 0:
                await writer.drain()

    async with running(flood) as (_, pool):
        response = await pool.open_stream("/v1/completions", b"{}")
        await asyncio.sleep(0.5)  # not reading: the server fills the socket buffers, then waits
        batch = await response.events()
        assert batch is not None
        # What the client holds is bounded (one read's worth of events past the mark), not the server's output.
        assert MAX_BUFFERED_EVENTS <= len(batch) < MAX_BUFFERED_EVENTS + 2000
        assert sent < 200_000
        before = sent
        for _ in range(20):  # reading again lets the server go on
            await response.events()
        assert sent > before
        response.close()


async def test_an_error_status_gives_its_body_and_keeps_the_connection() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while await server.read_request(reader):
            body = b'{"error": {"message": "too long", "code": 400}}'
            writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    async with running(refuse) as (server, pool):
        for _ in range(2):
            response = await pool.open_stream("/v1/completions", b"{}")
            assert response.status == 400
            assert json.loads(await response.read_body())["error"]["message"] == "too long"
            response.close()
        assert (pool.connections_made, server.connections) == (1, 1)


async def test_a_connection_lost_mid_stream_is_an_error() -> None:
    async def die(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(STREAM_HEAD + chunked(event("white")))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()

    async with running(die) as (_, pool):
        response = await pool.open_stream("/v1/completions", b"{}")
        assert await response.events()
        with pytest.raises(ConnectionLost):
            await response.events()
        response.close()


async def test_a_response_ended_by_closing_the_connection_is_complete() -> None:
    async def close_delimited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + event("white") + b"data: [DONE]")
        await writer.drain()
        writer.close()

    async with running(close_delimited) as (_, pool):
        got = await read_all(pool)
        assert got[-1] == b"[DONE]"  # the last event, unterminated, still counts
        assert len(got) == 2


async def test_no_server_is_a_connect_failure() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        pool = SseConnectionPool(lambda: ("127.0.0.1", port))
        with pytest.raises(ConnectFailed, match="cannot connect"):
            await pool.open_stream("/v1/completions", b"{}")


async def test_connections_to_an_old_address_are_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(stream_words) as (server, _):
        other = Server(stream_words)
        await other.start()
        address = {"port": server.port}
        pool = SseConnectionPool(lambda: ("127.0.0.1", address["port"]))
        await read_all(pool)
        address["port"] = other.port  # the engine server restarted on another port
        await read_all(pool)
        assert (server.connections, other.connections) == (1, 1)
        pool.close_idle()
        await other.close()


def test_idle_connections_expire_before_the_servers_keep_alive() -> None:
    # uvicorn (the engines' OpenAI servers) closes an idle connection after 5 s by default.
    assert sse_client.MAX_IDLE_S < 5
