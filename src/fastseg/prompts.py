"""Validation of prompts against the image they are for.

Every function returns arrays of one layout (float64 coordinates in original-image pixels, exactly
as given, int64 labels) or raises a ``ValueError`` that names what was expected and what came.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


def check_flag(name: str, value: object) -> bool:
    """``value`` as a bool if it is one (``bool`` or ``numpy.bool_``); else ``TypeError``.

    For on/off arguments such as ``multimask``: ``bool("no")`` is True, so a string or a number is
    refused rather than read as truth.
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")


@dataclass(frozen=True)
class Prompts:
    """Validated prompts for one image.

    Attributes:
        points: ``(N, 2)`` float64, XY in original-image pixels, or None.
        labels: ``(N,)`` int64, 1 foreground / 0 background, or None (exactly when points is None).
        boxes: ``(B, 4)`` float64 XYXY in original-image pixels, or None.

        mask_input: ``(B or 1, S, S)`` float32 low-resolution logits from a previous call (``S`` the
            model's low-resolution mask size), or None.

    At least one point, box or text is present. Coordinates stay float64, as the user gave them:
    ``segment_anything`` scales them to the input frame in float64 before its float32 cast, and
    ultralytics truncates them to whole pixels from the given value (a float32 round trip would turn
    100.99999999 into 101, not 100). Engines trust a ``Prompts`` value: nothing checks it twice.
    """

    points: npt.NDArray[np.float64] | None = None
    labels: npt.NDArray[np.int64] | None = None
    boxes: npt.NDArray[np.float64] | None = None
    mask_input: npt.NDArray[np.float32] | None = None
    #: FastSAM text prompts (a non-empty tuple of strings), with the RGB pixels their crops come from.
    texts: tuple[str, ...] | None = None
    image: npt.NDArray[np.uint8] | None = None

    @property
    def n_sets(self) -> int:
        """Prompt sets: one per box, or one without boxes."""
        return 1 if self.boxes is None else int(self.boxes.shape[0])


def _as_float_array(value: npt.ArrayLike, what: str) -> npt.NDArray[np.float64]:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be numeric, got {type(value).__name__}: {exc}") from exc
    return array


def validate_prompts(
    image_size: tuple[int, int],
    points: npt.ArrayLike | None = None,
    labels: npt.ArrayLike | None = None,
    boxes: npt.ArrayLike | None = None,
    mask_input: npt.ArrayLike | None = None,
    low_res_size: int | None = None,
    texts: Sequence[str] | None = None,
) -> Prompts:
    """Check prompts for an image of ``image_size`` ``(H, W)`` and bring them to one layout.

    Raises ``ValueError`` when no point or box is given: segmenting the whole image is a mode of its
    own (``Predictor.everything``), never the default.

    Args:
        points: ``(N, 2)`` or ``(2,)`` XY pixel coordinates; each must lie inside the image
            (``0 <= x <= W``, ``0 <= y <= H``).
        labels: ``(N,)`` of 1 (foreground) and 0 (background); defaults to all foreground.
        boxes: ``(4,)`` or ``(B, 4)`` XYXY with ``x1 <= x2`` and ``y1 <= y2``, inside the image.
        mask_input: low-resolution logits ``(S, S)``, ``(B, S, S)`` or ``(B, 1, S, S)``, e.g.
            ``result.low_res_logits`` of a previous call.
        low_res_size: ``S``, the model's low-resolution mask size (its model folder says it); None
            for a model that takes no mask input (FastSAM).
        texts: a non-empty list of strings (FastSAM with a CLIP model; the caller checks the model).
    """
    h, w = image_size
    pts = lab = bxs = msk = None
    mask32: npt.NDArray[np.float32] | None = None
    if points is not None:
        pts = _as_float_array(points, "points")
        if pts.ndim == 1 and pts.shape == (2,):
            pts = pts[None]
        if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] == 0:
            raise ValueError(f"points must have shape (N, 2) with N >= 1, got {pts.shape}")
        if not np.isfinite(pts).all():
            raise ValueError(f"points must be finite, got {pts[~np.isfinite(pts).all(axis=1)].tolist()}")
        outside = (pts[:, 0] < 0) | (pts[:, 0] > w) | (pts[:, 1] < 0) | (pts[:, 1] > h)
        if outside.any():
            raise ValueError(
                f"points must lie inside the {w}x{h} image (0 <= x <= {w}, 0 <= y <= {h}), got {pts[outside].tolist()}"
            )
        if labels is None:
            lab = np.ones(len(pts), dtype=np.int64)
        else:
            raw = np.asarray(labels)
            if raw.ndim == 0:
                raw = raw[None]
            if raw.ndim != 1:
                raise ValueError(f"labels must have shape (N,), got {raw.shape}")
            if raw.shape[0] != pts.shape[0]:
                raise ValueError(f"got {pts.shape[0]} points but {raw.shape[0]} labels; they must match")
            if raw.dtype.kind not in "biuf" or not np.isin(raw, (0, 1)).all():
                raise ValueError(f"labels must be 1 (foreground) or 0 (background), got {raw.tolist()}")
            lab = raw.astype(np.int64)
    elif labels is not None:
        raise ValueError("labels were given without points")
    if boxes is not None:
        bxs = _as_float_array(boxes, "boxes")
        if bxs.ndim == 1 and bxs.shape == (4,):
            bxs = bxs[None]
        if bxs.ndim != 2 or bxs.shape[1] != 4 or bxs.shape[0] == 0:
            raise ValueError(f"boxes must have shape (4,) or (B, 4) with B >= 1, XYXY, got {bxs.shape}")
        if not np.isfinite(bxs).all():
            raise ValueError(f"boxes must be finite, got {bxs[~np.isfinite(bxs).all(axis=1)].tolist()}")
        inverted = (bxs[:, 2] < bxs[:, 0]) | (bxs[:, 3] < bxs[:, 1])
        if inverted.any():
            raise ValueError(f"boxes must be XYXY with x1 <= x2 and y1 <= y2, got {bxs[inverted].tolist()}")
        outside = (bxs[:, 0] < 0) | (bxs[:, 1] < 0) | (bxs[:, 2] > w) | (bxs[:, 3] > h)
        if outside.any():
            raise ValueError(f"boxes must lie inside the {w}x{h} image, got {bxs[outside].tolist()}")
    if texts is not None:
        from fastseg.clip import check_texts

        texts = tuple(check_texts(texts))
    if pts is None and bxs is None and texts is None:
        raise ValueError(
            "predict needs points and/or boxes; no prompt was given (whole-image segmentation "
            "is a separate mode, not a default)"
        )
    if mask_input is not None:
        if low_res_size is None:
            raise ValueError("this model takes no mask_input (that is a SAM-family prompt); pass points or boxes")
        msk = _as_float_array(mask_input, "mask_input")
        if msk.ndim == 4 and msk.shape[1] == 1:
            msk = msk[:, 0]
        if msk.ndim == 2:
            msk = msk[None]
        if msk.ndim != 3 or msk.shape[1:] != (low_res_size, low_res_size):
            raise ValueError(
                f"mask_input must have shape ({low_res_size}, {low_res_size}), (B, {low_res_size}, "
                f"{low_res_size}) or (B, 1, {low_res_size}, {low_res_size}), got {np.shape(mask_input)}"
            )
        if not np.isfinite(msk).all():
            raise ValueError("mask_input must be finite (it holds NaN or inf)")
        n_sets = 1 if bxs is None else bxs.shape[0]
        if msk.shape[0] not in (1, n_sets):
            raise ValueError(f"mask_input has {msk.shape[0]} masks but there are {n_sets} prompt sets")
        mask32 = msk.astype(np.float32)
    return Prompts(points=pts, labels=lab, boxes=bxs, mask_input=mask32, texts=texts)
