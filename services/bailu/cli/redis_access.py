"""Redis for the CLI: connected only when reachable, so that a registry change can fall back to the files."""

from __future__ import annotations

import re

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bailu.cli.errors import CliError
from bailu.cli.output import warn

CONNECT_TIMEOUT_S = 3.0


class RedisUnreachable(CliError):
    """Redis did not answer PING (down, wrong address, wrong password)."""


def redact(url: str) -> str:
    """The URL without its password (safe to print)."""
    return re.sub(r"(://[^:@/]*:)[^@/]+@", r"\1***@", url)


async def connect(url: str) -> Redis:
    """A client that answered PING; `RedisUnreachable` when Redis does not answer, `CliError` for a bad URL."""
    try:
        client = Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=10.0)
    except ValueError as exc:
        raise CliError(f"invalid Redis URL {redact(url)!r}: {exc}") from exc
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise RedisUnreachable(f"Redis at {redact(url)} does not answer ({exc})") from exc
    return client


async def connect_or_warn(url: str, consequence: str) -> Redis | None:
    """A client, or None after a warning saying what happens without Redis (`consequence`): no URL, or Redis
    unreachable. A malformed URL is an error, not a reason to fall back."""
    if not url:
        warn(f"no Redis URL (--redis-url or BAILU_REDIS_URL): {consequence}")
        return None
    try:
        return await connect(url)
    except RedisUnreachable as exc:
        warn(f"{exc.message}: {consequence}")
        return None
