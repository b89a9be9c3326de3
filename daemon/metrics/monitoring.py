"""Roboflow Model Monitoring delivery: requests by outcome, the spool, upload time, the key's state."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

UPLOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REPORT_RESULTS = ("sent", "retried", "failed", "dropped")


class MonitoringMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.reports = Counter(
            "edgewatch_monitoring_reports",
            "Model Monitoring requests by outcome: sent (accepted), retried (will be sent again), "
            "failed (refused: bad key or request), dropped (spool bound reached, oldest removed).",
            ["result"],
            registry=registry,
        )
        for result in REPORT_RESULTS:
            self.reports.labels(result)
        self.spool_depth = Gauge(
            "edgewatch_spool_depth", "Monitoring requests waiting in the on-disk spool.", registry=registry
        )
        self.spool_oldest_age = Gauge(
            "edgewatch_spool_oldest_age_seconds",
            "Age of the oldest request in the spool (0 when empty).",
            registry=registry,
        )
        self.upload_duration = Histogram(
            "edgewatch_monitoring_upload_duration_seconds",
            "Duration of each Model Monitoring HTTP request.",
            buckets=UPLOAD_BUCKETS,
            registry=registry,
        )
        self.last_upload = Gauge(
            "edgewatch_monitoring_last_success_timestamp_seconds",
            "Unix time of the last request Roboflow accepted (0: none yet).",
            registry=registry,
        )
        self.monitoring_unauthorized = Gauge(
            "edgewatch_monitoring_unauthorized",
            "1 while Roboflow refuses the API key (401/403).",
            registry=registry,
        )

    def spool_dropped(self, count: int) -> None:
        self.reports.labels("dropped").inc(count)
