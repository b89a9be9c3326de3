"""Short camera clips made from real photos (scikit-image's coffee, motorcycle and camera), for every test."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.demo import write_demo_clips

CLIP_SECONDS = 3
CLIP_FPS = 10


@pytest.fixture(scope="session")
def demo_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> MP4: coffee (a cup), motorcycle (a motorbike), camera (a person); 3 s at 10 fps, 640x480."""
    return write_demo_clips(tmp_path_factory.mktemp("clips"), seconds=CLIP_SECONDS, fps=CLIP_FPS)


@pytest.fixture(scope="session")
def mjpeg_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same clips as Motion JPEG AVI, which GStreamer's base and good plugins decode (the RTSP server)."""
    return write_demo_clips(
        tmp_path_factory.mktemp("mjpeg"), seconds=CLIP_SECONDS, fps=CLIP_FPS, suffix=".avi"
    )
