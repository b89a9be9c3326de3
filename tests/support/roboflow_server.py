"""A local HTTP server speaking the three Roboflow Model Monitoring endpoints, scriptable and recording.

- `GET /?api_key=K&nocache=true` -> `{"workspace": NAME}`
- `POST /NAME/inference-stats?api_key=K` -> `{}`
- `POST /NAME/inference-stats/metadata?api_key=K&nocache=true` -> `{"status": "ok"}`

A wrong key gets 401, a wrong workspace 404, a body that is not JSON 400. `fail(...)` scripts answers per
endpoint (e.g. 503 for the next 3 report posts, with Retry-After). Every request is recorded with the status
it got.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.support.served import Recording, Scripted, Served, next_scripted, read_body, send_json

ENDPOINTS = ("workspace", "report", "metadata")



@dataclass(frozen=True)
class Recorded:
    method: str
    endpoint: str  # workspace | report | metadata | unknown
    path: str
    query: dict[str, str]
    body: Any  # parsed JSON, None when there was none or it was not JSON
    raw: bytes
    status: int  # what the server answered
    at: float  # time.monotonic() when it arrived
    peer: tuple[str, int]  # the client's address: one per TCP connection


@dataclass
class RoboflowServer(Served, Recording[Recorded]):
    api_key: str = "rf_test_key"
    workspace: str = "edge-tests"
    requests: list[Recorded] = field(default_factory=list)
    idle_timeout: float | None = None  # close a kept-alive connection idle this long
    closed_connections: int = 0

    def __post_init__(self) -> None:
        self._changed = threading.Condition()
        self._scripts: dict[str, list[Scripted]] = {name: [] for name in ENDPOINTS}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            @property
            def timeout(self) -> float | None:  # type: ignore[override]
                return server.idle_timeout

            def finish(self) -> None:
                super().finish()
                with server._changed:
                    server.closed_connections += 1
                    server._changed.notify_all()

            def do_GET(self) -> None:
                server._answer(self, "GET")

            def do_POST(self) -> None:
                server._answer(self, "POST")

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._run_server(self._httpd)

    # --- scripting ---------------------------------------------------------------------------------

    def fail(self, endpoint: str, status: int, times: int | None = 1, retry_after: str | None = None,
             delay: float = 0.0) -> None:
        """Answer the next `times` requests to `endpoint` (all until clear() if None) with `status`,
        after `delay` seconds (a slow network; longer than the client's timeout makes it time out)."""
        assert endpoint in ENDPOINTS
        with self._changed:
            self._scripts[endpoint].append(Scripted(status, times, retry_after, delay))

    def clear(self, endpoint: str | None = None) -> None:
        with self._changed:
            for name in [endpoint] if endpoint else ENDPOINTS:
                self._scripts[name].clear()

    def set_api_key(self, key: str) -> None:
        with self._changed:
            self.api_key = key

    # --- what arrived ------------------------------------------------------------------------------

    def accepted(self, endpoint: str) -> list[Any]:
        """Bodies of the requests to `endpoint` that got a 200, in arrival order."""
        return [r.body for r in self.recorded(endpoint, 200)]

    def wait_for(self, condition: Callable[[], Any], timeout: float = 10, message: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                value = condition()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [(r.method, r.endpoint, r.status) for r in self.requests]
                    raise AssertionError(f"timed out after {timeout}s waiting for {message}; got {seen}")
                self._changed.wait(min(remaining, 0.2))

    # --- serving -----------------------------------------------------------------------------------

    def _route(self, method: str, path: str) -> tuple[str, str | None]:
        """(endpoint, workspace in the path)."""
        parts = [p for p in path.split("/") if p]
        if method == "GET" and not parts:
            return "workspace", None
        if method == "POST" and len(parts) == 2 and parts[1] == "inference-stats":
            return "report", parts[0]
        if method == "POST" and len(parts) == 3 and parts[1:] == ["inference-stats", "metadata"]:
            return "metadata", parts[0]
        return "unknown", None

    def _answer(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        arrived = time.monotonic()
        split = urllib.parse.urlsplit(handler.path)
        query = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
        raw = read_body(handler)
        try:
            body = json.loads(raw) if raw else None
            parsed = True
        except ValueError:
            body, parsed = None, False
        endpoint, workspace = self._route(method, split.path)
        headers: dict[str, str] = {}
        delay = 0.0
        with self._changed:
            script = next_scripted(self._scripts.get(endpoint, []))
            if script is not None:
                status, delay = script.status, script.delay
                answer: Any = {"error": f"scripted {status}"}
                if script.retry_after is not None:
                    headers["Retry-After"] = script.retry_after
            elif endpoint == "unknown":
                status, answer = 404, {"error": "no such endpoint"}
            elif query.get("api_key") != self.api_key:
                status, answer = 401, {"error": {"message": "This API key does not exist"}}
            elif workspace is not None and workspace != self.workspace:
                status, answer = 404, {"error": "no such workspace"}
            elif not parsed or (method == "POST" and not isinstance(body, dict)):
                status, answer = 400, {"error": "body is not a JSON object"}
            elif endpoint == "workspace":
                status, answer = 200, {"welcome": "Welcome to the Roboflow API.", "workspace": self.workspace}
            elif endpoint == "metadata":
                status, answer = 200, {"status": "ok"}
            else:
                status, answer = 200, {}
            self.requests.append(Recorded(
                method, endpoint, split.path, query, body, raw, status, arrived, handler.client_address[:2]
            ))
            self._changed.notify_all()
        if delay:
            time.sleep(delay)  # the server's answer is slow; the client's timeout decides
        send_json(handler, status, answer, headers)


@pytest.fixture
def roboflow_server() -> Iterator[RoboflowServer]:
    server = RoboflowServer().start()
    yield server
    server.stop()
