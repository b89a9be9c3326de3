"""Camera capture: one thread per camera reads its source and offers the freshest frame to inference.

Sources: `rtsp://` and other FFmpeg network URLs (`http(s)://` MJPEG...) and video files, decoded by FFmpeg
through PyAV (`daemon/pipeline/video.py`); through OpenCV, a V4L2 index (`0`) or device (`/dev/video0`), and
`gst:<pipeline ending in appsink>` when OpenCV was built with GStreamer. RTSP goes over TCP unless
`OPENCV_FFMPEG_CAPTURE_OPTIONS` says otherwise.

A camera never dies: a failure, a stall or an unexpected error closes the source and reopens it after an
exponential backoff with jitter (1 s doubling to 30 s, reset once frames flow again). URLs may carry
credentials; only `redact_url` forms of them are ever logged.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import re
import socket
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import cv2
import numpy as np

from daemon.backoff import backoff_delay
from daemon.config import CameraConfig
from daemon.frames import CameraState, CameraStatusListener, Frame
from daemon.metrics.cameras import CameraMetrics
from daemon.metrics.frames import FrameMetrics
from daemon.pipeline.board import FrameBoard
from daemon.pipeline.source import Decoder, Source, parse_source
from daemon.pipeline.video import OPTIONS_VARIABLE, VideoStream

log = logging.getLogger("edgewatch.capture")

BACKOFF_FIRST = 1.0  # seconds before the first reopen after a failure
BACKOFF_MAX = 30.0
OPEN_TIMEOUT = 10.0  # an RTSP open probes the stream, which takes a few seconds on slow cameras
FILE_FPS_FALLBACK = 25.0  # for files that do not say their frame rate
TAKEN_POLL = 0.5  # seconds between stop checks while inference has not taken a file frame yet
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443, "rtmp": 1935}

_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]*):[^\s/]*@")
_QUERY_SECRET = re.compile(
    r"(?i)([?&;](?:password|passwd|pass|pwd|token|access_token|api_key|apikey|key|secret|auth|sig|signature)=)"
    r"[^&#\s]*"
)
_GST_SECRET = re.compile(r"(?i)\b((?:user-pw|proxy-pw)\s*=\s*)(\"[^\"]*\"|'[^']*'|\S+)")


def redact_url(url: str) -> str:
    """The URL (or gst pipeline) with passwords and secret query values replaced by `***`."""
    url = _URL_PASSWORD.sub(r"\1:***@", url)
    url = _QUERY_SECRET.sub(r"\1***", url)
    return _GST_SECRET.sub(r"\1***", url)


class SourceError(Exception):
    """A source that can never work as configured (retrying will not help)."""


class _Retry(Exception):
    """Ends the current open-read session with a problem; the camera reopens after the backoff."""


@functools.lru_cache(maxsize=1)
def gstreamer_available() -> bool:
    return re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()) is not None


def prefer_rtsp_over_tcp() -> None:
    """RTSP over TCP: FFmpeg's default, UDP, loses packets and is often blocked by NAT and firewalls."""
    os.environ.setdefault(OPTIONS_VARIABLE, "rtsp_transport;tcp")


Capture = cv2.VideoCapture | VideoStream


def open_capture(
    source: Source, open_timeout: float, read_timeout: float, decoder: Decoder = "cpu"
) -> Capture:
    """The source opened (check `isOpened()`): files and network streams with PyAV, within the timeouts and
    on the `decoder`; V4L2 and GStreamer with OpenCV."""
    if source.kind == "gst":
        if not gstreamer_available():
            raise SourceError(
                "this OpenCV build has no GStreamer support; gst: sources need one (e.g. the system OpenCV)"
            )
        return cv2.VideoCapture(str(source.target), cv2.CAP_GSTREAMER)
    if source.kind == "v4l2":
        return cv2.VideoCapture(source.target, cv2.CAP_V4L2)
    return VideoStream(str(source.target), open_timeout, read_timeout, decoder)


def missing_local_source(source: Source) -> str | None:
    if source.kind == "file" and not Path(source.target).is_file():
        return "no such file"
    if source.kind == "v4l2" and isinstance(source.target, str) and not Path(source.target).exists():
        return "no such device"
    return None


def cannot_open(source: Source, capture: Capture) -> str:
    problem = "cannot read the file as video" if source.kind == "file" else "cannot open the source"
    reason = capture.error if isinstance(capture, VideoStream) else ""  # FFmpeg's words, never the URL
    return f"{problem}: {reason}" if reason else f"{problem} (wrong path or credentials?)"


def next_due(due: float, now: float, interval: float) -> float | None:
    """fps cap: for a frame read at `now` with the next slot at `due`, the slot after it, or None when the
    frame is not due. Slots stay on a fixed grid, so jitter in arrival does not lower the rate; a frame up
    to a quarter interval early counts (a source at exactly the cap keeps every frame); after a gap longer
    than an interval the grid restarts at `now`."""
    if now < due - interval / 4:
        return None
    following = due + interval
    return following if following > now - interval / 4 else now + interval


def as_bgr(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


class Camera(threading.Thread):
    """Reads one camera and puts its frames on the board; runs until `stop` is set.

    - Live sources (network, V4L2, gst) are read with `grab()` at the source's own rate, so that no backend
      buffer builds up, and only the frames due under the `fps` cap are `retrieve()`d (converted) and put.
    - Files with `realtime = true` play at the file's own frame rate, like a live camera, with the same cap.
    - Files with `realtime = false` hand over every frame as fast as inference takes them (the next frame
      is put once the board slot is empty): nothing is dropped and `fps` does not apply.
    - At the end of a file: with `loop` it starts again; without, the camera goes offline and the thread ends.

    Online means open and delivering frames (the first frame after an open); the status listeners and
    `board.set_live` are called on every transition. No frame for `stall_timeout` seconds (FFmpeg's read
    timeout), an end of stream or an error means offline and a reopen after the backoff; each reopen
    counts in `edgewatch_camera_reconnects_total`. Stop is honoured within about a second, also during a
    slow open; only a read blocked on a connection that went silent holds on until its `stall_timeout`.
    """

    def __init__(
        self,
        config: CameraConfig,
        board: FrameBoard,
        frames: FrameMetrics,
        cameras: CameraMetrics,
        stop: threading.Event,
        listeners: Sequence[CameraStatusListener] = (),
    ) -> None:
        super().__init__(name=f"camera-{config.id}", daemon=True)
        self.config = config
        self._board = board
        self._halt = stop
        self._listeners = tuple(listeners)
        self._source = parse_source(config.url)
        self._url = redact_url(config.url)
        self._password = urlsplit(config.url).password if self._source.kind == "network" else None
        camera = config.id
        self._captured = frames.frames_captured.labels(camera)
        self._read_errors = frames.frames_dropped.labels(camera, "read_error")
        self._up = cameras.camera_up.labels(camera)
        self._reconnects = cameras.camera_reconnects.labels(camera)
        self._last_frame = cameras.camera_last_frame.labels(camera)
        self._gpu_decoding = cameras.camera_gpu_decoding.labels(camera) if config.decoder != "cpu" else None
        if self._gpu_decoding is None:
            cameras.camera_gpu_decoding.remove(camera)  # left by this camera before a reload to "cpu"
        self._up.set(0)
        self._state = CameraState(since_mono=time.monotonic())
        self._frame_id = 0
        self._attempt = 0  # failed opens since frames last flowed: the backoff step
        self._finished = False
        self._decoder_said = ""  # where an open last decoded, as logged: each change is logged once
        if self._source.kind == "network" and config.url.lower().startswith("rtsp"):
            prefer_rtsp_over_tcp()

    @property
    def state(self) -> CameraState:
        return self._state

    @property
    def finished(self) -> bool:
        """True once the camera ended on purpose (a file without loop played out, or an unusable source)."""
        return self._finished

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                problem = self._session()
            except _Retry as exc:
                problem = str(exc)
            except SourceError as exc:
                self._set_error(str(exc))
                log.error("camera %s (%s): %s; not retrying", self.config.id, self._url, exc)
                self._finished = True
                break
            except Exception as exc:
                problem = f"unexpected error: {self._scrub(repr(exc))}"
                log.error(
                    "camera %s: unexpected error, restarting after the backoff\n%s",
                    self.config.id,
                    self._scrub("".join(traceback.format_exception(exc))).rstrip(),
                )
            if problem is None:  # stopped, or the file played out
                break
            delay = backoff_delay(self._attempt, BACKOFF_FIRST, BACKOFF_MAX)
            self._attempt += 1
            self._fail(problem, delay)
            if self._halt.wait(delay):
                break
            self._count_reconnect()
        if self._state.online:
            self._set_online(False, "stopped")
        log.debug("camera %s: capture thread ends", self.config.id)

    # one open-read-close cycle: returns why it failed, or None when capture should end

    def _session(self) -> str | None:
        problem = missing_local_source(self._source)
        if problem:
            return problem
        capture = self._open()
        if capture is None:
            return None
        try:
            if not capture.isOpened():
                return self._scrub(cannot_open(self._source, capture))
            if isinstance(capture, VideoStream):
                self._report_decoder(capture)
            if self._source.live:
                return self._read_live(capture)
            assert isinstance(capture, VideoStream)  # files are always read through PyAV
            if self.config.realtime:
                return self._read_file_realtime(capture)
            return self._read_file_all(capture)
        finally:
            capture.release()

    def _open(self) -> Capture | None:
        """Open in a helper thread so that stop is honoured during a slow open (unreachable host, slow
        stream probe); an open abandoned at stop is released by its helper. None if stopped. A network
        host is first tried with a plain TCP connect, which says plainly why it cannot be reached."""
        lock = threading.Lock()
        done = threading.Event()
        outcome: list[Capture | BaseException] = []
        abandoned = False

        def work() -> None:
            result: Capture | BaseException
            try:
                problem = self._source.kind == "network" and unreachable(self.config.url, OPEN_TIMEOUT)
                if problem:
                    raise _Retry(problem)
                result = open_capture(
                    self._source, OPEN_TIMEOUT, self.config.stall_timeout, self.config.decoder
                )
            except BaseException as exc:
                result = exc
            with lock:
                if abandoned:
                    if not isinstance(result, BaseException):
                        result.release()
                    return
                outcome.append(result)
                done.set()

        threading.Thread(target=work, name=f"open-{self.config.id}", daemon=True).start()
        while not done.wait(0.2):
            if self._halt.is_set():
                with lock:
                    if not outcome:
                        abandoned = True
                        return None
        result = outcome[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def _read_live(self, capture: Capture) -> str | None:
        interval = 1 / self.config.fps
        stall = self.config.stall_timeout
        due = time.monotonic()
        last_good = time.monotonic()
        while not self._halt.is_set():
            started = time.monotonic()
            grabbed = capture.grab()
            now = time.monotonic()
            # a read that ran into FFmpeg's timeout may still hand back a frame the decoder held back
            if now - started >= stall * 0.9:
                return f"no frame for {stall:g} s"
            if not grabbed:
                return "the stream ended"
            following = next_due(due, now, interval)
            if following is None:
                last_good = now
                continue
            ok, image = capture.retrieve()
            if ok and image is not None:
                due = following
                last_good = now
                self._deliver(image)
            else:
                self._count_read_error()
                if now - last_good >= stall:
                    return f"no decodable frame for {stall:g} s"
        return None

    def _read_file_realtime(self, capture: VideoStream) -> str | None:
        file_fps = capture.fps
        if not (math.isfinite(file_fps) and 0 < file_fps <= 1000):
            file_fps = FILE_FPS_FALLBACK
        period, interval = 1 / file_fps, 1 / self.config.fps
        started = time.monotonic()
        index = 0  # frames read since the open, across loops: the media clock
        due = 0.0
        while True:
            late = time.monotonic() - (started + index * period)
            if late > 1.0:  # far behind (slow machine, suspend): drop the debt instead of racing through it
                started += late
            elif late < 0 and self._halt.wait(-late):
                return None
            if self._halt.is_set():
                return None
            if not self._grab_file_frame(capture, index):
                return None
            media_time = index * period
            index += 1
            following = next_due(due, media_time, interval)
            if following is None:
                continue
            due = following
            ok, image = capture.retrieve()
            if ok and image is not None:
                self._deliver(image)
            else:
                self._count_read_error()

    def _read_file_all(self, capture: VideoStream) -> str | None:
        index = 0
        while not self._halt.is_set():
            if not self._grab_file_frame(capture, index):
                return None
            index += 1
            ok, image = capture.retrieve()
            if not (ok and image is not None):
                self._count_read_error()
                continue
            while not self._board.wait_taken(self.config.id, TAKEN_POLL):
                if self._halt.is_set():
                    return None
            self._deliver(image)
        return None

    def _grab_file_frame(self, capture: VideoStream, index: int) -> bool:
        """Grab the next frame; at the end rewind (loop) or finish (False)."""
        if capture.grab():
            return True
        if index == 0:
            raise _Retry("no frame could be decoded")
        if not self.config.loop:
            log.info("camera %s: end of file after %d frames (loop = false): done", self.config.id, index)
            self._set_error("end of file")
            self._finished = True
            if self._state.online:
                self._set_online(False, "end of file")
            return False
        if not (capture.rewind() and capture.grab()):
            raise _Retry("cannot rewind the file")
        return True

    # state, metrics and status

    def _report_decoder(self, capture: VideoStream) -> None:
        if self._gpu_decoding is None:
            return
        self._gpu_decoding.set(1 if capture.on_gpu else 0)
        if capture.decoding == self._decoder_said:
            return
        self._decoder_said = capture.decoding
        log.log(
            logging.INFO if capture.on_gpu else logging.WARNING,
            "camera %s: decoder = %r: decoding %s",
            self.config.id,
            self.config.decoder,
            capture.decoding,
        )

    def _deliver(self, image: np.ndarray) -> None:
        self._frame_id += 1
        captured_at, captured_mono = time.time(), time.monotonic()
        self._board.put(Frame(self.config.id, self._frame_id, captured_at, captured_mono, as_bgr(image)))
        self._captured.inc()
        self._last_frame.set(captured_at)
        self._state = dataclasses.replace(self._state, frames=self._state.frames + 1)
        if not self._state.online:
            self._attempt = 0
            self._set_online(True)

    def _set_online(self, online: bool, reason: str = "") -> None:
        self._state = dataclasses.replace(self._state, online=online, since_mono=time.monotonic())
        self._up.set(1 if online else 0)
        self._board.set_live(self.config.id, online)
        if online:
            log.info("camera %s online (%s)", self.config.id, self._url)
        elif reason in ("stopped", "end of file"):
            log.info("camera %s offline: %s", self.config.id, reason)
        else:
            log.warning("camera %s offline: %s", self.config.id, reason)
        for listener in self._listeners:
            try:
                listener.on_camera_status(self.config.id, online)
            except Exception:
                log.exception("camera %s: status listener %s failed", self.config.id, type(listener).__name__)

    def _fail(self, problem: str, retry_in: float) -> None:
        self._set_error(problem)
        if self._state.online:
            self._set_online(False, f"{problem}; reconnecting in {retry_in:.1f} s")
        elif self._attempt == 1:
            log.warning(
                "camera %s (%s): %s; retrying in %.1f s", self.config.id, self._url, problem, retry_in
            )
        else:
            log.info("camera %s: %s; retrying in %.1f s", self.config.id, problem, retry_in)

    def _set_error(self, problem: str) -> None:
        self._state = dataclasses.replace(self._state, last_error=problem)

    def _count_read_error(self) -> None:
        self._read_errors.inc()
        self._state = dataclasses.replace(self._state, read_errors=self._state.read_errors + 1)

    def _count_reconnect(self) -> None:
        self._reconnects.inc()
        self._state = dataclasses.replace(self._state, reconnects=self._state.reconnects + 1)

    def _scrub(self, text: str) -> str:
        text = text.replace(self.config.url, self._url)
        return text.replace(self._password, "***") if self._password else text


class Probe(NamedTuple):
    problem: str | None  # None when a frame was read, else one line (never the URL)
    decoding: str  # with a decoder other than the CPU: where it decodes (`VideoStream.decoding`); else ""


def probe_source(url: str, timeout: float = 10, decoder: Decoder = "cpu") -> Probe:
    """Open the source once, on the `decoder`, and read one frame."""
    source = parse_source(url)
    problem = missing_local_source(source)
    if source.kind == "network":
        problem = unreachable(url, timeout)
        if url.lower().startswith("rtsp"):
            prefer_rtsp_over_tcp()
    if problem:
        return Probe(problem, "")
    try:
        capture = open_capture(source, timeout, timeout, decoder)
    except SourceError as exc:
        return Probe(str(exc), "")
    except cv2.error:
        return Probe("OpenCV cannot open this source", "")
    try:
        if not capture.isOpened():
            return Probe(cannot_open(source, capture), "")
        decoding = capture.decoding if isinstance(capture, VideoStream) and decoder != "cpu" else ""
        if not capture.grab():
            problem = f"no frame within {timeout:g} s" if source.live else "no frame could be decoded"
            return Probe(problem, decoding)
        ok, image = capture.retrieve()
        if not ok or image is None:
            return Probe("opened, but the frame could not be decoded", decoding)
        return Probe(None, decoding)
    finally:
        capture.release()


def unreachable(url: str, timeout: float) -> str | None:
    """For TCP-based URLs: why the host's port cannot be reached, or None (also for other schemes)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        return "invalid port in the URL"
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return None
    except socket.gaierror:
        return f"cannot resolve host {parts.hostname}"
    except ConnectionRefusedError:
        return f"connection refused by {parts.hostname}:{port}"
    except TimeoutError:
        return f"no answer from {parts.hostname}:{port} within {timeout:g} s"
    except OSError as exc:
        return f"cannot connect to {parts.hostname}:{port}: {exc.strerror or exc}"
