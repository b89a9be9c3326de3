"""Convert a Darknet YOLO (`.cfg` + `.weights`, yolov3-tiny style) to an ONNX detector.

The graph takes `images` [batch, 3, H, W] (RGB, 0..1) and decodes the YOLO heads itself, so it emits the
Ultralytics YOLOv8 layout: `output0` [batch, 4 + classes, N], rows cx, cy, w, h in input pixels, then one
score per class (objectness times class probability). Sections supported: net, convolutional, maxpool,
route, upsample, yolo. Written with numpy and onnx only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # the IR that goes with opset 17, so older onnxruntime/TensorRT builds load the file
BN_EPSILON = 1e-6  # Darknet divides by sqrt(var) + 1e-6, not sqrt(var + eps)
LEAKY_SLOPE = 0.1

T = TypeVar("T")


class DarknetError(ValueError):
    """The cfg or weights cannot be converted; the message says which section and why."""


@dataclass
class Section:
    kind: str
    line: int
    options: dict[str, str] = field(default_factory=dict)

    def where(self) -> str:
        return f"[{self.kind}] at line {self.line}"

    def integer(self, key: str, default: int | None = None) -> int:
        return self._parse(key, default, int)

    def number(self, key: str, default: float | None = None) -> float:
        return self._parse(key, default, float)

    def integers(self, key: str) -> list[int]:
        return self._parse(key, None, lambda text: [int(item) for item in text.split(",") if item.strip()])

    def _parse(self, key: str, default: object, parse: Callable[[str], T]) -> T:
        text = self._get(key, default)
        try:
            return parse(text)
        except ValueError:
            raise DarknetError(f"{self.where()}: '{key}={text}' is not a valid value") from None

    def _get(self, key: str, default: object) -> str:
        if key in self.options:
            return self.options[key]
        if default is None:
            raise DarknetError(f"{self.where()}: missing '{key}'")
        return str(default)


def parse_cfg(text: str) -> list[Section]:
    """Sections in file order; `#`/`;` comments and blank lines ignored."""
    sections: list[Section] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise DarknetError(f"line {number}: malformed section header {line!r}")
            sections.append(Section(line[1:-1].strip(), number))
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            sections[-1].options[key.strip()] = value.strip()
        else:
            raise DarknetError(f"line {number}: expected 'key=value' inside a section, got {line!r}")
    if not sections or sections[0].kind not in ("net", "network"):
        raise DarknetError("the cfg must start with a [net] section")
    return sections


class _Weights:
    """Sequential reader over the float32 body of a `.weights` file."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 16:
            raise DarknetError("weights file is too short to hold a Darknet header")
        major, minor, _revision = np.frombuffer(data, dtype="<i4", count=3)
        # Darknet wrote `seen` as a 64-bit size_t from format 0.2 on, as a 32-bit int before
        offset = 12 + (8 if major * 10 + minor >= 2 and major < 1000 and minor < 1000 else 4)
        if (len(data) - offset) % 4:
            raise DarknetError("weights file is truncated (its size is not a whole number of floats)")
        self._values = np.frombuffer(data, dtype="<f4", offset=offset)
        self._position = 0

    def take(self, count: int, what: str) -> np.ndarray:
        end = self._position + count
        if end > self._values.size:
            raise DarknetError(f"weights file too short: it ends inside {what}")
        values = self._values[self._position:end].astype(np.float32)
        self._position = end
        return values

    def check_consumed(self) -> None:
        left = self._values.size - self._position
        if left:
            raise DarknetError(f"weights file has {left} values more than the cfg uses: they do not match")


@dataclass
class _Tensor:
    name: str
    channels: int
    height: int
    width: int


@dataclass
class _Head:
    """One decoded YOLO head: [batch, 4 + classes, cells]."""

    name: str
    classes: int
    cells: int
    stride: int


class _Builder:
    def __init__(self, weights: _Weights) -> None:
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attributes: object) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def convolutional(self, index: int, section: Section, x: _Tensor) -> _Tensor:
        filters, size = section.integer("filters"), section.integer("size")
        stride = section.integer("stride", 1)
        if section.integer("groups", 1) != 1 or section.integer("dilation", 1) != 1:
            raise DarknetError(f"{section.where()}: grouped or dilated convolutions are not supported")
        pad = size // 2 if section.integer("pad", 0) else section.integer("padding", 0)
        where = f"{section.where()} (layer {index})"
        batch_norm = section.integer("batch_normalize", 0)
        # stored per layer: biases (the batch-norm shift), [scales, rolling means, rolling variances], kernel
        bias = self.weights.take(filters, where)
        if batch_norm:
            scale, mean, variance = [self.weights.take(filters, where) for _ in range(3)]
        kernel = self.weights.take(filters * x.channels * size * size, where)
        kernel = kernel.reshape(filters, x.channels, size, size)
        if batch_norm:
            factor = scale / (np.sqrt(variance) + BN_EPSILON)
            kernel = kernel * factor[:, None, None, None]
            bias = bias - mean * factor
        out = self.node(
            "Conv",
            [x.name, self.const(f"conv{index}.weight", kernel), self.const(f"conv{index}.bias", bias)],
            f"conv{index}",
            kernel_shape=[size, size],
            strides=[stride, stride],
            pads=[pad] * 4,
        )
        activation = section.options.get("activation", "logistic")
        if activation == "leaky":
            out = self.node("LeakyRelu", [out], f"leaky{index}", alpha=LEAKY_SLOPE)
        elif activation != "linear":
            raise DarknetError(f"{section.where()}: activation '{activation}' is not supported")
        height = (x.height + 2 * pad - size) // stride + 1
        width = (x.width + 2 * pad - size) // stride + 1
        return _Tensor(out, filters, height, width)

    def maxpool(self, index: int, section: Section, x: _Tensor) -> _Tensor:
        size = section.integer("size", section.integer("stride", 1))
        stride = section.integer("stride", 1)
        padding = section.integer("padding", size - 1)
        # Darknet pads floor(padding/2) before and the rest after: for size 2 stride 1 that is one
        # row/column at the bottom/right, which keeps the spatial size
        before, after = padding // 2, padding - padding // 2
        out = self.node(
            "MaxPool",
            [x.name],
            f"maxpool{index}",
            kernel_shape=[size, size],
            strides=[stride, stride],
            pads=[before, before, after, after],
        )
        height = (x.height + padding - size) // stride + 1
        width = (x.width + padding - size) // stride + 1
        return _Tensor(out, x.channels, height, width)

    def upsample(self, index: int, section: Section, x: _Tensor) -> _Tensor:
        stride = section.integer("stride", 2)
        if section.number("scale", 1) != 1:
            raise DarknetError(f"{section.where()}: 'scale' other than 1 is not supported")
        scales = self.const(f"upsample{index}.scales", np.array([1, 1, stride, stride], dtype=np.float32))
        out = self.node(
            "Resize",
            [x.name, "", scales],
            f"upsample{index}",
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        )
        return _Tensor(out, x.channels, x.height * stride, x.width * stride)

    def route(self, index: int, section: Section, layers: list[_Tensor | None]) -> _Tensor:
        if section.integer("groups", 1) != 1:
            raise DarknetError(f"{section.where()}: route 'groups' is not supported")
        sources: list[_Tensor] = []
        for ref in section.integers("layers"):
            position = index + ref if ref < 0 else ref
            source = layers[position] if 0 <= position < index else None
            if source is None:
                raise DarknetError(f"{section.where()}: layer {ref} is not a feature map before this route")
            sources.append(source)
        if not sources:
            raise DarknetError(f"{section.where()}: 'layers' is empty")
        if len({(s.height, s.width) for s in sources}) != 1:
            raise DarknetError(f"{section.where()}: routed layers have different spatial sizes")
        if len(sources) == 1:
            return sources[0]
        out = self.node("Concat", [s.name for s in sources], f"route{index}", axis=1)
        return _Tensor(out, sum(s.channels for s in sources), sources[0].height, sources[0].width)

    def yolo(self, index: int, section: Section, x: _Tensor, net_height: int, net_width: int) -> _Head:
        """Decode one head to [batch, 4 + classes, H*W*A]; cells row-major, anchors innermost."""
        classes = section.integer("classes")
        anchors = np.array(section.integers("anchors"), dtype=np.float32).reshape(-1, 2)
        mask = section.integers("mask") if "mask" in section.options else list(range(len(anchors)))
        if section.number("scale_x_y", 1) != 1 or section.integer("new_coords", 0):
            raise DarknetError(f"{section.where()}: 'scale_x_y'/'new_coords' are not supported")
        if any(not 0 <= m < len(anchors) for m in mask):
            raise DarknetError(f"{section.where()}: mask refers to a missing anchor")
        count, attributes = len(mask), 5 + classes
        if x.channels != count * attributes:
            raise DarknetError(
                f"{section.where()}: input has {x.channels} channels, expected {count} x (5 + {classes})"
            )
        stride_y, stride_x = net_height / x.height, net_width / x.width
        cells = x.height * x.width * count
        # constants laid out like the decoded tensor: index (y * W + x) * A + a
        grid_y, grid_x, slot = np.meshgrid(
            np.arange(x.height), np.arange(x.width), np.arange(count), indexing="ij"
        )
        offsets = np.stack([grid_x.ravel() * stride_x, grid_y.ravel() * stride_y])[None].astype(np.float32)
        sizes = anchors[np.array(mask)][slot.ravel()].T[None].astype(np.float32)
        scale = np.array([stride_x, stride_y], dtype=np.float32).reshape(1, 2, 1)

        name = f"yolo{index}"
        shape5 = self.const(f"{name}.shape5", np.array([0, count, attributes, x.height, x.width], np.int64))
        shape3 = self.const(f"{name}.shape3", np.array([0, attributes, cells], np.int64))
        raw = self.node("Reshape", [x.name, shape5], f"{name}.split_anchors")
        raw = self.node("Transpose", [raw], f"{name}.anchors_last", perm=[0, 2, 3, 4, 1])
        raw = self.node("Reshape", [raw, shape3], f"{name}.flat")
        logistic = self.node("Sigmoid", [raw], f"{name}.sigmoid")

        def rows(source: str, start: int, end: int, label: str) -> str:
            bounds = [self.const(f"{name}.{label}.{edge}", np.array([value], np.int64))
                      for edge, value in (("start", start), ("end", end), ("axes", 1))]
            return self.node("Slice", [source, *bounds], f"{name}.{label}")

        stride = self.const(f"{name}.stride", scale)
        xy = self.node("Mul", [rows(logistic, 0, 2, "xy"), stride], f"{name}.xy_px")
        xy = self.node("Add", [xy, self.const(f"{name}.grid", offsets)], f"{name}.centre")
        wh = self.node("Exp", [rows(raw, 2, 4, "wh")], f"{name}.wh_exp")
        wh = self.node("Mul", [wh, self.const(f"{name}.anchors", sizes)], f"{name}.size")
        scores = self.node(
            "Mul", [rows(logistic, 5, attributes, "cls"), rows(logistic, 4, 5, "obj")], f"{name}.scores"
        )
        decoded = self.node("Concat", [xy, wh, scores], f"{name}.decoded", axis=1)
        return _Head(decoded, classes, cells, round(stride_y))


def convert(cfg_text: str, weights: bytes, names: Sequence[str], metadata: dict[str, str]) -> onnx.ModelProto:
    """Build the ONNX model; `metadata` is added to `names`, `imgsz` and `stride` in metadata_props."""
    sections = parse_cfg(cfg_text)
    net, layers_cfg = sections[0], sections[1:]
    height, width, channels = net.integer("height"), net.integer("width"), net.integer("channels", 3)
    reader = _Weights(weights)
    builder = _Builder(reader)

    x = _Tensor("images", channels, height, width)
    layers: list[_Tensor | None] = []
    heads: list[_Head] = []
    for index, section in enumerate(layers_cfg):
        if section.kind == "convolutional":
            x = builder.convolutional(index, section, x)
        elif section.kind == "maxpool":
            x = builder.maxpool(index, section, x)
        elif section.kind == "upsample":
            x = builder.upsample(index, section, x)
        elif section.kind == "route":
            x = builder.route(index, section, layers)
        elif section.kind == "yolo":
            heads.append(builder.yolo(index, section, x, height, width))
            layers.append(None)  # a yolo layer's output is not a feature map later layers may use
            continue
        else:
            raise DarknetError(
                f"{section.where()}: unsupported section type (supported: convolutional, maxpool, "
                "route, upsample, yolo)"
            )
        layers.append(x)
    reader.check_consumed()

    if not heads:
        raise DarknetError("the cfg has no [yolo] section")
    classes = heads[0].classes
    if any(head.classes != classes for head in heads):
        raise DarknetError("the [yolo] sections disagree on 'classes'")
    if len(names) != classes:
        raise DarknetError(f"{len(names)} class names given but the cfg has {classes} classes")
    builder.node("Concat", [head.name for head in heads], "output0", axis=2)
    candidates = sum(head.cells for head in heads)
    graph = helper.make_graph(
        builder.nodes,
        "darknet",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", channels, height, width])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 4 + classes, candidates])],
        builder.initializers,
    )
    opsets = [helper.make_opsetid("", OPSET)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="edgewatch")
    model.ir_version = IR_VERSION
    props = {
        "names": str(dict(enumerate(names))),
        "imgsz": str([height, width]),
        "stride": str(max(head.stride for head in heads)),
        **metadata,
    }
    helper.set_model_props(model, props)
    return model
