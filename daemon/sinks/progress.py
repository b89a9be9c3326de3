"""Console progress: a line per camera every few seconds (frames in, inferred, dropped, classes seen)."""

from __future__ import annotations

import logging
import threading
from collections import Counter as Tally

from daemon.frames import FrameResult, class_counts
from daemon.metrics import DROP_REASONS, Metrics

log = logging.getLogger("edgewatch.progress")


class ProgressReporter:
    """A sink (counts per class since the last line) plus the thread that prints the lines."""

    name = "progress"

    def __init__(self, camera_ids: list[str], metrics: Metrics, interval: float = 5.0) -> None:
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._cameras = list(camera_ids)
        self._metrics = metrics
        self._interval = interval
        self._lock = threading.Lock()
        self._classes: dict[str, Tally[str]] = {camera: Tally() for camera in camera_ids}
        self._latency_sum: dict[str, float] = dict.fromkeys(camera_ids, 0.0)
        self._latency_n: dict[str, int] = dict.fromkeys(camera_ids, 0)
        self._previous: dict[str, tuple[float, float, float]] = {}
        self._halt = threading.Event()

    def handle(self, result: FrameResult) -> None:
        counts = class_counts(result.detections)
        with self._lock:
            self._classes.setdefault(result.camera_id, Tally()).update(counts)
            self._latency_sum[result.camera_id] = self._latency_sum.get(result.camera_id, 0.0) + (
                result.done_mono - result.captured_mono
            )
            self._latency_n[result.camera_id] = self._latency_n.get(result.camera_id, 0) + 1

    def start(self) -> None:
        self._thread.start()

    def set_cameras(self, camera_ids: list[str]) -> None:
        """The cameras reported from the next line on (a config reload)."""
        with self._lock:
            self._cameras = list(camera_ids)
            for camera in set(self._previous) - set(camera_ids):
                del self._previous[camera]

    def _loop(self) -> None:
        while not self._halt.wait(self._interval):
            self.report()

    def report(self) -> None:
        with self._lock:
            classes, self._classes = self._classes, {camera: Tally() for camera in self._cameras}
            latency_sum, self._latency_sum = self._latency_sum, dict.fromkeys(self._cameras, 0.0)
            latency_n, self._latency_n = self._latency_n, dict.fromkeys(self._cameras, 0)
        for camera in self._cameras:
            totals = (
                self._value("edgewatch_frames_captured_total", camera),
                self._value("edgewatch_frames_inferred_total", camera),
                sum(self._value("edgewatch_frames_dropped_total", camera, reason) for reason in DROP_REASONS),
            )
            before = self._previous.get(camera, (0.0, 0.0, 0.0))
            self._previous[camera] = totals
            captured, inferred, dropped = (now - then for now, then in zip(totals, before, strict=True))
            seen = (
                ", ".join(f"{name} x{count}" for name, count in classes.get(camera, Tally()).most_common())
                or "nothing"
            )
            latency = (
                latency_sum.get(camera, 0.0) / latency_n[camera] * 1000 if latency_n.get(camera) else 0.0
            )
            up = "up" if self._value("edgewatch_camera_up", camera) else "DOWN"
            log.info(
                "%s (%s): %d frames in, %d inferred (%.1f/s), %d dropped, latency %.0f ms; detected: %s",
                camera,
                up,
                captured,
                inferred,
                inferred / self._interval,
                dropped,
                latency,
                seen,
            )

    def _value(self, name: str, camera: str, reason: str | None = None) -> float:
        labels = {"camera": camera} if reason is None else {"camera": camera, "reason": reason}
        return self._metrics.registry.get_sample_value(name, labels) or 0.0

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._halt.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
