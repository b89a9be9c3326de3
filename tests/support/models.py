"""Small ONNX models built for a test's purpose."""

from __future__ import annotations

from pathlib import Path

from onnx import TensorProto, helper, save


def failing_model(path: Path) -> Path:
    """A model that loads and warms up (on zeros) but fails on any real frame: an impossible Reshape."""
    grow = helper.make_node("ReduceMax", ["images"], ["peak"], keepdims=0)
    nodes = [
        grow,
        helper.make_node("Ceil", ["peak"], ["peak_up"]),
        helper.make_node("Cast", ["peak_up"], ["extra"], to=TensorProto.INT64),
        helper.make_node("Mul", ["extra", "last_axis"], ["grown"]),
        helper.make_node("Add", ["shape", "grown"], ["target"]),
        helper.make_node("Reshape", ["zeros", "target"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fails-on-frames",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 84, 100])],
        initializer=[
            helper.make_tensor("zeros", TensorProto.FLOAT, [8400], [0.0] * 8400),
            helper.make_tensor("shape", TensorProto.INT64, [3], [1, 84, 100]),
            helper.make_tensor("last_axis", TensorProto.INT64, [3], [0, 0, 1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    names = {i: f"class{i}" for i in range(80)}
    helper.set_model_props(model, {"names": str(names)})
    save(model, str(path))
    return path
