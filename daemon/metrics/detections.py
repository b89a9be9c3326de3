"""What the model found per camera: objects by class, and their confidence."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


class DetectionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.detections = Counter(
            "edgewatch_detections", "Objects detected, by class.", ["camera", "class"], registry=registry
        )
        self.detection_confidence = Histogram(
            "edgewatch_detection_confidence",
            "Confidence of detected objects.",
            ["camera"],
            buckets=CONFIDENCE_BUCKETS,
            registry=registry,
        )

    def init_camera(self, camera: str) -> None:
        self.detection_confidence.labels(camera)
