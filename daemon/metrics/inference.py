"""The inference worker and the dispatchers behind it: batch time and size, results waiting for sinks."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Histogram

INFERENCE_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)


class InferenceMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.inference_duration = Histogram(
            "edgewatch_inference_duration_seconds",
            "session.run time per batch.",
            buckets=INFERENCE_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "edgewatch_batch_size", "Frames per inference batch.", buckets=BATCH_BUCKETS, registry=registry
        )
        self.dispatcher_queue_depth = Gauge(
            "edgewatch_dispatcher_queue_depth", "Results waiting for the sinks.", registry=registry
        )
        self.events_queue_depth = Gauge(
            "edgewatch_events_queue_depth",
            "Results waiting for tracking, zones, lines and the live view (then for the sinks).",
            registry=registry,
        )
