"""Pure-ASGI middleware (streaming-safe): request ids, body size limit, API-key check, access log, metrics."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterable

from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bailu.common.errors import BailuError, BodyTooLarge
from bailu.common.logging import request_id_var
from bailu.common.metrics import GatewayMetrics
from bailu.gateway.auth import Authenticator
from bailu.gateway.errors import error_response

log = logging.getLogger("bailu.gateway.access")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
OTHER_ROUTE = "other"
# The routes whose requests need an API key (and a JSON body); the OpenAPI schema says so from this too.
AUTHENTICATED_PREFIX = "/v1/"


class RouteLabels:
    """The `route` label of a request path: the path template of the app's route that matches it, derived
    from the app's routes; every other path is "other", so that the label's values stay bounded."""

    def __init__(self, routes: Iterable[BaseRoute]) -> None:
        self._routes = [(route.path_regex, route.path) for route in routes if isinstance(route, Route)]

    def __call__(self, path: str) -> str:
        for regex, label in self._routes:
            if regex.match(path):
                return label
        return OTHER_ROUTE


class GatewayMiddleware:
    """Gives every request an id (`X-Request-Id`, kept from the client when sane), buffers bodies up
    to `max_body_bytes` (413 beyond), checks the API key on `/v1/` routes (the caller's `ApiKey` goes to
    `scope["state"]["api_key"]`, for the routes' scope checks and quotas), logs and counts requests (labelled
    by `route_labels`)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        auth: Authenticator,
        metrics: GatewayMetrics,
        max_body_bytes: int,
        route_labels: RouteLabels,
    ) -> None:
        self.app = app
        self.auth = auth
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.route_labels = route_labels

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        client_id = headers.get("x-request-id", "")
        rid = client_id if _SAFE_ID.match(client_id) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        path: str = scope["path"]
        route = self.route_labels(path)
        start = time.monotonic()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            if path.startswith(AUTHENTICATED_PREFIX):
                try:
                    key = await self.auth.authenticate(headers.get("authorization"))
                    scope.setdefault("state", {})["api_key"] = key
                except BailuError as exc:
                    await error_response(exc)(scope, receive, send_wrapper)
                    return
            if scope["method"] in ("POST", "PUT", "PATCH"):
                replay = await self._buffer_body(headers, receive)
                if replay is None:
                    too_large = BodyTooLarge(f"the request body is larger than {self.max_body_bytes} bytes")
                    await error_response(too_large)(scope, receive, send_wrapper)
                    return
                receive = replay
                if path.startswith(AUTHENTICATED_PREFIX) and "json" not in headers.get("content-type", ""):
                    # The API takes JSON bodies only; parse them as such whatever the client declared
                    # (curl -d sends a form content type).
                    scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
                    scope["headers"].append((b"content-type", b"application/json"))
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.monotonic() - start
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.request_duration.labels(route).observe(elapsed)
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": path,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 1),
                    "key_id": key.id if (key := scope.get("state", {}).get("api_key")) else None,
                },
            )
            request_id_var.reset(token)

    async def _buffer_body(self, headers: dict[str, str], receive: Receive) -> Receive | None:
        """Read the whole body (bounded) and return a `receive` that replays it; None if too large."""
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                pending: Message | None = message
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return None
            if not message.get("more_body", False):
                pending = None
                break
        replay: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
        if pending is not None:
            replay.append(pending)

        async def replaying_receive() -> Message:
            return replay.pop(0) if replay else await receive()

        return replaying_receive
