"""`python -m bailu.collector`: consume feedback into datasets (`BAILU_COLLECTOR_*` variables).

python -m bailu.collector          run the collector
python -m bailu.collector seal     seal a dataset version now and print its id
"""

from __future__ import annotations

import asyncio
import signal
import sys

from bailu.collector.service import CollectorService
from bailu.collector.settings import CollectorSettings
from bailu.common.logging import setup_logging
from bailu.datasets.store import DatasetStore


async def serve(settings: CollectorSettings) -> int:
    service = CollectorService(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.run(stop)
    return 0


def main() -> None:
    settings = CollectorSettings()
    setup_logging("collector", settings.log_level)
    if sys.argv[1:] == ["seal"]:
        version = DatasetStore(settings.dataset_dir).seal()
        print(version or "nothing new to seal")
        return
    sys.exit(asyncio.run(serve(settings)))


if __name__ == "__main__":
    main()
