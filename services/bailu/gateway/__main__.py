"""`python -m bailu.gateway`: serve the OpenAI-compatible API configured by `BAILU_GATEWAY_*` variables."""

from __future__ import annotations

import uvicorn

from bailu.common.logging import setup_logging
from bailu.gateway.app import create_app
from bailu.gateway.settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    setup_logging("gateway", settings.log_level)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
