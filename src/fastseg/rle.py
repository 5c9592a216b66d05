"""COCO run-length encoding of masks, through pycocotools (the maintained implementation)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def _mask_api() -> Any:
    try:
        from pycocotools import mask as mask_api
    except ImportError as exc:  # optional dependency
        raise ImportError(
            "COCO RLE needs pycocotools: pip install 'fastseg[rle]' (or pip install pycocotools)"
        ) from exc
    return mask_api


def encode(masks: npt.NDArray[np.bool_]) -> list[dict[str, Any]]:
    """Encode ``(N, H, W)`` bool masks as COCO RLE dicts ``{"size": [H, W], "counts": str}``."""
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    mask_api = _mask_api()
    rles = mask_api.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return list(rles)


def to_pycocotools(rles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """COCO RLE dicts as pycocotools' C functions take them: ``counts`` as bytes."""
    return [{"size": r["size"], "counts": r["counts"].encode("ascii") if isinstance(r["counts"], str)
             else r["counts"]} for r in rles]


def decode(rles: list[dict[str, Any]]) -> npt.NDArray[np.bool_]:
    """Decode COCO RLE dicts back to ``(N, H, W)`` bool masks."""
    mask_api = _mask_api()
    if not rles:
        raise ValueError("decode needs at least one RLE to know the image size")
    return np.ascontiguousarray(mask_api.decode(to_pycocotools(rles)).transpose(2, 0, 1).astype(bool))
