"""A camera's zones and lines in pixels, on supervision's PolygonZone and LineZone.

The config gives them relative to the frame (0..1), so they are scaled to each frame's size, and made again
when a camera's resolution changes. Both look at the bottom centre of a box: where the object stands.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import supervision as sv

from daemon.config import CameraConfig, LineConfig, ZoneConfig

ANCHORS = (sv.Position.BOTTOM_CENTER,)


def _class_filter(names: list[str]) -> frozenset[str] | None:
    return frozenset(names) if names else None


@dataclass(frozen=True)
class Zone:
    config: ZoneConfig
    area: sv.PolygonZone
    classes: frozenset[str] | None  # None: every class

    @property
    def name(self) -> str:
        return self.config.name


@dataclass(frozen=True)
class Line:
    config: LineConfig
    counter: sv.LineZone
    classes: frozenset[str] | None

    @property
    def name(self) -> str:
        return self.config.name


def scale(points: list[tuple[float, float]], size: tuple[int, int]) -> np.ndarray:
    """Relative (x, y) points -> pixel coordinates in a frame of `size` (width, height)."""
    width, height = size
    return np.rint(np.asarray(points, dtype=np.float64) * [width - 1, height - 1]).astype(int)


def class_mask(detections: sv.Detections, classes: frozenset[str] | None) -> np.ndarray | None:
    """Which detections are of one of `classes`; None when every class counts."""
    if classes is None:
        return None
    return np.fromiter((name in classes for name in detections.data["class_name"]), bool, len(detections))


class Geometry:
    """One camera's zones and lines, in the pixels of the frame size last seen."""

    def __init__(self, camera: CameraConfig) -> None:
        self.camera = camera
        self.size: tuple[int, int] | None = None
        self.zones: list[Zone] = []
        self.lines: list[Line] = []

    def fit(self, size: tuple[int, int]) -> None:
        """Scale to frames of `size`; a new size starts the lines' crossing state afresh."""
        if size == self.size:
            return
        self.size = size
        self.zones = [
            Zone(
                zone,
                sv.PolygonZone(scale(zone.polygon, size), triggering_anchors=ANCHORS),
                _class_filter(zone.classes),
            )
            for zone in self.camera.zones
        ]
        self.lines = []
        for line in self.camera.lines:
            start, end = scale([line.start, line.end], size)
            counter = sv.LineZone(sv.Point(*start), sv.Point(*end), triggering_anchors=ANCHORS)
            self.lines.append(Line(line, counter, _class_filter(line.classes)))

    def zones_of(self, detections: sv.Detections) -> list[np.ndarray]:
        """Per zone: which detections are inside it (and of its classes).

        The same test as `PolygonZone.trigger` with one anchor, on the zone's own mask, with the anchors
        computed once for every zone (trigger computes them per zone: the events thread's time is short)."""
        if not self.zones:
            return []
        xyxy = detections.xyxy  # the bottom centre of each box, as supervision's BOTTOM_CENTER anchor
        x = np.rint((xyxy[:, 0] + xyxy[:, 2]) / 2).astype(int)
        y = np.rint(xyxy[:, 3]).astype(int)
        inside = []
        for zone in self.zones:
            mask_h, mask_w = zone.area.mask.shape
            within = np.flatnonzero((x >= 0) & (y >= 0) & (x < mask_w) & (y < mask_h))
            found = np.zeros(len(detections), bool)
            found[within] = zone.area.mask[y[within], x[within]]
            mask = class_mask(detections, zone.classes)
            inside.append(found if mask is None else found & mask)
        return inside

    def crossings(self, detections: sv.Detections) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per line: (crossed in, crossed out) masks over `detections` (which must all be tracked)."""
        crossed = []
        for line in self.lines:
            mask = class_mask(detections, line.classes)
            if mask is None:
                crossed.append(line.counter.trigger(detections))
                continue
            into, out = (np.zeros(len(detections), bool) for _ in range(2))
            if mask.any():
                into[mask], out[mask] = line.counter.trigger(detections[mask])
            crossed.append((into, out))
        return crossed
