"""The suite's offline guard (`no_internet`, tests/compat/conftest.py) sees what the clients do: a name lookup and
a connection to an address that is not loopback, made through asyncio as httpx makes them, are refused and
recorded, and loopback passes. The address used, 0.0.0.0, never leaves the machine even were the guard broken."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.conftest import RunningGateway, free_port


async def test_a_lookup_and_a_connection_outside_loopback_are_refused_and_recorded(
    no_internet: list[str], gateway: RunningGateway
) -> None:
    port = free_port()
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("0.0.0.0", port)
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("0.0.0.0", port))
    async with httpx.AsyncClient(timeout=5) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://0.0.0.0:{port}/")
        assert (await http.get(gateway.url + "/healthz")).status_code == 200  # loopback passes
    assert no_internet == [
        "lookup '0.0.0.0'",
        f"connect ('0.0.0.0', {port})",
        f"connect ('0.0.0.0', {port})",  # asyncio resolves an address literal itself, then connects
    ]
    no_internet.clear()  # what this test made on purpose
