"""Run-length encoding of masks.

Two forms, both column-major (Fortran order), as COCO and segment-anything use them:

- *uncompressed* RLE: an int array of run lengths, the first counting leading zeros (0 if the first
  pixel is set): ``amg.mask_to_rle_pytorch`` / ``rle_to_mask``, in numpy;
- *COCO* RLE: ``{"size": [H, W], "counts": str}``, compressed by pycocotools (the maintained
  implementation; extra ``rle``), readable by ``pycocotools.mask.decode``.

:class:`StoredMask` keeps one mask compactly while a long everything-mode run collects thousands.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]


# ----------------------------------------------------------------------------------------------
# COCO RLE (pycocotools)
# ----------------------------------------------------------------------------------------------


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
    return [
        {"size": r["size"], "counts": r["counts"].encode("ascii") if isinstance(r["counts"], str) else r["counts"]}
        for r in rles
    ]


def decode(rles: list[dict[str, Any]]) -> npt.NDArray[np.bool_]:
    """Decode COCO RLE dicts back to ``(N, H, W)`` bool masks."""
    mask_api = _mask_api()
    if not rles:
        raise ValueError("decode needs at least one RLE to know the image size")
    return np.ascontiguousarray(mask_api.decode(to_pycocotools(rles)).transpose(2, 0, 1).astype(bool))


# ----------------------------------------------------------------------------------------------
# Uncompressed RLE
# ----------------------------------------------------------------------------------------------


def masks_to_rle(masks: npt.NDArray[np.bool_]) -> list[npt.NDArray[np.int64]]:
    """Uncompressed RLE counts of ``(N, H, W)`` bool masks (``amg.mask_to_rle_pytorch``).

    Column-major (Fortran) order; the first count is the number of leading zeros (0 if the first
    pixel is set). Returns one int64 array of counts per mask.
    """
    n, h, w = masks.shape
    flat = masks.transpose(0, 2, 1).reshape(n, h * w)
    out = []
    for i in range(n):
        row = flat[i]
        change = np.flatnonzero(row[1:] != row[:-1]) + 1
        bounds = np.concatenate([[0], change, [h * w]])
        counts = np.diff(bounds)
        if row[0]:
            counts = np.concatenate([[0], counts])
        out.append(counts.astype(np.int64))
    return out


def rle_to_mask(counts: npt.NDArray[np.integer[Any]] | Sequence[int], size: tuple[int, int]) -> npt.NDArray[np.bool_]:
    """``(H, W)`` bool mask of uncompressed RLE ``counts`` (``amg.rle_to_mask``)."""
    h, w = size
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {counts.sum()}, expected {h * w} for a {h}x{w} mask")
    values = (np.arange(len(counts)) % 2).astype(bool)
    mask: npt.NDArray[np.bool_] = np.repeat(values, counts).reshape(w, h).T
    return mask


def rle_area(counts: npt.NDArray[np.integer[Any]] | Sequence[int]) -> int:
    """Foreground pixels of an uncompressed RLE (``amg.area_from_rle``)."""
    return int(np.asarray(counts, dtype=np.int64)[1::2].sum())


def coco_encode_rle(counts: npt.NDArray[np.integer[Any]], size: tuple[int, int]) -> dict[str, Any]:
    """COCO compressed RLE ``{"size": [H, W], "counts": str}`` of an uncompressed RLE, via pycocotools
    (the result of ``amg.coco_encode_rle``)."""
    return coco_encode_mask(rle_to_mask(counts, size))


def coco_encode_mask(mask: npt.NDArray[np.bool_]) -> dict[str, Any]:
    """COCO compressed RLE of an ``(H, W)`` bool mask, via pycocotools' C encoder (no Python lists)."""
    return encode(mask[None])[0]


@dataclass(frozen=True, eq=False)
class StoredMask:
    """One kept mask, compact: its uncompressed RLE counts as uint32, or, when those would take more
    bytes than the mask's bits (speckled masks have more runs than a bit-packed mask has bytes), the
    column-major bits (``np.packbits``). Memory per mask is at most ``H * W / 8`` bytes either way.
    """

    size: tuple[int, int]
    area: int
    counts: npt.NDArray[np.uint32] | None = None
    bits: npt.NDArray[np.uint8] | None = None

    @classmethod
    def from_counts(cls, counts: npt.NDArray[np.integer[Any]], size: tuple[int, int]) -> StoredMask:
        counts = np.asarray(counts)
        h, w = size
        area = int(counts[1::2].sum(dtype=np.int64))
        if counts.size * 4 <= (h * w + 7) // 8:
            return cls((h, w), area, counts=counts.astype(np.uint32))
        flat = np.repeat((np.arange(len(counts)) % 2).astype(bool), counts)
        return cls((h, w), area, bits=np.packbits(flat))

    def column_major(self) -> npt.NDArray[np.bool_]:
        """The mask's pixels in column-major (RLE) order, ``(H * W,)`` bool."""
        h, w = self.size
        if self.bits is not None:
            return np.unpackbits(self.bits, count=h * w).view(bool)
        assert self.counts is not None
        return np.repeat((np.arange(len(self.counts)) % 2).astype(bool), self.counts)

    def mask(self) -> npt.NDArray[np.bool_]:
        """``(H, W)`` bool (a Fortran-ordered view, as ``amg.rle_to_mask`` returns)."""
        h, w = self.size
        mask: npt.NDArray[np.bool_] = self.column_major().reshape(w, h).T
        return mask

    def rle(self) -> IntArray:
        """Uncompressed RLE counts, int64."""
        if self.counts is not None:
            return self.counts.astype(np.int64)
        return masks_to_rle(self.mask()[None])[0]


def crop_masks_to_rle(
    masks_t: npt.NDArray[np.bool_], crop_box: Sequence[int], orig_size: tuple[int, int]
) -> tuple[list[IntArray], IntArray]:
    """Uncompressed RLE in the original frame and crop-frame XYXY boxes of crop masks, in one pass.

    ``masks_t`` holds the masks column-major, as ``(N, crop_w, crop_h)`` (each mask transposed), so a
    mask's pixels are already in RLE order. Equal to ``masks_to_rle`` of the masks placed into the original frame and
    ``masks_to_boxes(masks)`` (``amg.uncrop_masks``, ``mask_to_rle_pytorch``, ``batched_mask_to_box``)
    without the padded full-size copies and the transposes.
    """
    x0, y0 = int(crop_box[0]), int(crop_box[1])
    h, w = orig_size
    n, wc, hc = masks_t.shape
    total = h * w
    rles: list[IntArray] = []
    boxes = np.zeros((n, 4), dtype=np.int64)
    for i in range(n):
        flat = masks_t[i].reshape(-1)
        edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        if flat.size and flat[0]:
            edges = np.concatenate([[0], edges])
        if flat.size and flat[-1]:
            edges = np.concatenate([edges, [flat.size]])
        starts, stops = edges[0::2], edges[1::2]  # foreground runs, crop column-major
        if len(starts) == 0:
            rles.append(np.array([total], dtype=np.int64))
            continue
        sx, sy = np.divmod(starts, hc)
        ex, ey = np.divmod(stops - 1, hc)
        spans = sx != ex  # a run from the bottom of one column into the next
        boxes[i] = [sx[0], 0 if spans.any() else sy.min(), ex[-1], hc - 1 if spans.any() else ey.max()]
        if hc == h:  # the crop's columns are whole image columns: runs carry over unchanged
            g_start, g_stop = starts + x0 * h, stops + x0 * h
        else:  # split runs at column ends; columns are h apart in the image
            pieces = ex - sx + 1
            run = np.repeat(np.arange(len(starts)), pieces)
            col = sx[run] + np.arange(len(run)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
            top = np.where(col == sx[run], sy[run], 0)
            bottom = np.where(col == ex[run], ey[run] + 1, hc)
            g_start = (x0 + col) * h + y0 + top
            g_stop = (x0 + col) * h + y0 + bottom
        bounds = np.empty(2 * len(g_start) + 2, dtype=np.int64)
        bounds[0], bounds[-1] = 0, total
        bounds[1:-1:2], bounds[2:-1:2] = g_start, g_stop
        if g_stop[-1] == total:  # the last pixel is set: no trailing zero count (as the original)
            bounds = bounds[:-1]
        rles.append(np.diff(bounds))
    return rles, boxes
