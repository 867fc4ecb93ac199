"""The Relay RPC, gateway side: every completion sent to a worker shares one long-lived stream to it.

`RelayChannel` holds one Relay call per worker (opened with the first completion, again after a failure) and
two tasks: a sender that writes the streams opened, cancelled and credited since its last write as one
`RelayRequest`, and a reader that hands each item of a `RelayResponse` to its `RelayStream`. A `RelayStream`
is to a completion what a `WorkerStream` (one `Generate` call) is: the same chunks, errors, bounds and
accounting, so that `Router` cannot tell them apart (proto/bailu/v1/worker.proto, worker/relay.py).

- Flow control per stream: the worker keeps at most `STREAM_WINDOW_BYTES` of a stream's chunks unconsumed
  here; a stream returns credit as its reader consumes chunks (every quarter window), so chunks wait here only
  up to that bound, and a stream nobody reads holds back only its own worker-side generation.
- Deadlines: a stream's deadline travels with it (the worker stops it) and bounds every wait here too
  (`DeadlineExceeded`, as gRPC would report a `Generate` call's).
- Failures: when the call fails or ends, each stream still open fails with the error the call's status
  reports (`Unavailable` when the worker went away or closed the call: retried elsewhere before the first
  token, as for a `Generate` call).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from typing import TYPE_CHECKING

import grpc

from bailu.common import wire
from bailu.common.errors import BailuError, DeadlineExceeded, Stalled, Unavailable
from bailu.common.grpc_errors import from_status
from bailu.common.types import GenerateChunk, GenerateRequest
from bailu.common.wire import STREAM_WINDOW_BYTES
from bailu.v1 import worker_pb2 as pb
from bailu.v1 import worker_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from bailu.gateway.workers import WorkerClient

log = logging.getLogger(__name__)

# A stream returns credit once its reader has consumed this many bytes (a quarter of the window).
CREDIT_BYTES = STREAM_WINDOW_BYTES // 4
_END = object()  # a stream's queue entry after its last chunk
_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


class RelayChannel:
    """The Relay call to one worker, and the streams it carries (see the module docstring)."""

    def __init__(self, stub: pb_grpc.InferenceWorkerStub, address: str) -> None:
        self.stub = stub
        self.address = address
        self.streams: dict[int, RelayStream] = {}
        self._ids = itertools.count(1)
        self._call: grpc.aio.StreamStreamCall[pb.RelayRequest, pb.RelayResponse] | None = None
        self._outgoing = pb.RelayRequest()
        self._pending = asyncio.Event()  # `_outgoing` holds something to send
        self._tasks: list[asyncio.Task[None]] = []
        self.calls = 0  # Relay calls ever opened

    def open(self, stream: RelayStream, request: pb.GenerateRequest, timeout: float | None) -> int:
        """Start `stream` on the call (opening one if none runs); its id on the call."""
        if self._call is None:
            self._start()
        stream_id = next(self._ids)
        self.streams[stream_id] = stream
        self._outgoing.open.add(id=stream_id, request=request, timeout_s=timeout or 0.0)
        self._pending.set()
        return stream_id

    def cancel(self, stream_id: int) -> None:
        if self.streams.pop(stream_id, None) is not None:
            self._outgoing.cancel.append(stream_id)
            self._pending.set()

    def credit(self, stream_id: int, consumed: int) -> None:
        self._outgoing.credit.add(id=stream_id, bytes=consumed)
        self._pending.set()

    def _start(self) -> None:
        # wait_for_ready=False: a worker whose connection is down fails the call at once (UNAVAILABLE,
        # retried elsewhere), as a Generate call does.
        call = self.stub.Relay(wait_for_ready=False)
        self._call = call
        self.calls += 1
        self._tasks = [asyncio.create_task(self._send(call)), asyncio.create_task(self._receive(call))]

    async def _send(self, call: grpc.aio.StreamStreamCall[pb.RelayRequest, pb.RelayResponse]) -> None:
        try:
            while True:
                await self._pending.wait()
                message, self._outgoing = self._outgoing, pb.RelayRequest()
                self._pending.clear()
                await call.write(message)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            pass  # the call is over: `_receive` reports why

    async def _receive(self, call: grpc.aio.StreamStreamCall[pb.RelayRequest, pb.RelayResponse]) -> None:
        error: BailuError = Unavailable("the inference worker closed the relay")
        try:
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    break
                streams = self.streams
                for item in response.items:
                    stream = streams.get(item.id)
                    if stream is None:
                        continue  # cancelled here meanwhile
                    if item.HasField("end"):
                        del streams[item.id]
                        stream.end(item.end)
                    else:
                        stream.push(item.chunk)
        except grpc.aio.AioRpcError as exc:
            error = from_status(exc.code(), exc.details(), exc.trailing_metadata())
        except asyncio.CancelledError:
            error = Unavailable("the inference worker left the pool")
            raise
        finally:
            self._lost(call, error)

    def _lost(self, call: grpc.aio.StreamStreamCall[pb.RelayRequest, pb.RelayResponse], error: BailuError) -> None:
        """The call is over: its streams fail with `error`, and the next stream opens a new call."""
        current, self._call = self._call, None
        if current is None or current is not call:
            self._call = current
            return
        current.cancel()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self._tasks = []
        self._outgoing = pb.RelayRequest()
        self._pending.clear()
        streams, self.streams = self.streams, {}
        if streams:
            log.warning(
                "worker relay lost", extra={"worker": self.address, "error": error.name, "streams": len(streams)}
            )
        for stream in streams.values():
            stream.fail(error)

    async def close(self) -> None:
        call, tasks = self._call, self._tasks
        if call is not None:
            self._lost(call, Unavailable("the inference worker left the pool"))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class RelayStream:
    """One completion on a worker's Relay call: its chunks as domain types, failures as `BailuError`s.

    The same contract as `WorkerStream`: `timeout` bounds the whole stream (the request's deadline),
    `first_token_s` the wait for the first chunk and `idle_s` each wait for the next (None: unbounded; past
    them the stream is cancelled and `Stalled` raised); it counts in the worker's `inflight` from its start
    until closed; `aclose()` cancels it."""

    def __init__(
        self,
        worker: WorkerClient,
        relay: RelayChannel,
        request: GenerateRequest,
        timeout: float | None,
        first_token_s: float | None,
        idle_s: float | None,
    ) -> None:
        self.worker = worker
        self._relay = relay
        self._queue: collections.deque[pb.GenerateResponse | BailuError | object] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._bound, self._stalled = first_token_s, "the inference worker sent no first token within {:g}s"
        self._idle_s = idle_s
        self._consumed = 0  # bytes consumed and not yet credited back
        self._closed = False
        self._ended = False  # the worker sent the stream's end (or the call failed): nothing to cancel
        self._id = relay.open(self, wire.request_to_pb(request), timeout)
        self._batch = worker.started(request)

    # Called by the channel's reader.
    def push(self, chunk: pb.GenerateResponse) -> None:
        self._queue.append(chunk)
        self._wake()

    def end(self, end: pb.RelayEnd) -> None:
        self._ended = True
        if end.code == grpc.StatusCode.OK.value[0]:
            self._queue.append(_END)
        else:
            code = _STATUS_CODES.get(end.code, grpc.StatusCode.UNKNOWN)
            self._queue.append(from_status(code, end.details, list(end.metadata.items())))
        self._wake()

    def fail(self, error: BailuError) -> None:
        self._ended = True
        self._queue.append(error)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> RelayStream:
        return self

    async def __anext__(self) -> GenerateChunk:
        if self._closed:
            raise StopAsyncIteration
        if not self._queue:
            await self._wait()
        item = self._queue.popleft()
        if isinstance(item, pb.GenerateResponse):
            self._bound, self._stalled = self._idle_s, "the inference worker sent nothing for {:g}s"
            self._consumed += item.ByteSize()
            if self._consumed >= CREDIT_BYTES and not self._ended:
                self._relay.credit(self._id, self._consumed)
                self._consumed = 0
            return wire.chunk_from_pb(item)
        self.close()
        if item is _END:
            raise StopAsyncIteration
        assert isinstance(item, BailuError)
        self.worker.call_failed(item)
        raise item

    async def _wait(self) -> None:
        """Until the queue has an item, within the current bound and the deadline."""
        bound, deadline_bound = self._bound, False
        if self._deadline is not None:
            left = self._deadline - time.monotonic()
            if bound is None or left <= bound:
                bound, deadline_bound = max(0.0, left), True
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(bound):
                await self._waiter
        except TimeoutError:
            self.close()
            if deadline_bound:
                raise DeadlineExceeded("the request's deadline passed") from None
            reason = self._stalled.format(self._bound)
            log.warning("worker stream stalled", extra={"worker": self.worker.address, "reason": reason})
            raise Stalled(reason) from None
        finally:
            self._waiter = None

    def close(self) -> None:
        """Cancel the stream (if it still runs) and take it out of the worker's `inflight`; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.worker.finished(self._batch)
        if not self._ended:
            self._relay.cancel(self._id)

    async def aclose(self) -> None:
        self.close()
