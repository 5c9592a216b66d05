"""Connected components of binary masks, and SAM's removal of small islands and holes, in numpy.

``amg.remove_small_regions`` of segment-anything uses OpenCV's ``connectedComponentsWithStats``;
fastseg finds the same 8-connected components on horizontal runs, without OpenCV.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]


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


def paint_runs(shape: tuple[int, int], rows: IntArray, starts: IntArray, stops: IntArray) -> npt.NDArray[np.bool_]:
    """A bool mask of ``shape``, True on the given horizontal runs (disjoint: :func:`connected_components`'s)."""
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
        return mask | paint_runs(mask.shape, rows[sel], starts[sel], stops[sel]), True
    keep = ~small
    if not keep.any():
        keep = np.zeros_like(small)
        keep[int(np.argmax(sizes))] = True
    sel = keep[labels]
    return paint_runs(mask.shape, rows[sel], starts[sel], stops[sel]), True
