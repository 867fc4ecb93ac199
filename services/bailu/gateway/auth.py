"""API keys: clients send `Authorization: Bearer <key>`; only SHA-256 hashes of keys are stored.

python -m bailu.gateway.auth new    # prints a new key and the line to put in the keys file
python -m bailu.gateway.auth hash KEY
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

from redis.exceptions import RedisError

from bailu.common.errors import AuthenticationFailed, KeyExpired, KeyRevoked, Unavailable
from bailu.common.metrics import GatewayMetrics
from bailu.keys.model import EXPIRED, REVOKED, ApiKey, hash_key, new_key
from bailu.keys.model import HASH_PREFIX as PREFIX
from bailu.keys.store import KeyRegistry

log = logging.getLogger(__name__)

# After Redis failed to answer a key lookup, how long lookups use the cached records without asking it again.
STORE_RETRY_S = 1.0


def _normalise(entry: str) -> str:
    fields = entry.split()
    digest = fields[0].lower().removeprefix(PREFIX) if fields else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        # Never echo the entry: it may be a key pasted where its hash belongs.
        raise ValueError("an API key entry is not a sha256 hash (expected 'sha256:<64 hex digits>')")
    return PREFIX + digest


def bearer_digest(authorization: str | None) -> str:
    """The hash of the key in an `Authorization: Bearer <key>` header; `AuthenticationFailed` without one."""
    if not authorization:
        raise AuthenticationFailed("missing API key: send 'Authorization: Bearer <key>'")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed("malformed Authorization header: expected 'Bearer <key>'")
    return hash_key(token)


class KeyStore:
    """The static keys: hashes from the keys file (a mounted Secret) and the env. Each has every scope, no
    limits and interactive priority."""

    def __init__(self, hashes: Iterable[str]) -> None:
        self._hashes = frozenset(_normalise(h) for h in hashes)

    @classmethod
    def load(cls, file: Path | None, hashes: Iterable[str]) -> KeyStore:
        """Hashes from the file (one per line, `#` comments) plus the given ones."""
        entries = list(hashes)
        if file is not None:
            for line in file.read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    entries.append(line)
        return cls(entries)

    def __len__(self) -> int:
        return len(self._hashes)

    def lookup(self, digest: str) -> ApiKey | None:
        # A set lookup on the hash is safe: timing can only reveal bits of a SHA-256 digest.
        return ApiKey.static(digest) if digest in self._hashes else None

    def verify(self, authorization: str | None) -> ApiKey:
        """The static key of a valid `Authorization` header; else raise `AuthenticationFailed`."""
        key = self.lookup(bearer_digest(authorization))
        if key is None:
            raise AuthenticationFailed("incorrect API key provided")
        return key


class Authenticator:
    """Checks every request's key: the static keys first, then the keys `bailu keys` manages in Redis.

    A record read from Redis (or its absence) is trusted for `cache_s`, so that revoking or changing a key takes
    effect on every replica within that time while a busy replica asks Redis at most once per key and period.
    While Redis does not answer, the last record read stays in use for up to `stale_s` (a key seen before keeps
    working, a revocation made meanwhile waits for Redis or that bound); a key never seen, or seen longer ago,
    gets 503, never a 401 it does not deserve."""

    def __init__(
        self,
        static: KeyStore,
        registry: KeyRegistry | None,
        metrics: GatewayMetrics,
        *,
        cache_s: float = 2.0,
        stale_s: float = 600.0,
        max_cached: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.static = static
        self.registry = registry
        self.metrics = metrics
        self.cache_s = cache_s
        self.stale_s = stale_s
        self._down_until = 0.0
        self.max_cached = max_cached
        self.clock = clock
        # digest -> (when read, the record or None for "no such key"), oldest first.
        self._cache: OrderedDict[str, tuple[float, ApiKey | None]] = OrderedDict()

    @property
    def configured(self) -> bool:
        """Whether any key can ever be accepted."""
        return bool(len(self.static)) or self.registry is not None

    async def authenticate(self, authorization: str | None) -> ApiKey:
        """The caller's key; `AuthenticationFailed` (or `KeyRevoked`, `KeyExpired`) when it may not call."""
        try:
            digest = bearer_digest(authorization)
        except AuthenticationFailed:
            self.metrics.auth_rejections.labels("missing" if not authorization else "malformed").inc()
            raise
        key = self.static.lookup(digest)
        if key is None and self.registry is not None:
            key = await self._managed(digest)
        if key is None:
            self.metrics.auth_rejections.labels("unknown").inc()
            raise AuthenticationFailed("incorrect API key provided")
        state = key.state(time.time())
        if state == REVOKED:
            self.metrics.auth_rejections.labels("revoked").inc()
            raise KeyRevoked(f"the API key {key.id} was revoked")
        if state == EXPIRED:
            self.metrics.auth_rejections.labels("expired").inc()
            expired = datetime.fromtimestamp(key.expires_at or 0, UTC).isoformat(timespec="seconds")
            raise KeyExpired(f"the API key {key.id} expired at {expired}")
        return key

    async def _managed(self, digest: str) -> ApiKey | None:
        assert self.registry is not None
        cached = self._cache.get(digest)
        now = self.clock()
        if cached is not None and now - cached[0] < self.cache_s:
            return cached[1]
        if now < self._down_until:
            return self._stale(digest, cached, now)
        try:
            key = await self.registry.by_hash(digest)
        except (RedisError, OSError) as exc:
            # Redis is not asked again for `STORE_RETRY_S`: a hung Redis must not add its timeout to every request.
            self._down_until = self.clock() + STORE_RETRY_S
            log.warning("API key store unreachable", extra={"error": type(exc).__name__})
            return self._stale(digest, cached, now)
        except ValueError:  # a record that is not one (written by hand?): no key, said once per lookup
            log.warning("unreadable API key record in Redis", extra={"hash_prefix": digest[7:15]})
            key = None
        self._cache[digest] = (now, key)
        self._cache.move_to_end(digest)
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        return key

    def _stale(self, digest: str, cached: tuple[float, ApiKey | None] | None, now: float) -> ApiKey | None:
        """While Redis does not answer: the last record read, up to `stale_s` old; else 503."""
        if cached is not None and now - cached[0] < self.stale_s:
            return cached[1]
        self.metrics.auth_rejections.labels("store_unavailable").inc()
        raise Unavailable("the API key store is unreachable; retry shortly")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("new", help="generate a key; print it and its hash line")
    hash_cmd = sub.add_parser("hash", help="print the hash line of a key")
    hash_cmd.add_argument("key")
    args = parser.parse_args()
    if args.cmd == "new":
        key = new_key()
        print(f"key:  {key}\nhash: {hash_key(key)}")
    else:
        print(hash_key(args.key))


if __name__ == "__main__":
    main()
