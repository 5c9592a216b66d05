"""Drawing masks for people to look at: overlays and mask PNGs."""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fastseg.paths import atomic_write


def palette(n: int) -> npt.NDArray[np.uint8]:
    """``n`` distinct, saturated RGB colours (golden-ratio hue steps), the same for the same ``n``."""
    hues = (np.arange(n) * 0.618033988749895 + 0.1) % 1.0
    rgb = [colorsys.hsv_to_rgb(h, 0.85, 0.95) for h in hues]
    colours: npt.NDArray[np.uint8] = (np.array(rgb, dtype=np.float64).reshape(n, 3) * 255).round().astype(np.uint8)
    return colours


def overlay(
    image: npt.NDArray[np.uint8],
    masks: npt.NDArray[np.bool_] | Sequence[npt.NDArray[np.bool_]],
    alpha: float = 0.5,
    areas: Sequence[int] | None = None,
) -> npt.NDArray[np.uint8]:
    """Blend each mask of ``masks`` (``(N, H, W)``, or a sequence of ``(H, W)``) into ``image`` ``(H, W, 3)``.

    Each mask gets its own colour (:func:`palette`); larger masks are painted first so small ones stay
    visible on top. ``areas`` (pixels per mask), if known, saves counting them; with a sequence that
    decodes on access, only one mask is held at a time.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if areas is None:
        areas = [int(np.count_nonzero(m)) for m in masks]
    if len(areas) != len(masks):
        raise ValueError(f"got {len(masks)} masks but {len(areas)} areas")
    size = image.shape[:2]
    out = image.astype(np.float32)
    colours = palette(len(masks)).astype(np.float32)
    for k in np.argsort(-np.asarray(areas, dtype=np.int64), kind="stable"):
        m = masks[int(k)]
        if m.shape != size:
            raise ValueError(f"mask {int(k)} is {m.shape}, the image is {size}")
        out[m] = (1.0 - alpha) * out[m] + alpha * colours[k]
    blended: npt.NDArray[np.uint8] = out.round().clip(0, 255).astype(np.uint8)
    return blended


def save_png(array: npt.NDArray[np.uint8] | npt.NDArray[np.bool_], path: str | os.PathLike[str]) -> Path:
    """Write an RGB image or a boolean mask (as 0/255 grayscale) to a PNG file, atomically (a temporary
    file renamed into place, so an interrupted write never leaves a truncated PNG)."""
    from PIL import Image

    path = Path(path)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    with atomic_write(path) as f:
        Image.fromarray(array).save(f, format="PNG")
    return path
