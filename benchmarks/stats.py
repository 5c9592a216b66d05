"""Statistics of timing samples, speed-up ratios, and mask agreement: the pure arithmetic of the benchmark."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """``{"n", "median", "min", "max", "samples"}`` of timing samples (any unit; the unit is the caller's).

    Raises:
        ValueError: no samples, or a sample that is not a finite number >= 0.
    """
    values = [float(v) for v in samples]
    if not values:
        raise ValueError("summarize needs at least one sample, got none")
    bad = [v for v in values if not math.isfinite(v) or v < 0]
    if bad:
        raise ValueError(f"timing samples must be finite numbers >= 0, got {bad[:3]}")
    return {
        "n": len(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "samples": values,
    }


def speedup(baseline: float | None, value: float | None) -> float | None:
    """How many times smaller ``value`` is than ``baseline`` (``baseline / value``); None if either is missing.

    Used for times (``2.0`` = twice as fast as the baseline) and for memory (``2.0`` = half the memory).

    Raises:
        ValueError: a negative figure, or a zero ``value`` with a non-zero baseline (an infinite ratio
            means a measurement went wrong).
    """
    if baseline is None or value is None:
        return None
    baseline, value = float(baseline), float(value)
    if baseline < 0 or value < 0:
        raise ValueError(f"speedup needs figures >= 0, got baseline={baseline}, value={value}")
    if value == 0:
        if baseline == 0:
            return 1.0
        raise ValueError(f"speedup of a zero figure against baseline {baseline} is infinite: a measurement went wrong")
    return baseline / value


def _union(masks: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim == 2:
        return masks
    if masks.ndim == 3:
        return masks.any(axis=0)
    raise ValueError(f"masks must have shape (H, W) or (N, H, W), got {masks.shape}")


def mask_agreement(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_], per_mask: bool = True) -> dict[str, Any]:
    """How alike two mask sets of the same image are.

    Masks are ``(N, H, W)`` or ``(H, W)`` bool. With ``per_mask`` and both of the same shape (SAM's three
    multimask masks, whose positions mean the same thing), pixels are compared mask by mask; otherwise
    (FastSAM, whose paths may return a different number of masks, or the same number in another order)
    the union of each set is compared.

    Returns:
        ``{"pixels_pct": % of compared pixels that are equal, "iou_pct": IoU of the two unions in %
        (100 if both are empty), "compared": "masks" | "union", "count": (len(a), len(b))}``.

    Raises:
        ValueError: the masks are of images of different sizes, or not 2-D / 3-D.
    """
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    ua, ub = _union(a), _union(b)
    if ua.shape != ub.shape:
        raise ValueError(f"masks of different image sizes: {ua.shape} and {ub.shape}")
    if per_mask and a.shape == b.shape:
        compared = "masks"
        equal = float(np.count_nonzero(a == b)) / a.size if a.size else 1.0
    else:
        compared = "union"
        equal = float(np.count_nonzero(ua == ub)) / ua.size if ua.size else 1.0
    union = np.count_nonzero(ua | ub)
    iou = float(np.count_nonzero(ua & ub)) / union if union else 1.0
    count = (int(a.shape[0]) if a.ndim == 3 else 1, int(b.shape[0]) if b.ndim == 3 else 1)
    return {"pixels_pct": 100.0 * equal, "iou_pct": 100.0 * iou, "compared": compared, "count": count}


def everything_agreement(
    ours: list[dict[str, Any]], reference: list[dict[str, Any]], iou_threshold: float = 0.98
) -> dict[str, Any]:
    """How many of the reference's everything-mode masks have a counterpart among ours.

    Masks are COCO RLE dicts (``fastseg.rle.encode``). Reference masks are matched one-to-one to ours
    in order of decreasing IoU (pycocotools' IoU on the RLEs, no decoding); a pair counts when its
    IoU is ``>= iou_threshold`` (0.98: the everything parity tests' criterion).

    Returns:
        ``{"count": (len(ours), len(reference)), "matched": n, "matched_pct": % of the reference's masks
        matched (100 when both are empty, 0 when only ours is), "iou_threshold": iou_threshold}``.
    """
    from pycocotools import mask as mask_api

    from fastseg.rle import to_pycocotools

    matched = 0
    if ours and reference:
        iou = mask_api.iou(to_pycocotools(ours), to_pycocotools(reference), [0] * len(reference))
        iou = np.asarray(iou, dtype=np.float64)
        iou = iou.reshape(len(ours), len(reference))
        used_ours, used_ref = np.zeros(len(ours), bool), np.zeros(len(reference), bool)
        for flat in np.argsort(-iou, axis=None, kind="stable"):
            i, j = divmod(int(flat), len(reference))
            if iou[i, j] < iou_threshold:
                break
            if not (used_ours[i] or used_ref[j]):
                used_ours[i] = used_ref[j] = True
                matched += 1
    pct = 100.0 * matched / len(reference) if reference else (100.0 if not ours else 0.0)
    return {"count": (len(ours), len(reference)), "matched": matched, "matched_pct": pct,
            "iou_threshold": iou_threshold}
