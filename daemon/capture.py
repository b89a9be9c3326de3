"""Camera capture: one thread per camera, reading frames and putting the newest on the board.

Sources go through OpenCV: `rtsp://` and `http(s)://` (MJPEG) and files via FFmpeg, a V4L2 index ("0") or
device ("/dev/video0"), and `gst:<pipeline>` through GStreamer (Jetson hardware decode). A live source is
grabbed frame by frame so the backend never lags, but only the frames due at the camera's `fps` are
decoded into images (`retrieve`). A file with `realtime = true` plays at its own frame rate like a live
camera; with `realtime = false` every frame is handed over as soon as inference took the previous one
(no pacing, nothing dropped, `fps` not applied).

A failure (cannot open, read error, no frame for `stall_timeout` s) closes the source and reopens it after
an exponential backoff with jitter (1 s doubling to 30 s, reset once frames flow). An exception in the loop
is logged and the camera restarts the same way: one camera never takes another down.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from daemon.board import FrameBoard
from daemon.config import CameraConfig
from daemon.frames import Frame
from daemon.metrics import Metrics

log = logging.getLogger("edgewatch.capture")

BACKOFF_START = 1.0
BACKOFF_MAX = 30.0
READ_ERRORS_BEFORE_REOPEN = 25  # consecutive failed grabs on a live source
# RTSP over TCP: no lost UDP packets smearing frames, and it passes NAT and firewalls.
os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")


class CaptureError(Exception):
    """A source that cannot be opened or read; the message is one line for the operator."""


@dataclass(frozen=True, slots=True)
class CameraState:
    online: bool = False
    since_mono: float = 0.0  # when `online` last changed
    last_frame_mono: float | None = None
    frames: int = 0
    reconnects: int = 0
    last_error: str = ""


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs and messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def source_kind(url: str) -> str:
    """rtsp | http | gst | v4l2 | file"""
    lowered = url.lower()
    if lowered.startswith(("rtsp://", "rtsps://")):
        return "rtsp"
    if lowered.startswith(("http://", "https://")):
        return "http"
    if lowered.startswith("gst:"):
        return "gst"
    if url.isdigit() or url.startswith("/dev/video"):
        return "v4l2"
    return "file"


def _has_gstreamer() -> bool:
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


def open_source(url: str, timeout: float) -> cv2.VideoCapture:
    """Open a source with open/read timeouts; CaptureError (naming the redacted URL) when it fails."""
    kind = source_kind(url)
    millis = int(timeout * 1000)
    if kind == "gst":
        if not _has_gstreamer():
            raise CaptureError("this OpenCV build has no GStreamer support (needed for gst: pipelines)")
        capture = cv2.VideoCapture(url[4:].strip(), cv2.CAP_GSTREAMER)
    elif kind == "v4l2":
        capture = cv2.VideoCapture(int(url) if url.isdigit() else url, cv2.CAP_V4L2)
    else:
        if kind == "file" and not Path(url).is_file():
            raise CaptureError("no such file")
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, millis, cv2.CAP_PROP_READ_TIMEOUT_MSEC, millis]
        capture = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
    if not capture.isOpened():
        capture.release()
        raise CaptureError("cannot open the source" if kind != "file" else "cannot decode the file")
    return capture


def probe_source(url: str, timeout: float = 10) -> str | None:
    """Open once and read one frame: None if that works, else a one-line problem description."""
    try:
        capture = open_source(url, timeout)
    except CaptureError as exc:
        return str(exc)
    try:
        ok, image = capture.read()
        if not ok or image is None:
            return "opened, but no frame could be read"
        return None
    finally:
        capture.release()


def _jittered(delay: float) -> float:
    return delay * random.uniform(0.8, 1.2)


class Camera(threading.Thread):
    """One camera's thread. `on_status(camera_id, online)` is called on every up/down transition."""

    def __init__(
        self,
        config: CameraConfig,
        board: FrameBoard,
        metrics: Metrics,
        stop: threading.Event,
        on_status: Callable[[str, bool], None],
    ) -> None:
        super().__init__(name=f"camera-{config.id}", daemon=True)
        self.config = config
        self.finished = False  # a file without `loop` that reached its end
        self._board = board
        self._halt = stop
        self._on_status = on_status
        self._kind = source_kind(config.url)
        self._url = redact_url(config.url)
        self._lock = threading.Lock()
        self._state = CameraState(since_mono=time.monotonic())
        self._frame_id = 0
        camera = config.id
        self._captured = metrics.frames_captured.labels(camera)
        self._up = metrics.camera_up.labels(camera)
        self._reconnects = metrics.camera_reconnects.labels(camera)
        self._last_frame = metrics.camera_last_frame.labels(camera)
        self._read_errors = metrics.frames_dropped.labels(camera, "read_error")

    @property
    def state(self) -> CameraState:
        with self._lock:
            return self._state

    def _update(self, **changes: object) -> None:
        with self._lock:
            self._state = replace(self._state, **changes)

    def _set_online(self, online: bool, reason: str = "") -> None:
        if self.state.online == online:
            return
        self._update(online=online, since_mono=time.monotonic(), **({"last_error": reason} if reason else {}))
        self._up.set(1 if online else 0)
        self._board.set_live(self.config.id, online)
        if online:
            log.info("camera %s is up (%s)", self.config.id, self._url)
        elif reason == "stopped":
            log.info("camera %s closed", self.config.id)
        else:
            log.warning("camera %s is down: %s", self.config.id, reason)
        try:
            self._on_status(self.config.id, online)
        except Exception:
            log.exception("camera %s: status callback failed", self.config.id)

    def run(self) -> None:
        backoff = BACKOFF_START
        while not self._halt.is_set():
            try:
                problem, delivered = self._open_and_read()
            except Exception as exc:  # a bug or a backend surprise: log it, reopen like any failure
                log.exception("camera %s: capture failed", self.config.id)
                problem, delivered = f"capture failed: {exc}", False
            if delivered:
                backoff = BACKOFF_START
            if problem == "end of file" and delivered:
                if self.config.loop:
                    continue
                self._set_online(False, "end of file")
                log.info("camera %s: end of %s; not looping", self.config.id, self._url)
                self.finished = True
                return
            if problem == "end of file":  # opened, yet not one frame: a corrupt or empty file
                problem = "no frame could be decoded"
            if self._halt.is_set():
                break
            self._set_online(False, problem)
            self._update(last_error=problem)
            log.warning(
                "camera %s (%s): %s; reopening in %.0f s", self.config.id, self._url, problem, backoff
            )
            if self._halt.wait(_jittered(backoff)):
                break
            backoff = min(backoff * 2, BACKOFF_MAX)
            self._reconnects.inc()
            self._update(reconnects=self.state.reconnects + 1)
        self._set_online(False, "stopped")

    def _open_and_read(self) -> tuple[str, bool]:
        try:
            capture = open_source(self.config.url, self.config.stall_timeout)
        except CaptureError as exc:
            return str(exc), False
        try:
            return self._read(capture)
        finally:
            capture.release()

    def _read(self, capture: cv2.VideoCapture) -> tuple[str, bool]:
        """Read until stopped or a failure; returns (the problem, whether any frame was delivered)."""
        is_file = self._kind == "file"
        paced = not is_file or self.config.realtime
        period = 1.0 / self.config.fps
        file_period = 1.0 / (capture.get(cv2.CAP_PROP_FPS) or 25.0) if is_file and paced else 0.0
        started = time.monotonic()
        last_packet = started
        next_due = started
        grabbed = 0
        failures = 0
        delivered = False
        while not self._halt.is_set():
            if not capture.grab():
                if is_file:
                    return "end of file", delivered
                failures += 1
                if time.monotonic() - last_packet > self.config.stall_timeout:
                    return f"no frame for {self.config.stall_timeout:g} s", delivered
                if failures >= READ_ERRORS_BEFORE_REOPEN:
                    return "read errors", delivered
                continue
            failures = 0
            grabbed += 1
            last_packet = now = time.monotonic()
            if file_period:  # play the file at its own rate, as a live camera would deliver it
                ahead = started + grabbed * file_period - now
                if ahead > 0 and self._halt.wait(ahead):
                    break
                now = time.monotonic()
            if paced:
                if now < next_due:
                    continue  # grabbed, not decoded: the fps cap
                next_due = max(next_due + period, now - period)
            ok, image = capture.retrieve()
            if not ok or image is None:
                self._read_errors.inc()
                continue
            if not paced and not self._wait_taken():
                break
            self._deliver(image)
            delivered = True
        return "stopped", delivered

    def _wait_taken(self) -> bool:
        """Unpaced files: wait until inference took the previous frame. False when stopping."""
        while not self._board.wait_taken(self.config.id, timeout=0.5):
            if self._halt.is_set() or self._board.closed:
                return False
        return not self._halt.is_set()

    def _deliver(self, image: np.ndarray) -> None:
        self._frame_id += 1
        now_mono, now_wall = time.monotonic(), time.time()
        self._board.put(Frame(self.config.id, self._frame_id, now_wall, now_mono, image))
        self._captured.inc()
        self._last_frame.set(now_wall)
        self._update(last_frame_mono=now_mono, frames=self._frame_id)
        self._set_online(True)
