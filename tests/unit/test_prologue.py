"""The uint8 prologue: frames go into the model as uint8 BGR NHWC and the graph converts them.

The reference is the float path the daemon used before the prologue, computed here in numpy: the same
letterbox canvas, BGR->RGB, HWC->CHW, `* float32(1/255)`, then `- mean` and `* (1/std)`, fed to the model
file as it is.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from daemon.config import ModelConfig
from daemon.model.preprocess import LetterboxBuffer
from daemon.model.prologue import INPUT_NAME, PrologueError, prepend_prologue
from daemon.model.session import IMAGENET_NORMALISATION, Model, ModelError

REPO = Path(__file__).resolve().parents[2]
DEMO_CLIPS = [REPO / "demo" / name for name in ("camera.mp4", "motorcycle.mp4", "coffee.mp4")]
MEAN, STD = IMAGENET_NORMALISATION["mean"], IMAGENET_NORMALISATION["std"]


def float_path(canvas: np.ndarray, mean: tuple | None = None, std: tuple | None = None) -> np.ndarray:
    """The float32 NCHW RGB batch the daemon built in numpy before the prologue."""
    batch = np.multiply(canvas[..., ::-1].transpose(0, 3, 1, 2), np.float32(1 / 255), dtype=np.float32)
    if mean is not None:
        batch -= np.array(mean, np.float32).reshape(1, 3, 1, 1)
    if std is not None:
        batch *= (1 / np.array(std, np.float32)).reshape(1, 3, 1, 1)
    return batch


def identity_model(path: Path, elem_type: int = TensorProto.FLOAT, shape: list | None = None) -> Path:
    """A model whose output is its image input, cast to float32."""
    shape = shape or ["batch", 3, 24, 32]
    graph = helper.make_graph(
        [helper.make_node("Cast", ["images"], ["out"], to=TensorProto.FLOAT)],
        "identity",
        [helper.make_tensor_value_info("images", elem_type, shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def run_with_prologue(path: Path, frames: np.ndarray, **normalise: tuple) -> np.ndarray:
    height, width = frames.shape[1:3]
    proto = prepend_prologue(onnx.load(str(path)), height, width, **normalise)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {INPUT_NAME: frames})
    return out


def random_frames(batch: int = 2) -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (batch, 24, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("normalise", [{}, {"mean": MEAN, "std": STD}], ids=["0..1", "imagenet"])
def test_prologue_computes_what_the_float_path_did(tmp_path: Path, normalise: dict) -> None:
    frames = random_frames()

    out = run_with_prologue(identity_model(tmp_path / "m.onnx"), frames, **normalise)

    assert out.shape == (2, 3, 24, 32)
    np.testing.assert_allclose(out, float_path(frames, **normalise), rtol=0, atol=1e-6)


def test_float16_models_get_float16_input(tmp_path: Path) -> None:
    frames = random_frames(1)

    out = run_with_prologue(identity_model(tmp_path / "m.onnx", TensorProto.FLOAT16), frames)

    np.testing.assert_allclose(out, float_path(frames), atol=1e-3)  # float16 resolution


@pytest.mark.parametrize(
    ("elem_type", "shape", "message"),
    [
        (TensorProto.INT8, None, "input images is int8; edgewatch feeds float32 or float16"),
        (TensorProto.FLOAT, ["batch", 1, 24, 32], r"input images \['batch', 1, 24, 32\] is not"),
    ],
)
def test_inputs_the_prologue_cannot_take(tmp_path: Path, elem_type: int, shape: list, message: str) -> None:
    model = onnx.load(str(identity_model(tmp_path / "m.onnx", elem_type, shape)))
    with pytest.raises(PrologueError, match=message):
        prepend_prologue(model, 24, 32)


def test_model_with_an_integer_input_is_one_clear_line(tmp_path: Path) -> None:
    path = identity_model(tmp_path / "int.onnx", TensorProto.INT8)
    with pytest.raises(ModelError) as error:
        Model.load(ModelConfig(path=path, providers=["cpu"], layout="yolov8"))
    assert str(error.value).startswith(f"{path}: ")
    assert "\n" not in str(error.value)


def clip_frames(path: Path, every: int = 12, limit: int = 10) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames: list[np.ndarray] = []
    index = 0
    while len(frames) < limit:
        ok, frame = capture.read()
        if not ok:
            break
        if index % every == 0:
            frames.append(frame)
        index += 1
    capture.release()
    return frames


def test_detections_on_the_demo_clips_match_the_float_path(demo_model: Path) -> None:
    missing = [clip for clip in DEMO_CLIPS if not clip.is_file()]
    assert not missing, f"{missing}: run scripts/setup to make the demo clips"
    model = Model.load(ModelConfig(path=demo_model, providers=["cpu"], max_batch=4))
    plain = ort.InferenceSession(str(demo_model), providers=["CPUExecutionProvider"])
    reference = LetterboxBuffer(*model.input_size, max_batch=4)
    compared = found_any = 0

    for clip in DEMO_CLIPS:
        frames = clip_frames(clip)
        assert frames, clip
        for start in range(0, len(frames), 4):
            images = frames[start : start + 4]
            feed, transforms = model.prepare(images)
            assert feed.dtype == np.uint8 and feed.shape[1:] == (416, 416, 3)
            found = model.detections(model.run(feed), images, transforms)

            canvas, float_transforms = reference.fill(images)
            expected = model.detections(
                plain.run(None, {"images": float_path(canvas)}), images, float_transforms
            )

            for one, other in zip(found, expected, strict=True):
                assert one.class_id.tolist() == other.class_id.tolist()
                np.testing.assert_allclose(one.xyxy, other.xyxy, rtol=0, atol=1e-3)
                np.testing.assert_allclose(one.confidence, other.confidence, rtol=0, atol=1e-3)
                compared += 1
                found_any += len(one)

    assert compared >= 20 and found_any > 0  # the comparison saw frames, and frames with detections
