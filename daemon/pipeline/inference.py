"""The inference worker: the one thread that runs the model.

It takes the freshest frame of every ready camera from the board (up to `max_batch`, waiting at most
`batch_timeout_ms` for the batch to fill), runs them as one batch, gives every frame an `inference_id` and
every detection a `detection_id`, and hands the results to the dispatcher without ever blocking on it.

How the steps of a batch meet depends on the model (`Model.overlap_runs`):

- CPU: letterbox, run, decode in turn. A batch's results go to the dispatcher when the next batch starts
  running, so that the sinks run while `session.run` has released the GIL; when no frame is waiting, at once.
- GPU: `session.run` goes on a second thread, `inference-run`, which does nothing else. While it runs one
  batch, this thread letterboxes the next one into the model's other buffer and, once that run has started,
  decodes the batch before and hands its results over: the GPU runs back to back while frames keep coming.
  When none are waiting, a batch is decoded as soon as its run ends.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from daemon.frames import Frame, FrameResult, uuid4_strings
from daemon.metrics.frames import FrameMetrics
from daemon.metrics.inference import InferenceMetrics
from daemon.model.session import Model
from daemon.pipeline.board import FrameBoard

log = logging.getLogger("edgewatch.inference")

IDLE_WAIT = 0.5  # seconds; how long one wait for a first frame lasts before the stop flag is checked again


class _Control:
    """An action to run on the worker thread between two batches, and whether it ran."""

    def __init__(self, action: Callable[[], None]) -> None:
        self.action = action
        self.done = threading.Event()
        self.cancelled = False
        self.lock = threading.Lock()


@dataclass
class _Batch:
    """Frames letterboxed into one of the model's slots, to run and decode."""

    frames: list[Frame]
    model: Model
    model_id: str
    slot: int
    feed: np.ndarray
    transforms: np.ndarray


Ran = tuple[list[np.ndarray], float]  # a batch's outputs, and how long session.run took (seconds)


def _timed_run(batch: _Batch) -> Ran:
    started = time.perf_counter()
    outputs = batch.model.run(batch.feed, batch.slot)
    return outputs, time.perf_counter() - started


class _RunThread(threading.Thread):
    """`session.run` for a worker whose model overlaps runs, one batch at a time: the worker hands a batch
    over only once the one before has run. A daemon thread, so that a run that never returns (a hung device)
    cannot hold the process at exit."""

    def __init__(self) -> None:
        super().__init__(name="inference-run", daemon=True)
        self._batches: queue.Queue[tuple[_Batch, Future[Ran]] | None] = queue.Queue(maxsize=2)  # 1 + the end

    def submit(self, batch: _Batch) -> Future[Ran]:
        if not self.is_alive():
            self.start()  # at the first batch: a model on the CPU never needs it
        ran: Future[Ran] = Future()
        self._batches.put_nowait((batch, ran))
        return ran

    def close(self, wait: bool) -> None:
        """End after the batch under way, if any; `wait`: until then."""
        if self.is_alive():
            self._batches.put_nowait(None)
            if wait:
                self.join()

    def run(self) -> None:
        while (job := self._batches.get()) is not None:
            batch, ran = job
            try:
                ran.set_result(_timed_run(batch))
            except BaseException as exc:  # the worker raises it from ran.result()
                ran.set_exception(exc)


class InferenceWorker(threading.Thread):
    def __init__(
        self,
        model: Model,
        model_id: str,
        board: FrameBoard,
        submit: Callable[[FrameResult], bool],
        frames: FrameMetrics,
        metrics: InferenceMetrics,
        max_batch: int,
        batch_timeout: float,
        stop: threading.Event,
    ) -> None:
        super().__init__(name="inference", daemon=True)
        self._model = model
        self._model_id = model_id
        self._board = board
        self._submit = submit
        self._metrics = metrics
        self._frames = frames
        self._max_batch = max(1, min(max_batch, model.max_batch))
        self._batch_timeout = batch_timeout
        self._halt = stop
        self._inferred = {camera: frames.frames_inferred.labels(camera) for camera in board.camera_ids}
        self._controls: queue.Queue[_Control] = queue.Queue(maxsize=8)  # reloads are serialised: 1 at a time
        self._runner = _RunThread()
        # overlapped: the batch whose run is under way (or done, not yet decoded)
        self._running: tuple[_Batch, Future[Ran]] | None = None
        self._pending: list[FrameResult] = []  # in turn: the last batch's results, for the dispatcher
        self._slot = 0  # the model's buffer the next batch is letterboxed into
        self.last_progress = time.monotonic()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                self.last_progress = time.monotonic()
                self._run_controls()
                # with a run under way or results not yet handed over, frames already there go on at once
                if self._running is not None or self._pending:
                    frames = self._board.take_batch(self._max_batch, 0, 0)
                else:
                    frames = self._board.take_batch(self._max_batch, self._batch_timeout, IDLE_WAIT)
                self._advance(frames)
            # the cameras stopped first: the frames they left are inferred, so that every frame captured is
            # either inferred or counted as dropped (at most one per camera; bounded if cameras still run)
            for _ in range(math.ceil(len(self._inferred) / self._max_batch)):
                frames = self._board.take_batch(self._max_batch, 0, 0)
                if not frames:
                    break
                self._advance(frames)
            self._advance([])
        except BaseException as exc:  # the process must end: systemd restarts it
            self.error = exc
            log.critical("inference worker failed: %s", exc, exc_info=True)
        finally:
            # after a failure a run may still be under way: the process is ending, nothing waits for it
            self._runner.close(wait=self.error is None)

    @property
    def run_thread(self) -> threading.Thread:
        """`session.run`'s own thread when the model overlaps runs (started at the first batch); never started
        on a CPU."""
        return self._runner

    # live reconfiguration (called from the reload thread)

    def between_batches(self, action: Callable[[], None], timeout: float) -> bool:
        """Run `action` on this thread between two batches, with no run under way and every result of the
        batches before it handed to the dispatcher; wait for it at most `timeout` s. False (and `action`
        never runs) if the worker did not get there in time or has stopped."""
        if not self.is_alive():
            return False
        control = _Control(action)
        try:
            self._controls.put_nowait(control)
        except queue.Full:
            return False
        if control.done.wait(timeout):
            return True
        with control.lock:
            control.cancelled = not control.done.is_set()
        return not control.cancelled

    def swap_model(self, model: Model, model_id: str, max_batch: int, timeout: float) -> float | None:
        """Use `model` (loaded and warmed up by the caller) from the next batch on, its results labelled
        `model_id`. Returns how long inference paused for it (seconds), or None if the swap did not happen."""
        paused: list[float] = []

        def swap() -> None:
            started = time.perf_counter()
            self._model, self._model_id = model, model_id
            self._max_batch = max(1, min(max_batch, model.max_batch))
            paused.append(time.perf_counter() - started)

        return paused[0] if self.between_batches(swap, timeout) else None

    def set_batch_timeout(self, seconds: float) -> None:
        self._batch_timeout = seconds

    def forget_camera(self, camera_id: str) -> None:
        """A removed camera: its counter goes (call between batches, before its series are removed)."""
        self._inferred.pop(camera_id, None)

    def _run_controls(self) -> None:
        while True:
            try:
                control = self._controls.get_nowait()
            except queue.Empty:
                return
            with control.lock:
                if control.cancelled:
                    continue
                self._advance([])
                try:
                    control.action()
                finally:
                    control.done.set()

    def _count_inferred(self, camera_id: str) -> None:
        counter = self._inferred.get(camera_id)
        if counter is None:  # a camera added while running
            counter = self._inferred[camera_id] = self._frames.frames_inferred.labels(camera_id)
        counter.inc()

    def _advance(self, frames: list[Frame]) -> None:
        """Take `frames` (if any) one step through the model; with none, finish what is under way: every
        result of the batches so far is then with the dispatcher."""
        batch = None
        if frames:
            feed, transforms = self._model.prepare([frame.image for frame in frames], self._slot)
            batch = _Batch(frames, self._model, self._model_id, self._slot, feed, transforms)
            self._slot = (self._slot + 1) % Model.SLOTS
        if self._model.overlap_runs:
            self._advance_overlapped(batch)
        else:
            self._advance_in_turn(batch)

    def _advance_in_turn(self, batch: _Batch | None) -> None:
        self._hand_over()  # the batch before's results, beside this batch's session.run
        if batch is not None:
            self._pending = self._results(batch, *_timed_run(batch))

    def _advance_overlapped(self, batch: _Batch | None) -> None:
        finished = None
        if self._running is not None:  # letterboxed while it ran; its slot is free again once its run is over
            before, run = self._running
            finished = (before, *run.result())
            self._running = None
        if batch is not None:
            self._running = (batch, self._runner.submit(batch))
        if finished is not None:  # decoded while this batch runs
            self._pending = self._results(*finished)
            self._hand_over()

    def _hand_over(self) -> None:
        for result in self._pending:
            self._submit(result)
        self._pending = []

    def _results(self, batch: _Batch, outputs: list[np.ndarray], seconds: float) -> list[FrameResult]:
        """A batch's outputs decoded into each frame's result (given at once to an API request's caller)."""
        frames = batch.frames
        images = [frame.image for frame in frames]
        params = [frame.params for frame in frames]
        per_frame = params if any(params) else None  # API requests may set their own thresholds
        detections = batch.model.detections(outputs, images, batch.transforms, per_frame)
        self._metrics.inference_duration.observe(seconds)
        self._metrics.batch_size.observe(len(frames))
        done = time.monotonic()
        results = []
        ids = uuid4_strings(len(frames) + sum(len(found) for found in detections))
        taken = len(frames)  # the first ids are the frames' inference ids, the rest the detections'
        for inference_id, frame, found in zip(ids[:taken], frames, detections, strict=True):
            found.data["detection_id"] = np.array(ids[taken : taken + len(found)], dtype=object)
            taken += len(found)
            height, width = frame.image.shape[:2]
            result = FrameResult(
                camera_id=frame.camera_id,
                frame_id=frame.frame_id,
                captured_at=frame.captured_at,
                captured_mono=frame.captured_mono,
                inference_id=inference_id,
                model_id=batch.model_id,
                width=width,
                height=height,
                detections=found,
                inference_seconds=seconds,
                batch_size=len(frames),
                done_mono=done,
                source="camera" if frame.reply is None else "api",
                image=frame.image,
            )
            if frame.reply is None:
                self._count_inferred(frame.camera_id)
            else:
                frame.reply(result)
            results.append(result)
        self.last_progress = done
        return results
