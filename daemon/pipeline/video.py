"""Video files and network streams, decoded by FFmpeg through PyAV.

OpenCV's FFmpeg capture holds one process-wide lock while it opens a source, and FFmpeg probes a stream for
about 5 s before the open returns: 64 cameras took more than 6 minutes to come up, one after the other, and a
camera that reconnected held up every other camera's reconnect. PyAV opens each source on its own; the
pictures are the same BGR bytes (the same conversion by FFmpeg). V4L2 devices and GStreamer pipelines stay
with OpenCV. A camera with `decoder = "cuda"` decodes on the NVIDIA GPU's decoder (NVDEC), with the same
pictures again.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections import deque
from collections.abc import Iterator

import av
import av.container
import av.logging
import numpy as np
from av.codec.hwaccel import HWAccel
from av.video.reformatter import VideoReformatter

from daemon import allocator
from daemon.pipeline.source import Decoder

# FFmpeg's decoder threads per stream. Its default is one per CPU (up to 16), each with its own frame
# buffers: a camera's worth of memory and threads multiplied by the host's cores. One thread decodes a
# 1080p H.264 stream at 30 fps on a desktop core; cameras are parallel across streams instead.
DECODER_THREADS = 1
# FFmpeg's input options, written `key;value|key;value`: the variable OpenCV's capture read, so that
# settings made for it still hold
OPTIONS_VARIABLE = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
MAX_BAD_PACKETS = 100  # undecodable packets in a row before the stream counts as broken
# FFmpeg's CUDA device on the driver's primary context, the one ONNX Runtime's CUDA provider uses: one context
# per GPU, where FFmpeg's default makes one per camera, each with its own GPU memory and context switches
CUDA_DEVICE_OPTIONS = {"primary_ctx": "1"}


def ffmpeg_options() -> dict[str, str]:
    """FFmpeg's input options from `OPENCV_FFMPEG_CAPTURE_OPTIONS`."""
    options = {}
    for pair in os.environ.get(OPTIONS_VARIABLE, "").split("|"):
        key, _, value = pair.partition(";")
        if key.strip():
            options[key.strip()] = value.strip()
    return options


def _reason(exc: Exception) -> str:
    """FFmpeg's own words for a failure, without the URL its messages carry."""
    if isinstance(exc, av.ExitError):  # the open or read timeout interrupted FFmpeg
        return "timed out"
    return getattr(exc, "strerror", None) or type(exc).__name__


_CUDA_PROBE_LOCK = threading.Lock()  # the probe changes FFmpeg's log level for a moment: one probe at a time


def cuda_unavailable() -> str | None:
    """Why FFmpeg cannot decode on an NVIDIA GPU on this host, or None when it can; asked once per process.

    FFmpeg shares the GPU's primary CUDA context only if that context was made with blocking
    synchronisation. ONNX Runtime's GPU providers make it with the driver's default flags, which serve them
    better: with FFmpeg's, an H100 ran the model up to a third slower at batch 1 (docs/performance-record.md).
    So only a process whose cameras decode on the GPU asks this before it loads the model: the device the
    probe opens stays open, and the context with it, made as FFmpeg wants it."""
    with _CUDA_PROBE_LOCK:
        return _open_cuda_device()[1]


@functools.lru_cache(maxsize=1)
def _open_cuda_device() -> tuple[HWAccel | None, str | None]:
    level = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)  # FFmpeg's own words on why, e.g. "Cannot load libcuda.so.1"
    try:
        with av.logging.Capture() as said:
            device = HWAccel("cuda", options=CUDA_DEVICE_OPTIONS).create(av.codec.Codec("h264", "r"))
    except NotImplementedError:
        return None, "this FFmpeg has no CUDA decoding"
    except (av.FFmpegError, OSError) as exc:
        words = "; ".join(message.strip() for _level, _name, message in said) or _reason(exc)
        if "incompatible flags" in words:
            return None, (
                "the model's GPU session made the CUDA context first, as FFmpeg cannot share it; restart "
                "edgewatch to decode on the GPU"
            )
        return None, f"no CUDA device ({words})"
    finally:
        av.logging.set_level(level)
    return device, None


class VideoStream:
    """The first video stream of a file or URL, read with the calls of `cv2.VideoCapture` the cameras make:
    `isOpened`, `grab` (decode the next picture), `retrieve` (that picture in BGR), `read`, `release`; and
    for files `fps` and `rewind`. Nothing is raised: `grab` and `retrieve` say False, and `error` keeps the
    last reason (never the URL).

    With `decoder = "cuda"` FFmpeg decodes on the GPU where it can (`on_gpu`), else on the CPU, and
    `decoder_problem` says why; the BGR pictures are the same bytes either way."""

    def __init__(
        self, target: str, open_timeout: float, read_timeout: float, decoder: Decoder = "cpu"
    ) -> None:
        self.error = ""
        self.on_gpu = False
        self.decoder_problem = ""
        self._container: av.container.InputContainer | None = None
        self._pictures: deque[av.VideoFrame] = deque()
        self._picture: av.VideoFrame | None = None
        self._bgr = VideoReformatter()
        self._yuv420p = VideoReformatter()
        hwaccel = None
        if decoder == "cuda":
            self.decoder_problem = cuda_unavailable() or ""
            if not self.decoder_problem:
                hwaccel = HWAccel("cuda", allow_software_fallback=True, options=CUDA_DEVICE_OPTIONS)
        started = time.monotonic()
        try:
            container = av.open(
                target, options=ffmpeg_options(), timeout=(open_timeout, read_timeout), hwaccel=hwaccel
            )
        except (av.FFmpegError, OSError) as exc:
            # an interrupted RTSP handshake reads as invalid data: say what happened instead
            timed_out = time.monotonic() - started >= open_timeout * 0.9
            self.error = f"no answer within {open_timeout:g} s" if timed_out else _reason(exc)
            return
        finally:
            # FFmpeg's probe decodes a few pictures and frees them, in this thread's heap: with cameras
            # opening side by side, 64 of them held about 230 MiB more until trimmed
            # (docs/performance-record.md)
            allocator.return_freed_memory()
        if not isinstance(container, av.container.InputContainer) or not container.streams.video:
            container.close()
            self.error = "no video stream"
            return
        self._container = container
        self._stream = container.streams.video[0]
        self._stream.codec_context.thread_count = DECODER_THREADS
        self._packets: Iterator[av.Packet] = container.demux(self._stream)
        if hwaccel is not None:
            self._find_decoder()

    def _find_decoder(self) -> None:
        """Decode the first picture now: FFmpeg settles on the GPU or falls back to the CPU (a driver without
        its decoder library, a profile NVDEC lacks) only then, and `on_gpu` is to tell the truth from the
        open on."""
        context = self._stream.codec_context
        if not context.is_hwaccel:
            self.decoder_problem = f"the GPU does not decode {context.name}"
            return
        if not self.peek():
            return  # the camera's first grab meets the same end and says why
        self.on_gpu = context.pix_fmt == "cuda"  # else FFmpeg fell back to a software format
        if not self.on_gpu:
            self.decoder_problem = f"the GPU's decoder did not start for this {context.name} stream"

    @property
    def decoding(self) -> str:
        """Where the stream is decoded, for the operator: "on the GPU", or "on the CPU" and why not."""
        if self.on_gpu:
            return "on the GPU"
        return f"on the CPU: {self.decoder_problem}" if self.decoder_problem else "on the CPU"

    def isOpened(self) -> bool:  # cv2.VideoCapture's name
        return self._container is not None

    def grab(self) -> bool:
        """Decode up to the next picture: False at the end of the stream, on a read error or a timeout."""
        self._picture = None
        if self._container is None:
            return False
        bad = 0
        while not self._pictures:
            try:
                packet = next(self._packets)
            except StopIteration:
                return False
            except (av.FFmpegError, OSError) as exc:
                self.error = _reason(exc)
                return False
            try:
                self._pictures.extend(packet.decode())
                bad = 0
            except av.InvalidDataError as exc:  # a damaged packet: decoding resumes at the next good one
                bad += 1
                if bad >= MAX_BAD_PACKETS:
                    self.error = _reason(exc)
                    return False
            except av.FFmpegError as exc:
                self.error = _reason(exc)
                return False
        self._picture = self._pictures.popleft()
        return True

    def peek(self) -> bool:
        """Decode the next picture now and keep it for the next `grab`; False where `grab` would be."""
        if not self.grab():
            return False
        assert self._picture is not None
        self._pictures.appendleft(self._picture)
        self._picture = None
        return True

    def retrieve(self) -> tuple[bool, np.ndarray | None]:
        """The picture of the last `grab` in BGR, converted by FFmpeg on this thread."""
        if self._picture is None:
            return False, None
        try:
            picture = self._planar(self._picture)
            return True, self._bgr.reformat(picture, format="bgr24", threads=1).to_ndarray()
        except (av.FFmpegError, ValueError) as exc:
            self.error = _reason(exc)
            return False, None

    def _planar(self, picture: av.VideoFrame) -> av.VideoFrame:
        """The picture with 4:2:0 chroma in planes, as the CPU's decoder gives it. The GPU's decoder hands
        over NV12 (interleaved chroma), which FFmpeg converts to BGR by another path, with other rounding:
        up to 64 levels apart, enough to move detections. Planes first, and the BGR bytes are the same."""
        if picture.format.name == "nv12":
            return self._yuv420p.reformat(picture, format="yuv420p", threads=1)
        return picture

    def read(self) -> tuple[bool, np.ndarray | None]:
        return self.retrieve() if self.grab() else (False, None)

    @property
    def fps(self) -> float:
        """The frame rate the file states (average, else base rate); 0 when it states none."""
        if self._container is None:
            return 0.0
        rate = self._stream.average_rate or self._stream.base_rate
        return float(rate) if rate else 0.0

    def rewind(self) -> bool:
        """Back to the first picture (files); False if the source cannot seek."""
        if self._container is None:
            return False
        try:
            self._container.seek(0)  # flushes the decoder too
        except (av.FFmpegError, OSError) as exc:
            self.error = _reason(exc)
            return False
        self._pictures.clear()
        self._picture = None
        self._packets = self._container.demux(self._stream)
        return True

    def release(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        self._pictures.clear()
        self._picture = None
