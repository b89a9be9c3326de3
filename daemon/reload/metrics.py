"""The reload's metrics, named as Prometheus itself names them for its own config reloads."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge


class ReloadMetrics:
    def __init__(self, registry: CollectorRegistry, loaded_at: float | None = None) -> None:
        self.successful = Gauge(
            "edgewatch_config_last_reload_successful",
            "1 if the last config reload succeeded (or none was asked for yet), 0 if it failed.",
            registry=registry,
        )
        self.success_timestamp = Gauge(
            "edgewatch_config_last_reload_success_timestamp_seconds",
            "Unix time the running config was loaded: at start, then at each successful reload.",
            registry=registry,
        )
        self.reloads = Counter(
            "edgewatch_config_reloads",
            "Config reloads by result: success (applied), failure (nothing changed).",
            ["result"],
            registry=registry,
        )
        for result in ("success", "failure"):
            self.reloads.labels(result)
        self.successful.set(1)
        self.success_timestamp.set(time.time() if loaded_at is None else loaded_at)

    def succeeded(self, at: float) -> None:
        self.successful.set(1)
        self.success_timestamp.set(at)
        self.reloads.labels("success").inc()

    def failed(self) -> None:
        self.successful.set(0)
        self.reloads.labels("failure").inc()
