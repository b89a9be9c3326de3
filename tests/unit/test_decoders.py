"""Decoders and layout detection, on tensors that come out of real onnxruntime sessions."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from daemon.model import decoders
from daemon.model.decoders import UnsupportedModel, decode_rfdetr, decode_yolov5, decode_yolov8, detect_layout

CONF, IOU = 0.25, 0.45


def _session(graph) -> ort.InferenceSession:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def through_onnx(*arrays: np.ndarray) -> list[np.ndarray]:
    """Run `arrays` through an ONNX graph of Identity nodes: what a model with these outputs returns."""
    feed = {f"t{i}": array.astype(np.float32) for i, array in enumerate(arrays)}
    graph = helper.make_graph(
        [helper.make_node("Identity", [name], [f"{name}_out"]) for name in feed],
        "identity",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, a.shape) for name, a in feed.items()],
        [
            helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, a.shape)
            for name, a in feed.items()
        ],
    )
    return _session(graph).run(None, feed)


def tensors_of(inputs: dict[str, list], outputs: dict[str, list]):
    """(inputs, outputs) NodeArgs of a session whose graph declares exactly these names and shapes.

    Each output is the first input reshaped to a shape known only at run time, so onnxruntime cannot
    infer the dims and reports the declared ones (ints, names or None) as it does for exported models.
    """
    first = next(iter(inputs))
    nodes = [
        helper.make_node("ReduceMax", [first], ["peak"], keepdims=0),
        helper.make_node("Cast", ["peak"], ["peak_int"], to=TensorProto.INT64),
    ]
    initializers = []
    for name, shape in outputs.items():
        initializers.append(numpy_helper.from_array(np.array([len(shape)], np.int64), f"{name}_rank"))
        nodes.append(helper.make_node("Expand", ["peak_int", f"{name}_rank"], [f"{name}_shape"]))
        nodes.append(helper.make_node("Reshape", [first, f"{name}_shape"], [name]))
    graph = helper.make_graph(
        nodes,
        "layout",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs.items()],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outputs.items()],
        initializer=initializers,
    )
    session = _session(graph)
    return session.get_inputs(), session.get_outputs()


def yolov8_tensor(rows: list[tuple[float, float, float, float, list[float]]], anchors: int) -> np.ndarray:
    """[4 + nc, anchors]: the given (cx, cy, w, h, class scores) columns, then all-zero anchors."""
    classes = len(rows[0][4])
    tensor = np.zeros((4 + classes, anchors), np.float32)
    for column, (cx, cy, w, h, scores) in enumerate(rows):
        tensor[:, column] = [cx, cy, w, h, *scores]
    return tensor


# cx, cy, w, h, scores of classes 0..2
OVERLAPPING = [
    (50, 50, 20, 20, [0.9, 0.0, 0.0]),  # kept
    (52, 51, 20, 20, [0.8, 0.1, 0.0]),  # IoU ~0.75 with the first, same class: suppressed
    (50, 50, 20, 20, [0.0, 0.7, 0.0]),  # same place, another class: kept
    (200, 100, 40, 30, [0.1, 0.2, 0.6]),  # alone: kept
    (300, 300, 10, 10, [0.2, 0.1, 0.05]),  # below the confidence threshold
]


def test_yolov8_filters_suppresses_within_class_only_and_maps_boxes() -> None:
    (output,) = through_onnx(np.stack([yolov8_tensor(OVERLAPPING, 8), yolov8_tensor(OVERLAPPING[4:], 8)]))

    first, second = decode_yolov8(output, CONF, IOU, max_det=300)

    xyxy, confidence, class_id = first
    np.testing.assert_allclose(xyxy, [[40, 40, 60, 60], [40, 40, 60, 60], [180, 85, 220, 115]])
    np.testing.assert_allclose(confidence, [0.9, 0.7, 0.6], rtol=1e-6)
    assert class_id.tolist() == [0, 1, 2]
    assert xyxy.dtype == np.float32 and confidence.dtype == np.float32
    assert second[0].shape == (0, 4) and second[1].shape == (0,) and second[2].shape == (0,)


def test_yolov8_caps_at_max_detections() -> None:
    (output,) = through_onnx(yolov8_tensor(OVERLAPPING, 5)[None])

    ((_, confidence, class_id),) = decode_yolov8(output, CONF, IOU, max_det=2)

    assert class_id.tolist() == [0, 1]
    np.testing.assert_allclose(confidence, [0.9, 0.7], rtol=1e-6)


def test_yolov8_iou_threshold_decides_suppression() -> None:
    (output,) = through_onnx(yolov8_tensor(OVERLAPPING[:2], 2)[None])

    ((_, strict, _),) = decode_yolov8(output, CONF, iou=0.45, max_det=300)
    ((_, loose, _),) = decode_yolov8(output, CONF, iou=0.9, max_det=300)

    assert len(strict) == 1 and len(loose) == 2


def test_nms_over_every_pair_keeps_what_the_box_by_box_loop_keeps(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    cases = []
    for _ in range(400):
        count = int(rng.integers(0, 60))
        corner = rng.uniform(0, 400, (count, 2)).astype(np.float32)
        size = rng.uniform(0, 120, (count, 2)).astype(np.float32)
        size[rng.random(count) < 0.1] = 0  # some boxes without area
        xyxy = np.concatenate([corner, corner + size], axis=1)
        if count > 3:
            xyxy[1] = xyxy[0]  # an exact duplicate
        scores = rng.choice(np.linspace(0.3, 1, 8), count).astype(np.float32)  # ties in the order
        iou, max_det = float(rng.choice([0.0, 0.3, 0.45, 0.7, 1.0])), int(rng.choice([0, 1, 3, 300]))
        cases.append((xyxy, scores, iou, max_det))
    pairwise = [decoders.nms(*case) for case in cases]

    monkeypatch.setattr(decoders, "PAIRWISE_NMS_LIMIT", -1)  # every case, even without boxes: the loop
    looped = [decoders.nms(*case) for case in cases]

    assert sum(len(kept) > 1 for kept in pairwise) > 100  # many cases keep several boxes
    for one, other in zip(pairwise, looped, strict=True):
        assert one.dtype == other.dtype == np.int64
        assert one.tolist() == other.tolist()


def test_yolov5_scores_are_objectness_times_class() -> None:
    rows = np.array(
        [
            # cx, cy, w, h, objectness, class probabilities 0..1
            [50, 50, 20, 20, 0.9, 0.1, 0.8],  # 0.72 class 1: kept
            [51, 50, 20, 20, 0.8, 0.1, 0.8],  # 0.64 class 1, overlaps the first: suppressed
            [50, 50, 20, 20, 0.8, 0.5, 0.2],  # 0.40 class 0 at the same place: kept
            [150, 60, 30, 10, 0.3, 0.9, 0.0],  # 0.27: kept
            [300, 60, 30, 10, 0.5, 0.4, 0.3],  # 0.20: dropped though objectness passes
            [400, 60, 30, 10, 0.1, 1.0, 1.0],  # objectness below threshold: dropped
        ],
        np.float32,
    )
    (output,) = through_onnx(np.stack([rows, np.zeros_like(rows)]))

    (xyxy, confidence, class_id), empty = decode_yolov5(output, CONF, IOU, max_det=300)

    np.testing.assert_allclose(xyxy, [[40, 40, 60, 60], [40, 40, 60, 60], [135, 55, 165, 65]])
    np.testing.assert_allclose(confidence, [0.72, 0.40, 0.27], rtol=1e-5)
    assert class_id.tolist() == [1, 0, 0]
    assert len(empty[0]) == 0

    ((_, capped, _),) = decode_yolov5(output[:1], CONF, IOU, max_det=1)
    np.testing.assert_allclose(capped, [0.72], rtol=1e-5)


def test_rfdetr_sigmoid_top_class_no_nms_scaled_to_input() -> None:
    dets = np.array(
        [
            [0.5, 0.5, 0.2, 0.4],
            [0.51, 0.5, 0.2, 0.4],  # overlaps the first, same class: RF-DETR keeps both
            [0.25, 0.75, 0.1, 0.1],
            [0.9, 0.1, 0.1, 0.1],
        ],
        np.float32,
    )
    logits = np.array(
        [
            [-5.0, 2.0, -1.0],
            [-5.0, 1.0, -1.0],
            [0.0, -4.0, -6.0],  # sigmoid(0) = 0.5
            [-3.0, -2.0, -4.0],  # best is sigmoid(-2) = 0.12: below the threshold
        ],
        np.float32,
    )
    out_dets, out_labels = through_onnx(dets[None], logits[None])

    ((xyxy, confidence, class_id),) = decode_rfdetr(out_dets, out_labels, (480, 640), CONF, max_det=300)

    sigmoid = 1 / (1 + np.exp(-np.array([2.0, 1.0, 0.0])))
    np.testing.assert_allclose(confidence, sigmoid, rtol=1e-6)
    assert class_id.tolist() == [1, 1, 0]
    np.testing.assert_allclose(
        xyxy, [[256, 144, 384, 336], [262.4, 144, 390.4, 336], [128, 336, 192, 384]], atol=1e-3
    )

    ((_, capped, _),) = decode_rfdetr(out_dets, out_labels, (480, 640), CONF, max_det=2)
    np.testing.assert_allclose(capped, sigmoid[:2], rtol=1e-6)


IMAGE = {"images": [1, 3, 640, 640]}


@pytest.mark.parametrize(
    ("inputs", "outputs", "layout"),
    [
        (IMAGE, {"output0": [1, 84, 8400]}, "yolov8"),
        ({"images": ["batch", 3, 640, 640]}, {"output0": ["batch", 84, "anchors"]}, "yolov8"),
        ({"images": [None, 3, None, None]}, {"output0": [None, 6, None]}, "yolov8"),
        (IMAGE, {"output0": [1, 25200, 85]}, "yolov5"),
        ({"images": ["batch", 3, 640, 640]}, {"output0": ["batch", "boxes", 7]}, "yolov5"),
        ({"input": [1, 3, 560, 560]}, {"dets": [1, 300, 4], "labels": [1, 300, 91]}, "rfdetr"),
        (
            {"input": ["batch", 3, 560, 560]},
            {"logits": ["batch", 300, 2], "boxes": ["batch", 300, 4]},
            "rfdetr",
        ),
    ],
)
def test_detect_layout(inputs: dict, outputs: dict, layout: str) -> None:
    assert detect_layout(*tensors_of(inputs, outputs)) == layout


@pytest.mark.parametrize(
    ("inputs", "outputs", "message"),
    [
        (IMAGE, {"output0": [1, 7, 3]}, "input images [1, 3, 640, 640]; output output0 [1, 7, 3]"),
        (
            {"images": ["batch", 3, 640, 640]},
            {"output0": ["batch", 7, 13], "extra": ["batch", 5]},
            "input images [batch, 3, 640, 640]; outputs output0 [batch, 7, 13], extra [batch, 5]",
        ),
        (
            IMAGE,
            {"dets": [1, 300, 4], "labels": [1, 100, 91]},
            "outputs dets [1, 300, 4], labels [1, 100, 91]",
        ),
        (
            {"images": [1, 3, 640, 640], "scale": [1, 2]},
            {"output0": [1, 84, 8400]},
            "inputs images [1, 3, 640, 640], scale [1, 2]; output output0 [1, 84, 8400]",
        ),
        ({"images": [1, 1, 640, 640]}, {"output0": [1, 84, 8400]}, "input images [1, 1, 640, 640]"),
        (IMAGE, {"output0": [None, None, None]}, "output output0 [?, ?, ?]"),
    ],
)
def test_unsupported_layout_names_every_tensor(inputs: dict, outputs: dict, message: str) -> None:
    with pytest.raises(UnsupportedModel, match=r"^unsupported model outputs: ") as error:
        detect_layout(*tensors_of(inputs, outputs))
    assert message in str(error.value)
