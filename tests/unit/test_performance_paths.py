"""The performance-minded paths of the model, the inference loop and the sinks, as far as a CPU checks them.

GPU paths (IO binding with a pinned input buffer for CUDA/TensorRT) run here on the CPU provider, which
takes the same IO-binding calls; pinning itself needs a CUDA runtime and is only checked to decline cleanly.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import supervision as sv
from onnx import TensorProto, helper

from daemon.config import ModelConfig
from daemon.frames import Frame, class_counts, roboflow_predictions, uuid4_strings
from daemon.model.preprocess import LetterboxBuffer
from daemon.model.prologue import INPUT_NAME, prepend_prologue
from daemon.model.session import (
    BoundRunner,
    Model,
    cgroup_cpu_limit,
    default_threads,
    physical_cores,
    pin_host_memory,
)
from daemon.pipeline.board import FrameBoard
from daemon.sinks.history import class_sums
from tests.support.edge import photo
from tests.support.inference import infer
from tests.support.models import failing_model
from tests.support.worker import WorkerRig


def test_physical_cores_count_smt_siblings_once(tmp_path: Path) -> None:
    for cpu, siblings in {0: "0,2", 1: "1,3", 2: "0,2", 3: "1,3"}.items():
        topology = tmp_path / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "thread_siblings_list").write_text(siblings + "\n")

    assert physical_cores({0, 1, 2, 3}, tmp_path) == 2
    assert physical_cores({0, 2}, tmp_path) == 1
    assert physical_cores({0, 7}, tmp_path) == 2  # no topology for cpu7: counted as a core of its own


@pytest.mark.parametrize(
    ("text", "limit"), [("150000 100000\n", 2), ("50000 100000\n", 1), ("max 100000\n", None)]
)
def test_cgroup_quota_limits_the_threads(tmp_path: Path, text: str, limit: int | None) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text(text)
    assert cgroup_cpu_limit(cpu_max) == limit
    assert cgroup_cpu_limit(tmp_path / "missing") is None


def test_session_threads_are_set_explicitly_and_idle_threads_sleep(demo_model: Path) -> None:
    explicit = Model.load(ModelConfig(path=demo_model, providers=["cpu"], threads=1))
    default = Model.load(ModelConfig(path=demo_model, providers=["cpu"]))

    assert explicit.threads == 1
    assert default.threads == default_threads() >= 1
    options = default._session.get_session_options()
    assert options.intra_op_num_threads == default.threads
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_io_binding_gives_the_outputs_of_a_plain_run(demo_model: Path) -> None:
    model = prepend_prologue(onnx.load(str(demo_model)), 416, 416).SerializeToString()
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    buffer = LetterboxBuffer(416, 416, max_batch=2)
    batch, _ = buffer.fill([photo("coffee.png"), photo("motorcycle_left.png")])
    runner = BoundRunner.for_session(session, INPUT_NAME, ["output0"], max_batch=2, slots=2)
    assert runner is not None

    (plain,) = session.run(["output0"], {INPUT_NAME: batch})
    (bound,) = runner(batch, slot=0)
    (single,) = runner(batch[1:], slot=1)  # the binding follows the batch size from run to run
    # each slot has its own host arrays: the first run's outputs are still there after the second
    assert bound.shape == plain.shape == (2, 84, 2535) and single.shape == (1, 84, 2535)
    np.testing.assert_allclose(bound, plain, atol=1e-4)
    np.testing.assert_allclose(single[0], plain[1], atol=1e-3)
    (again,) = runner(batch[:1], slot=0)  # a slot's arrays are written again by its next run
    assert again.base is bound.base


def test_io_binding_is_not_used_where_an_output_size_per_frame_is_not_fixed() -> None:
    graph = helper.make_graph(
        [helper.make_node("NonZero", ["images"], ["indices"])],
        "variable",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("indices", TensorProto.INT64, [2, "found"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=9)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    assert BoundRunner.for_session(session, "images", ["indices"], max_batch=4, slots=2) is None


def test_pinning_declines_without_a_gpu() -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    # no CUDA runtime to load, or one that finds no device: the buffer stays pageable, nothing fails
    assert pin_host_memory(np.zeros(16, np.float32)) is False
    with pytest.raises(ValueError, match="owns its memory"):  # a view's memory goes with its base, not itself
        pin_host_memory(np.zeros(16, np.float32)[:8])


def test_model_prepare_run_detections_is_infer(model: Model) -> None:
    images = [photo("coffee.png"), photo("motorcycle_left.png")]
    expected, _ = infer(model, images)

    feed, transforms = model.prepare(images)
    found = model.detections(model.run(feed), images, transforms)

    for one, other in zip(found, expected, strict=True):
        assert one.data["class_name"].tolist() == other.data["class_name"].tolist()
        np.testing.assert_allclose(one.xyxy, other.xyxy, atol=0.5)


def test_a_lone_frame_is_handed_over_at_once_not_held_for_the_next_batch(worker_model: Model) -> None:
    rig = WorkerRig(worker_model, ["cam"])
    rig.worker.start()
    try:
        rig.board.put(Frame("cam", 1, time.time(), time.monotonic(), photo("coffee.png")))
        (result,) = rig.collected.wait(1, timeout=5)  # no second frame ever comes
        assert result.frame_id == 1 and "cup" in result.detections.data["class_name"].tolist()
    finally:
        rig.close(5)


def test_the_worker_finds_frame_by_frame_what_the_model_finds(worker_model: Model) -> None:
    # three cameras in batches of at most 2: batches of 1 and 2 through both of the model's buffers in turn
    images = {"kitchen": "coffee.png", "garage": "motorcycle_left.png", "studio": "camera.png"}
    frames = {camera: photo(name) for camera, name in images.items()}
    expected = {camera: infer(worker_model, [image])[0][0] for camera, image in frames.items()}
    rig = WorkerRig(worker_model, list(frames), max_batch=2)
    rig.worker.start()
    try:
        for number in range(1, 7):
            for camera, image in frames.items():
                assert rig.board.wait_taken(camera, 10)
                rig.board.put(Frame(camera, number, time.time(), time.monotonic(), image))
        results = rig.collected.wait(18, timeout=30)
    finally:
        rig.close(5)

    assert {result.batch_size for result in results} >= {2}
    for result in results:
        found, want = result.detections, expected[result.camera_id]
        assert found.data["class_name"].tolist() == want.data["class_name"].tolist()
        np.testing.assert_allclose(found.xyxy, want.xyxy, atol=1e-3)
        np.testing.assert_allclose(found.confidence, want.confidence, atol=1e-3)


def test_overlapped_the_next_batch_is_letterboxed_while_the_batch_before_runs(model: Model) -> None:
    rig = WorkerRig(model, ["cup", "motorbike"], max_batch=1)
    second_letterboxed = threading.Event()
    runs: list[threading.Thread] = []
    letterboxed = 0

    def prepare(images: list[np.ndarray], slot: int = 0) -> tuple[np.ndarray, np.ndarray]:
        nonlocal letterboxed
        letterboxed += 1
        if letterboxed == 2:
            second_letterboxed.set()
        return Model.prepare(model, images, slot)

    def run(feed: np.ndarray, slot: int = 0) -> list[np.ndarray]:
        runs.append(threading.current_thread())
        if len(runs) == 1:  # a worker that letterboxed only after a run ended would never get here
            assert second_letterboxed.wait(5), "the second batch was not letterboxed during the first's run"
        return Model.run(model, feed, slot)

    model.prepare, model.run = prepare, run  # type: ignore[method-assign]
    model.overlap_runs = True  # as on a GPU
    try:
        rig.board.put(Frame("cup", 1, time.time(), time.monotonic(), photo("coffee.png")))
        rig.board.put(Frame("motorbike", 2, time.time(), time.monotonic(), photo("motorcycle_left.png")))
        rig.worker.start()
        first, second = rig.collected.wait(2, timeout=10)
    finally:
        rig.close(5)
        del model.prepare, model.run
        model.overlap_runs = False

    assert rig.worker.error is None
    # each batch decoded from its own buffer and outputs
    assert (first.frame_id, second.frame_id) == (1, 2)
    assert "cup" in first.detections.data["class_name"].tolist()
    assert "motorbike" in second.detections.data["class_name"].tolist()
    assert {thread.name for thread in runs} == {"inference-run"}
    assert not runs[0].is_alive()  # the run thread ends with the worker


def test_frames_left_on_the_board_at_stop_are_inferred(worker_model: Model) -> None:
    cameras = [f"cam-{i}" for i in range(6)]
    rig = WorkerRig(worker_model, cameras)
    image = photo("coffee.png")
    for number, camera in enumerate(cameras, 1):
        rig.board.put(Frame(camera, number, time.time(), time.monotonic(), image))
    rig.stop.set()  # the cameras have stopped and the daemon is stopping: the worker sees that at once
    rig.board.close()

    rig.worker.start()
    rig.worker.join(10)

    assert not rig.worker.is_alive() and rig.worker.error is None
    assert sorted(result.camera_id for result in rig.collected.results) == cameras
    assert rig.board.take_batch(4, 0, 0) == []  # drained


@pytest.mark.parametrize("overlap", [False, True], ids=["in turn", "overlapped"])
def test_a_run_that_fails_ends_the_worker_with_its_error(tmp_path: Path, overlap: bool) -> None:
    failing = Model.load(ModelConfig(path=failing_model(tmp_path / "fails.onnx"), providers=["cpu"]))
    failing.overlap_runs = overlap  # overlapped: session.run fails on the run thread, as it would on a GPU
    rig = WorkerRig(failing, ["cam"])
    rig.board.put(Frame("cam", 1, time.time(), time.monotonic(), photo("coffee.png")))

    rig.worker.start()
    rig.worker.join(10)

    assert not rig.worker.is_alive()
    assert rig.worker.error is not None and "Reshape" in str(rig.worker.error)
    assert rig.collected.results == []
    rig.close(5)


def test_ids_drawn_for_a_batch_at_once_are_distinct_version_4_uuids_as_uuid4_writes_them() -> None:
    ids = uuid4_strings(20_000)

    assert uuid4_strings(0) == []
    assert len(set(ids)) == 20_000
    for text in ids[:2000]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_every_frame_and_detection_of_a_batch_gets_its_own_id(model: Model) -> None:
    cup, motorbike = photo("coffee.png"), photo("motorcycle_left.png")
    both = np.hstack([cup, cv2.resize(motorbike, (motorbike.shape[1], cup.shape[0]))])  # two objects a frame
    cameras = [f"cam-{i}" for i in range(4)]
    rig = WorkerRig(model, cameras)
    for number, camera in enumerate(cameras, 1):
        rig.board.put(Frame(camera, number, time.time(), time.monotonic(), both if number % 2 else cup))
    rig.stop.set()  # the worker infers what is on the board, in one batch of 4, and ends
    rig.board.close()

    rig.worker.start()
    rig.worker.join(10)

    results = rig.collected.results
    assert len(results) == 4 and {result.batch_size for result in results} == {4}
    detection_ids = [result.detections.data["detection_id"].tolist() for result in results]
    assert [len(ids) for ids in detection_ids] == [len(result.detections) for result in results]
    assert sum(len(ids) for ids in detection_ids) > 4
    every_id = [result.inference_id for result in results] + [one for ids in detection_ids for one in ids]
    assert len(set(every_id)) == len(every_id)
    assert all(uuid.UUID(one).version == 4 for one in every_id)


def test_a_stalled_live_camera_stops_holding_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    image = np.zeros((4, 4, 3), np.uint8)

    def board_with_a_stalled_camera() -> FrameBoard:
        board = FrameBoard(["live", "stalled"], lambda _: None)
        board.set_live("live", True)
        board.set_live("stalled", True)  # connected, but no frame comes
        board.put(Frame("live", 1, time.time(), time.monotonic(), image))
        return board

    started = time.monotonic()
    assert [f.camera_id for f in board_with_a_stalled_camera().take_batch(4, 0.2, 1)] == ["live"]
    assert time.monotonic() - started >= 0.19  # just gone live: the batch waited for it

    # silent for longer than the board waits for
    monkeypatch.setattr("daemon.pipeline.board.SILENT_AFTER", 0.0)
    started = time.monotonic()
    assert [f.camera_id for f in board_with_a_stalled_camera().take_batch(4, 5, 1)] == ["live"]
    assert time.monotonic() - started < 1


def test_per_frame_class_tallies_equal_numpys_on_random_frames() -> None:
    """The sinks' per-frame tallies (plain loops over the class names) against np.unique / np.bincount."""
    rng = np.random.default_rng(11)
    for _ in range(50):
        n = int(rng.integers(0, 300))
        names = rng.choice(np.array(["person", "car", "dog", "cup", "bus"], dtype=object), n)
        confidence = rng.random(n).astype(np.float32)
        detections = sv.Detections(
            xyxy=np.zeros((n, 4), np.float32), confidence=confidence, class_id=np.zeros(n, int),
            data={"class_name": names},
        )
        found, inverse, counts = np.unique(names, return_inverse=True, return_counts=True)
        totals = np.bincount(inverse.reshape(-1), weights=confidence.astype(np.float64), minlength=len(found))

        expected_counts = list(zip(found.tolist(), counts.tolist(), strict=True))
        assert list(class_counts(detections).items()) == expected_counts
        assert class_sums(names, confidence) == list(
            zip(found.tolist(), counts.tolist(), totals.tolist(), strict=True)
        )


def test_predictions_in_roboflow_format_equal_the_element_by_element_reading_on_random_frames() -> None:
    """`roboflow_predictions` reads whole columns at once; the JSON it gives equals that of reading each
    numpy element (the earlier way), byte for byte, on random boxes in float32."""
    rng = np.random.default_rng(12)
    for _ in range(50):
        n = int(rng.integers(1, 60))
        corners = np.sort(rng.random((n, 2, 2)) * 2000, axis=1).reshape(n, 4)[:, [0, 2, 1, 3]]
        detections = sv.Detections(
            xyxy=corners.astype(np.float32),
            confidence=rng.random(n).astype(np.float32),
            class_id=rng.integers(0, 80, n),
            data={
                "class_name": rng.choice(np.array(["person", "car", "dog"]), n),
                "detection_id": np.array([f"id-{i}" for i in range(n)]),
            },
        )
        xyxy, widths = detections.xyxy, detections.xyxy[:, 2] - detections.xyxy[:, 0]
        heights = xyxy[:, 3] - xyxy[:, 1]
        two = np.float32(2)  # numpy 1.x (JetPack's) turns a float32 element divided by an int into float64
        expected = [
            {
                "x": round(float(xyxy[i, 0] + widths[i] / two), 1),
                "y": round(float(xyxy[i, 1] + heights[i] / two), 1),
                "width": round(float(widths[i]), 1),
                "height": round(float(heights[i]), 1),
                "confidence": round(float(detections.confidence[i]), 4),
                "class": str(detections.data["class_name"][i]),
                "class_id": int(detections.class_id[i]),
                "detection_id": str(detections.data["detection_id"][i]),
            }
            for i in range(n)
        ]
        assert json.dumps(roboflow_predictions(detections)) == json.dumps(expected)
