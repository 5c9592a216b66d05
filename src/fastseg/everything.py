"""Everything mode: segment a whole image without prompts.

SAM family
    :func:`generate_sam` reproduces ``SamAutomaticMaskGenerator.generate`` of ``segment_anything`` /
    ``mobile_sam`` (``automatic_mask_generator.py`` and ``utils/amg.py``) in numpy, with the same
    parameters, defaults, filters and record fields: a grid of single-point prompts per crop, the three
    multimask outputs per point, ``predicted_iou > pred_iou_thresh``, stability score on the upscaled
    logits ``>= stability_score_thresh``, masks touching a crop edge (not the image edge) dropped, box
    NMS per crop, box NMS across crops (smaller crops preferred), optional removal of small islands and
    holes, then records.

    What differs is only the order of work, never the result: the decoder runs ``points_per_batch``
    prompt sets per call; masks are filtered by predicted IoU *before* upscaling (the original filters
    the upscaled batch on ``iou_preds``, which do not depend on upscaling), only survivors are upscaled,
    a few at a time; survivors are kept as uncompressed run-length encodings (the original's
    ``MaskData["rles"]``), never as a stack of full-resolution masks.

FastSAM
    :func:`generate_fastsam`: every detection after NMS with its retina mask, as ultralytics' FastSAM
    returns them without prompts, as records (segmentation, area, bbox XYWH, score).

Records, output files: :func:`records_to_masks`, :func:`overlay`, :func:`to_json`, :func:`write_json`.
The runtime stays numpy-only: run-length encoding, decoding, connected components and NMS are numpy
here; only ``output_mode="coco_rle"`` (and JSON files) need pycocotools (extra ``rle``) for the COCO
compression, as the original does.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from fastseg.fastsam import nms
from fastseg.results import masks_to_boxes as result_boxes

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")

#: ``is_box_near_crop_edge``: box edges within this many pixels of a crop edge (not an image edge)
#: mean the mask was cut by the crop.
CROP_EDGE_ATOL = 20.0

#: Full-resolution float32 logits held at a time while upscaling survivors (bounds memory).
UPSCALE_BYTES = 64 << 20

#: At most this many prompt sets per decoder run (a ``points_per_batch`` group is split further if
#: larger). Batching never changes results. Measured on this project's 2-core machine (MobileSAM,
#: shared machine, min of 3): time per prompt set is flat from 16 to 64 (bf16 18.6 / 16.1 / 16.4 ms
#: at 16 / 32 / 64), while peak RSS grows with the batch (f32 1.1 / 1.7 / 3.0 GB; bf16 0.6 / 0.9 /
#: 1.4 GB), mostly the decoder's (B, 32, 256, 256) mask-upscaling activations.
MAX_DECODER_BATCH = 32

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]
Record = dict[str, Any]


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def _check_float(name: str, value: Any, low: float, high: float, high_open: bool = False) -> float:
    interval = f"[{low}, {high})" if high_open else f"[{low}, {high}]"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < low or v > high or (high_open and v == high):
        raise ValueError(f"{name} must be a number in {interval}, got {value}")
    return v


@dataclass(frozen=True, eq=False)
class SamEverythingParams:
    """``SamAutomaticMaskGenerator``'s parameters, defaults and meaning; validated on construction.

    Attributes:
        points_per_side: points along each side of the grid (``points_per_side ** 2`` prompts per
            crop of layer 0); ``None`` when ``point_grids`` is given.
        points_per_batch: points processed together (speed/memory only; results do not change); the
            decoder runs at most :data:`MAX_DECODER_BATCH` of them at a time.
        pred_iou_thresh: keep masks whose predicted IoU is ``>`` this (0 disables the filter).
        stability_score_thresh: keep masks whose stability score is ``>=`` this (0 disables it).
        stability_score_offset: the logit offset of the stability score.
        box_nms_thresh: box IoU above which NMS drops a duplicate within a crop (1.0: NMS off).
        crop_n_layers: 0 = the whole image only; n > 0 adds layers of 2**i x 2**i crops.
        crop_nms_thresh: box IoU for NMS between crops.
        crop_overlap_ratio: overlap of neighbouring crops, as a fraction of the image's short side.
        crop_n_points_downscale_factor: layer i uses ``points_per_side / factor**i`` points per side.
        point_grids: explicit grids ``(K, 2)`` in [0, 1] (x, y), one per crop layer; exclusive with
            ``points_per_side``.
        min_mask_region_area: if > 0, islands and holes smaller than this are removed and NMS runs
            again (``postprocess_small_regions``).
        output_mode: ``"binary_mask"`` (``(H, W)`` bool), ``"uncompressed_rle"`` or ``"coco_rle"``
            (needs pycocotools).
    """

    points_per_side: int | None = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    point_grids: tuple[npt.NDArray[np.float64], ...] | None = None
    min_mask_region_area: int = 0
    output_mode: str = "binary_mask"

    def __post_init__(self) -> None:
        put = object.__setattr__
        if (self.points_per_side is None) == (self.point_grids is None):
            raise ValueError(
                "give exactly one of points_per_side and point_grids, got "
                f"points_per_side={self.points_per_side!r} and "
                f"point_grids={'None' if self.point_grids is None else f'{len(self.point_grids)} grids'}"
            )
        put(self, "points_per_batch", _check_int("points_per_batch", self.points_per_batch, 1))
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh"):
            put(self, name, _check_float(name, getattr(self, name), 0.0, 1.0))
        put(self, "stability_score_offset",
            _check_float("stability_score_offset", self.stability_score_offset, 0.0, math.inf))
        put(self, "crop_n_layers", _check_int("crop_n_layers", self.crop_n_layers, 0))
        put(self, "crop_overlap_ratio",
            _check_float("crop_overlap_ratio", self.crop_overlap_ratio, 0.0, 1.0, high_open=True))
        put(self, "crop_n_points_downscale_factor",
            _check_int("crop_n_points_downscale_factor", self.crop_n_points_downscale_factor, 1))
        put(self, "min_mask_region_area", _check_int("min_mask_region_area", self.min_mask_region_area, 0))
        if self.output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {self.output_mode!r}")
        if self.points_per_side is not None:
            put(self, "points_per_side", _check_int("points_per_side", self.points_per_side, 1))
            last = int(self.points_per_side / (self.crop_n_points_downscale_factor**self.crop_n_layers))
            if last < 1:
                raise ValueError(
                    f"points_per_side / crop_n_points_downscale_factor**crop_n_layers must be >= 1 (the "
                    f"last crop layer needs a point), got {self.points_per_side} / "
                    f"{self.crop_n_points_downscale_factor}**{self.crop_n_layers}"
                )
        else:
            put(self, "point_grids", _check_grids(self.point_grids, self.crop_n_layers))

    def grids(self) -> list[npt.NDArray[np.float64]]:
        """The point grid of each crop layer, normalised to [0, 1] (``build_all_layer_point_grids``)."""
        if self.point_grids is not None:
            return list(self.point_grids)
        assert self.points_per_side is not None
        return build_all_layer_point_grids(
            self.points_per_side, self.crop_n_layers, self.crop_n_points_downscale_factor
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.point_grids is not None:
            out["point_grids"] = [g.tolist() for g in self.point_grids]
        return out


def _check_grids(grids: Any, crop_n_layers: int) -> tuple[npt.NDArray[np.float64], ...]:
    if isinstance(grids, np.ndarray) or not isinstance(grids, Sequence):
        raise ValueError(f"point_grids must be a list of (K, 2) arrays, one per crop layer, got {type(grids).__name__}")
    if len(grids) != crop_n_layers + 1:
        raise ValueError(
            f"point_grids must hold one grid per crop layer (crop_n_layers + 1 = {crop_n_layers + 1}), "
            f"got {len(grids)}"
        )
    out = []
    for i, grid in enumerate(grids):
        try:
            g = np.asarray(grid, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"point_grids[{i}] must be numeric (K, 2), got {type(grid).__name__}") from exc
        if g.ndim != 2 or g.shape[1] != 2 or g.shape[0] == 0:
            raise ValueError(f"point_grids[{i}] must have shape (K, 2) with K >= 1, got {g.shape}")
        if not np.isfinite(g).all() or g.min() < 0 or g.max() > 1:
            raise ValueError(
                f"point_grids[{i}] must lie in [0, 1] (normalised x, y), got values in [{g.min()}, {g.max()}]"
            )
        out.append(g)
    return tuple(out)


@dataclass(frozen=True)
class FastSamEverythingParams:
    """FastSAM everything mode takes only the output form; conf and iou are set on the Predictor."""

    output_mode: str = "binary_mask"

    def __post_init__(self) -> None:
        if self.output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {self.output_mode!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SAM_PARAMETERS = tuple(f for f in SamEverythingParams.__dataclass_fields__)


def make_params(family: str, params: dict[str, Any]) -> SamEverythingParams | FastSamEverythingParams:
    """Validated everything-mode parameters for a model family (``"sam"`` or ``"fastsam"``).

    Unknown names raise ``TypeError`` (as an unexpected keyword argument does); bad values, and SAM
    generator parameters given to a FastSAM model, raise ``ValueError``.
    """
    unknown = sorted(set(params) - set(SAM_PARAMETERS))
    if unknown:
        raise TypeError(f"unknown everything-mode parameter(s) {unknown}; expected some of {list(SAM_PARAMETERS)}")
    if family == "sam":
        return SamEverythingParams(**params)
    if family == "fastsam":
        sam_only = sorted(set(params) - {"output_mode"})
        if sam_only:
            raise ValueError(
                f"FastSAM everything mode takes only output_mode (conf and iou are Predictor options); "
                f"got SAM generator parameter(s) {sam_only}"
            )
        return FastSamEverythingParams(**params)
    raise ValueError(f"family must be 'sam' or 'fastsam', got {family!r}")


# ----------------------------------------------------------------------------------------------
# Grids and crops (segment_anything/utils/amg.py)
# ----------------------------------------------------------------------------------------------


def build_point_grid(n_per_side: int) -> npt.NDArray[np.float64]:
    """``(n**2, 2)`` points evenly spaced in [0, 1] x [0, 1], x fastest (``amg.build_point_grid``)."""
    offset = 1 / (2 * n_per_side)
    points_one_side = np.linspace(offset, 1 - offset, n_per_side)
    points_x = np.tile(points_one_side[None, :], (n_per_side, 1))
    points_y = np.tile(points_one_side[:, None], (1, n_per_side))
    return np.stack([points_x, points_y], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[npt.NDArray[np.float64]]:
    """One grid per crop layer; layer i has ``int(n_per_side / scale_per_layer**i)`` points per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes XYXY (ints) and their layer: the whole image, then ``(2**i)**2`` crops in layer i."""
    crop_boxes, layer_idxs = [], []
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    crop_boxes.append([0, 0, im_w, im_h])
    layer_idxs.append(0)

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i_layer in range(n_layers):
        n_crops_per_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_crops_per_side))
        crop_w = crop_len(im_w, n_crops_per_side, overlap)
        crop_h = crop_len(im_h, n_crops_per_side, overlap)
        crop_box_x0 = [int((crop_w - overlap) * i) for i in range(n_crops_per_side)]
        crop_box_y0 = [int((crop_h - overlap) * i) for i in range(n_crops_per_side)]
        for x0, y0 in product(crop_box_x0, crop_box_y0):
            crop_boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layer_idxs.append(i_layer + 1)
    return crop_boxes, layer_idxs


def is_box_near_crop_edge(
    boxes: IntArray, crop_box: Sequence[int], orig_box: Sequence[int], atol: float = CROP_EDGE_ATOL
) -> npt.NDArray[np.bool_]:
    """Boxes ``(N, 4)`` XYXY in crop pixels whose edge lies within ``atol`` of a crop edge that is not
    an image edge (``amg.is_box_near_crop_edge``, compared in float32 as torch does)."""
    x0, y0 = crop_box[0], crop_box[1]
    uncropped = (boxes + np.array([x0, y0, x0, y0], dtype=np.int64)).astype(np.float32)
    crop = np.asarray(crop_box, dtype=np.float32)[None]
    orig = np.asarray(orig_box, dtype=np.float32)[None]
    tol = np.float32(atol)
    near_crop = np.abs(uncropped - crop) <= tol
    near_image = np.abs(uncropped - orig) <= tol
    return (near_crop & ~near_image).any(axis=1)


def masks_to_boxes(masks: npt.NDArray[np.bool_]) -> IntArray:
    """XYXY int64 boxes of ``(N, h, w)`` masks, x2/y2 inclusive, ``[0, 0, 0, 0]`` if empty
    (``amg.batched_mask_to_box``): :func:`fastseg.results.masks_to_boxes` as integers."""
    return result_boxes(masks).astype(np.int64)


def stability_scores(logits: FloatArray, mask_threshold: float, offset: float) -> FloatArray:
    """``amg.calculate_stability_score``: ``#(logits > t + offset) / #(logits > t - offset)`` per mask,
    as float32 (``nan`` when no pixel exceeds ``t - offset``, as in torch)."""
    hi = np.float32(mask_threshold + offset)
    lo = np.float32(mask_threshold - offset)
    n = logits.shape[0]
    flat = logits.reshape(n, -1)
    # one mask at a time: count_nonzero without an axis is several times faster than with one
    inter = np.array([np.count_nonzero(row > hi) for row in flat], dtype=np.float32)
    union = np.array([np.count_nonzero(row > lo) for row in flat], dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


# ----------------------------------------------------------------------------------------------
# Run-length encoding (uncompressed, column-major: the COCO / pycocotools layout)
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
    return np.repeat(values, counts).reshape(w, h).T


def rle_area(counts: npt.NDArray[np.integer[Any]] | Sequence[int]) -> int:
    """Foreground pixels of an uncompressed RLE (``amg.area_from_rle``)."""
    return int(np.asarray(counts, dtype=np.int64)[1::2].sum())


def coco_encode_rle(counts: npt.NDArray[np.integer[Any]], size: tuple[int, int]) -> dict[str, Any]:
    """COCO compressed RLE ``{"size": [H, W], "counts": str}`` of an uncompressed RLE, via pycocotools
    (the result of ``amg.coco_encode_rle``)."""
    return coco_encode_mask(rle_to_mask(counts, size))


def coco_encode_mask(mask: npt.NDArray[np.bool_]) -> dict[str, Any]:
    """COCO compressed RLE of an ``(H, W)`` bool mask, via pycocotools' C encoder (no Python lists)."""
    from fastseg.rle import encode

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
        return self.column_major().reshape(w, h).T

    def rle(self) -> IntArray:
        """Uncompressed RLE counts, int64."""
        if self.counts is not None:
            return self.counts.astype(np.int64)
        return masks_to_rle(self.mask()[None])[0]


# ----------------------------------------------------------------------------------------------
# Connected components (for min_mask_region_area), numpy
# ----------------------------------------------------------------------------------------------


def _row_runs(mask: npt.NDArray[np.bool_]) -> tuple[IntArray, IntArray, IntArray]:
    """Horizontal runs of a 2-D bool mask in raster order: ``(row, start, stop)`` (stop exclusive)."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)
    rows, starts = np.nonzero(d == 1)
    _, stops = np.nonzero(d == -1)
    return rows.astype(np.int64), starts.astype(np.int64), stops.astype(np.int64)


def connected_components(mask: npt.NDArray[np.bool_]) -> tuple[IntArray, IntArray, IntArray, IntArray]:
    """8-connected components of a 2-D bool mask, as runs.

    Returns ``(rows, starts, stops, labels)``: the mask's horizontal runs in raster order and each
    run's component label, 0..K-1, numbered in raster order of each component's first pixel. The
    sizes are ``np.bincount(labels, weights=stops - starts)``.

    Runs of neighbouring rows touch (8-connectivity) when their column ranges overlap after widening
    by one; components are found by vectorised union-find (min-label hooking and pointer jumping,
    O(log n) rounds), so no per-pixel Python loop runs.
    """
    h, w = mask.shape
    rows, starts, stops = _row_runs(mask)
    n = len(rows)
    if n == 0:
        return rows, starts, stops, np.zeros(0, dtype=np.int64)
    stride = w + 2
    key_start = rows * stride + starts
    key_stop = rows * stride + stops
    below = (rows + 1) * stride
    # runs b of the next row with start_b <= stop_a and stop_b >= start_a (touching diagonally counts)
    lo = np.searchsorted(key_stop, below + starts, side="left")
    hi = np.searchsorted(key_start, below + stops, side="right")
    count = np.maximum(hi - lo, 0)
    total = int(count.sum())
    parent = np.arange(n, dtype=np.int64)
    if total:
        a = np.repeat(np.arange(n, dtype=np.int64), count)
        offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(count) - count, count)
        b = np.repeat(lo, count) + offsets
        while len(a):
            ra, rb = parent[a], parent[b]
            differ = ra != rb
            if not differ.any():
                break
            a, b, ra, rb = a[differ], b[differ], ra[differ], rb[differ]
            np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
            while True:  # pointer jumping until every run points at its root
                nxt = parent[parent]
                if np.array_equal(nxt, parent):
                    break
                parent = nxt
    roots, labels = np.unique(parent, return_inverse=True)  # root = first run of the component
    return rows, starts, stops, labels.astype(np.int64)


def _paint_runs(shape: tuple[int, int], rows: IntArray, starts: IntArray, stops: IntArray) -> npt.NDArray[np.bool_]:
    h, w = shape
    edges = np.zeros((h, w + 1), dtype=np.int32)
    edges[rows, starts] = 1  # runs of a row are disjoint and separated, so no position repeats
    edges[rows, stops] = -1
    return np.cumsum(edges, axis=1)[:, :w] > 0


def remove_small_regions(
    mask: npt.NDArray[np.bool_], area_thresh: float, mode: str
) -> tuple[npt.NDArray[np.bool_], bool]:
    """``amg.remove_small_regions`` without OpenCV: fill holes (``mode="holes"``) or drop islands
    (``"islands"``) smaller than ``area_thresh`` pixels, 8-connected; returns ``(mask, changed)``.

    As the original, if every island is small the largest one is kept (the first in raster order of
    first pixels on a tie; OpenCV's label order can differ there, so a tie between equally large
    islands, all below the threshold, may keep another one).
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    correct_holes = mode == "holes"
    working = ~mask if correct_holes else mask
    rows, starts, stops, labels = connected_components(working)
    if len(labels) == 0:
        return mask, False
    sizes = np.bincount(labels, weights=(stops - starts)).astype(np.int64)
    small = sizes < area_thresh
    if not small.any():
        return mask, False
    if correct_holes:
        sel = small[labels]
        return mask | _paint_runs(mask.shape, rows[sel], starts[sel], stops[sel]), True
    keep = ~small
    if not keep.any():
        keep = np.zeros_like(small)
        keep[int(np.argmax(sizes))] = True
    sel = keep[labels]
    return _paint_runs(mask.shape, rows[sel], starts[sel], stops[sel]), True


# ----------------------------------------------------------------------------------------------
# Progress
# ----------------------------------------------------------------------------------------------


class StderrProgress:
    """Progress of a long everything-mode run on one stderr line, updated at most every 0.5 s."""

    def __init__(self, stream: Any = None, interval: float = 0.5) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self._start = time.perf_counter()
        self._last = -math.inf

    def __call__(self, points_done: int, points_total: int, crops_done: int, crops_total: int, masks: int) -> None:
        now = time.perf_counter()
        final = points_done == points_total and crops_done == crops_total
        if not final and now - self._last < self.interval:
            return
        self._last = now
        self.stream.write(
            f"\reverything: {points_done}/{points_total} points, crop {crops_done}/{crops_total}, "
            f"{masks} masks kept, {now - self._start:.1f} s"
        )
        if final:
            self.stream.write("\n")
        self.stream.flush()


ProgressCallback = Callable[[int, int, int, int, int], None]


# ----------------------------------------------------------------------------------------------
# SAM family: SamAutomaticMaskGenerator
# ----------------------------------------------------------------------------------------------


class _SamEngine(Protocol):  # what generate_sam needs of fastseg.sam.SamEngine
    spec: Any
    low_res_size: int

    def set_image(self, image: npt.NDArray[np.uint8]) -> None: ...
    def get_image_embedding(self) -> Any: ...
    def set_image_embedding(self, embedding: Any) -> None: ...
    def decode(
        self, point_coords: npt.NDArray[np.float32], point_labels: npt.NDArray[np.float32]
    ) -> tuple[FloatArray, FloatArray]: ...


@dataclass
class _MaskData:
    """The original's ``MaskData`` for kept masks: RLEs instead of mask tensors."""

    rles: list[StoredMask] = field(default_factory=list)
    boxes: list[IntArray] = field(default_factory=list)  # (n, 4) XYXY int, per part
    iou_preds: list[FloatArray] = field(default_factory=list)
    stability: list[FloatArray] = field(default_factory=list)
    points: list[npt.NDArray[np.float64]] = field(default_factory=list)
    crop_boxes: list[IntArray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rles)

    def arrays(self) -> tuple[IntArray, FloatArray, FloatArray, npt.NDArray[np.float64], IntArray]:
        def cat(parts: list[Any], shape: tuple[int, ...], dtype: Any) -> Any:
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(shape, dtype)

        return (
            cat(self.boxes, (0, 4), np.int64),
            cat(self.iou_preds, (0,), np.float32),
            cat(self.stability, (0,), np.float32),
            cat(self.points, (0, 2), np.float64),
            cat(self.crop_boxes, (0, 4), np.int64),
        )

    def extend(self, other: _MaskData) -> None:
        for name in ("rles", "boxes", "iou_preds", "stability", "points", "crop_boxes"):
            getattr(self, name).extend(getattr(other, name))

    @classmethod
    def from_arrays(
        cls,
        rles: list[StoredMask],
        boxes: IntArray,
        iou_preds: FloatArray,
        stability: FloatArray,
        points: npt.NDArray[np.float64],
        crop_boxes: IntArray,
    ) -> _MaskData:
        return cls(list(rles), [boxes], [iou_preds], [stability], [points], [crop_boxes])

    def filter(self, keep: npt.NDArray[np.intp]) -> _MaskData:
        boxes, iou, stab, points, crops = self.arrays()
        return _MaskData.from_arrays(
            [self.rles[i] for i in keep], boxes[keep], iou[keep], stab[keep], points[keep], crops[keep]
        )


def _pad_to_image(
    masks: npt.NDArray[np.bool_], crop_box: Sequence[int], orig_size: tuple[int, int]
) -> npt.NDArray[np.bool_]:
    """``amg.uncrop_masks``: place crop-frame masks into the original frame."""
    x0, y0, x1, y1 = crop_box
    h, w = orig_size
    if (x0, y0, x1, y1) == (0, 0, w, h):
        return masks
    out = np.zeros((masks.shape[0], h, w), dtype=bool)
    out[:, y0:y1, x0:x1] = masks
    return out


def crop_masks_to_rle(
    masks_t: npt.NDArray[np.bool_], crop_box: Sequence[int], orig_size: tuple[int, int]
) -> tuple[list[IntArray], IntArray]:
    """Uncompressed RLE in the original frame and crop-frame XYXY boxes of crop masks, in one pass.

    ``masks_t`` holds the masks column-major, as ``(N, crop_w, crop_h)`` (each mask transposed), so a
    mask's pixels are already in RLE order. Equal to ``masks_to_rle(_pad_to_image(masks))`` and
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


def _process_crop(
    engine: _SamEngine,
    params: SamEverythingParams,
    grid: npt.NDArray[np.float64],
    crop_box: list[int],
    orig_size: tuple[int, int],
    tick: Callable[[int, int], None],
) -> _MaskData:
    """``SamAutomaticMaskGenerator._process_crop`` + ``_process_batch`` on the image set in ``engine``."""
    from fastseg.sam import LABEL_FOREGROUND, LABEL_PADDING, UpscalePlan, transform_coords

    x0, y0, x1, y1 = crop_box
    crop_size = (y1 - y0, x1 - x0)
    spec = engine.spec
    mask_threshold = float(spec.mask_threshold)
    embedding = engine.get_image_embedding()
    # Upscale into the transposed (column-major) layout: masks then come out in RLE order.
    in_h, in_w = embedding.input_size
    plan_t = UpscalePlan((in_w, in_h), crop_size[::-1], low_res=engine.low_res_size, padded=spec.input_size)
    chunk = max(1, min(64, UPSCALE_BYTES // (4 * crop_size[0] * crop_size[1])))
    points_for_image = grid * np.array(crop_size, dtype=np.float64)[None, ::-1]
    iou_thresh = np.float32(params.pred_iou_thresh)
    stab_thresh = np.float32(params.stability_score_thresh)
    data = _MaskData()
    for start in range(0, len(points_for_image), params.points_per_batch):
        points = points_for_image[start : start + params.points_per_batch]
        b = len(points)
        # One prompt set per point: the point, then the padding point SAM adds when there is no box.
        coords = np.zeros((b, 2, 2), dtype=np.float32)
        coords[:, 0] = transform_coords(points, crop_size, spec.input_size)
        labels = np.empty((b, 2), dtype=np.float32)
        labels[:, 0] = LABEL_FOREGROUND
        labels[:, 1] = LABEL_PADDING
        runs = [engine.decode(coords[i : i + MAX_DECODER_BATCH], labels[i : i + MAX_DECODER_BATCH])
                for i in range(0, b, MAX_DECODER_BATCH)]
        low_res = runs[0][0] if len(runs) == 1 else np.concatenate([r[0] for r in runs])
        iou = runs[0][1] if len(runs) == 1 else np.concatenate([r[1] for r in runs])
        del runs
        per_point = low_res.shape[1] - 1  # multimask_output=True: masks 1..3
        low_res = low_res[:, 1:].reshape(b * per_point, *low_res.shape[2:])
        iou = np.ascontiguousarray(iou[:, 1:].reshape(-1), dtype=np.float32)
        rep_points = np.repeat(points, per_point, axis=0)
        # Filter by predicted IoU first: the original does it on the upscaled batch, with the same iou.
        keep = np.flatnonzero(iou > iou_thresh) if params.pred_iou_thresh > 0.0 else np.arange(len(iou))
        for c in range(0, len(keep), chunk):
            idx = keep[c : c + chunk]
            logits_t = plan_t.logits(low_res[idx].transpose(0, 2, 1))  # (n, crop_w, crop_h)
            stability = stability_scores(logits_t, mask_threshold, params.stability_score_offset)
            ok = stability >= stab_thresh if params.stability_score_thresh > 0.0 else np.ones(len(idx), bool)
            if not ok.any():
                continue
            masks_t = logits_t[ok] > np.float32(mask_threshold)
            del logits_t
            idx, stability = idx[ok], stability[ok]
            rles, boxes = crop_masks_to_rle(masks_t, crop_box, orig_size)
            inside = np.flatnonzero(~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_size[1], orig_size[0]]))
            if not len(inside):
                continue
            data.extend(_MaskData.from_arrays(
                [StoredMask.from_counts(rles[k], orig_size) for k in inside], boxes[inside], iou[idx[inside]],
                stability[inside], rep_points[idx[inside]], np.zeros((len(inside), 4), np.int64),
            ))
        tick(b, len(data))
    if not len(data):
        return data
    boxes, iou, _, _, _ = data.arrays()
    data = data.filter(nms(boxes.astype(np.float32), iou, params.box_nms_thresh))  # within the crop
    # Back to the original frame.
    boxes, iou, stab, points, _ = data.arrays()
    offset = np.array([x0, y0, x0, y0], dtype=np.int64)
    return _MaskData.from_arrays(
        data.rles, boxes + offset, iou, stab, points + np.array([x0, y0], dtype=np.float64),
        np.tile(np.array(crop_box, dtype=np.int64), (len(data), 1)),
    )


def _postprocess_small_regions(
    data: _MaskData, min_area: int, nms_thresh: float, orig_size: tuple[int, int]
) -> _MaskData:
    """``SamAutomaticMaskGenerator.postprocess_small_regions``: remove small holes and islands, then NMS
    with unchanged masks preferred; changed masks that survive get new RLEs and boxes."""
    if not len(data):
        return data
    new_rles, new_boxes, scores = [], [], []
    for stored in data.rles:
        mask = stored.mask()
        mask, changed_holes = remove_small_regions(mask, min_area, mode="holes")
        mask, changed_islands = remove_small_regions(mask, min_area, mode="islands")
        unchanged = not (changed_holes or changed_islands)
        scores.append(float(unchanged))
        new_boxes.append(masks_to_boxes(mask[None])[0])
        new_rles.append(stored if unchanged else StoredMask.from_counts(masks_to_rle(mask[None])[0], orig_size))
    boxes_all = np.stack(new_boxes)
    keep = nms(boxes_all.astype(np.float32), np.asarray(scores, dtype=np.float32), nms_thresh)
    boxes, iou, stab, points, crops = data.arrays()
    rles = list(data.rles)
    for i in keep:
        if scores[i] == 0.0:
            rles[i] = new_rles[i]
            boxes[i] = boxes_all[i]
    kept = [rles[i] for i in keep]
    return _MaskData.from_arrays(kept, boxes[keep], iou[keep], stab[keep], points[keep], crops[keep])


def generate_sam(
    engine: _SamEngine,
    params: SamEverythingParams,
    image: npt.NDArray[np.uint8] | None = None,
    progress: ProgressCallback | None = None,
) -> list[Record]:
    """``SamAutomaticMaskGenerator(model, **params).generate(image)`` for the image set in ``engine``.

    Args:
        engine: a :class:`fastseg.sam.SamEngine` with the image already set (its embedding is reused
            for the whole-image crop; the engine is left with that image set).
        params: the generator's parameters.
        image: the RGB uint8 pixels of that image; needed only when ``params.crop_n_layers > 0``
            (each crop is encoded on its own).
        progress: called as ``progress(points_done, points_total, crops_done, crops_total, masks_kept)``
            after each decoder batch and crop; the last call has all points and crops done and the
            number of records returned.

    Returns:
        Records as the original's, in its order: ``segmentation`` (per ``params.output_mode``),
        ``area`` (int), ``bbox`` (XYWH, ints), ``predicted_iou``, ``point_coords`` (``[[x, y]]``),
        ``stability_score``, ``crop_box`` (XYWH, ints).
    """
    full = engine.get_image_embedding()
    orig_size = (int(full.original_size[0]), int(full.original_size[1]))
    crop_boxes, layer_idxs = generate_crop_boxes(orig_size, params.crop_n_layers, params.crop_overlap_ratio)
    if len(crop_boxes) > 1:
        if image is None:
            raise ValueError(
                f"crop_n_layers={params.crop_n_layers} encodes crops of the image, so it needs the image's "
                "pixels: pass the image (e.g. Predictor.everything(image, ...)), not only an embedding"
            )
        if tuple(image.shape[:2]) != orig_size:
            raise ValueError(
                f"image is {image.shape[0]}x{image.shape[1]} but the embedding is of {orig_size[0]}x{orig_size[1]}"
            )
        for box in crop_boxes:
            if box[2] <= box[0] or box[3] <= box[1]:
                raise ValueError(
                    f"a {orig_size[0]}x{orig_size[1]} image is too small for crop_n_layers={params.crop_n_layers}: "
                    f"crop {box} is empty"
                )
    grids = params.grids()
    points_total = sum(len(grids[layer]) for layer in layer_idxs)
    done = {"points": 0, "crops": 0, "masks": 0}

    def tick(points: int, masks_in_crop: int) -> None:
        done["points"] += points
        if progress is not None:
            progress(done["points"], points_total, done["crops"], len(crop_boxes), done["masks"] + masks_in_crop)

    data = _MaskData()
    try:
        for crop_box, layer in zip(crop_boxes, layer_idxs):
            if crop_box == [0, 0, orig_size[1], orig_size[0]]:
                engine.set_image_embedding(full)
            else:
                assert image is not None
                x0, y0, x1, y1 = crop_box
                engine.set_image(np.ascontiguousarray(image[y0:y1, x0:x1]))
            crop_data = _process_crop(engine, params, grids[layer], crop_box, orig_size, tick)
            data.extend(crop_data)
            done["crops"] += 1
            done["masks"] = len(data)
            if progress is not None and done["crops"] < len(crop_boxes):
                progress(done["points"], points_total, done["crops"], len(crop_boxes), done["masks"])
    finally:
        engine.set_image_embedding(full)

    if len(crop_boxes) > 1 and len(data):
        boxes, _, _, _, crops = data.arrays()
        areas = ((crops[:, 2] - crops[:, 0]) * (crops[:, 3] - crops[:, 1])).astype(np.float32)
        scores = np.float32(1) / areas  # prefer masks from smaller crops
        data = data.filter(nms(boxes.astype(np.float32), scores, params.crop_nms_thresh))
    if params.min_mask_region_area > 0:
        data = _postprocess_small_regions(
            data, params.min_mask_region_area, max(params.box_nms_thresh, params.crop_nms_thresh), orig_size
        )
    records = _sam_records(data, params.output_mode, orig_size)
    if progress is not None:  # the last call: everything done, the final count
        progress(points_total, points_total, len(crop_boxes), len(crop_boxes), len(records))
    return records


def _xywh(box: Sequence[int]) -> list[int]:
    x0, y0, x1, y1 = (int(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def _segmentation(stored: StoredMask, output_mode: str) -> Any:
    if output_mode == "binary_mask":
        return stored.mask()
    if output_mode == "coco_rle":
        return coco_encode_mask(stored.mask())
    return {"size": list(stored.size), "counts": stored.rle().tolist()}


def _sam_records(data: _MaskData, output_mode: str, size: tuple[int, int]) -> list[Record]:
    boxes, iou, stab, points, crops = data.arrays()
    records = []
    for i, stored in enumerate(data.rles):
        records.append({
            "segmentation": _segmentation(stored, output_mode),
            "area": stored.area,
            "bbox": _xywh(boxes[i]),
            "predicted_iou": float(iou[i]),
            "point_coords": [points[i].tolist()],
            "stability_score": float(stab[i]),
            "crop_box": _xywh(crops[i]),
        })
    return records


# ----------------------------------------------------------------------------------------------
# FastSAM
# ----------------------------------------------------------------------------------------------


def generate_fastsam(engine: Any, params: FastSamEverythingParams) -> list[Record]:
    """Every FastSAM detection of the image set in ``engine``, as ultralytics returns them without
    prompts: NMS order (by confidence), detections with an empty mask left out.

    Records: ``segmentation`` (per ``params.output_mode``), ``area`` (mask pixels), ``bbox`` (the
    detection box, XYWH float, after FastSAM's border rule, as ``results.boxes``), ``score``
    (confidence).
    """
    result = engine.everything()
    records = []
    for i in range(len(result)):
        mask = result.masks[i]
        if params.output_mode == "binary_mask":
            segmentation: Any = mask
        elif params.output_mode == "coco_rle":
            segmentation = coco_encode_mask(mask)
        else:
            segmentation = {"size": list(mask.shape), "counts": masks_to_rle(mask[None])[0].tolist()}
        x0, y0, x1, y1 = (float(v) for v in result.boxes[i])
        records.append({
            "segmentation": segmentation,
            "area": int(np.count_nonzero(mask)),
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "score": float(result.scores[i]),
        })
    return records


# ----------------------------------------------------------------------------------------------
# Records -> masks, overlay, JSON
# ----------------------------------------------------------------------------------------------


def segmentation_to_mask(segmentation: Any) -> npt.NDArray[np.bool_]:
    """A record's ``segmentation`` in any output mode -> ``(H, W)`` bool."""
    if isinstance(segmentation, np.ndarray):
        if segmentation.ndim != 2:
            raise ValueError(f"a binary mask segmentation must be (H, W), got {segmentation.shape}")
        return segmentation.astype(bool, copy=False)
    if isinstance(segmentation, dict) and "size" in segmentation and "counts" in segmentation:
        h, w = (int(v) for v in segmentation["size"])
        counts = segmentation["counts"]
        if isinstance(counts, (str, bytes)):
            from fastseg.rle import decode

            return decode([segmentation])[0]
        return rle_to_mask(counts, (h, w))
    raise ValueError(
        "segmentation must be an (H, W) bool array or an RLE dict with 'size' and 'counts', "
        f"got {type(segmentation).__name__}"
    )


def iter_masks(records: Sequence[Record]) -> Iterator[npt.NDArray[np.bool_]]:
    """The records' masks one at a time (no ``(N, H, W)`` stack)."""
    for record in records:
        yield segmentation_to_mask(record["segmentation"])


def records_to_masks(records: Sequence[Record], image_size: tuple[int, int]) -> npt.NDArray[np.bool_]:
    """All masks ``(N, H, W)`` bool (``N`` may be 0)."""
    out = np.zeros((len(records), *image_size), dtype=bool)
    for i, mask in enumerate(iter_masks(records)):
        if mask.shape != tuple(image_size):
            raise ValueError(f"record {i} has a {mask.shape} mask, expected {tuple(image_size)}")
        out[i] = mask
    return out


def overlay(image: npt.NDArray[np.uint8], records: Sequence[Record], alpha: float = 0.5) -> npt.NDArray[np.uint8]:
    """The image with each record's mask in its own colour: :func:`fastseg.draw.overlay` of the
    records' masks (same colours, larger masks first), decoding one mask at a time."""
    from fastseg.draw import palette

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    size = image.shape[:2]
    areas = []
    for i, record in enumerate(records):
        if "area" not in record:
            raise ValueError(f"record {i} has no 'area'")
        areas.append(int(record["area"]))
    colours = palette(len(records)).astype(np.float32)
    out = image.astype(np.float32)
    for k in np.argsort(-np.asarray(areas, dtype=np.int64), kind="stable"):
        mask = segmentation_to_mask(records[int(k)]["segmentation"])
        if mask.shape != size:
            raise ValueError(f"record {int(k)} has a {mask.shape} mask, the image is {size}")
        out[mask] = (1.0 - alpha) * out[mask] + alpha * colours[k]
    return out.round().clip(0, 255).astype(np.uint8)


def _coco_segmentation(segmentation: Any) -> dict[str, Any]:
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), str):
        return {"size": [int(v) for v in segmentation["size"]], "counts": segmentation["counts"]}
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), bytes):
        return {"size": [int(v) for v in segmentation["size"]], "counts": segmentation["counts"].decode("ascii")}
    if isinstance(segmentation, dict):
        h, w = (int(v) for v in segmentation["size"])
        return coco_encode_rle(np.asarray(segmentation["counts"], dtype=np.int64), (h, w))
    return coco_encode_mask(segmentation_to_mask(segmentation))


def to_json(records: Sequence[Record], **info: Any) -> dict[str, Any]:
    """A JSON-ready dict: ``info`` entries (e.g. image, model, parameters) and ``annotations``, the
    records with ``segmentation`` as COCO RLE (``pycocotools.mask.decode`` reads it)."""
    annotations = []
    for record in records:
        ann = {k: v for k, v in record.items() if k != "segmentation"}
        ann = json.loads(json.dumps(ann, default=_json_default))
        annotations.append({"segmentation": _coco_segmentation(record["segmentation"]), **ann})
    return {**json.loads(json.dumps(info, default=_json_default)), "annotations": annotations}


def write_json(path: str | Path, records: Sequence[Record], **info: Any) -> Path:
    """Write :func:`to_json` to ``path``."""
    path = Path(path)
    path.write_text(json.dumps(to_json(records, **info)))
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
