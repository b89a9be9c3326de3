"""Letterboxing into the model's input batch, and mapping boxes back to the original frame."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.model.preprocess import LetterboxBuffer, unletterbox

GRAY = 114
BLUE_BGR = (255, 0, 0)


def image_with_box(height: int, width: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """A black BGR image with a filled pure-blue rectangle covering pixels x1..x2-1, y1..y2-1."""
    image = np.zeros((height, width, 3), np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = BLUE_BGR
    return image


def blue_box(hwc: np.ndarray) -> np.ndarray:
    """Bounding box (xyxy, pixel edges) of the blue pixels of a BGR canvas: channel 0 high, 2 low."""
    ys, xs = np.nonzero((hwc[..., 0] > 127) & (hwc[..., 2] < 128))
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


@pytest.mark.parametrize(
    ("height", "width", "box"),
    [
        (480, 640, (100, 50, 300, 400)),  # landscape, downscaled
        (1080, 1920, (1500, 900, 1900, 1070)),  # full HD, box near the corner
        (640, 360, (20, 30, 200, 600)),  # portrait: padded left and right
        (90, 200, (10, 20, 150, 70)),  # smaller than the input: upscaled
    ],
)
def test_box_drawn_in_the_frame_maps_back_within_a_pixel(height: int, width: int, box: tuple) -> None:
    buffer = LetterboxBuffer(320, 416, max_batch=2)
    batch, transforms = buffer.fill([image_with_box(height, width, box)])

    assert batch.shape == (1, 320, 416, 3) and batch.dtype == np.uint8
    in_input = blue_box(batch[0])
    back = unletterbox(in_input[None], transforms[0], width, height)

    assert back.dtype == np.float32
    # edges are found to the model-input pixel: within 1 px, or within one input pixel when downscaled
    np.testing.assert_allclose(back[0], box, atol=max(1.0, 1 / transforms[0, 0]))


def test_pads_gray_and_keeps_the_frame_as_it_is() -> None:
    buffer = LetterboxBuffer(416, 416, max_batch=1)
    image = np.empty((200, 416, 3), np.uint8)
    image[:] = (10, 20, 30)  # B, G, R

    batch, transforms = buffer.fill([image])

    np.testing.assert_allclose(transforms[0], [1.0, 0, 108])
    assert (batch[0, :108] == GRAY).all()  # top band
    assert (batch[0, 308:] == GRAY).all()  # bottom band
    assert (batch[0, 108:308] == (10, 20, 30)).all()  # BGR, 0..255: the prologue converts


def test_each_slot_is_repainted_when_frame_sizes_change() -> None:
    buffer = LetterboxBuffer(416, 416, max_batch=2)
    white = np.full((416, 416, 3), 255, np.uint8)
    buffer.fill([white, white])

    batch, transforms = buffer.fill([np.full((100, 400, 3), 255, np.uint8)])

    assert batch.shape[0] == 1
    scale, pad_x, pad_y = transforms[0]
    top = round(pad_y)
    assert (batch[0, :top] == GRAY).all()
    assert (batch[0, 416 - top :] == GRAY).all()
    assert (batch[0, top : 416 - top] == 255).all()
    assert scale == pytest.approx(416 / 400) and pad_x == 0


def test_batch_is_a_view_of_the_preallocated_buffer() -> None:
    buffer = LetterboxBuffer(64, 64, max_batch=4)
    images = [
        np.zeros((48, 64, 3), np.uint8),
        np.zeros((64, 32, 3), np.uint8),
        np.zeros((10, 10, 3), np.uint8),
    ]

    batch, transforms = buffer.fill(images)

    assert batch.shape == (3, 64, 64, 3) and transforms.shape == (3, 3)
    assert np.shares_memory(batch, buffer.batch)
    with pytest.raises(ValueError, match="at most 4"):
        buffer.fill(images + images)


def test_unletterbox_clips_to_the_image() -> None:
    transform = np.array([0.5, 8, 48], np.float32)  # a 800x640 frame in a 416x416 input
    boxes = np.array([[0, 0, 416, 416], [108, 148, 208, 248]], np.float32)

    back = unletterbox(boxes, transform, width=800, height=640)

    np.testing.assert_allclose(back, [[0, 0, 800, 640], [200, 200, 400, 400]])
