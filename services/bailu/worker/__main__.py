"""`python -m bailu.worker`: run an inference worker configured by `BAILU_WORKER_*` variables."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import uvloop

from bailu.common.logging import setup_logging
from bailu.worker.server import WorkerServer
from bailu.worker.settings import WorkerSettings

log = logging.getLogger("bailu.worker")


async def serve(settings: WorkerSettings) -> int:
    server = WorkerServer(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    assert server.loaded is not None
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({server.loaded, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if server.loaded.done() and not server.loaded.cancelled() and server.loaded.exception():
        log.error("the model could not be loaded", exc_info=server.loaded.exception())
        await server.stop(0)
        return 1
    failed = asyncio.create_task(server.engine_failed.wait())
    await asyncio.wait({stopping, failed}, return_when=asyncio.FIRST_COMPLETED)
    if failed.done():
        await server.stop(0)
        return 1
    failed.cancel()
    await server.stop()
    return 0


def main() -> None:
    settings = WorkerSettings()
    setup_logging("worker", settings.log_level)
    # uvloop, as the gateway runs under uvicorn: the worker relays every token of an engine server's stream
    # (socket reads, timers, task wake-ups), and asyncio's own loop spends several times its CPU on them.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        sys.exit(runner.run(serve(settings)))


if __name__ == "__main__":
    main()
