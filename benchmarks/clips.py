"""H.264/MP4 camera clips for the benchmark, made from the demo photos (pan and zoom, as daemon/demo.py does).

OpenCV's wheel may not encode H.264, so the frames are piped to GStreamer's x264 encoder
(`gst-launch-1.0`; Debian: gstreamer1.0-tools, gstreamer1.0-plugins-base/-good/-ugly).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from benchmarks.sources import demo_scenes

CLIP_SIZES: tuple[tuple[str, tuple[int, int]], ...] = (
    ("640x480", (640, 480)),
    ("720p", (1280, 720)),
    ("1080p", (1920, 1080)),
)
CLIP_FPS = 15
CLIP_SECONDS = 12
KBITS_PER_PIXEL = 4 / 1000  # about what IP cameras stream: ~1.2 Mbit/s at 640x480, ~8 Mbit/s at 1080p


def encode_h264(frames: list, size: tuple[int, int], fps: int, out: Path) -> Path:
    """Encode BGR frames of `size` (width, height) into an H.264 MP4 at `fps` (one keyframe a second), in
    4:2:0 as cameras send it: left to itself, x264 takes BGR as 4:4:4, which costs more to decode."""
    launcher = shutil.which("gst-launch-1.0")
    if launcher is None:
        raise RuntimeError("making H.264 clips needs gst-launch-1.0 (Debian: gstreamer1.0-tools)")
    width, height = size
    partial = out.with_name(f".{out.stem}.partial.mp4")
    pipeline = (
        f"fdsrc fd=0 ! rawvideoparse width={width} height={height} format=bgr framerate={fps}/1 "
        f"! videoconvert ! video/x-raw,format=I420 ! x264enc speed-preset=veryfast key-int-max={fps} "
        f"bitrate={round(width * height * KBITS_PER_PIXEL)} ! mp4mux ! filesink location={partial}"
    )
    process = subprocess.Popen(
        [launcher, "-q", *pipeline.split()], stdin=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdin is not None and process.stderr is not None
    for frame in frames:
        process.stdin.write(frame.tobytes())
    process.stdin.close()
    errors = process.stderr.read().decode(errors="replace")
    if process.wait() != 0 or not partial.is_file():
        raise RuntimeError(f"gst-launch-1.0 could not encode {out.name}: {errors.strip()[-500:]}")
    os.replace(partial, out)
    return out


def make_clips(folder: Path, sizes: tuple[tuple[str, tuple[int, int]], ...] = CLIP_SIZES) -> dict[str, Path]:
    """The clips of `sizes` in `folder` (name -> path), made once and kept."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = {}
    for name, size in sizes:
        out = folder / f"demo-{name}-{CLIP_FPS}fps-yuv420.mp4"
        if not out.is_file():
            scenes = demo_scenes(size, CLIP_FPS * CLIP_SECONDS // 3)  # the photos one after the other
            encode_h264([frame for scene in scenes for frame in scene], size, CLIP_FPS, out)
        clips[name] = out
    return clips
