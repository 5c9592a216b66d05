"""General operations on boxes, masks and resampling taps, shared by every model family.

Boxes are ``(N, 4)`` arrays: XYXY (corners) unless a name says otherwise; XYWH is top-left corner
plus size (COCO records), CXCYWH is centre plus size (YOLO network outputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


# ----------------------------------------------------------------------------------------------
# Box formats
# ----------------------------------------------------------------------------------------------


def cxcywh_to_xyxy(boxes: FloatArray) -> FloatArray:
    """Centre/size ``(N, 4)`` to corners, in float32 (ultralytics ``xywh2xyxy``)."""
    half = boxes[:, 2:4] / np.float32(2)
    return np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], axis=1).astype(np.float32)


def xyxy_to_xywh(box: npt.ArrayLike) -> list[float]:
    """One XYXY box as a COCO ``[x, y, width, height]`` list of Python floats."""
    x0, y0, x1, y1 = (float(v) for v in np.asarray(box).reshape(4))
    return [x0, y0, x1 - x0, y1 - y0]


def xywh_to_xyxy(boxes: npt.ArrayLike) -> FloatArray:
    """COCO XYWH boxes ``(N, 4)`` to XYXY, float32 (summed in float64: exact for boxes that came from float32 XYXY)."""
    out = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    out[:, 2:] += out[:, :2]
    return out.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Overlap
# ----------------------------------------------------------------------------------------------


def box_iou(a: FloatArray, b: FloatArray, eps: float = 1e-7) -> FloatArray:
    """``(N, M)`` IoU of XYXY boxes in float32, with ultralytics' ``eps`` in the union (``box_iou``)."""
    a3 = np.asarray(a, dtype=np.float32)[:, None, :]
    b3 = np.asarray(b, dtype=np.float32)[None, :, :]
    wh = np.clip(np.minimum(a3[..., 2:], b3[..., 2:]) - np.maximum(a3[..., :2], b3[..., :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    wh_a, wh_b = a3[..., 2:] - a3[..., :2], b3[..., 2:] - b3[..., :2]
    union = wh_a[..., 0] * wh_a[..., 1] + wh_b[..., 0] * wh_b[..., 1] - inter + np.float32(eps)
    iou: FloatArray = (inter / union).astype(np.float32)
    return iou


def nms(boxes: npt.ArrayLike, scores: npt.ArrayLike, iou_threshold: float) -> npt.NDArray[np.int64]:
    """Greedy non-maximum suppression with ``torchvision.ops.nms`` semantics (its CPU kernel).

    Args:
        boxes: ``(N, 4)`` XYXY, compared in float32.
        scores: ``(N,)``, float32.
        iou_threshold: a box is dropped if its IoU with a kept, higher-scoring box is ``>`` this.

    Returns:
        ``(K,)`` int64 indices of the kept boxes, by decreasing score (ties keep input order).
    """
    box = np.asarray(boxes, dtype=np.float32)
    score = np.asarray(scores, dtype=np.float32)
    if box.ndim != 2 or box.shape[1] != 4 or score.shape != (box.shape[0],):
        raise ValueError(f"nms needs boxes (N, 4) and scores (N,), got {box.shape} and {score.shape}")
    if len(box) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = (np.ascontiguousarray(box[:, k]) for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-score, kind="stable")
    suppressed = np.zeros(len(box), dtype=bool)
    keep = []
    threshold = float(iou_threshold)
    for position, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[position + 1 :]
        rest = rest[~suppressed[rest]]
        if rest.size == 0:
            break
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        overlap = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[overlap.astype(np.float64) > threshold]] = True  # float vs double, as in C++
    return np.asarray(keep, dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------


def masks_to_boxes(masks: npt.NDArray[np.bool_]) -> FloatArray:
    """Tight XYXY boxes of boolean masks ``(N, H, W)``; an empty mask gets ``[0, 0, 0, 0]``.

    As segment-anything's ``batched_mask_to_box``: x2/y2 are the last foreground pixel's index
    (inclusive), in original-image pixels, float32 (``.astype(np.int64)`` gives the original's ints).
    """
    n, h, w = masks.shape
    boxes = np.zeros((n, 4), dtype=np.float32)
    if n == 0 or h == 0 or w == 0:
        return boxes
    rows = cast("npt.NDArray[np.bool_]", masks.any(axis=2))  # (N, H)
    cols = cast("npt.NDArray[np.bool_]", masks.any(axis=1))  # (N, W)
    nonempty = rows.any(axis=1)
    y1 = rows.argmax(axis=1)
    y2 = h - 1 - rows[:, ::-1].argmax(axis=1)
    x1 = cols.argmax(axis=1)
    x2 = w - 1 - cols[:, ::-1].argmax(axis=1)
    boxes[:] = np.stack([x1, y1, x2, y2], axis=1)
    boxes[~nonempty] = 0
    return boxes


# ----------------------------------------------------------------------------------------------
# Bilinear resampling taps
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Taps:
    """Linear resampling along one axis: output ``i`` is ``x[i0[i]] * w0[i] + x[i1[i]] * w1[i]``."""

    i0: npt.NDArray[np.intp]
    i1: npt.NDArray[np.intp]
    w0: npt.NDArray[np.floating]
    w1: npt.NDArray[np.floating]


def bilinear_taps(
    n_in: int, n_out: int, scale_factor: float | None = None, dtype: type[np.floating] = np.float32
) -> Taps:
    """Source samples and weights of ``F.interpolate(mode="bilinear", align_corners=False)`` on one axis.

    torch's arithmetic, in ``dtype``: ``scale = n_in / n_out`` (or ``1 / scale_factor`` when one is
    given), ``src = max(scale * (dst + 0.5) - 0.5, 0)``, ``i0 = floor(src)`` (at most ``n_in - 1``),
    ``i1 = i0 + 1`` but at most ``n_in - 1`` (the last sample repeats past the edge), ``w1 = src - i0``,
    ``w0 = 1 - w1``; no antialiasing. float32 reproduces torch's kernel bit for bit; float64 gives the
    exact weights (SAM's upscaling composes two resamplings into one matrix with them).
    """
    kind = np.dtype(dtype).type
    scale = kind(1.0 / scale_factor) if scale_factor else kind(n_in) / kind(n_out)
    dst = np.arange(n_out, dtype=kind) + kind(0.5)
    # torch computes scale * dst - 0.5 as one fused multiply-add (a single rounding): the float64
    # product of two float32 values is exact, so rounding once to float32 afterwards is the same.
    src = np.maximum((scale.astype(np.float64) * dst.astype(np.float64) - 0.5).astype(kind), kind(0))
    i0 = np.minimum(np.floor(src).astype(np.intp), n_in - 1)
    w1 = np.clip(src - i0.astype(kind), kind(0), kind(1)).astype(kind)
    i1 = i0 + (i0 < n_in - 1)
    return Taps(i0=i0, i1=i1, w0=(kind(1) - w1).astype(kind), w1=w1)
