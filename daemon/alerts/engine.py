"""Edge alerts, evaluated on the device once a second from snapshots of the daemon's state.

Each condition is a pure function of a snapshot and `now` (monotonic seconds) that returns the alerts that
hold, keyed by camera ("" for device-wide ones). `AlertEngine` adds the state machine around them: an alert
fires once when its condition starts to hold, and resolves once after the condition has been clear for
`clear_for` seconds, judged by a weaker condition than the one that fired it (a camera must stay online, not
merely avoid another 30 s outage; confidence must climb above a higher ratio), so a flapping camera or a
noisy class does not flood MQTT. Each change is an `Alert`, told to every `AlertListener` (MQTT, the page's
history), set in `edgewatch_alert_active{type,camera}` and logged.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from daemon.alerts.alert import Alert, AlertListener, AlertState, Severity
from daemon.config import AlertsConfig
from daemon.frames import FrameResult
from daemon.metrics.alerts import AlertMetrics
from daemon.sink import Sink
from daemon.timefmt import iso_utc

log = logging.getLogger("edgewatch.alerts")

CAMERA_DOWN = "camera_down"
CONFIDENCE_DROP = "confidence_drop"
UPLOAD_FAILING = "upload_failing"
MONITORING_UNAUTHORIZED = "monitoring_unauthorized"
INFERENCE_STALLED = "inference_stalled"
DEGRADED = "degraded"
CAMERA_TYPES = (CAMERA_DOWN, CONFIDENCE_DROP)
DEVICE_TYPES = (UPLOAD_FAILING, MONITORING_UNAUTHORIZED, INFERENCE_STALLED, DEGRADED)
SEVERITY: dict[str, Severity] = {
    CAMERA_DOWN: "critical",
    INFERENCE_STALLED: "critical",
    MONITORING_UNAUTHORIZED: "critical",
    UPLOAD_FAILING: "warning",
    CONFIDENCE_DROP: "warning",
    DEGRADED: "warning",
}
RESOLVED = {
    CAMERA_DOWN: "camera {camera} is delivering frames again",
    CONFIDENCE_DROP: "confidence on camera {camera} is back near its baseline",
    UPLOAD_FAILING: "Roboflow uploads succeed again",
    MONITORING_UNAUTHORIZED: "Roboflow accepts the API key again",
    INFERENCE_STALLED: "inference is making progress again",
    DEGRADED: "every part of the device works normally again",
}

CameraSnapshot = Mapping[str, tuple[bool, float]]  # camera id -> (online, monotonic time of the last change)


class ConfidenceStats(NamedTuple):
    window_mean: float
    window_samples: int
    baseline_mean: float
    baseline_samples: int


# conditions: pure functions


def cameras_down(cameras: CameraSnapshot, now: float, after: float) -> dict[str, str]:
    return {
        camera: f"camera {camera} offline for {now - since:.0f}s"
        for camera, (online, since) in cameras.items()
        if not online and now - since >= after
    }


def inference_stalled(
    cameras: CameraSnapshot, last_progress: float | None, now: float, after: float
) -> dict[str, str]:
    """No inference progress for `after` s while a camera is online (counted from when one came online)."""
    online_since = [since for online, since in cameras.values() if online]
    if not online_since:
        return {}
    idle = now - max(min(online_since), -math.inf if last_progress is None else last_progress)
    if idle < after:
        return {}
    return {"": f"no inference progress for {idle:.0f}s while {len(online_since)} camera(s) are online"}


def upload_failing(failing_since: float | None, now: float, after: float) -> dict[str, str]:
    if failing_since is None or now - failing_since < after:
        return {}
    return {"": f"Roboflow uploads failing for {now - failing_since:.0f}s; what is unsent waits in the spool"}


def monitoring_unauthorized(unauthorized: bool) -> dict[str, str]:
    if not unauthorized:
        return {}
    return {"": "Roboflow refuses the API key (401/403): uploads stopped, what is unsent kept in the spool"}


def parts_degraded(degraded: Mapping[str, str]) -> dict[str, str]:
    if not degraded:
        return {}
    return {"": "degraded: " + "; ".join(f"{part}: {why}" for part, why in sorted(degraded.items()))}


def confidence_drops(
    stats: Mapping[tuple[str, str], ConfidenceStats], ratio: float, min_window: int, min_baseline: int
) -> dict[str, str]:
    """Cameras with a class whose recent mean confidence is below `ratio` x its baseline mean."""
    dropped: dict[str, list[str]] = {}
    for (camera, class_name), s in sorted(stats.items()):
        if s.window_samples < min_window or s.baseline_samples < min_baseline or s.baseline_mean <= 0:
            continue
        if s.window_mean < ratio * s.baseline_mean:
            dropped.setdefault(camera, []).append(
                f"{class_name} {s.window_mean:.2f} vs baseline {s.baseline_mean:.2f}"
            )
    return {
        camera: f"confidence dropped on camera {camera}: " + ", ".join(parts)
        for camera, parts in dropped.items()
    }


# the confidence provider


class ConfidenceTracker(Sink):
    """A Sink keeping, per (camera, class), confidence sums and counts in time buckets covering the last
    `window + baseline` seconds: bounded deques, a few additions per detection.

    Buckets are `window / 10` seconds wide (at least 1 s), so the window is judged with a tenth of its length
    as resolution and an hour of baseline costs about a hundred buckets per series.
    """

    name = "confidence"

    def __init__(self, window: float, baseline: float) -> None:
        self._lock = threading.Lock()
        self.set_windows(window, baseline)

    def set_windows(self, window: float, baseline: float) -> None:
        """(Re)size the window and baseline; the history so far is dropped (its buckets no longer fit)."""
        with self._lock:
            self._width = max(1.0, window / 10)
            self._window_buckets = math.ceil(window / self._width)
            self._baseline_buckets = math.ceil(baseline / self._width)
            self._maxlen = self._window_buckets + self._baseline_buckets + 1
            self._series: dict[tuple[str, str], deque[list[float]]] = {}  # [bucket, sum, count]

    def forget_camera(self, camera_id: str) -> None:
        with self._lock:
            for key in [key for key in self._series if key[0] == camera_id]:
                del self._series[key]

    def handle(self, result: FrameResult) -> None:
        detections = result.detections
        if len(detections) == 0 or detections.confidence is None:
            return
        bucket = result.captured_mono // self._width
        names = detections.data["class_name"]
        with self._lock:
            for name, confidence in zip(names, detections.confidence.tolist(), strict=True):
                key = (result.camera_id, str(name))
                series = self._series.get(key)
                if series is None:
                    series = self._series[key] = deque(maxlen=self._maxlen)
                if series and series[-1][0] == bucket:
                    series[-1][1] += confidence
                    series[-1][2] += 1
                else:
                    series.append([bucket, confidence, 1])

    def snapshot(self, now: float) -> dict[tuple[str, str], ConfidenceStats]:
        """Mean and sample count of the last `window` s and of the `baseline` s before it."""
        current = now // self._width
        window_start = current - self._window_buckets + 1
        baseline_start = window_start - self._baseline_buckets
        stats = {}
        with self._lock:
            for key, series in self._series.items():
                sums = [0.0, 0.0]  # baseline, window
                counts = [0, 0]
                for bucket, total, count in series:
                    if baseline_start <= bucket <= current:
                        part = int(bucket >= window_start)
                        sums[part] += total
                        counts[part] += int(count)
                if counts[0] or counts[1]:
                    stats[key] = ConfidenceStats(
                        sums[1] / counts[1] if counts[1] else 0.0,
                        counts[1],
                        sums[0] / counts[0] if counts[0] else 0.0,
                        counts[0],
                    )
        return stats


# the engine


@dataclass
class _Firing:
    message: str
    since: float  # wall clock, for active()
    clear_since: float | None = None  # monotonic time the condition was first seen clear


class AlertEngine:
    """Evaluates every condition once per `interval` on its own thread (or on `tick()` calls)."""

    def __init__(
        self,
        config: AlertsConfig,
        metrics: AlertMetrics,
        *,
        listeners: Sequence[AlertListener] = (),
        cameras: Callable[[], CameraSnapshot],
        inference_progress: Callable[[], float | None],
        upload_failing_since: Callable[[], float | None] | None = None,
        monitoring_unauthorized: Callable[[], bool] | None = None,
        confidence: ConfidenceTracker | None = None,
        degraded: Callable[[], Mapping[str, str]] | None = None,
        clear_for: float = 30.0,
        min_window_samples: int = 20,
        min_baseline_samples: int = 50,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._listeners = tuple(listeners)
        self._cameras = cameras
        self._inference_progress = inference_progress
        self._upload_failing_since = upload_failing_since
        self._unauthorized = monitoring_unauthorized
        self._confidence = confidence
        self._degraded = degraded
        self._clear_for = clear_for
        self._min_window = min_window_samples
        self._min_baseline = min_baseline_samples
        # confidence_drop resolves only once the ratio is back halfway between the firing ratio and 1
        self._resolve_ratio = config.confidence_drop_ratio + (1 - config.confidence_drop_ratio) / 2
        self._interval = interval
        self._clock = clock
        self._wall_clock = wall_clock
        self._firing: dict[tuple[str, str], _Firing] = {}
        self._lock = threading.Lock()  # guards _firing for active(); tick() runs on one thread at a time
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alerts", daemon=True)
        for camera in cameras():
            for kind in CAMERA_TYPES:
                metrics.alert_active.labels(kind, camera).set(0)
        for kind in DEVICE_TYPES:
            metrics.alert_active.labels(kind, "").set(0)

    def start(self) -> None:
        self._thread.start()

    def set_config(self, config: AlertsConfig) -> None:
        """New thresholds (a config reload), from the next evaluation on."""
        old, self._config = self._config, config
        self._resolve_ratio = config.confidence_drop_ratio + (1 - config.confidence_drop_ratio) / 2
        windows = (config.confidence_window, config.confidence_baseline)
        if self._confidence is not None and windows != (old.confidence_window, old.confidence_baseline):
            self._confidence.set_windows(config.confidence_window, config.confidence_baseline)

    def forget_camera(self, camera_id: str) -> None:
        """A camera removed from the config: its firing alerts resolve now, saying so."""
        with self._lock:
            keys = [key for key in self._firing if key[1] == camera_id]
            for key in keys:
                del self._firing[key]
        for key in keys:
            self._emit(key, "resolved", f"camera {camera_id} was removed from the config")

    def threads(self) -> list[threading.Thread]:
        return [self._thread]

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self._interval):
            try:
                self.tick()
            except Exception:  # a failing provider must not end alerting; logged once per streak
                if not failing:
                    log.exception("alert evaluation failed")
                failing = True
            else:
                failing = False

    def active(self) -> list[dict[str, Any]]:
        """Alerts firing now: type, camera, message, severity, since (ISO 8601)."""
        with self._lock:
            return [
                {
                    "type": kind,
                    "camera": camera,
                    "message": firing.message,
                    "severity": SEVERITY[kind],
                    "since": iso_utc(firing.since),
                }
                for (kind, camera), firing in sorted(self._firing.items())
            ]

    def tick(self, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        config = self._config
        cameras = self._cameras()
        holding: dict[tuple[str, str], str] = {}

        def add(kind: str, start: Mapping[str, str], stay: Mapping[str, str] | None = None) -> None:
            """`start`: what fires an alert; `stay`: the weaker condition that keeps a firing one active."""
            holding.update(((kind, camera), message) for camera, message in start.items())
            for camera, message in (stay or {}).items():
                if (kind, camera) in self._firing:
                    holding.setdefault((kind, camera), message)

        # a camera (or the uploads) must be back for the whole hold: a short recovery does not resolve
        add(
            CAMERA_DOWN,
            cameras_down(cameras, now, config.camera_down_after),
            cameras_down(cameras, now, 0),
        )
        add(
            INFERENCE_STALLED,
            inference_stalled(cameras, self._inference_progress(), now, config.inference_stalled_after),
        )
        if self._upload_failing_since is not None:
            failing_since = self._upload_failing_since()
            add(
                UPLOAD_FAILING,
                upload_failing(failing_since, now, config.upload_failing_after),
                upload_failing(failing_since, now, 0),
            )
        if self._unauthorized is not None:
            add(MONITORING_UNAUTHORIZED, monitoring_unauthorized(self._unauthorized()))
        if self._degraded is not None:
            add(DEGRADED, parts_degraded(self._degraded()))
        if self._confidence is not None:
            stats = self._confidence.snapshot(now)
            add(
                CONFIDENCE_DROP,
                confidence_drops(stats, config.confidence_drop_ratio, self._min_window, self._min_baseline),
                confidence_drops(stats, self._resolve_ratio, self._min_window, self._min_baseline),
            )
        for key, state, message in self._advance(holding, now):
            self._emit(key, state, message)

    def _advance(
        self, holding: Mapping[tuple[str, str], str], now: float
    ) -> list[tuple[tuple[str, str], AlertState, str]]:
        changes = []
        with self._lock:
            for key, message in holding.items():
                firing = self._firing.get(key)
                if firing is None:
                    self._firing[key] = _Firing(message, self._wall_clock())
                    changes.append((key, "firing", message))
                else:
                    firing.clear_since = None
            for key in [key for key in self._firing if key not in holding]:
                firing = self._firing[key]
                if firing.clear_since is None:
                    firing.clear_since = now
                if now - firing.clear_since >= self._clear_for:
                    del self._firing[key]
                    changes.append((key, "resolved", RESOLVED[key[0]].format(camera=key[1])))
        return changes

    def _emit(self, key: tuple[str, str], state: AlertState, message: str) -> None:
        kind, camera = key
        self._metrics.alert_active.labels(kind, camera).set(1 if state == "firing" else 0)
        if state == "firing":
            log.warning("alert %s firing: %s", kind, message)
        else:
            log.info("alert %s resolved: %s", kind, message)
        alert = Alert(kind, camera, message, SEVERITY[kind], state, self._wall_clock())
        for listener in self._listeners:
            try:
                listener.on_alert(alert)
            except Exception:
                log.exception("delivering alert %s to %s failed", kind, type(listener).__name__)
