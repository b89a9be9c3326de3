"""Demo camera clips made from real photos bundled with scikit-image.

Each clip is a slow pan and zoom over one photo (consecutive frames differ, as from a real camera,
while the object stays in view), except the street clip, where the photo moves along a known path
(STREET_PATH) across a line and into a zone. `python -m daemon.demo OUT_DIR` writes the clips the default
config plays.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# clip name -> scikit-image photo; what the demo model should find in each
DEMO_PHOTOS = {
    "coffee": "coffee.png",  # cup
    "motorcycle": "motorcycle_left.png",  # motorbike
    "camera": "camera.png",  # person (grayscale photo)
}
STREET_PHOTO = "motorcycle_left.png"  # the moving object of the street clip (a motorbike)
FOURCC_BY_SUFFIX = {".mp4": "mp4v", ".avi": "MJPG"}  # MJPG: decodable by GStreamer's base/good plugins
ZOOM = 0.15  # largest extra zoom over the fitted photo
PAN = 0.03  # largest pan, as a fraction of the frame size
BORDER_BGR = (48, 48, 48)


def photo_path(name: str) -> Path:
    """Path of a photo in scikit-image's data folder (scikit-image is needed only to make the clips)."""
    try:
        from skimage import data
    except ImportError:
        raise RuntimeError("making the demo clips needs scikit-image (pip install scikit-image)") from None
    return Path(data.data_dir) / name


def read_photo(photo: Path) -> np.ndarray:
    """The photo as H x W x 3 uint8 BGR (grayscale photos are converted)."""
    image = cv2.imread(str(photo), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{photo}: not a readable image")
    return image


def pan_zoom_transform(photo_size: tuple[int, int], frame_size: tuple[int, int], phase: float) -> np.ndarray:
    """2x3 affine matrix mapping the photo into the frame at `phase` (0..1, one full zoom in and out).

    The photo is fitted inside the frame, then zoomed by up to ZOOM and panned by up to PAN around the centre.
    """
    (photo_w, photo_h), (frame_w, frame_h) = photo_size, frame_size
    angle = 2 * math.pi * phase
    scale = min(frame_w / photo_w, frame_h / photo_h) * (1 + ZOOM * (1 - math.cos(angle)) / 2)
    centre_x = frame_w / 2 + PAN * frame_w * math.sin(angle)
    centre_y = frame_h / 2 + PAN * frame_h * math.sin(2 * angle) / 2
    return np.array(
        [[scale, 0, centre_x - scale * photo_w / 2], [0, scale, centre_y - scale * photo_h / 2]],
        dtype=np.float64,
    )


@dataclass(frozen=True)
class MovingPath:
    """Where a moving object's bottom centre is, relative to the frame: from `start` to `end` in `travel`
    seconds, then still for `rest` seconds (the clip is `travel + rest` long)."""

    start: tuple[float, float] = (0.22, 0.85)
    end: tuple[float, float] = (0.75, 0.85)
    travel: float = 4.0
    rest: float = 4.0
    height: float = 0.5  # object height relative to the frame

    def at(self, seconds: float) -> tuple[float, float]:
        done = min(1.0, max(0.0, seconds / self.travel))
        return (
            self.start[0] + (self.end[0] - self.start[0]) * done,
            self.start[1] + (self.end[1] - self.start[1]) * done,
        )


# The street camera's clip: the motorbike rides left to right across the `gate` line (x = 0.5) into the
# `parking` zone (x > 0.55) and stays there; the embedded config.toml and the tests rely on this path.
STREET_PATH = MovingPath()


def moving_frame(
    photo: np.ndarray, frame_size: tuple[int, int], path: MovingPath, seconds: float
) -> np.ndarray:
    """One frame: the whole photo, scaled to the path's height, its bottom centre where the path is now."""
    frame_w, frame_h = frame_size
    scale = path.height * frame_h / photo.shape[0]
    x, y = path.at(seconds)
    matrix = np.array(
        [
            [scale, 0, x * frame_w - scale * photo.shape[1] / 2],
            [0, scale, y * frame_h - scale * photo.shape[0]],
        ],
        dtype=np.float64,
    )
    return cv2.warpAffine(
        photo,
        matrix,
        frame_size,
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=BORDER_BGR,
    )


def write_moving_clip(
    photo: Path,
    out: Path,
    path: MovingPath = STREET_PATH,
    fps: float = 10,
    size: tuple[int, int] = (640, 480),
) -> Path:
    """Write a clip of the photo moving along `path`; codec and atomic write as in write_demo_clip."""
    image = read_photo(photo)
    frames = max(1, round((path.travel + path.rest) * fps))
    return _write_frames(
        out, fps, size, (moving_frame(image, size, path, index / fps) for index in range(frames))
    )


def _write_frames(out: Path, fps: float, size: tuple[int, int], frames: Iterable[np.ndarray]) -> Path:
    suffix = out.suffix.lower()
    if suffix not in FOURCC_BY_SUFFIX:
        raise ValueError(f"{out}: unsupported clip type {suffix!r}; use one of {sorted(FOURCC_BY_SUFFIX)}")
    partial = out.with_name(f".{out.stem}.partial{suffix}")
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*FOURCC_BY_SUFFIX[suffix]), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"{out}: OpenCV cannot write {suffix} video here")
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()
    os.replace(partial, out)
    return out


def write_demo_clip(
    photo: Path, out: Path, seconds: float = 10, fps: float = 10, size: tuple[int, int] = (640, 480)
) -> Path:
    """Write a clip of `seconds` at `fps`, frames of `size` (width, height), panning and zooming over `photo`.

    The codec follows the suffix: `.mp4` is MPEG-4 ('mp4v'), `.avi` is Motion JPEG ('MJPG'). The file appears
    complete or not at all (written beside, then renamed).
    """
    image = read_photo(photo)
    photo_size = (image.shape[1], image.shape[0])
    frames = max(1, round(seconds * fps))

    def render(index: int) -> np.ndarray:
        matrix = pan_zoom_transform(photo_size, size, index / frames)
        return cv2.warpAffine(
            image,
            matrix,
            size,
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=BORDER_BGR,
        )

    return _write_frames(out, fps, size, (render(index) for index in range(frames)))


def write_demo_clips(
    out_dir: Path,
    seconds: float = 10,
    fps: float = 10,
    size: tuple[int, int] = (640, 480),
    suffix: str = ".mp4",
) -> dict[str, Path]:
    """Every demo clip in `out_dir` (name -> path); clips already there are kept as they are."""
    clips = {}
    for name, photo in DEMO_PHOTOS.items():
        out = out_dir / f"{name}{suffix}"
        if not out.exists():
            write_demo_clip(photo_path(photo), out, seconds=seconds, fps=fps, size=size)
        clips[name] = out
    street = out_dir / f"street{suffix}"
    if not street.exists():
        write_moving_clip(photo_path(STREET_PHOTO), street, fps=fps, size=size)
    clips["street"] = street
    return clips


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m daemon.demo", description="Write the demo camera clips (skips clips already there)."
    )
    names = [*DEMO_PHOTOS, "street"]
    parser.add_argument("out_dir", type=Path, help="folder for " + ", ".join(f"{n}.mp4" for n in names))
    args = parser.parse_args(argv)
    try:
        clips = write_demo_clips(args.out_dir)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"daemon.demo: {exc}", file=sys.stderr)
        return 1
    for path in clips.values():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
