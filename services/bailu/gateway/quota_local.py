"""One replica's own quotas, in memory: the algorithms of `bailu.gateway.quotas`'s Lua scripts, for when Redis
does not answer (or is not configured).

The key's full limits apply per replica here: with N replicas a key may get up to N times its limits while
Redis is down. Never unlimited, never refusing everyone. A pure state machine with an injected clock.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from bailu.keys.model import Limits

# Buckets refill their whole capacity in this long: the "per minute" of rpm and tpm.
WINDOW_S = 60.0


@dataclass(frozen=True)
class Decision:
    """What one admit found, in Redis or here. The levels are after the admission when it was admitted, else as
    found (nothing is taken from a refused request); a level or count is meaningful only for a limit the key
    has. `tokens_level` may be negative: the key is in debt."""

    requests_ok: bool = True
    tokens_ok: bool = True
    concurrency_ok: bool = True
    requests_level: float = 0.0
    tokens_level: float = 0.0
    leases: int = 0

    @property
    def admitted(self) -> bool:
        return self.requests_ok and self.tokens_ok and self.concurrency_ok


def tokens_needed(tokens: int, tpm: int) -> int:
    """What the tokens bucket must hold to admit a prompt of `tokens`: all of them, or a full bucket for a prompt
    larger than the limit (which is then admitted into debt rather than refused for ever)."""
    return min(tokens, tpm)


@dataclass
class _Bucket:
    level: float
    at: float

    def refill(self, capacity: int, now: float) -> float:
        self.level = min(float(capacity), self.level + max(0.0, now - self.at) * capacity / WINDOW_S)
        self.at = now
        return self.level


@dataclass
class _KeyState:
    requests: _Bucket | None = None
    tokens: _Bucket | None = None
    leases: dict[str, float] = field(default_factory=dict)  # lease id -> expiry


class LocalQuotas:
    """Token buckets and leases of every key this replica saw, at most `max_keys` of them (the least recently
    used key is forgotten first: its buckets start full again)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, max_keys: int = 10_000) -> None:
        self.clock = clock
        self.max_keys = max_keys
        self._keys: OrderedDict[str, _KeyState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def clear(self) -> None:
        self._keys.clear()

    def admit(self, key_id: str, limits: Limits, *, tokens: int, lease_id: str, lease_ttl_s: float) -> Decision:
        """Check every limit of the key and take from all of them, or from none."""
        now = self.clock()
        state = self._state(key_id)
        requests_level = tokens_level = 0.0
        requests_ok = tokens_ok = concurrency_ok = True
        if limits.rpm is not None:
            state.requests = state.requests or _Bucket(float(limits.rpm), now)
            requests_level = state.requests.refill(limits.rpm, now)
            requests_ok = requests_level >= 1
        if limits.tpm is not None:
            state.tokens = state.tokens or _Bucket(float(limits.tpm), now)
            tokens_level = state.tokens.refill(limits.tpm, now)
            tokens_ok = tokens_level >= tokens_needed(tokens, limits.tpm)
        if limits.concurrency is not None:
            state.leases = {lease: expiry for lease, expiry in state.leases.items() if expiry > now}
            concurrency_ok = len(state.leases) < limits.concurrency
        decision = Decision(requests_ok, tokens_ok, concurrency_ok, requests_level, tokens_level, len(state.leases))
        if not decision.admitted:
            return decision
        if state.requests is not None and limits.rpm is not None:
            state.requests.level -= 1
        if state.tokens is not None and limits.tpm is not None:
            state.tokens.level -= tokens
        if limits.concurrency is not None:
            state.leases[lease_id] = now + lease_ttl_s
        return Decision(requests_level=requests_level - 1, tokens_level=tokens_level - tokens, leases=len(state.leases))

    def settle(self, key_id: str, limits: Limits, *, tokens_delta: int, lease_id: str) -> None:
        """Debit `tokens_delta` more tokens (a refund when negative, up to a full bucket); end the lease."""
        state = self._keys.get(key_id)
        if state is None:  # forgotten (evicted, or dropped when Redis answered again): nothing to settle
            return
        if state.tokens is not None and limits.tpm is not None and tokens_delta:
            level = state.tokens.refill(limits.tpm, self.clock())
            state.tokens.level = min(float(limits.tpm), level - tokens_delta)
        state.leases.pop(lease_id, None)

    def _state(self, key_id: str) -> _KeyState:
        state = self._keys.get(key_id)
        if state is None:
            state = self._keys[key_id] = _KeyState()
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(key_id)
        return state
