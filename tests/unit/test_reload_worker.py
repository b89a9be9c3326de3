"""The inference worker's side of a reload: a model swapped between two batches, with no frame lost and
every result labelled with the model that produced it; a camera forgotten; nothing run once it stopped."""

from __future__ import annotations

import threading
import time

from daemon.frames import Frame
from daemon.model.session import Model
from tests.support.edge import photo
from tests.support.worker import WorkerRig


def test_the_model_swaps_between_batches_and_no_frame_is_lost(worker_model: Model) -> None:
    model = worker_model
    rig = WorkerRig(model, ["cam"])
    board, worker = rig.board, rig.worker
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
        rig.collected.wait(30, timeout=20)
        swapper.join(10)
    finally:
        rig.close()
    assert swapped and swapped[0] is not None and swapped[0] < 0.01  # the worker stops only to swap
    assert [result.frame_id for result in rig.collected.results] == list(range(1, 31))
    ids = [result.model_id for result in rig.collected.results]
    first_new = ids.index("coco/4")
    assert set(ids[:first_new]) == {"coco/3"} and set(ids[first_new:]) == {"coco/4"}
    assert rig.inferred("cam") == 30

    assert not worker.between_batches(lambda: None, 1)  # stopped: nothing runs, at once


def test_an_added_camera_is_counted_and_a_forgotten_one_no_longer(model: Model) -> None:
    rig = WorkerRig(model, ["cam"])
    board, worker = rig.board, rig.worker
    worker.start()
    try:
        board.add_camera("new")
        board.put(Frame("new", 1, time.time(), time.monotonic(), photo("coffee.png")))
        rig.collected.wait(1)
        assert rig.inferred("new") == 1
        ran = threading.Event()
        assert worker.between_batches(lambda: (worker.forget_camera("new"), ran.set()), 5)
        assert ran.is_set()
    finally:
        rig.close()
