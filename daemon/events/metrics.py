"""The events' Prometheus metrics. Labels come from the config (camera, zone and line names) and the model
(class names) only; event types and directions are fixed sets."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from daemon.config import CameraConfig
from daemon.events.event import Event
from daemon.events.lifecycle import Occupancy

DWELL_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
EVENT_TYPES = ("start", "update", "end", "enter", "exit", "loiter", "cross")
SNAPSHOT_DROP_REASONS = ("queue_full", "write_failed")
SNAPSHOT_EVICT_REASONS = ("size", "age")


class EventMetrics:
    """Also an EventListener: counts every event, line crossings and dwell times."""

    def __init__(self, registry: CollectorRegistry, cameras: list[CameraConfig]) -> None:
        r = registry
        self.events = Counter("edgewatch_events", "Events raised, by type.", ["camera", "type"], registry=r)
        self.line_crossings = Counter(
            "edgewatch_line_crossings",
            "Tracked objects that crossed a line, by direction (in/out) and class.",
            ["camera", "line", "direction", "class"],
            registry=r,
        )
        self.zone_occupancy = Gauge(
            "edgewatch_zone_occupancy",
            "Tracked objects inside a zone now.",
            ["camera", "zone", "class"],
            registry=r,
        )
        self.zone_dwell = Histogram(
            "edgewatch_zone_dwell_seconds",
            "Time tracked objects stayed in a zone (observed when they leave it).",
            ["camera", "zone"],
            buckets=DWELL_BUCKETS,
            registry=r,
        )
        self.active_tracks = Gauge(
            "edgewatch_active_tracks", "Objects tracked on the camera now.", ["camera"], registry=r
        )
        self.untracked = Counter(
            "edgewatch_untracked_objects",
            "Sightings (one per frame) of objects left untracked: the camera had events.max_tracks open.",
            ["camera"],
            registry=r,
        )
        self.snapshots_written = Counter(
            "edgewatch_snapshots_written", "Snapshots (annotated frame and crop) written.", registry=r
        )
        self.snapshots_dropped = Counter(
            "edgewatch_snapshots_dropped",
            "Snapshots not written: queue_full (the writer was behind), write_failed (disk error).",
            ["reason"],
            registry=r,
        )
        self.snapshots_evicted = Counter(
            "edgewatch_snapshots_evicted",
            "Snapshots removed from the store: size (events.max_snapshot_mb), age (events.max_snapshot_age).",
            ["reason"],
            registry=r,
        )
        self.snapshot_bytes = Gauge(
            "edgewatch_snapshot_store_bytes", "Bytes of snapshots on disk.", registry=r
        )
        self._seen_classes: dict[tuple[str, str], set[str]] = {}  # (camera, zone) -> classes with a series
        for reason in SNAPSHOT_DROP_REASONS:
            self.snapshots_dropped.labels(reason)
        for reason in SNAPSHOT_EVICT_REASONS:
            self.snapshots_evicted.labels(reason)
        for camera in cameras:
            self.init_camera(camera)

    def init_camera(self, camera: CameraConfig) -> None:
        """A tracked camera's series at 0 (at start, or when a config reload adds or changes it)."""
        if not camera.tracked:
            return
        self.active_tracks.labels(camera.id)
        self.untracked.labels(camera.id)
        for kind in EVENT_TYPES:
            self.events.labels(camera.id, kind)
        for zone in camera.zones:
            self.zone_dwell.labels(camera.id, zone.name)
            self._seen_classes.setdefault((camera.id, zone.name), set())

    def on_event(self, event: Event) -> None:
        self.events.labels(event.camera, event.type).inc()
        if event.type == "cross" and event.line and event.direction:
            self.line_crossings.labels(event.camera, event.line, event.direction, event.class_name).inc()
        elif event.type == "exit" and event.zone and event.dwell_seconds is not None:
            self.zone_dwell.labels(event.camera, event.zone).observe(event.dwell_seconds)

    def set_occupancy(self, camera_id: str, occupancy: Occupancy) -> None:
        """Every class once seen in a zone keeps its series, at 0 while none is inside."""
        for zone, counts in occupancy.items():
            seen = self._seen_classes.setdefault((camera_id, zone), set())
            seen.update(counts)
            for name in seen:
                self.zone_occupancy.labels(camera_id, zone, name).set(counts.get(name, 0))
