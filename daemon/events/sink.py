"""The events sink: tracking, zones, lines, the event lifecycle, snapshots and the live view's frames.

It runs alone on the `events` thread, before the dispatcher thread calls the other sinks: it tracks each
result's detections in place (`result.detections` becomes the same detections with `tracker_id` set,
possibly reordered), so that every later sink (MQTT detections payloads included) sees the track ids. It is
the last to use the frame itself: it lets go of `result.image`, so the results waiting for the other sinks
hold no frames.

Events go to the listeners (`on_event`, on the events thread, never blocking): MQTT, Prometheus, the
page's history, the log, Vision Events. Zone occupancy and line totals go to `on_counts` listeners when they
change. A camera that goes offline has its open tracks ended (and its tracker reset) before its next frame,
or once it has been down for `events.lost_after`; its frames captured before it went offline count as usual.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry

from daemon.config import CameraConfig, Config
from daemon.events.event import Event, EventListener
from daemon.events.lifecycle import CameraEvents, FrameOutcome, LineTotals, Occupancy
from daemon.events.live import LiveView
from daemon.events.metrics import EventMetrics
from daemon.events.snapshots import SnapshotStore
from daemon.events.tracking import CameraTracker
from daemon.events.zones import Geometry
from daemon.frames import FrameResult
from daemon.sink import Sink

log = logging.getLogger("edgewatch.events")


class CountsListener(Protocol):
    """Told a camera's zone occupancy and line totals when they change (events thread; must not block)."""

    def on_counts(self, camera_id: str, occupancy: Occupancy, lines: LineTotals) -> None: ...


class EventLog:
    """One log line per event."""

    def on_event(self, event: Event) -> None:
        detail = "".join(
            f" {key}={value}"
            for key, value in (
                ("zone", event.zone),
                ("line", event.line),
                ("direction", event.direction),
                ("dwell", None if event.dwell_seconds is None else f"{event.dwell_seconds:.1f}s"),
            )
            if value is not None
        )
        log.info(
            "event %s camera=%s %s #%d%s zones=%s",
            event.type,
            event.camera,
            event.class_name,
            event.tracker_id,
            detail,
            ",".join(event.zones) or "-",
        )


class _Camera:
    def __init__(self, camera: CameraConfig, config: Config) -> None:
        settings = config.events
        self.tracker = CameraTracker(config.model.confidence, settings.lost_after)
        self.events = CameraEvents(camera.id, Geometry(camera), settings.lost_after, settings.max_tracks)


class EventsSink(Sink):
    name = "events"

    def __init__(
        self,
        config: Config,
        metrics: EventMetrics,
        snapshots: SnapshotStore | None,
        listeners: Iterable[EventListener] = (),
        counts_listeners: Iterable[CountsListener] = (),
    ) -> None:
        self._metrics = metrics
        self._snapshots = snapshots
        self._listeners: list[EventListener] = [metrics, EventLog(), *listeners]
        self._counts_listeners = list(counts_listeners)
        self._cameras = {camera.id: _Camera(camera, config) for camera in config.cameras if camera.tracked}
        self.live = LiveView(config.cameras)
        # cameras that went offline, and when: their tracks end at their first frame captured after that, or
        # once any camera's frame is `lost_after` later (the camera stays down)
        self._offline: dict[str, float] = {}
        self._lost_after = config.events.lost_after
        self._failing: set[str] = set()
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[Occupancy, LineTotals]] = {
            camera_id: (state.events.occupancy(), {k: dict(v) for k, v in state.events.line_totals.items()})
            for camera_id, state in self._cameras.items()
        }

    def add_listener(self, listener: EventListener) -> None:
        """Before `start()`: one more destination of every event (e.g. Vision Events)."""
        self._listeners.append(listener)

    def start(self) -> None:
        """Start the snapshot writer; tell the counts listeners every zone and line (at 0)."""
        if self._snapshots is not None:
            self._snapshots.start()
        for camera_id, (occupancy, lines) in self._counts.items():
            for listener in self._counts_listeners:
                listener.on_counts(camera_id, occupancy, lines)

    def handle(self, result: FrameResult) -> None:
        try:
            self._track(result)
        finally:  # even when tracking failed: the live view gets the frame, the other sinks do not
            self.live.offer(result)
            result.image = None

    def _track(self, result: FrameResult) -> None:
        camera = self._cameras.get(result.camera_id)
        if self._offline:
            self._end_offline(result)
        if camera is None:
            return
        result.detections = camera.tracker.update(result.detections, result.captured_mono)
        tracked = result.detections
        confirmed = tracked if (tracked.tracker_id >= 0).all() else tracked[tracked.tracker_id >= 0]
        outcome = camera.events.observe(result.captured_at, (result.width, result.height), confirmed)
        if self._snapshots is not None and result.image is not None:
            for request in outcome.snapshots:
                self._snapshots.submit(result.image, request)
        self._publish(camera, outcome)

    def flush(self) -> None:
        """The daemon stops: every open track ends."""
        now = time.time()
        for camera in self._cameras.values():
            self._publish(camera, camera.events.end_all(now))

    def close(self, timeout: float = 5.0) -> None:
        if self._snapshots is not None:
            self._snapshots.close(timeout)

    def threads(self) -> list[threading.Thread]:
        return self._snapshots.threads() if self._snapshots is not None else []

    def on_camera_status(self, camera_id: str, online: bool) -> None:
        """A CameraStatusListener (the camera's thread): a camera that goes offline ends its tracks."""
        if not online:
            self.camera_offline(camera_id)

    def camera_offline(self, camera_id: str) -> None:
        """A camera lost its stream (any thread): its tracks end, and tracking restarts, at its next frame."""
        if camera_id in self._cameras:
            with self._lock:
                self._offline.setdefault(camera_id, time.time())

    # live reconfiguration (the reload thread)

    def set_camera(self, camera: CameraConfig, config: Config) -> None:
        """A camera added or changed by a config reload: its open tracks end, and tracking, zones and lines
        start again from the new config (occupancy and line totals from 0)."""
        was_tracked = camera.id in self._cameras
        self.remove_camera(camera.id)
        self.live.set_camera(camera)
        self._metrics.init_camera(camera)
        if not camera.tracked:
            if was_tracked:  # no zones or lines any more: their retained state and entities go
                for listener in self._counts_listeners:
                    listener.on_counts(camera.id, {}, {})
            return
        state = _Camera(camera, config)
        counts = (state.events.occupancy(), {k: dict(v) for k, v in state.events.line_totals.items()})
        with self._lock:
            self._counts[camera.id] = counts
        self._cameras[camera.id] = state
        for listener in self._counts_listeners:
            listener.on_counts(camera.id, *counts)

    def remove_camera(self, camera_id: str) -> None:
        """A camera removed (or about to be replaced) by a config reload: its open tracks end."""
        state = self._cameras.pop(camera_id, None)
        if state is not None:
            self._publish(state, state.events.end_all(time.time()))
        with self._lock:
            self._counts.pop(camera_id, None)
            self._offline.pop(camera_id, None)
        self.live.remove_camera(camera_id)

    def counts(self, camera_id: str) -> tuple[Occupancy, LineTotals] | None:
        """A tracked camera's zone occupancy and line totals (any thread)."""
        with self._lock:
            return self._counts.get(camera_id)

    def read_snapshot(self, snapshot_id: str, cropped: bool = False) -> bytes | None:
        """The JPEG bytes of a snapshot (the annotated frame, or the object's crop); None if there is none."""
        return self._snapshots.read(snapshot_id, cropped) if self._snapshots is not None else None

    def _end_offline(self, result: FrameResult) -> None:
        with self._lock:
            ended = [
                camera_id
                for camera_id, since in self._offline.items()
                if result.captured_at > since + (0 if camera_id == result.camera_id else self._lost_after)
            ]
            for camera_id in ended:
                del self._offline[camera_id]
        for camera_id in ended:
            camera = self._cameras[camera_id]
            if camera.events.tracks:
                log.info(
                    "camera %s went offline: ending its %d open track(s)",
                    camera_id,
                    len(camera.events.tracks),
                )
            camera.tracker.reset()
            self._publish(camera, camera.events.end_all(result.captured_at))

    def _publish(self, camera: _Camera, outcome: FrameOutcome) -> None:
        camera_id = camera.events.camera_id
        for event in outcome.events:
            for listener in self._listeners:
                self._tell(listener, event)
        self._metrics.active_tracks.labels(camera_id).set(len(camera.events.tracks))
        if outcome.untracked:
            self._metrics.untracked.labels(camera_id).inc(outcome.untracked)
        if not (outcome.occupancy_changed or outcome.lines_changed):
            return
        occupancy = camera.events.occupancy()
        lines = {name: dict(totals) for name, totals in camera.events.line_totals.items()}
        with self._lock:
            self._counts[camera_id] = (occupancy, lines)
        if outcome.occupancy_changed:
            self._metrics.set_occupancy(camera_id, occupancy)
        for listener in self._counts_listeners:
            try:
                listener.on_counts(camera_id, occupancy, lines)
            except Exception:
                log.exception("counts listener %s failed", type(listener).__name__)

    def _tell(self, listener: EventListener, event: Event) -> None:
        try:
            listener.on_event(event)
        except Exception:
            name = type(listener).__name__
            if name not in self._failing:
                self._failing.add(name)
                log.exception("event listener %s failed on a %s event", name, event.type)


def build_events_sink(
    config: Config,
    registry: CollectorRegistry,
    state_dir: Path,
    listeners: Iterable[EventListener | None] = (),
    counts_listeners: Iterable[CountsListener | None] = (),
) -> EventsSink:
    """The events sink of a config (listeners that are None are left out); snapshots live beside the spool."""
    metrics = EventMetrics(registry, config.cameras)
    settings = config.events
    tracked = any(camera.tracked for camera in config.cameras)
    snapshots = (
        SnapshotStore(
            settings.snapshot_dir or state_dir / "snapshots",
            settings.max_snapshot_mb,
            settings.max_snapshot_age,
            metrics,
        )
        if settings.snapshots and tracked
        else None
    )
    return EventsSink(
        config,
        metrics,
        snapshots,
        [listener for listener in listeners if listener is not None],
        [listener for listener in counts_listeners if listener is not None],
    )
