"""The hand-off between camera threads and the inference worker: one slot per camera.

A camera never blocks here: `put` replaces the camera's unconsumed frame (the old one is reported to
`on_stale` and counted as dropped). The worker takes the freshest frame of every camera that has one, least
recently served first (counted in batches: round robin), so that with more cameras than `max_batch` every
camera gets the same share; among cameras served in the same batch, the one whose frame waits longest goes
first. (Ordering by how long each frame has waited instead lets the cameras' phases decide: a camera whose
next frame arrives just after it was served queues ahead of one whose frame arrives later, every round, and
cameras that deliver in step, as the clients of one stream do, are overtaken round after round by the same
few.)

Frames of HTTP inference requests wait in a bounded FIFO beside the camera slots: they are never
overwritten, rank as a camera last served before they arrived (so neither side starves the other), and
`put_request` refuses them when the FIFO is full (the API answers 503).
"""

from __future__ import annotations

import collections
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from daemon.frames import Frame

SILENT_AFTER = 1.0  # seconds without a frame after which a live camera no longer holds batches


class FrameBoard:
    def __init__(
        self, camera_ids: Iterable[str], on_stale: Callable[[Frame], None], max_requests: int = 16
    ) -> None:
        self._slots: dict[str, Frame | None] = dict.fromkeys(camera_ids)
        # (the batch count before it arrived, the frame): it ranks as a camera last served then
        self._requests: deque[tuple[int, Frame]] = deque()
        self._max_requests = max_requests
        self._live: set[str] = set()  # cameras currently delivering; a batch waits for these only
        self._heard: dict[str, float] = {}  # per live camera: when it went live or last put a frame
        self._waiting_since: dict[str, float] = {}  # per camera with a frame: its first frame since served
        self._batches = 0  # batches handed out: the round-robin clock
        self._served: dict[str, int] = {}  # per camera: the batch count when it was last served
        self._on_stale = on_stale
        self._stale: collections.Counter[str] = collections.Counter()  # frames replaced before inference
        # One lock; the worker waits on `_ready`, each camera on its own condition, so that a frame put
        # wakes only the worker and a batch taken wakes only the cameras it took from.
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._taken = {camera: threading.Condition(self._lock) for camera in self._slots}
        self._closed = False

    @property
    def camera_ids(self) -> list[str]:
        return list(self._slots)

    def add_camera(self, camera_id: str) -> None:
        """A slot for a camera added while running (a config reload); no-op if it has one."""
        with self._ready:
            if camera_id not in self._slots:
                self._slots[camera_id] = None
                self._taken[camera_id] = threading.Condition(self._lock)

    def remove_camera(self, camera_id: str) -> Frame | None:
        """Drop a removed camera's slot (call once its thread has stopped); returns the frame it held."""
        with self._ready:
            frame = self._slots.pop(camera_id, None)
            self._stale.pop(camera_id, None)
            self._live.discard(camera_id)
            self._heard.pop(camera_id, None)
            self._waiting_since.pop(camera_id, None)
            self._served.pop(camera_id, None)
            taken = self._taken.pop(camera_id, None)
            if taken is not None:
                taken.notify_all()
            self._ready.notify_all()
        return frame

    def stale_counts(self) -> dict[str, int]:
        """Frames of each camera replaced by a newer one before inference took them, since the start."""
        with self._ready:
            return dict(self._stale)

    def put(self, frame: Frame) -> None:
        with self._ready:
            if frame.camera_id not in self._slots:  # a removed camera's last frame, after its removal
                return
            stale = self._slots[frame.camera_id]
            self._slots[frame.camera_id] = frame
            if stale is None:
                self._waiting_since[frame.camera_id] = frame.captured_mono
            else:
                self._stale[frame.camera_id] += 1
            self._heard[frame.camera_id] = frame.captured_mono
            self._ready.notify_all()
        if stale is not None:
            self._on_stale(stale)

    def put_request(self, frame: Frame) -> bool:
        """Queue a request frame; False when `max_requests` are already waiting."""
        with self._ready:
            if self._closed or len(self._requests) >= self._max_requests:
                return False
            self._requests.append((self._batches - 1, frame))
            self._ready.notify_all()
            return True

    def set_live(self, camera_id: str, live: bool) -> None:
        with self._ready:
            if live and camera_id in self._slots:
                self._live.add(camera_id)
                self._heard[camera_id] = time.monotonic()
            else:
                self._live.discard(camera_id)
            self._ready.notify_all()

    def wait_taken(self, camera_id: str, timeout: float) -> bool:
        """Block until the camera's slot is empty (for sources read as fast as inference takes them)."""
        taken = self._taken.get(camera_id)
        if taken is None:
            return True
        with taken:
            return taken.wait_for(lambda: self._closed or self._slots.get(camera_id) is None, timeout=timeout)

    def take_batch(self, max_batch: int, fill_timeout: float, wait: float) -> list[Frame]:
        """Wait up to `wait` s for a first frame, then up to `fill_timeout` s for the batch to fill.

        The batch is full at `max_batch` frames or when every live camera has a frame waiting. Returns the
        frames, least recently served first (empty on timeout). Once closed it waits for nothing and hands
        out the camera frames left on the board (the cameras have stopped: they are inferred, not lost), then
        none.
        """
        with self._ready:
            if not self._ready.wait_for(lambda: self._closed or self._ready_count() > 0, timeout=wait):
                return []
            want = min(max_batch, max(1, self._delivering() + len(self._requests)))
            if fill_timeout > 0 and not self._closed and self._ready_count() < want:
                deadline = time.monotonic() + fill_timeout
                self._ready.wait_for(
                    lambda: self._closed or self._ready_count() >= want,
                    timeout=max(0.0, deadline - time.monotonic()),
                )
            waiting = [
                (self._served.get(camera, -1), self._waiting_since[camera], frame)
                for camera, frame in self._slots.items()
                if frame is not None
            ]
            waiting += [(turn, frame.captured_mono, frame) for turn, frame in self._requests]
            ready = [frame for *_, frame in sorted(waiting, key=lambda entry: entry[:2])[:max_batch]]
            if ready:
                self._batches += 1
            for frame in ready:
                if frame.reply is None:
                    self._slots[frame.camera_id] = None
                    self._served[frame.camera_id] = self._batches
                    self._taken[frame.camera_id].notify_all()
            taken = {id(frame) for frame in ready if frame.reply is not None}
            if taken:
                self._requests = deque(entry for entry in self._requests if id(entry[1]) not in taken)
            return ready

    def _delivering(self) -> int:
        """Live cameras heard from within SILENT_AFTER: a stalled one (still connected, no frames until its
        stall watchdog reopens it) stops holding every batch for the fill timeout after that long."""
        since = time.monotonic() - SILENT_AFTER
        return sum(1 for camera in self._live if self._heard.get(camera, since) > since)

    def _ready_count(self) -> int:
        return sum(frame is not None for frame in self._slots.values()) + len(self._requests)

    def close(self) -> list[Frame]:
        """Stop handing out frames; returns the request frames still waiting, for the caller to answer."""
        with self._ready:
            self._closed = True
            left, self._requests = [frame for _, frame in self._requests], deque()
            self._ready.notify_all()
            for taken in self._taken.values():
                taken.notify_all()
        return left
