"""The inference worker's side of a reload: a model swapped between two batches, with no frame lost and
every result labelled with the model that produced it; a camera forgotten; nothing run once it stopped."""

from __future__ import annotations

import threading
import time

from daemon.frames import Frame, FrameResult
from daemon.metrics import Metrics
from daemon.model.session import Model
from daemon.pipeline.board import FrameBoard
from daemon.pipeline.inference import InferenceWorker
from tests.support.edge import photo


class Results:
    def __init__(self) -> None:
        self.all: list[FrameResult] = []
        self.changed = threading.Condition()

    def submit(self, result: FrameResult) -> bool:
        with self.changed:
            self.all.append(result)
            self.changed.notify_all()
        return True

    def wait(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.all) >= count, 20), len(self.all)


def test_the_model_swaps_between_batches_and_no_frame_is_lost(model: Model) -> None:
    board = FrameBoard(["cam"], lambda _: None)
    results = Results()
    stop = threading.Event()
    metrics = Metrics()
    worker = InferenceWorker(
        model, "coco/3", board, results.submit, metrics.frames, metrics.inference, 4, 0.01, stop
    )
    worker.start()
    image = photo("coffee.png")
    swapped: list[float | None] = []
    try:
        for number in range(1, 31):
            if number == 15:
                swapper = threading.Thread(
                    target=lambda: swapped.append(worker.swap_model(model, "coco/4", 4, 10))
                )
                swapper.start()
            assert board.wait_taken("cam", 10)
            board.put(Frame("cam", number, time.time(), time.monotonic(), image))
        results.wait(30)
        swapper.join(10)
    finally:
        stop.set()
        board.close()
        worker.join(10)
    assert swapped and swapped[0] is not None and swapped[0] < 0.01  # the worker stops only to swap
    assert [result.frame_id for result in results.all] == list(range(1, 31))
    ids = [result.model_id for result in results.all]
    first_new = ids.index("coco/4")
    assert set(ids[:first_new]) == {"coco/3"} and set(ids[first_new:]) == {"coco/4"}
    assert metrics.registry.get_sample_value("edgewatch_frames_inferred_total", {"camera": "cam"}) == 30

    assert not worker.between_batches(lambda: None, 1)  # stopped: nothing runs, at once


def test_an_added_camera_is_counted_and_a_forgotten_one_no_longer(model: Model) -> None:
    board = FrameBoard(["cam"], lambda _: None)
    results = Results()
    stop = threading.Event()
    metrics = Metrics()
    worker = InferenceWorker(
        model, "coco/3", board, results.submit, metrics.frames, metrics.inference, 4, 0.01, stop
    )
    worker.start()
    try:
        board.add_camera("new")
        board.put(Frame("new", 1, time.time(), time.monotonic(), photo("coffee.png")))
        results.wait(1)
        assert metrics.registry.get_sample_value("edgewatch_frames_inferred_total", {"camera": "new"}) == 1
        ran = threading.Event()
        assert worker.between_batches(lambda: (worker.forget_camera("new"), ran.set()), 5)
        assert ran.is_set()
    finally:
        stop.set()
        board.close()
        worker.join(10)
