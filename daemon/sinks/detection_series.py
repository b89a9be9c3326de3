"""A sink that turns each frame's detections into the per-class Prometheus series."""

from __future__ import annotations

from daemon.frames import FrameResult, class_counts
from daemon.metrics.detections import DetectionMetrics
from daemon.sink import Sink


class DetectionSeries(Sink):
    name = "metrics"

    def __init__(self, metrics: DetectionMetrics) -> None:
        self._metrics = metrics

    def handle(self, result: FrameResult) -> None:
        detections = result.detections
        if len(detections) == 0:
            return
        camera = result.camera_id
        for name, count in class_counts(detections).items():
            self._metrics.detections.labels(camera, name).inc(count)
        histogram = self._metrics.detection_confidence.labels(camera)
        for confidence in detections.confidence.tolist():
            histogram.observe(confidence)
