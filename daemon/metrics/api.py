"""The HTTP inference API: requests by endpoint and response status."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.api_requests = Counter(
            "edgewatch_api_requests",
            "HTTP API requests by endpoint (infer, model, info, monitoring, other) and response status.",
            ["endpoint", "status"],
            registry=registry,
        )
        self.api_requests_waiting = Gauge(
            "edgewatch_api_requests_waiting",
            "HTTP inference requests admitted and waiting for their results.",
            registry=registry,
        )
