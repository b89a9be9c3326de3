"""The uint8 prologue: a few ONNX nodes put in front of a model's image input at load.

Models take float RGB NCHW (0..1, or ImageNet-normalised for RF-DETR). The daemon instead feeds the letterbox
canvas as it is, uint8 BGR NHWC, and the prologue does the rest inside the graph: channel swap, layout,
cast, scale and normalisation. ONNX Runtime runs these vectorised on its own threads (on a GPU, on the
device, after a host-to-device copy four times smaller than float32), and no Python touches the pixels
after the resize. The arithmetic is the one the float path did in numpy, in the same order and precision:
`float32(pixel) * float32(1/255)`, then `- mean`, then `* (1/std)`.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT_NAME = "edgewatch_frames"  # [batch, height, width, 3] uint8 BGR
SCALE = np.float32(1 / 255)
_PREFIX = "edgewatch_prologue_"
_CASTABLE = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}


class PrologueError(ValueError):
    """The model's input cannot take the prologue; the message says why."""


def _graph_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    initialisers = {initialiser.name for initialiser in graph.initializer}
    return [value for value in graph.input if value.name not in initialisers]


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [
        dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?")
        for dim in value.type.tensor_type.shape.dim
    ]


def _constant(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, _PREFIX + name)


def prepend_prologue(
    model: onnx.ModelProto,
    height: int,
    width: int,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
) -> onnx.ModelProto:
    """`model` with its one image input [B, 3, H, W] (float32 or float16) replaced by `INPUT_NAME`
    [B, height, width, 3] uint8 BGR; with `mean`/`std` (RGB) the prologue also normalises. Changes `model`
    in place and returns it."""
    graph = model.graph
    inputs = _graph_inputs(graph)
    if len(inputs) != 1:
        raise PrologueError(f"the model has {len(inputs)} inputs, the prologue needs one image input")
    image = inputs[0]
    elem_type = image.type.tensor_type.elem_type
    if elem_type not in _CASTABLE:
        raise PrologueError(
            f"input {image.name} is {TensorProto.DataType.Name(elem_type).lower()}; "
            "edgewatch feeds float32 or float16"
        )
    dims = _dims(image)
    if len(dims) != 4 or (isinstance(dims[1], int) and dims[1] != 3):
        raise PrologueError(f"input {image.name} {dims} is not [batch, 3, height, width]")
    batch = dims[0] if dims[0] != "?" else "batch"

    nodes = [
        helper.make_node("Transpose", [INPUT_NAME], [_PREFIX + "nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Gather", [_PREFIX + "nchw", _PREFIX + "rgb"], [_PREFIX + "rgb_u8"], axis=1),
        helper.make_node("Cast", [_PREFIX + "rgb_u8"], [_PREFIX + "float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [_PREFIX + "float", _PREFIX + "scale"], [_PREFIX + "scaled"]),
    ]
    constants = [
        _constant("rgb", np.array([2, 1, 0], np.int64)),
        _constant("scale", np.array(SCALE, np.float32)),
    ]
    last = _PREFIX + "scaled"
    if mean is not None:
        nodes.append(helper.make_node("Sub", [last, _PREFIX + "mean"], [_PREFIX + "centred"]))
        constants.append(_constant("mean", np.array(mean, np.float32).reshape(1, 3, 1, 1)))
        last = _PREFIX + "centred"
    if std is not None:
        nodes.append(helper.make_node("Mul", [last, _PREFIX + "inverse_std"], [_PREFIX + "normalised"]))
        constants.append(_constant("inverse_std", (1 / np.array(std, np.float32)).reshape(1, 3, 1, 1)))
        last = _PREFIX + "normalised"
    if elem_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [last], [_PREFIX + "typed"], to=elem_type))
        last = _PREFIX + "typed"
    # the model's own nodes read the prologue's last output under the old input's name
    nodes[-1].output[0] = image.name

    frames = helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, [batch, height, width, 3])
    kept = [value for value in graph.input if value.name != image.name]
    del graph.input[:]
    graph.input.extend([frames, *kept])
    graph.initializer.extend(constants)
    old_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *old_nodes])
    _require_opset(model, 7)  # Mul and Sub broadcast from opset 7 on
    return model


def _require_opset(model: onnx.ModelProto, minimum: int) -> None:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < minimum:
            raise PrologueError(f"the model's opset {opset.version} is older than {minimum}")
