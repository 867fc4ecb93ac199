"""The client compatibility suite: the official `openai` client, `langchain-openai` and `litellm`, each as its
users call it, against the sim stack (a real gateway under uvicorn and a real sim worker over gRPC in the test
process; a real redis-server where responses are stored). Every test asserts what the client hands its user:
text, JSON that validates, tool arguments that validate against the function's parameters, log probabilities
of the emitted tokens.

The tests run offline: `no_internet` (autouse) fails any test during which something in the process asked to
resolve or connect to an address that is not this machine's loopback (a client library phoning home for a model
price list, telemetry or a tokenizer download)."""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from collections.abc import Iterator
from typing import Any, Literal

import jsonschema
import pydantic
import pytest

from tests.conftest import RunningGateway

# The sim's text, `SIM_TOKENS` words of it (see bailu.worker.engines.sim).
SIM_TOKENS = 6
SIM_TEXT = "white dew settles on the grass"
CALL_ID = re.compile(r"^call_[0-9a-f]{24}$")

FORECAST_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 32},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TIDE_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"harbour": {"type": "string"}, "high_water": {"type": "boolean"}},
    "required": ["harbour", "high_water"],
    "additionalProperties": False,
}
FORECAST_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_forecast",
        "description": "Tomorrow's weather forecast for a city",
        "parameters": FORECAST_PARAMETERS,
    },
}
TIDE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {"name": "get_tide", "description": "The next tide at a harbour", "parameters": TIDE_PARAMETERS},
}
PARAMETERS = {"get_forecast": FORECAST_PARAMETERS, "get_tide": TIDE_PARAMETERS}


class Haiku(pydantic.BaseModel):
    """A structured output with a nested list and an enum, as client users declare one."""

    title: str
    lines: list[str]
    season: Literal["spring", "summer", "autumn", "winter"]


def assert_valid_call(call_id: str, name: str, arguments: str | dict[str, Any]) -> dict[str, Any]:
    """A tool call as a client shows it: an OpenAI call id, one of the offered functions, and arguments (JSON
    text or the client's parsed dict) that validate against that function's parameters. Returns the arguments."""
    assert CALL_ID.match(call_id), call_id
    assert name in PARAMETERS, name
    parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    jsonschema.validate(parsed, PARAMETERS[name])
    return parsed


def _loopback(host: object) -> bool:
    if host is None:  # getaddrinfo(None, port): the wildcard address for a server socket
        return True
    name = host.decode() if isinstance(host, bytes) else str(host)
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def no_internet(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Record (and refuse) every name lookup and connection to anything but loopback while the test runs; the
    test fails if there was one. Python-level sockets only (what httpx, aiohttp, urllib and redis use); the gRPC
    channel is C-core and only ever dials the test's own worker."""
    attempts: list[str] = []
    getaddrinfo, connect, connect_ex = socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _loopback(host):
            attempts.append(f"lookup {host!r}")
            raise socket.gaierror(socket.EAI_NONAME, f"offline test: no lookup of {host!r}")
        return getaddrinfo(host, *args, **kwargs)

    def outside(address: Any) -> bool:
        return isinstance(address, tuple) and not _loopback(address[0])

    def guarded_connect(sock: socket.socket, address: Any) -> None:
        if outside(address):
            attempts.append(f"connect {address!r}")
            raise ConnectionRefusedError(f"offline test: no connection to {address!r}")
        connect(sock, address)

    def guarded_connect_ex(sock: socket.socket, address: Any) -> int:
        if outside(address):
            attempts.append(f"connect {address!r}")
            return 111  # ECONNREFUSED
        return connect_ex(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    yield attempts
    assert not attempts, f"the test reached for the network: {attempts}"


@pytest.fixture
async def gateway(start_worker, start_gateway) -> RunningGateway:
    """A gateway in front of one sim worker that writes `SIM_TOKENS` words; nothing stored."""
    worker = await start_worker(sim_output_tokens=SIM_TOKENS)
    return await start_gateway([f"127.0.0.1:{worker.port}"])


@pytest.fixture
async def stored_gateway(start_worker, start_gateway, redis_server) -> RunningGateway:
    """As `gateway`, with the completion log in a real redis-server: responses are stored (retrieve,
    `previous_response_id`)."""
    worker = await start_worker(sim_output_tokens=SIM_TOKENS)
    return await start_gateway([f"127.0.0.1:{worker.port}"], redis_url=redis_server.url)
