"""The event value: what a tracked object did, as MQTT, Prometheus, the page and Vision Events receive it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from daemon.timefmt import iso_utc

# per tracked object: start (seen long enough to be real), update (zones changed, better snapshot), end (lost)
# per zone or line: enter, exit (with dwell), loiter (inside longer than loiter_after), cross (with direction)
EventType = Literal["start", "update", "end", "enter", "exit", "loiter", "cross"]
Direction = Literal["in", "out"]


@dataclass(frozen=True, slots=True)
class Event:
    id: str  # uuid4, made once when the event is raised; the same across every retry of every destination
    type: EventType
    camera: str
    class_name: str
    tracker_id: int
    timestamp: float  # Unix time of the frame that raised the event
    first_seen: float  # Unix time the object was first seen
    last_seen: float
    confidence: float  # best confidence so far
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the frame, at the best sighting
    image_size: tuple[int, int]  # width, height of the frame
    zones: tuple[str, ...] = ()  # zones the object is in now
    zone: str | None = None  # enter, exit, loiter
    line: str | None = None  # cross
    direction: Direction | None = None  # cross
    dwell_seconds: float | None = None  # exit, loiter
    snapshot_id: str | None = None  # the object's best snapshot in the snapshot store, once written

    def payload(self) -> dict[str, Any]:
        """The JSON sent on MQTT `edgewatch/D/C/events` and shown by the page."""
        body: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "camera": self.camera,
            "class": self.class_name,
            "tracker_id": self.tracker_id,
            "timestamp": iso_utc(self.timestamp),
            "first_seen": iso_utc(self.first_seen),
            "last_seen": iso_utc(self.last_seen),
            "confidence": round(self.confidence, 4),
            "box": dict(zip(("x1", "y1", "x2", "y2"), (round(value, 1) for value in self.box), strict=True)),
            "image": {"width": self.image_size[0], "height": self.image_size[1]},
            "zones": list(self.zones),
        }
        optional = {
            "zone": self.zone,
            "line": self.line,
            "direction": self.direction,
            "dwell_seconds": None if self.dwell_seconds is None else round(self.dwell_seconds, 1),
            "snapshot_id": self.snapshot_id,
        }
        body.update((key, value) for key, value in optional.items() if value is not None)
        return body


class EventListener(Protocol):
    """Told of every event, on the thread that raised it (the events thread): must not block."""

    def on_event(self, event: Event) -> None: ...
