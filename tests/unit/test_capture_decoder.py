"""Files and network streams are decoded by FFmpeg through PyAV: one decoding thread per camera, and the same
BGR pictures OpenCV's FFmpeg capture gives, so that no detection changes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.clips import encode_h264
from daemon.pipeline.capture import open_capture, parse_source
from daemon.pipeline.video import VideoStream

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


def test_what_cannot_be_opened_says_why_without_the_url(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    stream = VideoStream(str(text), 10, 10)
    assert not stream.isOpened() and not stream.grab() and stream.retrieve() == (False, None)
    assert stream.error == "Invalid data found when processing input"

    refused = VideoStream("rtsp://admin:hunter2@127.0.0.1:1/nothing", 2, 2)
    assert not refused.isOpened()
    assert refused.error == "Connection refused"
