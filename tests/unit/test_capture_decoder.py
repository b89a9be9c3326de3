"""One FFmpeg decoding thread per camera: OpenCV's default (one per CPU, up to 16, each with its own frame
buffers) multiplies every camera's threads and memory by the host's cores."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import pytest

from daemon.pipeline.capture import open_capture, parse_source

CAPTURES = 6


def thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not hasattr(cv2, "CAP_PROP_N_THREADS"), reason="OpenCV < 4.6 sets no decoder threads")
def test_each_file_or_stream_capture_decodes_on_one_thread(demo_clips: dict[str, Path]) -> None:
    clip = next(iter(demo_clips.values()))
    before = thread_count()
    captures = [open_capture(parse_source(str(clip)), 10, 10) for _ in range(CAPTURES)]
    try:
        for capture in captures:
            assert capture.isOpened() and capture.read()[0]
            assert capture.get(cv2.CAP_PROP_N_THREADS) == 1

        # FFmpeg's frame threading would start threads per capture; one thread decodes on the caller's own
        assert thread_count() - before < CAPTURES
    finally:
        for capture in captures:
            capture.release()
