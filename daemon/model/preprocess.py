"""Letterboxing: BGR frames of any size -> one float32 NCHW batch the model takes, and back for the boxes."""

from __future__ import annotations

import cv2
import numpy as np

PAD_VALUE = 114  # the gray Ultralytics pads with; models trained on letterboxed images expect it
SCALE = np.float32(1 / 255)


class LetterboxBuffer:
    """Preallocated input batch for a model of input size (height, width), filled in place frame by frame.

    Each frame is resized (aspect ratio kept) straight into its slot's uint8 canvas, then the rows it covers
    go into the float buffer in one vectorised pass that swaps BGR->RGB, scales to 0..1 and transposes
    HWC->CHW. The padding is painted (and converted) only when a slot's geometry changes: a camera's frames
    keep one size, so for most frames only the picture itself is converted. With `mean` and `std` (RGB, for
    models that expect normalised input, e.g. RF-DETR's ImageNet statistics) the converted rows are then
    normalised, in place and once.
    """

    def __init__(
        self,
        height: int,
        width: int,
        max_batch: int,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
    ) -> None:
        self._mean = None if mean is None else np.array(mean, np.float32).reshape(3, 1, 1)
        self._inverse_std = None if std is None else (1 / np.array(std, np.float32)).reshape(3, 1, 1)
        self.height = height
        self.width = width
        self.max_batch = max_batch
        self.batch = np.zeros((max_batch, 3, height, width), dtype=np.float32)
        self._canvas = np.full((max_batch, height, width, 3), PAD_VALUE, dtype=np.uint8)
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
        canvas = self._canvas[slot]
        geometry = (new_w, new_h, pad_x, pad_y)
        if geometry == self._geometry[slot]:
            rows = slice(pad_y, pad_y + new_h)  # the padding, already painted and converted, stays
        else:
            canvas[:pad_y] = PAD_VALUE
            canvas[pad_y + new_h :] = PAD_VALUE
            canvas[pad_y : pad_y + new_h, :pad_x] = PAD_VALUE
            canvas[pad_y : pad_y + new_h, pad_x + new_w :] = PAD_VALUE
            rows = slice(0, self.height)
            self._geometry[slot] = geometry
        inner = canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w]
        if (new_h, new_w) == (height, width):
            inner[:] = image
        else:
            cv2.resize(image, (new_w, new_h), dst=inner, interpolation=cv2.INTER_LINEAR)
        converted = self.batch[slot, :, rows]
        np.multiply(canvas[rows, :, ::-1].transpose(2, 0, 1), SCALE, out=converted)
        if self._mean is not None:
            converted -= self._mean
        if self._inverse_std is not None:
            converted *= self._inverse_std
        self._transforms[slot] = (scale, pad_x, pad_y)


def unletterbox(xyxy: np.ndarray, transform: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes [K, 4] in model-input pixels -> float32 boxes in the original image's pixels, clipped to it."""
    scale, pad_x, pad_y = (float(value) for value in transform)
    boxes = (xyxy - np.array([pad_x, pad_y, pad_x, pad_y], dtype=np.float32)) / np.float32(scale)
    np.clip(boxes[:, 0::2], 0, width, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, height, out=boxes[:, 1::2])
    return boxes.astype(np.float32, copy=False)
