"""The events' cost: cameras with tracking, two zones and a line each, and the events thread's work per frame.

- `with_events`: a camera with `track = true`, two zones (the left and right halves of the lower frame) and
  a line down the middle, every class counted (the soak's cameras too); `event_cameras`: in-memory cameras as
  the pipeline benchmark's, each with them;
- `events_thread_work`: the events sink alone on one thread (as the events thread runs it), fed frames of
  `objects` boxes that move across the zones and the line: seconds per `handle`, i.e. what tracking, zones,
  lines and the event lifecycle cost per frame.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import supervision as sv
from prometheus_client import CollectorRegistry

from benchmarks.harness import memory_cameras
from daemon.config import (
    CameraConfig,
    Config,
    EventsConfig,
    LineConfig,
    ModelConfig,
    RoboflowConfig,
    ZoneConfig,
)
from daemon.events.sink import build_events_sink
from daemon.frames import FrameResult

SIZE = (640, 480)
ZONES = (
    ZoneConfig(name="left", polygon=[(0.0, 0.4), (0.5, 0.4), (0.5, 1.0), (0.0, 1.0)]),
    ZoneConfig(name="right", polygon=[(0.5, 0.4), (1.0, 0.4), (1.0, 1.0), (0.5, 1.0)], loiter_after=5),
)
LINE = LineConfig(name="middle", start=(0.5, 0.0), end=(0.5, 1.0))


def with_events(camera: CameraConfig) -> CameraConfig:
    """`camera` tracked, with the two zones and the line."""
    return camera.model_copy(update={"track": True, "zones": list(ZONES), "lines": [LINE]})


def event_cameras(count: int, mode: str, fps: float = 240) -> list[CameraConfig]:
    return [with_events(camera) for camera in memory_cameras(count, mode, fps)]


def moving_boxes(objects: int, frame: int) -> sv.Detections:
    """`objects` boxes in rows, each moving right 6 px a frame (wrapping): they cross the line and zones."""
    rows = np.arange(objects)
    x = (rows * 53 + frame * 6) % (SIZE[0] - 60)
    y = 10 + rows * (SIZE[1] - 60) / max(1, objects)
    xyxy = np.stack([x, y, x + 50, y + 40], axis=1).astype(np.float32)
    names = np.array(["person", "car"] * (objects // 2 + 1))[:objects]
    return sv.Detections(
        xyxy=xyxy,
        confidence=np.full(objects, 0.8, np.float32),
        class_id=np.where(names == "person", 0, 2),
        data={"class_name": names, "inference_id": np.full(objects, "x", object)},
    )


def events_thread_work(workdir: Path, objects: int = 10, frames: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """Wall and CPU (this thread's) seconds per `EventsSink.handle`, for each of `frames` frames of `objects`
    moving boxes (snapshots on: their writer thread is part of the load). On a shared, busy machine the wall
    time includes waiting for a core; the thread's CPU time does not."""
    config = Config(
        model=ModelConfig(path=workdir / "model.onnx"),
        cameras=event_cameras(1, "unpaced"),
        roboflow=RoboflowConfig(spool=workdir / "spool.db"),
        events=EventsConfig(snapshot_dir=workdir / "snapshots"),
    )
    sink = build_events_sink(config, CollectorRegistry(), workdir)
    sink.start()
    image = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
    wall, cpu = np.empty(frames), np.empty(frames)
    try:
        for index in range(frames):
            result = FrameResult(
                "cam-1",
                index + 1,
                1_700_000_000 + index / 15,
                index / 15,
                str(uuid.uuid4()),
                "coco/3",
                SIZE[0],
                SIZE[1],
                moving_boxes(objects, index),
                0.02,
                1,
                image=image,
            )
            started, started_cpu = time.perf_counter(), time.thread_time()
            sink.handle(result)
            wall[index], cpu[index] = time.perf_counter() - started, time.thread_time() - started_cpu
    finally:
        sink.flush()
        sink.close(5)
    return wall, cpu
