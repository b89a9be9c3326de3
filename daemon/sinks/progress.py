"""Console progress: a line per camera every few seconds (frames in, inferred, dropped, classes seen)."""

from __future__ import annotations

import logging
import threading
from collections import Counter as Tally
from collections.abc import Callable, Mapping

from daemon.frames import CameraState, FrameResult, class_counts
from daemon.sink import Sink

log = logging.getLogger("edgewatch.progress")


class ProgressReporter(Sink):
    """Counts each camera's results and classes; its own thread prints a line per camera every `interval`.

    Frames in and online come from the cameras' state, drops (all reasons) from the pipeline's own counts."""

    name = "progress"

    def __init__(
        self,
        cameras: Callable[[], Mapping[str, CameraState]],
        dropped: Callable[[], Mapping[str, int]],
        interval: float = 5.0,
    ) -> None:
        self._camera_states = cameras
        self._dropped = dropped
        self._interval = interval
        self._lock = threading.Lock()
        self._inferred: Tally[str] = Tally()  # since the start
        self._classes: dict[str, Tally[str]] = {}
        self._latency: dict[str, list[float]] = {}  # camera -> [sum, n] since the last line
        self._previous: dict[str, tuple[int, int, int]] = {}  # camera -> (in, inferred, dropped) so far
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)

    def handle(self, result: FrameResult) -> None:
        counts = class_counts(result.detections)
        camera = result.camera_id
        with self._lock:
            self._inferred[camera] += 1
            self._classes.setdefault(camera, Tally()).update(counts)
            latency = self._latency.setdefault(camera, [0.0, 0])
            latency[0] += result.done_mono - result.captured_mono
            latency[1] += 1

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float) -> None:
        self._halt.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def threads(self) -> list[threading.Thread]:
        return [self._thread]

    def _loop(self) -> None:
        while not self._halt.wait(self._interval):
            self.report()

    def report(self) -> None:
        states = self._camera_states()
        dropped_so_far = self._dropped()
        with self._lock:
            inferred_so_far = dict(self._inferred)
            classes, self._classes = self._classes, {}
            latencies, self._latency = self._latency, {}
        for camera, state in states.items():
            inferred = inferred_so_far.get(camera, 0)
            dropped = dropped_so_far.get(camera, 0)
            before = self._previous.get(camera, (0, 0, 0))
            if state.frames < before[0]:  # the camera was restarted by a reload: it counts from 0 again
                before = (0, *before[1:])
            self._previous[camera] = (state.frames, inferred, dropped)
            total, count = latencies.get(camera, (0.0, 0))
            seen = ", ".join(f"{name} x{n}" for name, n in classes.get(camera, Tally()).most_common())
            log.info(
                "%s (%s): %d frames in, %d inferred (%.1f/s), %d dropped, latency %.0f ms; detected: %s",
                camera,
                "up" if state.online else "DOWN",
                state.frames - before[0],
                inferred - before[1],
                (inferred - before[1]) / self._interval,
                dropped - before[2],
                total / count * 1000 if count else 0.0,
                seen or "nothing",
            )
