"""The data that flows between stages: a captured frame, one frame's inference result, a camera's state.

Detections are `sv.Detections` in the original frame's pixel coordinates (xyxy), with `data` holding
`class_name`, `inference_id` and `detection_id` arrays, one entry per detection.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import supervision as sv

# "camera": a configured camera; "api": an HTTP inference request, whose camera_id is its stream name
Source = Literal["camera", "api"]


def uuid4_strings(count: int) -> list[str]:
    """`count` random (version 4) UUIDs in their text form, as `str(uuid.uuid4())` writes them, from one read
    of the OS's random source: a batch's inference and detection ids for less than one `uuid4()` each."""
    octets = bytearray(os.urandom(16 * count))
    for i in range(6, 16 * count, 16):  # plain Python: a dozen numpy calls cost more for a batch's few ids
        octets[i] = (octets[i] & 0x0F) | 0x40  # version 4
        octets[i + 2] = (octets[i + 2] & 0x3F) | 0x80  # the RFC 4122 variant
    digits = octets.hex()
    return [
        f"{digits[i : i + 8]}-{digits[i + 8 : i + 12]}-{digits[i + 12 : i + 16]}-{digits[i + 16 : i + 20]}-"
        f"{digits[i + 20 : i + 32]}"
        for i in range(0, 32 * count, 32)
    ]


@dataclass(slots=True, eq=False)
class Frame:
    camera_id: str
    frame_id: int  # per camera, counting from 1 since the daemon started
    captured_at: float  # wall clock (time.time()) when the frame was read
    captured_mono: float  # time.monotonic() at the same moment, for latency
    image: np.ndarray  # H x W x 3, uint8, BGR
    # Set on frames sent through the HTTP inference API: called by the inference worker with the result.
    reply: Callable[[FrameResult], None] | None = None
    params: DecodeParams | None = None  # per-request thresholds; None: the model config's


@dataclass(frozen=True, slots=True)
class DecodeParams:
    confidence: float
    iou: float
    max_detections: int
    class_agnostic: bool = False
    classes: tuple[int, ...] | None = None  # class ids to keep (a request's class_filter); None: all


@dataclass(slots=True, eq=False)
class FrameResult:
    camera_id: str
    frame_id: int
    captured_at: float
    captured_mono: float
    inference_id: str  # uuid4, one per frame
    model_id: str
    width: int
    height: int
    detections: sv.Detections
    inference_seconds: float  # session.run time of the batch this frame was in
    batch_size: int
    done_mono: float = field(default_factory=time.monotonic)  # when the worker finished the frame
    source: Source = "camera"
    # The frame itself, shared with the capture (not a copy; never drawn on). Only the events sink uses it
    # (snapshots, the live view: boundedly), and then lets go of it: the other sinks see None.
    image: np.ndarray | None = None


class CameraStatusListener(Protocol):
    """Told when a camera goes online or offline, on that camera's thread: must not block."""

    def on_camera_status(self, camera_id: str, online: bool) -> None: ...


@dataclass(frozen=True)
class CameraState:
    """A snapshot for health, alerts and status lines; replaced whole, so it is read without a lock."""

    online: bool = False
    since_mono: float = 0.0  # time.monotonic() of the last online/offline transition (or of the start)
    frames: int = 0  # frames handed to inference
    read_errors: int = 0  # frames that could not be decoded
    reconnects: int = 0
    last_error: str = ""  # "" until something goes wrong; never holds credentials


def class_counts(detections: sv.Detections) -> dict[str, int]:
    """Objects per class name, sorted by name (so that equal counts give equal JSON)."""
    # a Counter over the names: on an object array np.unique sorts in Python anyway, and took 5x as long
    return dict(sorted(Counter(detections.data["class_name"].tolist()).items())) if len(detections) else {}


def roboflow_predictions(detections: sv.Detections) -> list[dict[str, Any]]:
    """Detections in Roboflow's prediction format: centre x/y, width, height, in pixels."""
    if len(detections) == 0:
        return []
    xyxy = detections.xyxy
    sizes = xyxy[:, 2:] - xyxy[:, :2]  # width, height
    centres = xyxy[:, :2] + sizes / 2
    confidence = detections.confidence if detections.confidence is not None else np.ones(len(detections))
    class_ids = detections.class_id if detections.class_id is not None else np.zeros(len(detections), int)
    # whole columns to Python at once: indexing numpy arrays element by element costs more than the rest
    columns = zip(
        centres.tolist(),
        sizes.tolist(),
        confidence.tolist(),
        detections.data["class_name"].tolist(),
        class_ids.tolist(),
        detections.data["detection_id"].tolist(),
        strict=True,
    )
    return [
        {
            "x": round(x, 1),
            "y": round(y, 1),
            "width": round(width, 1),
            "height": round(height, 1),
            "confidence": round(score, 4),
            "class": str(name),
            "class_id": int(class_id),
            "detection_id": str(detection_id),
        }
        for (x, y), (width, height), score, name, class_id, detection_id in columns
    ]


def roboflow_response(result: FrameResult) -> dict[str, Any]:
    """One frame's result in Roboflow's inference response format."""
    return {
        "inference_id": result.inference_id,
        "time": round(result.inference_seconds, 6),
        "image": {"width": result.width, "height": result.height},
        "predictions": roboflow_predictions(result.detections),
    }
