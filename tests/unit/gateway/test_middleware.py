"""Request metrics' route labels: derived from the app's routes, one per route, "other" for any other path.
The app runs in process (no worker, no Redis, no lifespan)."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.routing import Route

from bailu.gateway.app import create_app
from bailu.gateway.auth import KeyStore
from bailu.gateway.middleware import OTHER_ROUTE, RouteLabels
from bailu.gateway.settings import GatewaySettings
from bailu.keys.model import hash_key

pytestmark = pytest.mark.usefixtures("clean_bailu_env")

KEY = "bailu-unit-key"


def test_a_path_is_labelled_by_the_route_that_matches_it() -> None:
    async def endpoint(request: object) -> None: ...

    labels = RouteLabels([Route("/v1/models", endpoint), Route("/v1/things/{thing_id}", endpoint)])
    assert labels("/v1/models") == "/v1/models"
    assert labels("/v1/things/42") == "/v1/things/{thing_id}"
    assert labels("/v1/models/x") == labels("/v1/nope") == labels("/") == OTHER_ROUTE


async def test_every_route_of_the_app_gets_its_own_label() -> None:
    registry = CollectorRegistry()
    app = create_app(GatewaySettings(), keys=KeyStore([hash_key(KEY)]), metrics_registry=registry)
    routes = [route for route in app.routes if isinstance(route, Route)]
    paths = {route.path for route in routes}
    api = {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/feedback"}
    assert api | {"/healthz", "/readyz", "/metrics"} <= paths
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        for route in routes:
            method = sorted((route.methods or {"GET"}) - {"HEAD"})[0]
            await client.request(method, route.path, headers={"Authorization": f"Bearer {KEY}"})
        for unknown in ("/", "/v1/nope", "/metrics/extra", "/healthz2"):
            await client.get(unknown)
    counted = {sample.labels["route"] for sample in app.state.metrics.requests.collect()[0].samples}
    assert counted == paths | {OTHER_ROUTE}
