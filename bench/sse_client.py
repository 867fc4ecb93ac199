"""A minimal HTTP/1.1 client for server-sent event streams, for the benchmark.

On a 2-core machine the load generator competes with the gateway for CPU; a
general client (httpx) parsing every event as JSON costs more than the
gateway itself and distorts what is measured. This one reuses keep-alive
connections, decodes chunked transfer encoding, and hands out each event's
raw `data:` payload without parsing it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator


class HttpError(Exception):
    """The server answered with something other than a 200 event stream."""


class SseClient:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def close(self) -> None:
        while self._idle:
            _, writer = self._idle.pop()
            writer.close()

    async def stream(self, path: str, body: bytes, api_key: str) -> AsyncIterator[bytes]:
        """POST `body` as JSON and yield each event's `data:` payload (bytes), in order."""
        reader, writer = self._idle.pop() if self._idle else await asyncio.open_connection(self.host, self.port)
        reusable = False
        try:
            writer.write(
                (
                    f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                    f"Authorization: Bearer {api_key}\r\nContent-Type: application/json\r\n"
                    f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode()
                + body
            )
            status = await reader.readline()
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip().lower()
            if b" 200 " not in status or headers.get("transfer-encoding") != "chunked":
                raise HttpError(f"{status.decode(errors='replace').strip()} {headers}")
            pending = b""
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await reader.readline()  # the empty trailer
                    break
                pending += (await reader.readexactly(size + 2))[:-2]
                *events, pending = pending.split(b"\n\n")
                for event in events:
                    if event.startswith(b"data: "):
                        yield event[6:]
            reusable = headers.get("connection") != "close"
        finally:
            if reusable:
                self._idle.append((reader, writer))
            else:
                writer.close()
