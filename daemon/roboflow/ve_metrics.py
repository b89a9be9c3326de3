"""The Prometheus metrics of the Vision Events sink, registered in the daemon's shared registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from daemon.metrics.monitoring import UPLOAD_BUCKETS

EVENT_RESULTS = ("sent", "retried", "failed", "dropped")
IMAGE_RESULTS = ("uploaded", "retried", "failed", "missing")


class VisionEventsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "edgewatch_vision_events",
            "Vision Events by outcome: sent (accepted), retried (will be sent again), failed (refused: bad "
            "key or event), dropped (spool bound reached, oldest removed).",
            ["result"],
            registry=registry,
        )
        self.images = Counter(
            "edgewatch_vision_events_images",
            "Event images by outcome: uploaded, retried (will be uploaded again), failed (refused: the event "
            "goes without it), missing (the snapshot was gone when the event was spooled).",
            ["result"],
            registry=registry,
        )
        self.coalesced = Counter(
            "edgewatch_vision_events_coalesced",
            "edgewatch events and alerts folded into the Vision Event of their burst (its eventData.count).",
            registry=registry,
        )
        self.spool_depth = Gauge(
            "edgewatch_vision_events_spool_depth",
            "Vision Events waiting in their on-disk spool.",
            registry=registry,
        )
        self.spool_oldest_age = Gauge(
            "edgewatch_vision_events_spool_oldest_age_seconds",
            "Age of the oldest Vision Event in the spool (0 when empty).",
            registry=registry,
        )
        self.upload_duration = Histogram(
            "edgewatch_vision_events_upload_duration_seconds",
            "Duration of each Vision Events HTTP request (image upload or event batch).",
            buckets=UPLOAD_BUCKETS,
            registry=registry,
        )
        self.last_success = Gauge(
            "edgewatch_vision_events_last_success_timestamp_seconds",
            "Unix time Roboflow last accepted a Vision Events request (0: none yet).",
            registry=registry,
        )
        self.unauthorized = Gauge(
            "edgewatch_vision_events_unauthorized",
            "1 while Roboflow refuses the Vision Events API key (401/403).",
            registry=registry,
        )
        for result in EVENT_RESULTS:
            self.events.labels(result)
        for result in IMAGE_RESULTS:
            self.images.labels(result)

    def spool_dropped(self, count: int) -> None:
        self.events.labels("dropped").inc(count)
