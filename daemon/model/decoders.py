"""Raw model outputs -> detections, one small pure function per output layout.

Every decoder returns, per image, `(xyxy [K, 4] float32 in model-input pixels, confidence [K] float32,
class_id [K] int64)`, sorted by confidence, after the confidence filter and (YOLO layouts) class-aware NMS,
at most `max_det` long. Per request, `agnostic` makes NMS compare boxes across classes, and `classes` (class
ids) keeps only detections whose best class is one of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

Decoded = tuple[np.ndarray, np.ndarray, np.ndarray]


class UnsupportedModel(ValueError):
    """The model's inputs/outputs match no layout edgewatch can decode."""


class TensorInfo(Protocol):
    """What an onnxruntime `NodeArg` offers: a name and a shape whose symbolic dims are str or None."""

    @property
    def name(self) -> str: ...

    @property
    def shape(self) -> Sequence[Any]: ...


PAIRWISE_NMS_LIMIT = 256  # boxes; above it NMS loops box by box rather than hold [K, K] overlaps


def _empty() -> Decoded:
    return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """[K, 4] centre x, centre y, width, height -> [K, 4] float32 x1, y1, x2, y2."""
    centre = boxes[:, :2]
    half = boxes[:, 2:4] / 2
    return np.concatenate([centre - half, centre + half], axis=1).astype(np.float32, copy=False)


def nms(xyxy: np.ndarray, scores: np.ndarray, iou: float, max_det: int) -> np.ndarray:
    """Greedy NMS: indices of the kept boxes, best first, at most `max_det`."""
    order = np.argsort(-scores, kind="stable").astype(np.int64, copy=False)
    if order.size <= PAIRWISE_NMS_LIMIT:
        return _nms_pairwise(xyxy, order, iou, max_det)
    x1, y1, x2, y2 = xyxy.T
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    keep: list[int] = []
    while order.size and len(keep) < max_det:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        width = np.maximum(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0)
        height = np.maximum(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0)
        inter = width * height
        overlap = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-9)
        order = rest[overlap <= iou]
    return np.array(keep, dtype=np.int64)


def _nms_pairwise(xyxy: np.ndarray, order: np.ndarray, iou: float, max_det: int) -> np.ndarray:
    """`nms` for a few boxes: every pair's overlap in one go, then the greedy pass over plain indices. The
    same arithmetic, pair by pair, as the loop in `nms`, so the same boxes are kept."""
    x1, y1, x2, y2 = xyxy[order].T[:, :, None]  # best first; each [K, 1], against its transpose [1, K]
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    width = np.maximum(np.minimum(x2, x2.T) - np.maximum(x1, x1.T), 0)
    height = np.maximum(np.minimum(y2, y2.T) - np.maximum(y1, y1.T), 0)
    inter = width * height
    overlap = inter / np.maximum(areas + areas.T - inter, 1e-9)
    suppresses = ~(overlap <= iou)  # as the loop drops them: a NaN overlap drops too
    keep: list[int] = []
    dropped = np.zeros(order.size, dtype=bool)
    for index in range(order.size):
        if len(keep) >= max_det:
            break
        if dropped[index]:
            continue
        keep.append(index)
        dropped |= suppresses[index]
    return order[keep]


def class_aware_nms(
    xyxy: np.ndarray, scores: np.ndarray, class_id: np.ndarray, iou: float, max_det: int
) -> Decoded:
    """NMS within each class: boxes are shifted by class so that different classes never overlap."""
    offset = float(np.abs(xyxy).max()) + 1 if len(xyxy) else 0.0
    keep = nms(xyxy + (class_id * offset)[:, None].astype(xyxy.dtype), scores, iou, max_det)
    return xyxy[keep], scores[keep], class_id[keep]


def select_nms(
    xyxy: np.ndarray,
    scores: np.ndarray,
    class_id: np.ndarray,
    iou: float,
    max_det: int,
    agnostic: bool = False,
    classes: np.ndarray | None = None,
) -> Decoded:
    """Drop the classes not asked for, then NMS within each class (or across all of them if `agnostic`)."""
    if classes is not None:
        wanted = np.isin(class_id, classes)
        xyxy, scores, class_id = xyxy[wanted], scores[wanted], class_id[wanted]
    if len(xyxy) <= 1 and max_det >= 1:  # nothing to suppress
        return xyxy, scores, class_id
    if not agnostic:
        return class_aware_nms(xyxy, scores, class_id, iou, max_det)
    keep = nms(xyxy, scores, iou, max_det)
    return xyxy[keep], scores[keep], class_id[keep]


def decode_yolov8(
    output: np.ndarray,
    conf: float,
    iou: float,
    max_det: int,
    *,
    agnostic: bool = False,
    classes: np.ndarray | None = None,
) -> list[Decoded]:
    """Ultralytics YOLOv5u/v8/11: [B, 4 + nc, N], rows cx, cy, w, h (input pixels) then class scores."""
    results = []
    for prediction in output:
        scores = prediction[4:]
        confidence = scores.max(axis=0)
        candidates = np.flatnonzero(confidence > conf)
        if candidates.size == 0:
            results.append(_empty())
            continue
        class_id = scores[:, candidates].argmax(axis=0).astype(np.int64, copy=False)
        xyxy = cxcywh_to_xyxy(prediction[:4, candidates].T)
        confidence = confidence[candidates].astype(np.float32, copy=False)
        results.append(select_nms(xyxy, confidence, class_id, iou, max_det, agnostic, classes))
    return results


def decode_yolov5(
    output: np.ndarray,
    conf: float,
    iou: float,
    max_det: int,
    *,
    agnostic: bool = False,
    classes: np.ndarray | None = None,
) -> list[Decoded]:
    """Classic YOLOv5: [B, N, 5 + nc], cx, cy, w, h (input pixels), objectness, class probabilities."""
    results = []
    for prediction in output:
        # objectness bounds the score (obj * cls <= obj), so it filters most rows before any product
        rows = prediction[prediction[:, 4] > conf]
        scores = rows[:, 5:] * rows[:, 4:5]
        class_id = scores.argmax(axis=1)
        confidence = scores[np.arange(len(rows)), class_id]
        kept = confidence > conf
        if not kept.any():
            results.append(_empty())
            continue
        xyxy = cxcywh_to_xyxy(rows[kept, :4])
        results.append(
            select_nms(
                xyxy,
                confidence[kept].astype(np.float32),
                class_id[kept].astype(np.int64),
                iou,
                max_det,
                agnostic,
                classes,
            )
        )
    return results


def decode_rfdetr(
    dets: np.ndarray,
    labels: np.ndarray,
    input_size: tuple[int, int],
    conf: float,
    max_det: int,
    *,
    classes: np.ndarray | None = None,
) -> list[Decoded]:
    """RF-DETR: dets [B, Q, 4] normalised cx, cy, w, h and labels [B, Q, C] logits; set-based, so no NMS.

    Each query gives its most likely class; `input_size` is (height, width) of the model input.
    """
    height, width = input_size
    scale = np.array([width, height, width, height], dtype=np.float32)
    results = []
    for boxes, logits in zip(dets, labels, strict=True):
        class_id = logits.argmax(axis=1)
        best_logit = logits[np.arange(len(logits)), class_id]
        confidence = (1 / (1 + np.exp(-best_logit.astype(np.float32)))).astype(np.float32)
        kept = np.flatnonzero(confidence > conf)
        if classes is not None:
            kept = kept[np.isin(class_id[kept], classes)]
        kept = kept[np.argsort(-confidence[kept], kind="stable")][:max_det]
        xyxy = cxcywh_to_xyxy(boxes[kept] * scale)
        results.append((xyxy, confidence[kept], class_id[kept].astype(np.int64)))
    return results


def _dim(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def rfdetr_outputs(outputs: Sequence[TensorInfo]) -> tuple[str, str] | None:
    """Names of (dets, labels) when the outputs look like RF-DETR's; else None."""
    if len(outputs) != 2 or any(len(output.shape) != 3 for output in outputs):
        return None
    by_name = {output.name: output for output in outputs}
    if set(by_name) == {"dets", "labels"}:
        dets, labels = by_name["dets"], by_name["labels"]
    else:
        box_like = [output for output in outputs if _dim(output.shape[2]) == 4]
        if len(box_like) != 1:
            return None
        dets = box_like[0]
        labels = outputs[1] if outputs[0] is dets else outputs[0]
    if _dim(dets.shape[2]) != 4 or _dim(labels.shape[2]) is None:
        return None
    queries = _dim(dets.shape[1]), _dim(labels.shape[1])
    if None not in queries and queries[0] != queries[1]:
        return None
    return dets.name, labels.name


def _single_output_layout(shape: Sequence[Any]) -> str | None:
    if len(shape) != 3:
        return None
    rows, columns = _dim(shape[1]), _dim(shape[2])
    if rows is not None and rows >= 5 and (columns is None or columns > rows):
        return "yolov8"
    if columns is not None and columns >= 6 and (rows is None or rows > columns):
        return "yolov5"
    return None


def describe(tensors: Sequence[TensorInfo]) -> str:
    """`name [d0, d1, ...]` for each tensor; a symbolic dim shows its name, an unnamed one `?`."""
    return ", ".join(
        f"{tensor.name} [{', '.join('?' if dim is None else str(dim) for dim in tensor.shape)}]"
        for tensor in tensors
    )


def is_image_input(inputs: Sequence[TensorInfo]) -> bool:
    """One input shaped [B, 3, H, W] (dims other than the channels may be symbolic)."""
    return len(inputs) == 1 and len(inputs[0].shape) == 4 and _dim(inputs[0].shape[1]) in (3, None)


def detect_layout(inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo]) -> str:
    """Which decoder fits a model with one image input [B, 3, H, W] and these outputs."""
    layout = None
    if is_image_input(inputs):
        if len(outputs) == 1:
            layout = _single_output_layout(outputs[0].shape)
        elif rfdetr_outputs(outputs) is not None:
            layout = "rfdetr"
    if layout is None:
        raise UnsupportedModel(
            f"unsupported model outputs: input{'s' if len(inputs) != 1 else ''} {describe(inputs)}; "
            f"output{'s' if len(outputs) != 1 else ''} {describe(outputs)} "
            "(expected one image input [B, 3, H, W] and outputs [B, 4+classes, N] (YOLOv8), "
            "[B, N, 5+classes] (YOLOv5) or dets [B, Q, 4] + labels [B, Q, classes] (RF-DETR))"
        )
    return layout
