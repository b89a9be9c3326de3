"""Frame accounting per camera, across the pipeline: captured, dropped (and why), inferred, latency."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
DROP_REASONS = ("stale", "dispatch_full", "read_error")


class FrameMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.frames_captured = Counter(
            "edgewatch_frames_captured",
            "Frames read from the camera and offered to inference.",
            ["camera"],
            registry=registry,
        )
        self.frames_dropped = Counter(
            "edgewatch_frames_dropped",
            "Frames not inferred: stale (a newer frame replaced it before inference took it), "
            "dispatch_full (results queue full), read_error (undecodable frame).",
            ["camera", "reason"],
            registry=registry,
        )
        self.frames_inferred = Counter(
            "edgewatch_frames_inferred", "Frames that went through the model.", ["camera"], registry=registry
        )
        self.frame_latency = Histogram(
            "edgewatch_frame_latency_seconds",
            "Time from frame capture until every sink has handled its result.",
            ["camera"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def init_camera(self, camera: str) -> None:
        self.frames_captured.labels(camera)
        for reason in DROP_REASONS:
            self.frames_dropped.labels(camera, reason)
        self.frames_inferred.labels(camera)
        self.frame_latency.labels(camera)
