"""In-memory cameras: pre-decoded frames handed to the daemon's real path, decode left out.

`MemoryCamera` has the interface of `daemon.pipeline.capture.Camera`: a thread built as
`(config, board, metrics, stop, on_status)`, with `.config`, `.state` and `.finished`. `Service` takes it
through its `camera_factory`, so everything after decode is the daemon's own code. The camera's URL says
how it behaves:
- `memory:unpaced`: a new frame as soon as inference took the previous one (a file read with realtime=false);
- `memory:paced`: a live camera delivering `config.fps` frames a second, whether inference keeps up or not;
- `memory:stalled`: delivers for a second, then stays connected but silent (a stalled stream);
- `memory:dead`: never delivers a frame (a camera that is down).
Any other URL goes to the real capture code.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence

import cv2
import numpy as np

from daemon.config import CameraConfig
from daemon.demo import DEMO_PHOTOS, pan_zoom_transform, photo_path, read_photo
from daemon.frames import CameraStatusListener
from daemon.metrics.cameras import CameraMetrics
from daemon.metrics.frames import FrameMetrics
from daemon.pipeline.board import FrameBoard
from daemon.pipeline.capture import Camera
from daemon.service import CameraFactory

TAKEN_WAIT = 0.5  # seconds an unpaced source waits for its frame to be taken before checking `stop`
STALL_AFTER = 1.0  # seconds a `memory:stalled` camera delivers before it goes silent


def demo_scenes(size: tuple[int, int], count: int = 24) -> list[list[np.ndarray]]:
    """Per demo photo, `count` BGR frames of `size` (width, height): a slow pan and zoom over it, as a camera
    watching one scene sees it (consecutive frames differ a little, the objects stay)."""
    scenes = []
    for name in DEMO_PHOTOS.values():
        photo = read_photo(photo_path(name))
        scenes.append(
            [
                cv2.warpAffine(
                    photo,
                    pan_zoom_transform((photo.shape[1], photo.shape[0]), size, index / count),
                    size,
                    flags=cv2.INTER_LINEAR,
                )
                for index in range(count)
            ]
        )
    return scenes


class MemoryCamera(Camera):
    """A camera whose stream is pre-decoded frames: everything a real camera does but open and decode (its
    metrics, state, board liveness and status callbacks are Camera's own). The URL picks its behaviour:
    `memory:unpaced` (a file with realtime = false), `memory:paced` (a live camera at its fps),
    `memory:stalled` (paced for STALL_AFTER s, then silent), `memory:dead` (never a frame)."""

    def __init__(
        self,
        config: CameraConfig,
        board: FrameBoard,
        frame_metrics: FrameMetrics,
        camera_metrics: CameraMetrics,
        stop: threading.Event,
        listeners: Sequence[CameraStatusListener],
        images: Sequence[np.ndarray],
    ) -> None:
        super().__init__(config, board, frame_metrics, camera_metrics, stop, listeners)
        self._frames = images
        self._mode = config.url.removeprefix("memory:")

    def run(self) -> None:
        if self._mode == "dead":
            self._set_error("no frames (a dead camera)")
            self._halt.wait()
            return
        try:
            if self._mode == "paced":
                self._run_paced()
            elif self._mode == "stalled":
                self._run_paced(until=STALL_AFTER)
                self._halt.wait()
            else:
                self._run_unpaced()
        finally:
            self._set_online(False, "stopped")

    def _next(self) -> None:
        self._deliver(self._frames[(self.state.frames + 1) % len(self._frames)])

    def _run_unpaced(self) -> None:
        camera = self.config.id
        while not self._halt.is_set():
            self._next()
            while not self._board.wait_taken(camera, TAKEN_WAIT):
                if self._halt.is_set():
                    return

    def _run_paced(self, until: float = math.inf) -> None:
        period = 1 / self.config.fps
        started = time.monotonic()
        tick = 0
        while not self._halt.is_set() and time.monotonic() - started < until:
            self._next()
            # the next tick on the camera's own clock; a late one is skipped, as a live camera would
            tick = max(tick + 1, math.floor((time.monotonic() - started) / period) + 1)
            self._halt.wait(max(0.0, started + tick * period - time.monotonic()))


def camera_factory(scenes: Sequence[Sequence[np.ndarray]]) -> CameraFactory:
    """A `Service` camera factory: `memory:` URLs become `MemoryCamera`s, each showing the next of `scenes`
    in turn; other URLs real cameras."""
    made = 0

    def make(
        config: CameraConfig,
        board: FrameBoard,
        frame_metrics: FrameMetrics,
        camera_metrics: CameraMetrics,
        stop: threading.Event,
        listeners: Sequence[CameraStatusListener],
    ) -> Camera:
        nonlocal made
        parts = (config, board, frame_metrics, camera_metrics, stop, listeners)
        if config.url.startswith("memory:"):
            made += 1
            return MemoryCamera(*parts, scenes[(made - 1) % len(scenes)])
        return Camera(*parts)

    return make
