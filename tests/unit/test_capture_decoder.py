"""Files and network streams are decoded by FFmpeg through PyAV: one decoding thread per camera, and the same
BGR pictures OpenCV's FFmpeg capture gives, so that no detection changes; on the GPU's decoder too."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from benchmarks.clips import encode_h264
from daemon.pipeline.capture import open_capture
from daemon.pipeline.source import parse_source
from daemon.pipeline.video import VideoStream, cuda_unavailable

CAPTURES = 6


def thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


def test_each_file_or_stream_capture_decodes_on_one_thread(demo_clips: dict[str, Path]) -> None:
    clip = next(iter(demo_clips.values()))
    before = thread_count()
    captures = [open_capture(parse_source(str(clip)), 10, 10) for _ in range(CAPTURES)]
    try:
        for capture in captures:
            assert capture.isOpened() and capture.read()[0]

        # FFmpeg's frame threads, or a conversion's own pool, would start threads per capture; one thread
        # decodes and converts on the caller's own
        assert thread_count() == before
    finally:
        for capture in captures:
            capture.release()


@pytest.fixture(scope="module")
def h264_clip(tmp_path_factory: pytest.TempPathFactory, demo_clips: dict[str, Path]) -> Path:
    """The coffee clip as H.264 4:2:0, what IP cameras send."""
    if shutil.which("gst-launch-1.0") is None:
        pytest.fail("gst-launch-1.0 is missing: run scripts/setup --test")
    frames = all_frames(cv2.VideoCapture(str(demo_clips["coffee"]), cv2.CAP_FFMPEG))
    return encode_h264(frames, (640, 480), 10, tmp_path_factory.mktemp("h264") / "coffee.mp4")


def all_frames(capture: cv2.VideoCapture | VideoStream) -> list[np.ndarray]:
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        assert frame is not None
        frames.append(frame)
    capture.release()
    return frames


@pytest.mark.parametrize("clip_kind", ["H.264 MP4", "MPEG-4 MP4 (the demo)", "Motion JPEG AVI"])
def test_pictures_are_the_bgr_bytes_opencv_decodes(
    clip_kind: str, h264_clip: Path, demo_clips: dict[str, Path], mjpeg_clips: dict[str, Path]
) -> None:
    clip = {"H.264 MP4": h264_clip, "MPEG-4 MP4 (the demo)": demo_clips["motorcycle"]}.get(
        clip_kind, mjpeg_clips["camera"]
    )
    expected = all_frames(cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG))
    found = all_frames(VideoStream(str(clip), 10, 10))

    assert len(found) == len(expected) > 10
    for index, (picture, reference) in enumerate(zip(found, expected, strict=True)):
        assert picture.shape == reference.shape == (480, 640, 3) and picture.dtype == np.uint8
        assert np.array_equal(picture, reference), f"{clip_kind} frame {index}"


def test_a_file_rewinds_to_its_first_picture_and_states_its_rate(demo_clips: dict[str, Path]) -> None:
    stream = VideoStream(str(demo_clips["coffee"]), 10, 10)
    try:
        assert stream.fps == 10
        first = stream.read()[1]
        while stream.grab():
            pass
        assert stream.retrieve() == (False, None) and stream.error == ""  # the end of a file is no error
        assert stream.rewind()
        again = stream.read()[1]
        assert first is not None and again is not None and np.array_equal(first, again)
    finally:
        stream.release()


def test_a_peeked_picture_is_the_next_one_grabbed(demo_clips: dict[str, Path]) -> None:
    # decoder = "cuda" peeks at open, to learn whether FFmpeg decodes on the GPU: no picture may be lost
    expected = all_frames(VideoStream(str(demo_clips["coffee"]), 10, 10))
    stream = VideoStream(str(demo_clips["coffee"]), 10, 10)
    assert stream.peek() and stream.peek()
    found = all_frames(stream)

    assert len(found) == len(expected) > 10
    assert all(np.array_equal(a, b) for a, b in zip(found, expected, strict=True))


def test_what_cannot_be_opened_says_why_without_the_url(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    stream = VideoStream(str(text), 10, 10)
    assert not stream.isOpened() and not stream.grab() and stream.retrieve() == (False, None)
    assert stream.error == "Invalid data found when processing input"

    refused = VideoStream("rtsp://admin:hunter2@127.0.0.1:1/nothing", 2, 2)
    assert not refused.isOpened()
    assert refused.error == "Connection refused"


def raw_clip(pictures: list[av.VideoFrame], pixel_format: str, path: Path) -> Path:
    """The pictures stored uncompressed in `pixel_format`: what a decoder hands over in that layout."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("rawvideo", rate=10)
        stream.width, stream.height, stream.pix_fmt = 640, 480, pixel_format
        for picture in pictures:
            out.mux(stream.encode(picture.reformat(format=pixel_format)))
        out.mux(stream.encode(None))
    return path


def test_a_picture_in_nv12_gives_the_bgr_bytes_of_the_same_picture_in_planes(
    h264_clip: Path, tmp_path: Path
) -> None:
    # the GPU's decoder hands pictures over as NV12 (chroma interleaved), the CPU's as 4:2:0 planes; FFmpeg
    # converts the two to BGR by different paths, up to 64 levels apart
    with av.open(str(h264_clip)) as container:
        pictures = list(container.decode(video=0))[:12]
    planes = all_frames(VideoStream(str(raw_clip(pictures, "yuv420p", tmp_path / "planes.nut")), 10, 10))
    nv12_clip = raw_clip(pictures, "nv12", tmp_path / "nv12.nut")
    with av.open(str(nv12_clip)) as container:
        assert next(container.decode(video=0)).format.name == "nv12"
    interleaved = all_frames(VideoStream(str(nv12_clip), 10, 10))

    assert len(planes) == len(interleaved) == 12
    for index, (picture, reference) in enumerate(zip(interleaved, planes, strict=True)):
        assert np.array_equal(picture, reference), f"frame {index}"


@pytest.mark.skipif(cuda_unavailable() is None, reason="this host's FFmpeg can decode on a GPU")
def test_decoder_cuda_without_a_gpu_decodes_on_the_cpu_and_says_why(h264_clip: Path) -> None:
    stream = VideoStream(str(h264_clip), 10, 10, decoder="cuda")
    found = all_frames(stream)

    assert not stream.on_gpu
    assert stream.decoding == f"on the CPU: {cuda_unavailable()}"
    assert stream.decoding.startswith("on the CPU: no CUDA device (") and "Traceback" not in stream.decoding
    assert len(found) == len(all_frames(VideoStream(str(h264_clip), 10, 10))) > 10


@pytest.mark.skipif(cuda_unavailable() is not None, reason=f"no GPU decoding here: {cuda_unavailable()}")
def test_decoder_cuda_on_a_gpu_gives_the_cpu_decoders_pictures(h264_clip: Path) -> None:
    stream = VideoStream(str(h264_clip), 10, 10, decoder="cuda")
    assert stream.on_gpu and stream.decoding == "on the GPU"
    found = all_frames(stream)
    expected = all_frames(VideoStream(str(h264_clip), 10, 10))

    assert len(found) == len(expected) > 10
    for index, (picture, reference) in enumerate(zip(found, expected, strict=True)):
        assert np.array_equal(picture, reference), f"frame {index}"
