"""The inference worker on the real model and a real board, its results collected in order."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from daemon.frames import FrameResult
from daemon.metrics import Metrics
from daemon.model.session import Model
from daemon.pipeline.board import FrameBoard
from daemon.pipeline.inference import InferenceWorker


class Collected:
    """What the worker hands on, in order; the test waits for a count."""

    def __init__(self) -> None:
        self.results: list[FrameResult] = []
        self.arrived = threading.Condition()

    def submit(self, result: FrameResult) -> bool:
        with self.arrived:
            self.results.append(result)
            self.arrived.notify_all()
        return True

    def wait(self, count: int, timeout: float = 10) -> list[FrameResult]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.results) >= count, timeout), self.results
            return list(self.results)


@dataclass
class WorkerRig:
    """A worker (not started) that takes batches of up to `max_batch` from `board`, waiting 10 ms for one to
    fill."""

    model: Model
    cameras: list[str]
    max_batch: int = 4
    board: FrameBoard = field(init=False)
    collected: Collected = field(default_factory=Collected)
    metrics: Metrics = field(default_factory=Metrics)
    stop: threading.Event = field(default_factory=threading.Event)
    worker: InferenceWorker = field(init=False)

    def __post_init__(self) -> None:
        self.board = FrameBoard(self.cameras, lambda _: None)
        self.worker = InferenceWorker(
            self.model, "coco/3", self.board, self.collected.submit, self.metrics.frames,
            self.metrics.inference, self.max_batch, 0.01, self.stop,
        )

    def inferred(self, camera: str) -> float | None:
        return self.metrics.registry.get_sample_value("edgewatch_frames_inferred_total", {"camera": camera})

    def close(self, timeout: float = 10) -> None:
        self.stop.set()
        self.board.close()
        self.worker.join(timeout)


@pytest.fixture(params=[False, True], ids=["in turn", "overlapped"])
def worker_model(request: pytest.FixtureRequest, model: Model) -> Iterator[Model]:
    """The demo model, run by the worker in turn (as on a CPU) and overlapped (as on a GPU)."""
    model.overlap_runs = request.param
    yield model
    model.overlap_runs = False
