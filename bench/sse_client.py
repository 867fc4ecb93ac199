"""A minimal HTTP/1.1 client for the benchmarks: server-sent event streams and plain requests.

On a 2-core machine the load generator competes with the gateway for CPU; a
general client (httpx) parsing every event as JSON costs more than the
gateway itself and distorts what is measured. This one reuses keep-alive
connections, decodes chunked transfer encoding, and hands out each event's
raw `data:` payload (`stream`) or a response's raw body (`post`) without
parsing it. `open_stream` leaves the reading of a stream to the caller, for
clients that read slowly or not at all.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Mapping

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class HttpError(Exception):
    """The server answered with something this client did not expect."""


class SseClient:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._idle: list[Connection] = []

    async def close(self) -> None:
        while self._idle:
            _, writer = self._idle.pop()
            writer.close()

    async def _connect(self) -> Connection:
        return self._idle.pop() if self._idle else await asyncio.open_connection(self.host, self.port)

    async def open_stream(self, path: str, body: bytes, api_key: str, *, rcvbuf: int) -> tuple[Connection, int]:
        """POST `body` as JSON on a new connection whose socket receive buffer is `rcvbuf` bytes, and read
        the response's head: the connection (the caller reads the body at its own pace, with `chunks`, and
        closes it) and the status."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (self.host, self.port))
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock, limit=rcvbuf)
        self._send(writer, path, body, api_key, {"Accept": "text/event-stream"})
        status, _ = await self.read_head(reader)
        parts = status.split(None, 2)
        return (reader, writer), int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0

    def _release(self, connection: Connection, reusable: bool) -> None:
        if reusable:
            self._idle.append(connection)
        else:
            connection[1].close()

    def _send(
        self, writer: asyncio.StreamWriter, path: str, body: bytes, api_key: str, extra: Mapping[str, str]
    ) -> None:
        """Write a POST of a JSON `body` (with any `extra` headers)."""
        lines = "".join(f"{name}: {value}\r\n" for name, value in extra.items())
        writer.write(
            (
                f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Authorization: Bearer {api_key}\r\nContent-Type: application/json\r\n"
                f"{lines}Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )

    @staticmethod
    async def read_head(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str]]:
        """The status line and the headers (names and values lower-cased) of a response."""
        status = await reader.readline()
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        return status, headers

    @staticmethod
    async def chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
        """The chunks of a chunked body, up to and including the empty trailer."""
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readline()  # the empty trailer
                return
            yield (await reader.readexactly(size + 2))[:-2]

    async def stream(self, path: str, body: bytes, api_key: str) -> AsyncIterator[bytes]:
        """POST `body` as JSON and yield each event's `data:` payload (bytes), in order."""
        connection = await self._connect()
        reader, writer = connection
        reusable = False
        try:
            self._send(writer, path, body, api_key, {"Accept": "text/event-stream"})
            status, headers = await self.read_head(reader)
            if b" 200 " not in status or headers.get("transfer-encoding") != "chunked":
                raise HttpError(f"{status.decode(errors='replace').strip()} {headers}")
            pending = b""
            async for chunk in self.chunks(reader):
                pending += chunk
                *events, pending = pending.split(b"\n\n")
                for event in events:
                    if event.startswith(b"data: "):
                        yield event[6:]
            reusable = headers.get("connection") != "close"
        finally:
            self._release(connection, reusable)

    async def post(
        self, path: str, body: bytes, api_key: str, headers: Mapping[str, str] | None = None
    ) -> tuple[int, bytes]:
        """POST `body` as JSON (with any extra `headers`): the response's status and its whole body."""
        connection = await self._connect()
        reader, writer = connection
        reusable = False
        try:
            self._send(writer, path, body, api_key, headers or {})
            status_line, head = await self.read_head(reader)
            parts = status_line.split(None, 2)
            if len(parts) < 2 or not parts[1].isdigit():
                raise HttpError(f"not an HTTP status line: {status_line[:100]!r}")
            if "content-length" in head:
                data = await reader.readexactly(int(head["content-length"]))
            elif head.get("transfer-encoding") == "chunked":
                data = b"".join([chunk async for chunk in self.chunks(reader)])
            else:
                raise HttpError(f"a response without Content-Length or chunked encoding: {head}")
            reusable = head.get("connection") != "close"
            return int(parts[1]), data
        finally:
            self._release(connection, reusable)
