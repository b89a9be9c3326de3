"""The live view: a camera's newest frame with its boxes, track ids, zones and lines drawn, as a JPEG.

The events sink hands over each camera's newest frame and detections (references: nothing is copied on
the inference path); the frame is drawn and encoded only when someone asks, at most once per `MIN_INTERVAL`
per camera (other requests in between get the same bytes), one encoding at a time.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import supervision as sv

from daemon.config import CameraConfig
from daemon.events.snapshots import encode_jpeg
from daemon.events.zones import scale
from daemon.frames import FrameResult

MIN_INTERVAL = 0.25  # seconds: at most 4 encodings per camera per second
ZONE_COLOR = sv.Color.from_hex("#2e86de")
LINE_COLOR = sv.Color.from_hex("#f39c12")


@dataclass(frozen=True, slots=True)
class _Newest:
    frame_id: int
    image: np.ndarray
    detections: sv.Detections


@dataclass(frozen=True, slots=True)
class _Encoded:
    frame_id: int
    at: float  # monotonic
    jpeg: bytes


def labels(detections: sv.Detections) -> list[str]:
    names = detections.data.get("class_name", np.array([], dtype=object))
    confidence = detections.confidence if detections.confidence is not None else np.ones(len(detections))
    ids = detections.tracker_id if detections.tracker_id is not None else np.full(len(detections), -1)
    return [
        f"{'#' + str(tracker_id) + ' ' if tracker_id >= 0 else ''}{name} {score:.2f}"
        for name, score, tracker_id in zip(names, confidence, ids, strict=True)
    ]


def draw(image: np.ndarray, detections: sv.Detections, camera: CameraConfig) -> np.ndarray:
    """A copy of `image` with the camera's zones and lines and the detections drawn."""
    canvas = image.copy()
    size = (image.shape[1], image.shape[0])
    for zone in camera.zones:
        polygon = scale(zone.polygon, size)
        canvas = sv.draw_polygon(canvas, polygon, ZONE_COLOR, thickness=2)
        canvas = sv.draw_text(
            canvas, zone.name, sv.Point(*polygon.min(axis=0) + 12), background_color=ZONE_COLOR
        )
    for line in camera.lines:
        start, end = scale([line.start, line.end], size)
        canvas = sv.draw_line(canvas, sv.Point(*start), sv.Point(*end), LINE_COLOR, thickness=3)
        canvas = sv.draw_text(canvas, line.name, sv.Point(*start), background_color=LINE_COLOR)
    if len(detections):
        color = sv.ColorLookup.TRACK if detections.tracker_id is not None else sv.ColorLookup.CLASS
        if detections.class_id is None:
            color = sv.ColorLookup.INDEX
        canvas = sv.BoxAnnotator(thickness=2, color_lookup=color).annotate(canvas, detections)
        canvas = sv.LabelAnnotator(text_scale=0.5, color_lookup=color).annotate(
            canvas, detections, labels=labels(detections)
        )
    return canvas


class LiveView:
    def __init__(self, cameras: list[CameraConfig]) -> None:
        self._cameras = {camera.id: camera for camera in cameras}
        self._latest: dict[str, _Newest] = {}  # camera -> its newest frame (one each)
        self._encoded: dict[str, _Encoded] = {}
        self._lock = threading.Lock()  # one encoding at a time

    def offer(self, result: FrameResult) -> None:
        """The newest result of a camera (the events thread): its frame and detections kept by reference,
        replacing the previous."""
        if result.image is not None:
            self._latest[result.camera_id] = _Newest(result.frame_id, result.image, result.detections)

    def forget(self, camera_id: str) -> None:
        self._latest.pop(camera_id, None)

    def set_camera(self, camera: CameraConfig) -> None:
        """A camera added or changed by a config reload: its zones and lines are drawn from now on."""
        with self._lock:
            self._cameras[camera.id] = camera
            self._encoded.pop(camera.id, None)

    def remove_camera(self, camera_id: str) -> None:
        with self._lock:
            self._cameras.pop(camera_id, None)
            self._encoded.pop(camera_id, None)
        self.forget(camera_id)

    def jpeg(self, camera_id: str) -> bytes | None:
        """The camera's newest frame, drawn and encoded; None for an unknown camera or before any frame."""
        camera = self._cameras.get(camera_id)
        if camera is None:
            return None
        with self._lock:
            cached = self._encoded.get(camera_id)
            now = time.monotonic()
            if cached is not None and now - cached.at < MIN_INTERVAL:
                return cached.jpeg
            newest = self._latest.get(camera_id)
            if newest is None:
                return None
            if cached is not None and cached.frame_id == newest.frame_id:
                return cached.jpeg
            jpeg = encode_jpeg(draw(newest.image, newest.detections, camera))
            self._encoded[camera_id] = _Encoded(newest.frame_id, now, jpeg)
            return jpeg
