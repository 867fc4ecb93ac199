"""Worker discovery, load polling and least-loaded choice.

Protobuf stops here: `WorkerClient` speaks gRPC and hands out domain types.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Callable

import grpc

from bailu.common import grpc_keepalive, wire
from bailu.common.errors import BailuError, Stalled, Unavailable, UnsupportedValue
from bailu.common.grpc_errors import from_status
from bailu.common.tasks import cancel_and_wait
from bailu.common.types import (
    BATCH,
    TOOL_FUNCTION,
    EngineCapabilities,
    GenerateChunk,
    GenerateRequest,
    LoadReport,
    ModelCard,
    ToolUse,
)
from bailu.gateway.backpressure import GRPC_FLOW_CONTROL_OPTIONS
from bailu.gateway.relay import RelayChannel, RelayStream
from bailu.v1 import worker_pb2 as pb
from bailu.v1 import worker_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# Load polls a worker may miss in a row (deadline exceeded) before it is out of routing: one missed poll is
# often a busy node, not a dead worker.
MISSED_POLLS_UNREACHABLE = 2
# The floor of a load poll's deadline (it is twice the poll interval above it).
MIN_POLL_TIMEOUT_S = 0.5


def estimated_wait_s(load: LoadReport, priority: str, *, inflight: int = 0, inflight_batch: int = 0) -> float:
    """Roughly how long a new request of class `priority` would wait for an engine slot on a worker whose last
    report is `load`, given this gateway's calls to it in flight (`inflight`, `inflight_batch` of them batch),
    which may be newer than the report.

    The work ahead of it is the larger of the two counts; for an interactive request, queued batch work does
    not count (it waits behind), nor do this gateway's batch calls beyond `capacity` (at most that many hold
    slots). Slots free one every `service_s / capacity` seconds on average, so the estimate is the work ahead
    beyond the slots, plus this request, times that. 0 when a slot is free, or before the worker measured its
    `service_s`."""
    if load.service_s <= 0 or load.capacity <= 0:
        return 0.0
    if priority == BATCH:
        ahead = max(inflight, load.running + load.queued)
    else:
        ahead = max(inflight - max(0, inflight_batch - load.capacity), load.running + load.queued - load.queued_batch)
    if ahead < load.capacity:
        return 0.0
    return (ahead - load.capacity + 1) * load.service_s / load.capacity


class WorkerClient:
    """One worker: its channel, its last load report and models, and this gateway's calls in flight."""

    def __init__(self, address: str, on_unready: Callable[[], None] | None = None, *, relay: bool = True) -> None:
        """`on_unready` is called when a failed call takes the worker out of service between polls; `relay`:
        completions go over the worker's Relay stream when it has one (gateway/relay.py), else one Generate
        call each."""
        self.address = address
        self.on_unready = on_unready
        # Keepalive that detects a dead or frozen worker, mid-stream too (common/grpc_keepalive.py); a
        # fixed receive window per stream, so that an unread stream holds its worker back (backpressure.py).
        self.channel = grpc.aio.insecure_channel(
            address, options=(*grpc_keepalive.CLIENT_OPTIONS, *GRPC_FLOW_CONTROL_OPTIONS)
        )
        self.stub = pb_grpc.InferenceWorkerStub(self.channel)
        self.use_relay = relay
        self.relay = RelayChannel(self.stub, address)
        self.relay_supported = False  # the worker serves Relay (its last ListModels says so)
        self.load: LoadReport | None = None
        self.models: list[ModelCard] = []
        # What the worker's engine can do (unset by workers older than the field: the in-process default, less
        # structured outputs, which such a worker would ignore).
        self.capabilities = EngineCapabilities(structured_outputs=False, tool_calls=False, auto_tool_choice=False)
        self.engine = ""
        self.inflight = 0
        self.inflight_batch = 0  # of `inflight`, the batch requests
        self.calls = 0  # Generate calls ever started
        # Set while the worker does not answer its load poll (dead, frozen, or cut off); cleared by the next
        # poll it answers. Attempts waiting for a first token watch it (`Router`).
        self.unreachable = asyncio.Event()
        self.missed_polls = 0

    @property
    def ready(self) -> bool:
        return self.load is not None and self.load.ready

    def score(self) -> float:
        """Lower is better: the larger of this gateway's calls in flight and the worker's own count,
        per engine slot."""
        load = self.load
        assert load is not None
        busy = max(self.inflight, load.running + load.queued)
        return busy / max(1, load.capacity)

    def estimated_wait_s(self, priority: str) -> float:
        """How long a request of class `priority` would wait for a slot here (`estimated_wait_s`)."""
        assert self.load is not None
        return estimated_wait_s(self.load, priority, inflight=self.inflight, inflight_batch=self.inflight_batch)

    def queue_depth(self) -> int:
        """Requests waiting for a slot: the worker's last count, or more if this gateway's calls in flight
        since exceed its slots."""
        load = self.load
        assert load is not None
        return max(load.queued, self.inflight - load.capacity)

    def serves(self, model: str, adapter: str) -> bool:
        if not adapter:
            return any(c.kind == "base" and c.name == model for c in self.models)
        return any(c.kind == "adapter" and c.name == adapter and c.base_model == model for c in self.models)

    async def refresh(self, timeout: float) -> None:
        """Poll load and models. A worker whose connection is down (UNAVAILABLE) is out at once; one that
        misses the poll's deadline (frozen, or only slow: a busy node, a long GC pause) after
        `MISSED_POLLS_UNREACHABLE` polls in a row, keeping its last report until then. Out means not ready
        and `unreachable` until the next poll it answers."""
        try:
            load = await self.stub.GetLoad(pb.GetLoadRequest(), timeout=timeout)
            models = await self.stub.ListModels(pb.ListModelsRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            self.missed_polls += 1
            if exc.code() is not grpc.StatusCode.UNAVAILABLE and self.missed_polls < MISSED_POLLS_UNREACHABLE:
                log.info("worker missed a load poll", extra={"worker": self.address, "code": exc.code().name})
                return
            if self.load is not None:  # it was in service
                log.warning("worker unreachable", extra={"worker": self.address, "code": exc.code().name})
            self.load = None
            self.unreachable.set()
            return
        self.missed_polls = 0
        self.unreachable.clear()
        self.load = wire.load_from_pb(load)
        self.models = [wire.card_from_pb(m) for m in models.models]
        self.engine = models.engine
        self.relay_supported = models.relay
        if models.HasField("capabilities"):
            self.capabilities = wire.capabilities_from_pb(models.capabilities)

    def generate(
        self,
        request: GenerateRequest,
        timeout: float | None,
        *,
        first_token_s: float | None = None,
        idle_s: float | None = None,
    ) -> WorkerStream | RelayStream:
        """Start streaming a completion (see `WorkerStream`, `RelayStream`); it counts in `inflight` until
        closed."""
        if self.use_relay and self.relay_supported:
            return RelayStream(self, self.relay, request, timeout, first_token_s, idle_s)
        return WorkerStream(self, request, timeout, first_token_s, idle_s)

    def started(self, request: GenerateRequest) -> int:
        """A stream of `request` (a Generate call or a Relay stream) starts: count it in `inflight` (and in
        `inflight_batch` for batch work); 1 if it is batch work, which `finished` takes back."""
        batch = int(request.priority == BATCH)
        self.inflight += 1
        self.inflight_batch += batch
        self.calls += 1
        return batch

    def finished(self, batch: int) -> None:
        """A stream counted by `started` is closed."""
        self.inflight -= 1
        self.inflight_batch -= batch

    def call_failed(self, error: BailuError) -> None:
        """A call failed with `error`: an unavailable worker (refused connection, or one that says it cannot
        serve) is out of routing until its next successful poll. A worker that reports its engine `Stalled`
        answered, so it stays in."""
        if isinstance(error, Unavailable):
            self.load = None
            if self.on_unready is not None:
                self.on_unready()

    async def close(self) -> None:
        await self.relay.close()
        await self.channel.close()


class WorkerStream:
    """One `Generate` call: its chunks as domain types; gRPC failures become `BailuError`s.

    `timeout` bounds the whole call (the request's deadline); `first_token_s` the wait for the first chunk
    and `idle_s` each wait for the next one (None: unbounded): past them the call is cancelled and `Stalled`
    raised. Only waits on the worker count, not the time the reader takes between chunks. The call starts
    (and counts in the worker's `inflight`) at once, so that the next pick sees it; `aclose()` cancels it."""

    def __init__(
        self,
        worker: WorkerClient,
        request: GenerateRequest,
        timeout: float | None,
        first_token_s: float | None,
        idle_s: float | None,
    ) -> None:
        self.worker = worker
        # wait_for_ready=False: a worker whose connection is down fails at once (UNAVAILABLE, retried
        # elsewhere) instead of queueing the call until it reconnects.
        self._call = worker.stub.Generate(
            wire.request_to_pb(request),
            timeout=timeout,
            metadata=(("x-request-id", request.request_id),),
            wait_for_ready=False,
        )
        self._bound, self._stalled = first_token_s, "the inference worker sent no first token within {:g}s"
        self._idle_s = idle_s
        self._closed = False
        self._batch = worker.started(request)

    def __aiter__(self) -> WorkerStream:
        return self

    async def __anext__(self) -> GenerateChunk:
        if self._closed:
            raise StopAsyncIteration
        try:
            async with asyncio.timeout(self._bound):
                message = await self._call.read()
        except TimeoutError:
            self.close()
            reason = self._stalled.format(self._bound)
            log.warning("worker stream stalled", extra={"worker": self.worker.address, "reason": reason})
            raise Stalled(reason) from None
        except grpc.aio.AioRpcError as exc:
            self.close()
            error = from_status(exc.code(), exc.details(), exc.trailing_metadata())
            self.worker.call_failed(error)
            raise error from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed or not self._call.cancelled() or (task is not None and task.cancelling()):
                raise  # our own cancellation
            # The call was cancelled under the reader (its channel closed: the worker left the pool).
            self.close()
            raise Unavailable("the inference worker left the pool") from None
        if message is grpc.aio.EOF:
            self.close()
            raise StopAsyncIteration
        self._bound, self._stalled = self._idle_s, "the inference worker sent nothing for {:g}s"
        return wire.chunk_from_pb(message)

    def close(self) -> None:
        """Cancel the call (if it still runs) and take it out of the worker's `inflight`; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.worker.finished(self._batch)
        self._call.cancel()

    async def aclose(self) -> None:
        self.close()


class WorkerPool:
    """The workers the gateway knows: static addresses plus those DNS names (host:port) resolve to."""

    def __init__(
        self,
        addresses: list[str],
        dns_targets: list[str] | None = None,
        *,
        poll_interval_s: float = 0.5,
        discovery_interval_s: float = 5.0,
        relay: bool = True,
    ) -> None:
        self.static = list(addresses)
        self.dns_targets = list(dns_targets or ())
        self.poll_interval_s = poll_interval_s
        self.discovery_interval_s = discovery_interval_s
        self.relay = relay
        self.workers: dict[str, WorkerClient] = {}
        # Every model and adapter some ready worker serves, by name (the first worker's card wins): rebuilt
        # by `update_cards` when a poll or a failed call changes what is served, read on every request.
        self.cards: dict[str, ModelCard] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closing: set[asyncio.Future[None]] = set()

    def inflight(self) -> int:
        """Generate calls in flight to any worker."""
        return sum(w.inflight for w in self.workers.values())

    def calls_started(self) -> int:
        """Generate calls ever started to the workers known now (it changes whenever one starts)."""
        return sum(w.calls for w in self.workers.values())

    async def start(self) -> None:
        await self.discover()
        await self.refresh()
        self._tasks = [asyncio.create_task(self._poll_loop())]
        if self.dns_targets:
            self._tasks.append(asyncio.create_task(self._discovery_loop()))

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)
        await asyncio.gather(*(w.close() for w in self.workers.values()))
        self.workers.clear()
        self.update_cards()

    async def _resolve(self, target: str) -> list[str] | None:
        """The addresses `target` (host:port) resolves to; None if the lookup failed."""
        host, _, port = target.rpartition(":")
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except (OSError, ValueError) as exc:
            log.warning("worker DNS lookup failed", extra={"target": target, "error": str(exc)})
            return None
        addresses = set()
        for info in infos:
            ip, resolved_port = str(info[4][0]), int(info[4][1])
            addresses.add(f"[{ip}]:{resolved_port}" if ":" in ip else f"{ip}:{resolved_port}")
        return sorted(addresses)

    async def discover(self) -> None:
        wanted = set(self.static)
        complete = True
        for target in self.dns_targets:
            found = await self._resolve(target)
            complete &= found is not None
            wanted.update(found or ())
        for address in wanted - self.workers.keys():
            self.workers[address] = WorkerClient(address, self.update_cards, relay=self.relay)
            log.info("worker added", extra={"worker": address})
        if not complete:
            return  # a failed lookup removes nobody: DNS hiccups must not empty the pool
        for address in set(self.workers) - wanted:
            worker = self.workers.pop(address)
            log.info("worker removed", extra={"worker": address})
            # Let calls in flight finish before the channel closes.
            asyncio.get_running_loop().call_later(30, self._close_later, worker)
        self.update_cards()

    def _close_later(self, worker: WorkerClient) -> None:
        task = asyncio.ensure_future(worker.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def refresh(self) -> None:
        timeout = max(MIN_POLL_TIMEOUT_S, self.poll_interval_s * 2)
        try:
            await asyncio.gather(*(w.refresh(timeout) for w in list(self.workers.values())))
        finally:
            self.update_cards()

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                await self.refresh()
            except Exception:  # never let the loop die
                log.exception("worker poll failed")

    async def _discovery_loop(self) -> None:
        while True:
            await asyncio.sleep(self.discovery_interval_s)
            try:
                await self.discover()
            except Exception:
                log.exception("worker discovery failed")

    def ready_workers(self) -> list[WorkerClient]:
        return [w for w in self.workers.values() if w.ready]

    def update_cards(self) -> None:
        """Rebuild `cards` from the ready workers' model lists."""
        cards: dict[str, ModelCard] = {}
        for worker in self.ready_workers():
            for card in worker.models:
                cards.setdefault(card.name, card)
        self.cards = cards

    def models(self) -> list[ModelCard]:
        """Every model and adapter some ready worker serves, base models first, then by name."""
        return sorted(self.cards.values(), key=lambda c: (c.kind != "base", c.name))

    def candidates(self, model: str, adapter: str, exclude: set[str]) -> list[WorkerClient]:
        """The ready workers, other than those in `exclude`, that serve the model."""
        return [w for w in self.ready_workers() if w.address not in exclude and w.serves(model, adapter)]

    def pick(
        self,
        model: str,
        adapter: str,
        exclude: set[str],
        *,
        raw_prompt: bool = False,
        priority: str | None = None,
        response_format: str = "text",
        tools: ToolUse | None = None,
    ) -> WorkerClient:
        """The least-loaded ready worker that serves the model (ties broken at random); given a `priority`
        (admission control), the one with the shortest estimated wait for that class, the least-loaded among
        equals. A raw prompt (/v1/completions) prefers workers whose engine completes it verbatim
        (`raw_completions`); the others serve it as one user turn, so they are used only when no such worker
        can take it. A constrained output (`response_format` other than "text") goes only to workers whose
        engine can constrain it (`structured_outputs`), forced tool calls (`tools.forced`) only to those that can
        force them (`tool_calls`), and a choice left to the model (`tools` active, not forced) only to those that
        read calls out of free output (`auto_tool_choice`): with none among them, `UnsupportedValue`, never free
        text instead."""
        candidates = self.candidates(model, adapter, exclude)
        if not candidates:
            raise Unavailable("no inference worker can take this request now")
        if response_format != "text":
            candidates = [w for w in candidates if w.capabilities.structured_outputs]
            if not candidates:
                name = f"{model}:{adapter}" if adapter else model
                raise UnsupportedValue(
                    f"model '{name}' does not support response_format {response_format}: its engine cannot "
                    "constrain the output",
                    param="response_format",
                )
        if tools is not None and tools.active:
            candidates = self._able_to_use(candidates, tools, f"{model}:{adapter}" if adapter else model)
        if raw_prompt:
            candidates = [w for w in candidates if w.capabilities.raw_completions] or candidates

        def rank(w: WorkerClient) -> tuple[float, float]:
            return (0.0 if priority is None else w.estimated_wait_s(priority), w.score())

        best = min(rank(w) for w in candidates)
        return random.choice([w for w in candidates if rank(w) == best])  # nosec B311 # load balancing, not crypto

    @staticmethod
    def _able_to_use(candidates: list[WorkerClient], tools: ToolUse, name: str) -> list[WorkerClient]:
        """The candidates whose engine can use the tools as asked (`pick`); none: `UnsupportedValue`."""
        if tools.forced:
            able = [w for w in candidates if w.capabilities.tool_calls]
            missing = "its engine cannot force tool calls"
        else:
            able = [w for w in candidates if w.capabilities.auto_tool_choice]
            missing = "its engine has no tool parser to read calls out of the model's output"
        if not able:
            asked = f"function '{tools.function}'" if tools.choice == TOOL_FUNCTION else tools.choice
            raise UnsupportedValue(
                f"model '{name}' does not support tool_choice {asked}: {missing}", param="tool_choice"
            )
        return able
