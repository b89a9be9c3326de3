"""Short camera clips made from real photos (scikit-image's coffee, motorcycle and camera), for every test."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.demo import write_demo_clips

CLIP_SECONDS = 3
CLIP_FPS = 10
STREAM_SECONDS = 2
STREAM_FPS = 25  # RTSP clients probe about 20 frames when they connect: 25 fps keeps that near a second


@pytest.fixture(scope="session")
def demo_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> MP4: coffee (a cup), motorcycle (a motorbike), camera (a person); 3 s at 10 fps, 640x480."""
    return write_demo_clips(tmp_path_factory.mktemp("clips"), seconds=CLIP_SECONDS, fps=CLIP_FPS)


@pytest.fixture(scope="session")
def mjpeg_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same scenes as Motion JPEG AVI (what GStreamer's base and good plugins decode), 2 s at 25 fps:
    the streams the test RTSP server plays."""
    return write_demo_clips(
        tmp_path_factory.mktemp("mjpeg"), seconds=STREAM_SECONDS, fps=STREAM_FPS, suffix=".avi"
    )
