"""Letterboxing: BGR frames of any size -> the uint8 NHWC batch the model's prologue takes, and back.

The batch stays in the camera's own format (BGR, 0..255, height x width x channels): the cast, scale, channel
swap and layout change happen inside the model (daemon/model/prologue.py), so the only work per frame here is
one `cv2.resize` into preallocated memory.
"""

from __future__ import annotations

import cv2
import numpy as np

PAD_VALUE = 114  # the gray Ultralytics pads with; models trained on letterboxed images expect it


class LetterboxBuffer:
    """Preallocated input batch [max_batch, height, width, 3] uint8 BGR, filled in place frame by frame.

    Each frame is resized (aspect ratio kept) straight into its slot. The padding is painted only when a
    slot's geometry changes: a camera's frames keep one size, so for most frames only the picture is written.
    """

    def __init__(self, height: int, width: int, max_batch: int) -> None:
        self.height = height
        self.width = width
        self.max_batch = max_batch
        self.batch = np.full((max_batch, height, width, 3), PAD_VALUE, dtype=np.uint8)
        self._transforms = np.zeros((max_batch, 3), dtype=np.float32)
        self._geometry: list[tuple[int, int, int, int] | None] = [None] * max_batch  # per slot

    def fill(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Letterbox `images` (H x W x 3 uint8 BGR) into the buffer.

        Returns the batch view `batch[:n]` and the transforms [n, 3] (scale, pad_x, pad_y) that map
        original pixels to input pixels: input = original * scale + pad. Both are views of this buffer's
        memory, valid until the next `fill`.
        """
        n = len(images)
        if n > self.max_batch:
            raise ValueError(f"{n} images given, the buffer holds at most {self.max_batch}")
        for slot, image in enumerate(images):
            self._fill_slot(slot, image)
        return self.batch[:n], self._transforms[:n]

    def _fill_slot(self, slot: int, image: np.ndarray) -> None:
        height, width = image.shape[:2]
        scale = min(self.height / height, self.width / width)
        new_w = min(self.width, max(1, round(width * scale)))
        new_h = min(self.height, max(1, round(height * scale)))
        pad_x = (self.width - new_w) // 2
        pad_y = (self.height - new_h) // 2
        canvas = self.batch[slot]
        geometry = (new_w, new_h, pad_x, pad_y)
        if geometry != self._geometry[slot]:
            canvas[:pad_y] = PAD_VALUE
            canvas[pad_y + new_h :] = PAD_VALUE
            canvas[pad_y : pad_y + new_h, :pad_x] = PAD_VALUE
            canvas[pad_y : pad_y + new_h, pad_x + new_w :] = PAD_VALUE
            self._geometry[slot] = geometry
        self._transforms[slot] = (scale, pad_x, pad_y)
        inner = canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w]
        if (new_h, new_w) == (height, width):
            inner[:] = image
        else:
            cv2.resize(image, (new_w, new_h), dst=inner, interpolation=cv2.INTER_LINEAR)


def unletterbox(xyxy: np.ndarray, transform: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes [K, 4] in model-input pixels -> float32 boxes in the original image's pixels, clipped to it."""
    scale, pad_x, pad_y = transform.tolist()
    boxes = (xyxy - np.array([pad_x, pad_y, pad_x, pad_y], dtype=np.float32)) / np.float32(scale)
    bounds = np.array([width, height, width, height], dtype=boxes.dtype)
    return np.clip(boxes, 0, bounds, out=boxes).astype(np.float32, copy=False)
