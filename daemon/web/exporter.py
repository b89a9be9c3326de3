"""The Prometheus endpoint: `/metrics` (text exposition) and `/healthz` (200 healthy, 503 not).

No authentication by design (Prometheus scrapes it), so it is bounded instead: a few handler threads, a
handler timeout, and a cap on idle connections (daemon/web/server.py).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from daemon.web.server import BoundedHTTPServer, PrefixedHandler, ServerMetrics

log = logging.getLogger("edgewatch.exporter")

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]
HANDLERS = 4  # scrapes and health checks are quick; more clients than this queue
HANDLER_TIMEOUT = 10.0


class Exporter:
    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        health: HealthCheck,
        server_metrics: ServerMetrics | None = None,
    ) -> None:
        registry_ = registry
        health_ = health

        class Handler(PrefixedHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry_))
                elif path == "/healthz":
                    healthy, detail = health_()
                    body = json.dumps({"healthy": healthy, **detail}).encode()
                    self._send(200 if healthy else 503, "application/json", body)
                else:
                    self._send(404, "text/plain", b"not found: try /metrics or /healthz\n")

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("%s %s", self.address_string(), format % args)

        self._server = BoundedHTTPServer(
            (host, port),
            Handler,
            name="exporter",
            handlers=HANDLERS,
            handler_timeout=HANDLER_TIMEOUT,
            metrics=server_metrics or ServerMetrics(registry),
        )

    @property
    def port(self) -> int:
        return self._server.port

    def start(self) -> None:
        self._server.start()

    def threads(self) -> list[threading.Thread]:
        return self._server.threads()

    def close(self, timeout: float = 5.0) -> None:
        self._server.close(timeout)
