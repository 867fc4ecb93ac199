"""Priority classes and first-token deadlines at the gateway: a request's class, and what admission control
does with it.

A request is `interactive` or `batch`: its API key's priority, which the client may lower (never raise) with
`X-Bailu-Priority: batch`. Its time-to-first-token deadline is its class's default (`interactive_ttft_deadline_s`,
`batch_ttft_deadline_s`; 0: none) or `X-Bailu-TTFT-Deadline-Ms`. Workers serve their queue in that order
(`worker/admission.py`). With admission control on (`AdmissionPolicy`), the gateway also refuses at once what
would only fail late: an interactive request no worker can start before its deadline (`DeadlineUnmeetable`),
and batch work while every worker's queue holds its batch share (`Shed`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bailu.common.errors import BailuError, DeadlineUnmeetable, InvalidRequest, PriorityDenied, Shed
from bailu.common.types import BATCH, INTERACTIVE, PRIORITIES, GenerateRequest
from bailu.gateway.settings import GatewaySettings
from bailu.gateway.workers import WorkerClient

PRIORITY_HEADER = "x-bailu-priority"
TTFT_DEADLINE_HEADER = "x-bailu-ttft-deadline-ms"

# The `reason` label of bailu_gateway_shed_total, by the error admission control refused a request with.
SHED_REASONS: dict[type[BailuError], str] = {DeadlineUnmeetable: "deadline_unmeetable", Shed: "batch_shed"}


def request_class(
    headers: Mapping[str, str], key_priority: str, settings: GatewaySettings, now: float
) -> tuple[str, float | None]:
    """The request's priority class and its first-token deadline (Unix time; None: none), from the API key's
    priority and the request's lower-cased `headers`.

    `X-Bailu-Priority` may name the key's class or a lower one (`batch`); asking for a higher one raises
    `PriorityDenied`, an unknown one `InvalidRequest`. `X-Bailu-TTFT-Deadline-Ms`, a positive whole number of
    milliseconds no longer than the request timeout, replaces the class's default deadline; anything else
    raises `InvalidRequest`."""
    priority = key_priority
    asked = headers.get(PRIORITY_HEADER)
    if asked is not None:
        asked = asked.strip().lower()
        if asked not in PRIORITIES:
            raise InvalidRequest(
                f"{PRIORITY_HEADER} must be one of {', '.join(PRIORITIES)}, got {asked[:32]!r}", param=PRIORITY_HEADER
            )
        if PRIORITIES.index(asked) < PRIORITIES.index(key_priority):
            raise PriorityDenied(
                f"this API key's priority is {key_priority}: a request may lower it with {PRIORITY_HEADER}, "
                f"not raise it to {asked}"
            )
        priority = asked
    default_s = settings.interactive_ttft_deadline_s if priority == INTERACTIVE else settings.batch_ttft_deadline_s
    deadline_s: float | None = default_s or None
    text = headers.get(TTFT_DEADLINE_HEADER)
    if text is not None:
        deadline_s = _deadline_ms(text.strip(), settings.request_timeout_s) / 1000
    return priority, None if deadline_s is None else now + deadline_s


def _deadline_ms(text: str, request_timeout_s: float) -> int:
    limit_ms = int(request_timeout_s * 1000)
    # The length first: int() of thousands of digits raises (Python's integer-string limit).
    if len(text) > 12 or not text.isascii() or not text.isdigit() or not 0 < int(text) <= limit_ms:
        raise InvalidRequest(
            f"{TTFT_DEADLINE_HEADER} must be a whole number of milliseconds from 1 to {limit_ms} (the request "
            f"timeout), got {text[:32]!r}",
            param=TTFT_DEADLINE_HEADER,
        )
    return int(text)


@dataclass(frozen=True)
class AdmissionPolicy:
    """Admission control at the gateway (setting `admission_control`): what it refuses before any worker is
    called. Routing by estimated wait is `WorkerPool.pick(priority=...)`."""

    batch_queue_share: float

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> AdmissionPolicy | None:
        """The policy the settings ask for; None when admission control is off."""
        return cls(settings.batch_queue_share) if settings.admission_control else None

    def check(self, request: GenerateRequest, candidates: Sequence[WorkerClient], now: float) -> None:
        """Raise `DeadlineUnmeetable` for an interactive request whose first-token deadline is nearer than the
        shortest estimated wait of the `candidates` (the ready workers that serve it), `Shed` for a batch
        request while every candidate's queue holds `batch_queue_share` of its `max_queue`. No candidates:
        nothing to decide (routing reports it)."""
        if not candidates:
            return
        if request.priority == BATCH:
            if all(self._holds_batch_share(w) for w in candidates):
                wait = min(w.estimated_wait_s(BATCH) for w in candidates)
                raise Shed(
                    f"every worker's queue is at least {self.batch_queue_share:.0%} full: batch requests are shed "
                    "until interactive work has room",
                    retry_after_s=math.ceil(wait) if wait else None,
                )
            return
        if request.first_token_deadline is None:
            return
        wait = min(w.estimated_wait_s(INTERACTIVE) for w in candidates)
        left = request.first_token_deadline - now
        if left < wait:
            raise DeadlineUnmeetable(
                f"no worker can start this request before its time-to-first-token deadline: the shortest "
                f"estimated wait is {wait:.2f}s, {max(0.0, left):.2f}s are left",
                retry_after_s=math.ceil(wait),
            )

    def _holds_batch_share(self, worker: WorkerClient) -> bool:
        assert worker.load is not None
        max_queue = worker.load.max_queue
        return max_queue > 0 and worker.queue_depth() >= self.batch_queue_share * max_queue
