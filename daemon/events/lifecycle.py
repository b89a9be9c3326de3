"""The per-object state machine of one camera: tracked detections in, events out.

Per tracked object: `start` when the tracker confirms it (seen in consecutive frames), `update` when the set
of zones it is in changes or a clearly better snapshot of it is taken, `end` once it has been unseen for
`lost_after` seconds. Per zone: `enter`, `exit` (with the dwell time) and `loiter` (once per visit, after the
zone's `loiter_after`); per line: `cross` with its direction. An object that ends inside zones exits them.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import supervision as sv

from daemon.events.event import Direction, Event, EventType
from daemon.events.zones import Geometry

SNAPSHOT_GAIN = 0.05  # a new best snapshot needs this much more confidence than the last one...
SNAPSHOT_INTERVAL = 2.0  # ...and this many seconds since it


@dataclass(slots=True)
class Track:
    tracker_id: int
    class_name: str
    first_seen: float
    last_seen: float
    confidence: float  # best so far
    box: tuple[float, float, float, float]  # at the best sighting
    snapshot_id: str
    snapshot_confidence: float = 0.0
    snapshot_at: float = float("-inf")
    zones: dict[str, float] = field(default_factory=dict)  # zone -> when the object entered it
    loitered: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """Take this object's snapshot from the current frame."""

    snapshot_id: str
    box: tuple[float, float, float, float]
    label: str


@dataclass(slots=True)
class FrameOutcome:
    events: list[Event] = field(default_factory=list)
    snapshots: list[SnapshotRequest] = field(default_factory=list)
    untracked: int = 0  # sightings of objects not tracked because the camera is at its track cap
    occupancy_changed: bool = False
    lines_changed: bool = False


Occupancy = dict[str, dict[str, int]]  # zone -> class -> objects inside now
LineTotals = dict[str, dict[str, int]]  # line -> {"in": n, "out": n} since the daemon started


class CameraEvents:
    """One camera's open tracks, zone occupancy and line totals. Used from the events thread only."""

    def __init__(self, camera_id: str, geometry: Geometry, lost_after: float, max_tracks: int) -> None:
        self.camera_id = camera_id
        self.geometry = geometry
        self._lost_after = lost_after
        self._max_tracks = max_tracks
        self._loiter_after = {zone.name: zone.loiter_after for zone in geometry.camera.zones}
        self.tracks: dict[int, Track] = {}
        self.size: tuple[int, int] = (0, 0)
        self.line_totals: LineTotals = {line.name: {"in": 0, "out": 0} for line in geometry.camera.lines}

    def occupancy(self) -> Occupancy:
        counts: dict[str, Counter[str]] = {zone.name: Counter() for zone in self.geometry.camera.zones}
        for track in self.tracks.values():
            for zone in track.zones:
                counts[zone][track.class_name] += 1
        return {zone: dict(sorted(found.items())) for zone, found in counts.items()}

    def observe(self, now: float, size: tuple[int, int], detections: sv.Detections) -> FrameOutcome:
        """One frame (at wall time `now`) of tracked detections: every one has a tracker id >= 0."""
        self.size = size
        outcome = FrameOutcome()
        self.geometry.fit(size)
        inside = self.geometry.zones_of(detections) if self.geometry.zones else []
        crossed = self.geometry.crossings(detections) if self.geometry.lines else []
        confidence = detections.confidence if detections.confidence is not None else np.ones(len(detections))
        names = detections.data["class_name"].tolist()
        boxes = detections.xyxy.tolist()
        scores = confidence.tolist()
        zone_names = [zone.name for zone in self.geometry.zones]
        line_names = [line.name for line in self.geometry.lines]
        inside_rows = np.stack(inside, axis=1).tolist() if inside else [[]] * len(detections)
        crossings = [(into.tolist(), out.tolist()) for into, out in crossed]
        for index, tracker_id in enumerate(detections.tracker_id.tolist()):
            box = tuple(boxes[index])
            score = scores[index]
            track = self.tracks.get(tracker_id)
            if track is None:
                if len(self.tracks) >= self._max_tracks:
                    outcome.untracked += 1
                    continue
                track = self.tracks[tracker_id] = Track(
                    tracker_id,
                    str(names[index]),
                    now,
                    now,
                    score,
                    box,
                    str(uuid.uuid4()),  # type: ignore[arg-type]
                )
                self._snapshot(track, now, outcome)
                outcome.events.append(self._event("start", track, now))
            else:
                track.last_seen = now
                if score > track.confidence:
                    track.confidence, track.box = score, box  # type: ignore[assignment]
                better = score >= track.snapshot_confidence + SNAPSHOT_GAIN
                if better and now - track.snapshot_at >= SNAPSHOT_INTERVAL:
                    self._snapshot(track, now, outcome)
                    outcome.events.append(self._event("update", track, now))
            now_in = {name for name, hit in zip(zone_names, inside_rows[index], strict=True) if hit}
            if now_in or track.zones:
                self._zones(track, now_in, now, outcome)
            for name, (into, out) in zip(line_names, crossings, strict=True):
                if into[index] or out[index]:
                    self._cross(track, name, "in" if into[index] else "out", now, outcome)
        self._end_lost(now, outcome)
        return outcome

    def end_all(self, now: float) -> FrameOutcome:
        """End every open track (the camera reconnected, or the daemon stops)."""
        outcome = FrameOutcome()
        for tracker_id in list(self.tracks):
            self._end(tracker_id, now, outcome)
        return outcome

    def _snapshot(self, track: Track, now: float, outcome: FrameOutcome) -> None:
        track.snapshot_confidence, track.snapshot_at = track.confidence, now
        label = f"#{track.tracker_id} {track.class_name} {track.confidence:.2f}"
        outcome.snapshots.append(SnapshotRequest(track.snapshot_id, track.box, label))

    def _zones(self, track: Track, now_in: set[str], now: float, outcome: FrameOutcome) -> None:
        entered = now_in - track.zones.keys()
        left = track.zones.keys() - now_in
        for zone in sorted(left):
            self._exit(track, zone, now, outcome)
        for zone in sorted(entered):
            track.zones[zone] = now
            outcome.events.append(self._event("enter", track, now, zone=zone))
        if entered or left:
            outcome.occupancy_changed = True
            outcome.events.append(self._event("update", track, now))
        for zone, since in track.zones.items():
            limit = self._loiter_after[zone]
            if limit is not None and zone not in track.loitered and now - since >= limit:
                track.loitered.add(zone)
                outcome.events.append(self._event("loiter", track, now, zone=zone, dwell_seconds=now - since))

    def _exit(self, track: Track, zone: str, now: float, outcome: FrameOutcome) -> None:
        since = track.zones.pop(zone)
        track.loitered.discard(zone)
        outcome.events.append(self._event("exit", track, now, zone=zone, dwell_seconds=now - since))

    def _cross(
        self, track: Track, line: str, direction: Direction, now: float, outcome: FrameOutcome
    ) -> None:
        self.line_totals[line][direction] += 1
        outcome.lines_changed = True
        outcome.events.append(self._event("cross", track, now, line=line, direction=direction))

    def _end_lost(self, now: float, outcome: FrameOutcome) -> None:
        for tracker_id in [
            t.tracker_id for t in self.tracks.values() if now - t.last_seen > self._lost_after
        ]:
            self._end(tracker_id, now, outcome)

    def _end(self, tracker_id: int, now: float, outcome: FrameOutcome) -> None:
        track = self.tracks[tracker_id]
        if track.zones:
            outcome.occupancy_changed = True
        for zone in sorted(track.zones):
            self._exit(track, zone, track.last_seen, outcome)
        del self.tracks[tracker_id]
        outcome.events.append(self._event("end", track, now))

    def _event(self, kind: EventType, track: Track, now: float, **detail: object) -> Event:
        return Event(
            id=str(uuid.uuid4()),
            type=kind,
            camera=self.camera_id,
            class_name=track.class_name,
            tracker_id=track.tracker_id,
            timestamp=now,
            first_seen=track.first_seen,
            last_seen=track.last_seen,
            confidence=track.confidence,
            box=track.box,
            image_size=self.size,
            zones=tuple(sorted(track.zones)),
            snapshot_id=track.snapshot_id,
            **detail,  # type: ignore[arg-type]
        )
