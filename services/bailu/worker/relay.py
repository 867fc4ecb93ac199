"""The Relay RPC, worker side: many completions over one long-lived stream from a gateway.

One gRPC message per token per completion costs the worker a write through grpc's event loop integration
(tens of microseconds each) and the gateway a read; a gateway sends all its completions for this worker over
one Relay call instead (proto/bailu/v1/worker.proto). Each stream it opens runs exactly as a `Generate` call
(the servicer's own generator: admission, metrics, logs, errors), in a task of its own; its chunks are put in
one outbox, and the outbox goes out as one `RelayResponse` each time the sender gets to run: every chunk that
became ready for any stream while the previous message was being written goes out together, and a chunk that
finds the sender idle goes out at once (the first token is never held back).

Per stream the worker keeps at most `STREAM_WINDOW_BYTES` sent and not yet consumed by the gateway
(`RelayCredit`), then stops pulling that stream's engine: the same bound as the fixed HTTP/2 window of a
`Generate` call (gateway/backpressure.py), so a completion whose client stopped reading holds back only
itself. A stream ends with one item carrying the status its call would have ended with (`RelayEnd`, the
same code, details and metadata as `common/grpc_errors.to_status`); a stream the gateway cancelled ends
without one. The call ends when the gateway closes its side (its streams are cancelled), or when the worker
drains (`close`): new streams are refused like new calls (`Unavailable`), and the call ends once the
streams it carries have ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import grpc

from bailu.common.errors import BailuError, DeadlineExceeded, InvalidRequest
from bailu.common.grpc_errors import to_status
from bailu.common.wire import STREAM_WINDOW_BYTES
from bailu.v1 import worker_pb2 as pb
from bailu.worker.interceptors import reported

log = logging.getLogger(__name__)

Generate = Callable[[pb.GenerateRequest], AsyncGenerator[pb.GenerateResponse, None]]


class _Stream:
    __slots__ = ("credit", "task", "unacked")

    def __init__(self) -> None:
        self.unacked = 0  # bytes sent and not yet consumed by the gateway
        self.credit = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class RelaySession:
    """One Relay call: the streams it carries and the outbox of their chunks (see the module docstring)."""

    def __init__(self, generate: Generate, window_bytes: int = STREAM_WINDOW_BYTES) -> None:
        self.generate = generate
        self.window_bytes = window_bytes
        self.streams: dict[int, _Stream] = {}
        self._outbox: list[pb.RelayItem] = []
        self._ready = asyncio.Event()  # the outbox has items, or the session's state changed
        self._closing = False

    def close(self) -> None:
        """End the call once the streams it carries have ended (the worker drains)."""
        self._closing = True
        self._ready.set()

    async def run(self, requests: AsyncIterator[pb.RelayRequest]) -> AsyncGenerator[pb.RelayResponse, None]:
        """The responses of the call whose requests are `requests`; cancelling it cancels every stream."""
        reader = asyncio.create_task(self._read(requests))
        try:
            while True:
                if not self._outbox:
                    if self._closing and not self.streams:
                        return
                    self._ready.clear()
                    await self._ready.wait()
                    continue
                items, self._outbox = self._outbox, []
                yield pb.RelayResponse(items=items)
        finally:
            reader.cancel()
            tasks = [s.task for s in self.streams.values() if s.task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(reader, *tasks, return_exceptions=True)
            self.streams.clear()

    async def _read(self, requests: AsyncIterator[pb.RelayRequest]) -> None:
        try:
            async for request in requests:
                for opened in request.open:
                    self._open(opened)
                for credit in request.credit:
                    stream = self.streams.get(credit.id)
                    if stream is not None:
                        stream.unacked -= credit.bytes
                        if stream.unacked <= self.window_bytes:
                            stream.credit.set()
                for stream_id in request.cancel:
                    stream = self.streams.pop(stream_id, None)
                    if stream is not None and stream.task is not None:
                        stream.task.cancel()
        except grpc.aio.AioRpcError:
            pass  # the call failed: `run` is being cancelled too
        # The gateway closed its side: nothing more will read these streams.
        for stream_id in list(self.streams):
            stream = self.streams.pop(stream_id)
            if stream.task is not None:
                stream.task.cancel()
        self.close()

    def _open(self, opened: pb.RelayOpen) -> None:
        if opened.id in self.streams:
            self._end(opened.id, InvalidRequest(f"relay stream {opened.id} is already open"))
            return
        stream = _Stream()
        self.streams[opened.id] = stream
        stream.task = asyncio.create_task(self._serve(opened.id, stream, opened.request, opened.timeout_s))

    async def _serve(self, stream_id: int, stream: _Stream, request: pb.GenerateRequest, timeout_s: float) -> None:
        error: BailuError | None = None
        try:
            async with (
                asyncio.timeout(timeout_s if timeout_s > 0 else None) as deadline,
                contextlib.aclosing(self.generate(request)) as chunks,
            ):
                async for chunk in chunks:
                    self._outbox.append(pb.RelayItem(id=stream_id, chunk=chunk))
                    self._ready.set()
                    stream.unacked += chunk.ByteSize()
                    while stream.unacked > self.window_bytes:
                        stream.credit.clear()
                        await stream.credit.wait()
        except asyncio.CancelledError:
            if self.streams.get(stream_id) is stream:
                raise  # the whole call is going away
            return  # cancelled by the gateway: nothing more is sent for it
        except TimeoutError:
            if not deadline.expired():
                error = reported("/bailu.v1.InferenceWorker/Relay", TimeoutError())
            else:
                error = DeadlineExceeded("the request's deadline passed")
        except Exception as exc:
            error = reported("/bailu.v1.InferenceWorker/Relay", exc)
        if self.streams.get(stream_id) is stream:
            self._end(stream_id, error)

    def _end(self, stream_id: int, error: BailuError | None) -> None:
        """Send the stream's last item: OK, or the status that reports `error`."""
        self.streams.pop(stream_id, None)
        if error is None:
            end = pb.RelayEnd(code=grpc.StatusCode.OK.value[0])
        else:
            code, details, metadata = to_status(error)
            end = pb.RelayEnd(code=code.value[0], details=details, metadata=dict(metadata))
        self._outbox.append(pb.RelayItem(id=stream_id, end=end))
        self._ready.set()
