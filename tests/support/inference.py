"""Run the model the way the inference worker does (prepare, run, decode), for tests that need detections."""

from __future__ import annotations

import time

import numpy as np
import supervision as sv

from daemon.frames import DecodeParams
from daemon.model.session import Model


def infer(
    model: Model, images: list[np.ndarray], params: list[DecodeParams | None] | None = None
) -> tuple[list[sv.Detections], float]:
    """Detections (original pixels) for each BGR image, in batches of `max_batch`, and the seconds spent
    in session.run."""
    results: list[sv.Detections] = []
    seconds = 0.0
    for start in range(0, len(images), model.max_batch):
        chunk = images[start : start + model.max_batch]
        feed, transforms = model.prepare(chunk)
        started = time.perf_counter()
        outputs = model.run(feed)
        seconds += time.perf_counter() - started
        chunk_params = None if params is None else params[start : start + model.max_batch]
        results += model.detections(outputs, chunk, transforms, chunk_params)
    return results, seconds
