"""FrameResults built directly from boxes, for feeding sinks (the real components) without a model."""

from __future__ import annotations

import uuid

import numpy as np
import supervision as sv

from daemon.frames import FrameResult
from daemon.sink import Sink

Box = tuple[float, float, float, float, float, int, str]  # x1, y1, x2, y2, confidence, class id, class name


def detections(boxes: list[Box], inference_id: str) -> sv.Detections:
    if not boxes:
        return sv.Detections.empty()
    return sv.Detections(
        xyxy=np.array([box[:4] for box in boxes], dtype=np.float32),
        confidence=np.array([box[4] for box in boxes], dtype=np.float32),
        class_id=np.array([box[5] for box in boxes], dtype=int),
        data={
            "class_name": np.array([box[6] for box in boxes]),
            "inference_id": np.array([inference_id] * len(boxes)),
            "detection_id": np.array([str(uuid.uuid4()) for _ in boxes]),
        },
    )


def frame_result(
    camera_id: str,
    frame_id: int,
    boxes: list[Box],
    *,
    captured_at: float = 1_700_000_000.25,
    captured_mono: float = 0.0,
    model_id: str = "coco/3",
    width: int = 640,
    height: int = 480,
) -> FrameResult:
    inference_id = str(uuid.uuid4())
    return FrameResult(
        camera_id=camera_id,
        frame_id=frame_id,
        captured_at=captured_at,
        captured_mono=captured_mono,
        inference_id=inference_id,
        model_id=model_id,
        width=width,
        height=height,
        detections=detections(boxes, inference_id),
        inference_seconds=0.02,
        batch_size=1,
    )


def person(confidence: float = 0.9, x: float = 10.0) -> Box:
    return (x, 20.0, x + 50.0, 120.0, confidence, 0, "person")


def car(confidence: float = 0.8) -> Box:
    return (200.0, 100.0, 300.0, 160.0, confidence, 2, "car")


def dispatch(sink: Sink, *results: FrameResult) -> None:
    """Hand `results` to `sink` as the dispatcher does a burst of them: each to `handle`, then `drained`."""
    for result in results:
        sink.handle(result)
    sink.drained()
