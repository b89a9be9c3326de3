"""Model: loading and checking ONNX files, batching, and detections in frame pixels.

Small ONNX models are built here with onnx.helper; the real demo model runs on real photos.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import skimage
import supervision as sv
from onnx import TensorProto, helper, numpy_helper

from daemon.config import ModelConfig
from daemon.model.session import Model, ModelError, batch_settings, session_providers
from tests.support.inference import infer

PHOTOS = Path(skimage.data.__file__).parent
INPUT_H, INPUT_W = 64, 96
BOX = (48.0, 32.0, 40.0, 20.0)  # cx, cy, w, h in input pixels -> xyxy (28, 22, 68, 42)


def write_model(
    path: Path,
    outputs: dict[str, tuple[np.ndarray, np.ndarray | None]],
    input_shape: list | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """An ONNX model with input `images` whose outputs are `base + mask * mean(image)` per image.

    `base` and `mask` are [1, ...] constants; the batch dim of every output follows the input's.
    """
    input_shape = input_shape or ["batch", 3, INPUT_H, INPUT_W]
    batch = input_shape[0]
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean4"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean4", "mean_shape"], ["mean"]),
    ]
    initializers = [numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "mean_shape")]
    graph_outputs = []
    for name, (base, mask) in outputs.items():
        mask = np.zeros_like(base) if mask is None else mask
        initializers += [
            numpy_helper.from_array(base.astype(np.float32), f"{name}_base"),
            numpy_helper.from_array(mask.astype(np.float32), f"{name}_mask"),
        ]
        nodes += [
            helper.make_node("Mul", [f"{name}_mask", "mean"], [f"{name}_scaled"]),
            helper.make_node("Add", [f"{name}_base", f"{name}_scaled"], [name]),
        ]
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, *base.shape[1:]]))
    graph = helper.make_graph(
        nodes,
        "test-model",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, input_shape)],
        graph_outputs,
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


def yolov8_outputs(scores: list[float], anchors: int = 8) -> np.ndarray:
    """[1, 4 + nc, anchors > 4 + nc]: every anchor holds BOX; anchor 0 has `scores`, the others score 0."""
    base = np.zeros((1, 4 + len(scores), anchors), np.float32)
    base[0, :4] = np.array(BOX)[:, None]
    base[0, 4:, 0] = scores
    return base


def config(path: Path, **overrides) -> ModelConfig:
    return ModelConfig(path=path, providers=["cpu"], **overrides)


def gray(height: int, width: int, value: int) -> np.ndarray:
    return np.full((height, width, 3), value, np.uint8)


def brightness_model(path: Path, input_shape: list) -> Path:
    """YOLOv8 layout, one box (all anchors the same), class 0 scored by the image's mean brightness."""
    mask = np.zeros((1, 6, 8), np.float32)
    mask[0, 4] = 1
    return write_model(
        path,
        {"output0": (yolov8_outputs([0, 0]), mask)},
        input_shape=input_shape,
        metadata={"names": "{0: 'bright', 1: 'dark'}"},
    )


def assert_one_by_one_results(detections: list[sv.Detections]) -> None:
    """Three images (192x128 at 77, 96x64 at 153, 48x32 at 230) each give their own single detection."""
    assert [len(found) for found in detections] == [1, 1, 1]  # the 8 identical anchors collapse under NMS
    np.testing.assert_allclose(
        [found.confidence[0] for found in detections], [77 / 255, 0.6, 230 / 255], atol=1e-3
    )
    np.testing.assert_allclose(detections[0].xyxy, [[56, 44, 136, 84]], atol=1e-3)  # input scaled x0.5
    np.testing.assert_allclose(detections[1].xyxy, [[28, 22, 68, 42]], atol=1e-3)
    np.testing.assert_allclose(detections[2].xyxy, [[14, 11, 34, 21]], atol=1e-3)
    assert all(found.data["class_name"].tolist() == ["bright"] for found in detections)


THREE_IMAGES = [gray(128, 192, 77), gray(64, 96, 153), gray(32, 48, 230)]


def test_fixed_batch_one_model_runs_frames_one_by_one(tmp_path: Path) -> None:
    model = Model.load(config(brightness_model(tmp_path / "b1.onnx", [1, 3, INPUT_H, INPUT_W]), max_batch=8))
    model.warm_up()

    assert model.full_batches and model.max_batch == 1
    detections, seconds = infer(model, THREE_IMAGES)

    assert_one_by_one_results(detections)
    assert seconds > 0


def test_dynamic_batch_runs_in_batches_of_max_batch(tmp_path: Path) -> None:
    model = Model.load(
        config(brightness_model(tmp_path / "dyn.onnx", ["batch", 3, INPUT_H, INPUT_W]), max_batch=2)
    )
    model.warm_up()

    assert not model.full_batches and model.max_batch == 2
    detections, _ = infer(model, THREE_IMAGES)

    assert_one_by_one_results(detections)
    assert infer(model, []) == ([], 0.0)


def test_a_model_that_runs_full_batches_pads_each_run_to_the_largest_batch_it_has_run(
    tmp_path: Path,
) -> None:
    # what CUDA does with a dynamic batch: runs keep one size, which grows to the largest batch seen (rows
    # past a smaller batch are run, not decoded), so one or two cameras do not pay for max_batch frames
    model = Model.load(
        config(brightness_model(tmp_path / "dyn.onnx", ["batch", 3, INPUT_H, INPUT_W]), max_batch=8)
    )
    model.full_batches = True
    model.warm_up()

    assert [len(model.prepare(THREE_IMAGES[:count])[0]) for count in (1, 2, 1)] == [1, 2, 2]
    infer(model, [gray(128, 192, 255)] * 8)  # rows 4-8 of the buffer now hold other frames
    assert len(model.prepare(THREE_IMAGES[:1])[0]) == 8
    detections, _ = infer(model, THREE_IMAGES)

    assert_one_by_one_results(detections)


def test_unset_batch_settings_follow_the_provider_and_set_ones_win(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = brightness_model(tmp_path / "dyn.onnx", ["batch", 3, INPUT_H, INPUT_W])
    with caplog.at_level(logging.INFO, logger="edgewatch.model"):
        on_cpu = Model.load(config(path))
    assert (on_cpu.provider, on_cpu.max_batch, batch_settings(config(path), "cpu")) == ("cpu", 1, (1, 0.0))
    assert "batch dynamic (max 1, waits 0 ms to fill), provider cpu" in caplog.text

    set_both = config(path, max_batch=8, batch_timeout_ms=20)
    assert (Model.load(set_both).max_batch, batch_settings(set_both, "cpu")) == (8, (8, 0.02))
    # a reload that drops the timeout: the CPU's again; on a GPU provider, the GPU's (CUDA pads its runs to
    # one size, so it does not wait for a batch to fill)
    assert batch_settings(config(path, max_batch=8), "cpu") == (8, 0.0)
    assert batch_settings(config(path), "cuda") == (8, 0.0)
    assert batch_settings(config(path), "tensorrt") == (8, 0.01)


P = 0.8
LOGIT = float(np.log(P / (1 - P)))


def yolov5_outputs() -> np.ndarray:
    base = np.zeros((1, 8, 7), np.float32)
    base[0, :, :4] = BOX
    base[0, 0, 4:] = [1.0, 1 - P, P]
    return base


def rfdetr_outputs() -> dict[str, tuple[np.ndarray, None]]:
    dets = np.tile(
        np.array([BOX[0] / INPUT_W, BOX[1] / INPUT_H, BOX[2] / INPUT_W, BOX[3] / INPUT_H]), (1, 3, 1)
    )
    labels = np.full((1, 3, 2), -10.0)
    labels[0, 0] = [-5.0, LOGIT]
    return {"dets": (dets, None), "labels": (labels, None)}


@pytest.mark.parametrize(
    ("layout", "outputs"),
    [
        ("yolov8", {"output0": (yolov8_outputs([1 - P, P]), None)}),
        ("yolov5", {"output0": (yolov5_outputs(), None)}),
        ("rfdetr", rfdetr_outputs()),
    ],
)
def test_each_layout_gives_detections_in_frame_pixels(tmp_path: Path, layout: str, outputs: dict) -> None:
    path = write_model(tmp_path / f"{layout}.onnx", outputs, metadata={"names": "['cat', 'dog']"})
    model = Model.load(config(path))

    # 240x128 frame: scale 0.4, 96x51 inside the 96x64 input, 6 px of padding at the top
    (found,), _ = infer(model, [gray(128, 240, 0)])

    assert model.layout == layout and model.class_names == ["cat", "dog"]
    assert model.input_size == (INPUT_H, INPUT_W)
    np.testing.assert_allclose(found.xyxy, [[70, 40, 170, 90]], atol=1e-3)
    assert found.xyxy.dtype == np.float32
    np.testing.assert_allclose(found.confidence, [P], atol=1e-5)
    assert found.class_id.tolist() == [1]
    assert found.data["class_name"].tolist() == ["dog"]


def test_labels_file_overrides_metadata_names(tmp_path: Path) -> None:
    path = write_model(
        tmp_path / "m.onnx",
        {"output0": (yolov8_outputs([1 - P, P]), None)},
        metadata={"names": "{0: 'a', 1: 'b'}"},
    )
    labels = tmp_path / "labels.txt"
    labels.write_text("person\nbicycle\n\n")

    model = Model.load(config(path, labels=labels))
    (found,), _ = infer(model, [gray(64, 96, 0)])

    assert model.class_names == ["person", "bicycle"]
    assert found.data["class_name"].tolist() == ["bicycle"]


def test_input_size_from_metadata_when_the_graph_leaves_it_open(tmp_path: Path) -> None:
    outputs = {"output0": (yolov8_outputs([1 - P, P]), None)}
    open_shape = ["batch", 3, "height", "width"]
    names = {"names": "{0: 'a', 1: 'b'}"}
    path = write_model(
        tmp_path / "m.onnx", outputs, input_shape=open_shape, metadata={**names, "imgsz": "[64, 96]"}
    )

    model = Model.load(config(path))
    (found,), _ = infer(model, [gray(128, 240, 0)])

    assert model.input_size == (64, 96)
    np.testing.assert_allclose(found.xyxy, [[70, 40, 170, 90]], atol=1e-3)

    no_size = write_model(tmp_path / "open.onnx", outputs, input_shape=open_shape, metadata=names)
    with pytest.raises(ModelError, match=r"open\.onnx: input images .* no fixed height/width"):
        Model.load(config(no_size))


def test_layout_from_config_skips_detection(tmp_path: Path) -> None:
    # 4 anchors for 4 + 2 rows: too few for auto-detection to call it YOLOv8
    path = write_model(
        tmp_path / "m.onnx",
        {"output0": (yolov8_outputs([1 - P, P], anchors=4), None)},
        metadata={"names": "['a', 'b']"},
    )
    assert "unsupported model outputs" in load_error(config(path))

    model = Model.load(config(path, layout="yolov8"))
    (found,), _ = infer(model, [gray(64, 96, 0)])

    assert model.layout == "yolov8"
    np.testing.assert_allclose(found.xyxy, [[28, 22, 68, 42]], atol=1e-3)
    assert load_error(config(path, layout="rfdetr")).startswith(
        f"{path}: model.layout = 'rfdetr' does not fit"
    )


def load_error(model_config: ModelConfig) -> str:
    with pytest.raises(ModelError) as error:
        Model.load(model_config)
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.onnx"
    assert load_error(config(path)) == f"{path}: no such model file"


def test_text_file_renamed_onnx(tmp_path: Path) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("these are my notes, not a model\n")

    message = load_error(config(path))

    assert message.startswith(f"{path}: not a loadable ONNX model: ")
    assert "Protobuf parsing failed" in message


def test_unsupported_layout_names_the_shapes(tmp_path: Path) -> None:
    path = write_model(
        tmp_path / "odd.onnx", {"output0": (np.zeros((1, 7, 3)), None)}, metadata={"names": "['a']"}
    )

    message = load_error(config(path))

    assert message.startswith(f"{path}: unsupported model outputs: ")
    assert "input images [batch, 3, 64, 96]; output output0 [batch, 7, 3]" in message


def test_no_class_names_without_labels_file(tmp_path: Path) -> None:
    path = write_model(tmp_path / "anon.onnx", {"output0": (yolov8_outputs([P, 0]), None)})

    message = load_error(config(path))

    assert message.startswith(f"{path}: no class names")
    assert "model.labels" in message


def test_fewer_names_than_classes(tmp_path: Path) -> None:
    path = write_model(
        tmp_path / "m.onnx", {"output0": (yolov8_outputs([0, 0, P]), None)}, metadata={"names": "['a', 'b']"}
    )

    assert load_error(config(path)) == f"{path}: the model has 3 classes but its metadata names 2"


def test_unreadable_labels_file(tmp_path: Path) -> None:
    path = write_model(tmp_path / "m.onnx", {"output0": (yolov8_outputs([P]), None)})
    labels = tmp_path / "missing.names"

    assert load_error(config(path, labels=labels)).startswith(f"{labels}: cannot read the labels file")


def test_runs_on_cpu_when_gpu_providers_are_missing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    if {"TensorrtExecutionProvider", "CUDAExecutionProvider"} & set(ort.get_available_providers()):
        pytest.skip("this onnxruntime has GPU providers")
    path = brightness_model(tmp_path / "m.onnx", ["batch", 3, INPUT_H, INPUT_W])
    caplog.set_level(logging.INFO, logger="edgewatch.model")

    model = Model.load(
        ModelConfig(path=path, providers=["tensorrt", "cuda", "cpu"], cache_dir=tmp_path / "trt")
    )

    assert model.provider == "cpu"
    assert "skipped: tensorrt, cuda" in caplog.text
    assert "provider cpu" in caplog.text
    message = load_error(ModelConfig(path=path, providers=["cuda"]))
    assert message.startswith(f"{path}: none of the configured providers (cuda) is available")


# The real demo model on real photos.


@pytest.fixture(scope="module")
def demo(demo_model: Path) -> Model:
    model = Model.load(ModelConfig(path=demo_model, providers=["cpu"], confidence=0.25))
    model.warm_up()
    return model


def photo(name: str) -> np.ndarray:
    image = cv2.imread(str(PHOTOS / name))
    assert image is not None, f"cannot read {name}"
    return image


def assert_inside(found: sv.Detections, image: np.ndarray) -> None:
    height, width = image.shape[:2]
    assert len(found) > 0
    assert (
        (found.xyxy[:, :2] >= 0).all()
        and (found.xyxy[:, 2] <= width).all()
        and (found.xyxy[:, 3] <= height).all()
    )
    assert (found.xyxy[:, 2:] > found.xyxy[:, :2]).all()


@pytest.mark.parametrize(
    ("name", "expected"),
    [("coffee.png", "cup"), ("motorcycle_left.png", "motorbike")],
)
def test_demo_model_finds_objects_in_photos(demo: Model, name: str, expected: str) -> None:
    image = photo(name)

    (found,), seconds = infer(demo, [image])

    assert demo.layout == "yolov8" and demo.provider == "cpu" and len(demo.class_names) == 80
    assert expected in found.data["class_name"].tolist()
    assert_inside(found, image)
    # the object is large in both photos: its box covers a good part of the frame
    best = found[found.data["class_name"] == expected].xyxy[0]
    area = (best[2] - best[0]) * (best[3] - best[1])
    assert area > 0.2 * image.shape[0] * image.shape[1]
    assert seconds > 0


def test_demo_model_batch_matches_single_runs(demo: Model) -> None:
    images = [photo("coffee.png"), photo("motorcycle_left.png")]
    singles = [infer(demo, [image])[0][0] for image in images]

    batched, _ = infer(demo, images)

    for single, together in zip(singles, batched, strict=True):
        assert together.data["class_name"].tolist() == single.data["class_name"].tolist()
        np.testing.assert_allclose(together.xyxy, single.xyxy, atol=0.5)
        np.testing.assert_allclose(together.confidence, single.confidence, atol=1e-3)


def test_tensorrt_without_a_writable_cache_folder_runs_without_a_cache(tmp_path: Path) -> None:
    """A read-only state folder must not stop the device (exit 2 is for config errors): TensorRT then
    builds its engines at every start instead."""
    config = ModelConfig(path=tmp_path / "m.onnx", providers=["tensorrt", "cpu"], cache_dir=tmp_path / "trt")
    available = ["TensorrtExecutionProvider", "CPUExecutionProvider"]
    (tensorrt, options), cpu = session_providers(config, available)
    assert options["trt_engine_cache_path"] == str(tmp_path / "trt") and options["trt_timing_cache_enable"]
    (tensorrt, options), cpu = session_providers(config, available, cache=False)
    assert tensorrt == "TensorrtExecutionProvider" and options == {"trt_fp16_enable": True}
    assert cpu == ("CPUExecutionProvider", {})
