"""Drawing masks for people to look at: overlays and mask PNGs."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import numpy.typing as npt


def palette(n: int) -> npt.NDArray[np.uint8]:
    """``n`` distinct, saturated RGB colours (golden-ratio hue steps), the same for the same ``n``."""
    hues = (np.arange(n) * 0.618033988749895 + 0.1) % 1.0
    rgb = [colorsys.hsv_to_rgb(h, 0.85, 0.95) for h in hues]
    return (np.array(rgb, dtype=np.float64).reshape(n, 3) * 255).round().astype(np.uint8)


def overlay(
    image: npt.NDArray[np.uint8], masks: npt.NDArray[np.bool_], alpha: float = 0.5
) -> npt.NDArray[np.uint8]:
    """Blend each mask of ``masks`` ``(N, H, W)`` into ``image`` ``(H, W, 3)`` in its own colour.

    Larger masks are painted first so small ones stay visible on top.
    """
    if image.shape[:2] != masks.shape[1:]:
        raise ValueError(f"image is {image.shape[:2]} but masks are {masks.shape[1:]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    out = image.astype(np.float32)
    colours = palette(len(masks)).astype(np.float32)
    order = np.argsort(-masks.sum(axis=(1, 2)), kind="stable")
    for k in order:
        m = masks[k]
        out[m] = (1.0 - alpha) * out[m] + alpha * colours[k]
    return out.round().clip(0, 255).astype(np.uint8)


def save_png(array: npt.NDArray[np.uint8] | npt.NDArray[np.bool_], path: str | Path) -> Path:
    """Write an RGB image or a boolean mask (as 0/255 grayscale) to a PNG file."""
    from PIL import Image

    path = Path(path)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    Image.fromarray(array).save(path, format="PNG")
    return path
