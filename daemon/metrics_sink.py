"""A sink that turns each frame's detections into the per-class Prometheus series."""

from __future__ import annotations

import numpy as np

from daemon.frames import FrameResult
from daemon.metrics import Metrics


class DetectionMetrics:
    name = "metrics"

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def handle(self, result: FrameResult) -> None:
        detections = result.detections
        if len(detections) == 0:
            return
        camera = result.camera_id
        names, counts = np.unique(detections.data["class_name"], return_counts=True)
        for name, count in zip(names, counts, strict=True):
            self._metrics.detections.labels(camera, str(name)).inc(int(count))
        histogram = self._metrics.detection_confidence.labels(camera)
        for confidence in detections.confidence.tolist():
            histogram.observe(confidence)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
