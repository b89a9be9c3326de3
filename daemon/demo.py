"""Demo camera clips made from real photos bundled with scikit-image.

Each clip is a slow pan and zoom over one photo: consecutive frames differ, as from a real camera,
while the object stays in view. `python -m daemon.demo OUT_DIR` writes the clips the default config plays.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import cv2
import numpy as np

# clip name -> scikit-image photo; what the demo model should find in each
DEMO_PHOTOS = {
    "coffee": "coffee.png",  # cup
    "motorcycle": "motorcycle_left.png",  # motorbike
    "camera": "camera.png",  # person (grayscale photo)
}
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


def write_demo_clip(
    photo: Path, out: Path, seconds: float = 10, fps: float = 10, size: tuple[int, int] = (640, 480)
) -> Path:
    """Write a clip of `seconds` at `fps`, frames of `size` (width, height), panning and zooming over `photo`.

    The codec follows the suffix: `.mp4` is MPEG-4 ('mp4v'), `.avi` is Motion JPEG ('MJPG'). The file appears
    complete or not at all (written beside, then renamed).
    """
    suffix = out.suffix.lower()
    if suffix not in FOURCC_BY_SUFFIX:
        raise ValueError(f"{out}: unsupported clip type {suffix!r}; use one of {sorted(FOURCC_BY_SUFFIX)}")
    image = read_photo(photo)
    photo_size = (image.shape[1], image.shape[0])
    frames = max(1, round(seconds * fps))
    partial = out.with_name(f".{out.stem}.partial{suffix}")
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*FOURCC_BY_SUFFIX[suffix]), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"{out}: OpenCV cannot write {suffix} video here")
    try:
        for index in range(frames):
            matrix = pan_zoom_transform(photo_size, size, index / frames)
            frame = cv2.warpAffine(
                image,
                matrix,
                size,
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=BORDER_BGR,
            )
            writer.write(frame)
    finally:
        writer.release()
    os.replace(partial, out)
    return out


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
    return clips


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m daemon.demo", description="Write the demo camera clips (skips clips already there)."
    )
    parser.add_argument("out_dir", type=Path, help="folder for " + ", ".join(f"{n}.mp4" for n in DEMO_PHOTOS))
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
