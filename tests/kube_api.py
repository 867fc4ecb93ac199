"""A recording stand-in for the Kubernetes API server, on a free local port: it serves the CronJobs it is given
and echoes back the Jobs POSTed to it as created, so that a test checks the requests a client sends (method,
path, headers, body), not how a cluster answers them."""

from __future__ import annotations

import copy
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

CRONJOB_PATH = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/cronjobs/([^/?]+)")
JOBS_PATH = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs(\?.*)?$")
CREATED_JOB_UID = "0b5d1e2c-0000-4000-8000-000000000001"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: Any


class KubeApiServer:
    """Answers GET cronjob (for the CronJobs in `cronjobs`, by namespace and name) and POST jobs (echoed back as
    created, or `post_error`), and records every request. Used as a context manager: serving inside it."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.cronjobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.post_error: tuple[int, dict[str, Any]] | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _record(self) -> Recorded:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                recorded = Recorded(self.command, self.path, headers, json.loads(raw) if raw else None)
                server.requests.append(recorded)
                return recorded

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _not_found(self, what: str) -> None:
                body = {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404, "message": what}
                self._answer(404, body)

            def do_GET(self) -> None:
                request = self._record()
                match = CRONJOB_PATH.match(request.path)
                found = server.cronjobs.get((match.group(1), match.group(2))) if match else None
                if found is None:
                    self._not_found(f'cronjobs.batch "{match.group(2) if match else "?"}" not found')
                else:
                    self._answer(200, found)

            def do_POST(self) -> None:
                request = self._record()
                if not JOBS_PATH.match(request.path):
                    self._not_found("no such resource")
                elif server.post_error is not None:
                    self._answer(*server.post_error)
                else:
                    created = copy.deepcopy(request.body)
                    created["metadata"].update(uid=CREATED_JOB_UID, resourceVersion="48300")
                    self._answer(201, created)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def add_cronjob(self, template: dict[str, Any], namespace: str, name: str) -> dict[str, Any]:
        """Serve a copy of `template` as CronJob `namespace/name`; the copy is returned (a test may edit it)."""
        cronjob = copy.deepcopy(template)
        cronjob["metadata"].update(name=name, namespace=namespace)
        self.cronjobs[(namespace, name)] = cronjob
        return cronjob

    def __enter__(self) -> KubeApiServer:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
