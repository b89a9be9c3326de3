"""Edge alerts: which condition holds now, per type and camera."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge


class AlertMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.alert_active = Gauge(
            "edgewatch_alert_active",
            "1 while an alert condition holds.",
            ["type", "camera"],
            registry=registry,
        )
