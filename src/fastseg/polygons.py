"""Masks as polygons, for the label formats that have no masks (COCO polygons, YOLO-seg, labelme).

Coordinates are XY in COCO's continuous pixel frame: pixel ``(row r, column c)`` covers the square
``[c, c + 1] x [r, r + 1]``, its centre is ``(c + 0.5, r + 0.5)``, and every polygon of an ``(H, W)``
mask lies within ``[0, W] x [0, H]``. A part's outline is the marching-squares contour at level 0.5
(``skimage.measure.find_contours`` on the zero-padded mask): it runs through the middles of the pixel
edges between the part and the background. Of the candidate frames this is the one that
``pycocotools`` (how COCO readers rasterise polygons) turns back into exactly the traced pixels; in
the pixel-index frame (centres on integers, the contour without the +0.5 shift) the outlines come
back half a pixel off, wrong along the edges. ``tests/test_polygons.py`` measures both.

A polygon cannot have holes in COCO, YOLO-seg or labelme, so holes are filled: the polygons of a
ring are the polygons of the disc. Parts are 4-connected (two pixels touching only at a corner are
two parts). The outlines are simplified with shapely's Douglas-Peucker (``preserve_topology=True``)
at ``tolerance`` pixels; a part that the tolerance would shrink or grow by more than a tenth of its
area (a thin limb, a speck) is simplified with half the tolerance, and so on down to none, so thin
and tiny parts keep their pixels. The traced outline cuts a square pixel corner diagonally; once
simplified, such a corner may lose its corner pixel (boxy masks; the outlines of segmentation models'
masks are smooth). The optional dependencies (extra ``polygons``) are imported when first used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_MIN_AREA",
    "DEFAULT_TOLERANCE",
    "PolygonStats",
    "join_parts",
    "mask_to_polygons",
    "mask_to_polygons_with_stats",
    "polygon_iou",
    "polygons_to_mask",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Douglas-Peucker tolerance in pixels: how far a simplified outline may stray from the traced one.
DEFAULT_TOLERANCE = 1.0
#: Parts whose traced outline encloses less than this many square pixels are dropped (a single
#: pixel's outline encloses 0.5, a one-pixel-wide line of ``n`` pixels ``n - 0.5``).
DEFAULT_MIN_AREA = 0.0
#: A part is simplified with a smaller tolerance when its area would change by more than this fraction.
_MAX_AREA_CHANGE = 0.1
#: Below this tolerance an outline is kept as traced.
_MIN_TOLERANCE = 0.05


@dataclass(frozen=True)
class PolygonStats:
    """How well one mask's polygons stand for it.

    Attributes:
        parts: number of polygons.
        vertices: vertices of all polygons after simplification.
        raw_vertices: vertices of the traced outlines before simplification (of the kept parts).
        iou: intersection over union of the mask and the polygons rasterised by pycocotools (1.0
            when both are empty). Filled holes count against it.
    """

    parts: int
    vertices: int
    raw_vertices: int
    iou: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _import(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # optional dependency
        raise ImportError(
            f"mask polygons need scikit-image, shapely and pycocotools: pip install 'fastseg[polygons]' ({exc})"
        ) from exc


def _check_mask(mask: npt.NDArray[Any]) -> BoolArray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    if mask.dtype != np.bool_:
        raise TypeError(f"mask must be bool, got {mask.dtype}")
    return mask


def _trace(mask: BoolArray) -> list[FloatArray]:
    """Outlines of the hole-filled mask's parts, ``(K, 2)`` XY each, without the closing vertex."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return []
    r0, c0 = int(rows[0]), int(cols[0])
    crop = mask[r0 : int(rows[-1]) + 1, c0 : int(cols[-1]) + 1]
    ndimage = _import("scipy.ndimage")  # scikit-image's own dependency
    measure = _import("skimage.measure")
    # Fill the holes: the background 4-connected to the zero border is the outside, the rest is filled
    # (scipy's binary_fill_holes, faster). No background region is then enclosed, so every contour is
    # the outer boundary of one part.
    padded = np.pad(crop, 1)
    background, _ = ndimage.label(~padded)
    padded = (background != background[0, 0]).astype(np.uint8)
    # (row, col) in the padded crop -> XY in the image frame: -1 (padding), +0.5 (pixel centres), + crop offset.
    offset = np.array([c0 - 0.5, r0 - 0.5])
    return [c[:-1, ::-1] + offset for c in measure.find_contours(padded, 0.5)]


def _simplify(outlines: list[FloatArray], tolerance: float) -> list[FloatArray]:
    if tolerance < _MIN_TOLERANCE or not outlines:
        return outlines
    shapely = _import("shapely")
    raw = np.array([shapely.Polygon(o) for o in outlines], dtype=object)
    simple = shapely.simplify(raw, tolerance, preserve_topology=True)
    raw_area, out = shapely.area(raw), []
    for outline, poly, area in zip(outlines, simple, raw_area):
        t = tolerance
        while poly.is_empty or abs(poly.area - area) > _MAX_AREA_CHANGE * area:
            t /= 2
            if t < _MIN_TOLERANCE:
                break
            poly = shapely.simplify(shapely.Polygon(outline), t, preserve_topology=True)
        if t < _MIN_TOLERANCE or poly.geom_type != "Polygon":
            out.append(outline)
        else:
            out.append(np.asarray(poly.exterior.coords, dtype=np.float64)[:-1])
    return out


def _polygons_and_raw(mask: BoolArray, tolerance: float, min_area: float) -> tuple[list[FloatArray], int]:
    if not np.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be a finite number >= 0 (pixels), got {tolerance}")
    if not np.isfinite(min_area) or min_area < 0:
        raise ValueError(f"min_area must be a finite number >= 0 (square pixels), got {min_area}")
    outlines = _trace(_check_mask(mask))
    areas = [_area(o) for o in outlines]
    kept = [i for i, a in enumerate(areas) if a > 0 and a >= min_area]
    kept.sort(key=lambda i: -areas[i])  # largest first
    outlines = [outlines[i] for i in kept]
    polygons = [p for p in _simplify(outlines, tolerance) if len(p) >= 3]
    return polygons, sum(len(o) for o in outlines)


def _area(xy: FloatArray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def mask_to_polygons(
    mask: BoolArray, tolerance: float = DEFAULT_TOLERANCE, min_area: float = DEFAULT_MIN_AREA
) -> list[FloatArray]:
    """The outer boundaries of a mask's parts as polygons.

    Args:
        mask: ``(H, W)`` bool.
        tolerance: simplification tolerance in pixels (0 keeps the traced outlines).
        min_area: parts whose traced outline encloses less (square pixels) are dropped.

    Returns:
        One ``(K, 2)`` float64 array of XY vertices per part, ``K >= 3``, without a repeated closing
        vertex, in the COCO pixel frame (see the module docstring), largest part first. Holes are
        filled. An empty mask gives ``[]``; a single pixel gives a 4-vertex diamond around it.
    """
    return _polygons_and_raw(mask, tolerance, min_area)[0]


def mask_to_polygons_with_stats(
    mask: BoolArray, tolerance: float = DEFAULT_TOLERANCE, min_area: float = DEFAULT_MIN_AREA
) -> tuple[list[FloatArray], PolygonStats]:
    """:func:`mask_to_polygons` and its :class:`PolygonStats` (vertex counts, IoU against ``mask``)."""
    polygons, raw = _polygons_and_raw(mask, tolerance, min_area)
    stats = PolygonStats(len(polygons), sum(len(p) for p in polygons), raw, polygon_iou(polygons, mask))
    return polygons, stats


def _check_polygons(polygons: Sequence[npt.ArrayLike]) -> list[FloatArray]:
    out = []
    for i, p in enumerate(polygons):
        xy = np.asarray(p, dtype=np.float64)
        if xy.ndim != 2 or xy.shape[1] != 2 or xy.shape[0] < 3:
            raise ValueError(f"polygon {i} must be (K, 2) XY with K >= 3, got shape {xy.shape}")
        if not np.isfinite(xy).all():
            raise ValueError(f"polygon {i} has non-finite coordinates")
        out.append(xy)
    return out


def _polygons_rle(polygons: Sequence[npt.ArrayLike], size: tuple[int, int]) -> dict[str, Any] | None:
    """The merged COCO RLE of the polygons, as pycocotools' ``COCO.annToRLE`` makes it (None if none)."""
    h, w = (int(v) for v in size)
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be (H, W) with positive sides, got {size}")
    checked = _check_polygons(polygons)
    if not checked:
        return None
    mask_api = _import("pycocotools.mask")
    rle: dict[str, Any] = mask_api.merge(mask_api.frPyObjects([p.ravel().tolist() for p in checked], h, w))
    return rle


def polygons_to_mask(polygons: Sequence[npt.ArrayLike], size: tuple[int, int]) -> BoolArray:
    """Rasterise XY polygons (COCO pixel frame) into an ``(H, W)`` bool mask, as COCO readers do.

    pycocotools ``frPyObjects`` + ``merge`` + ``decode``: the union of the polygons, each filled.
    ``size`` is ``(H, W)``; no polygons give an empty mask.
    """
    rle = _polygons_rle(polygons, size)
    if rle is None:
        return np.zeros(tuple(int(v) for v in size), dtype=bool)
    mask_api = _import("pycocotools.mask")
    out: BoolArray = mask_api.decode(rle).astype(bool)
    return out


def polygon_iou(polygons: Sequence[npt.ArrayLike], mask: BoolArray) -> float:
    """IoU of ``(H, W)`` bool ``mask`` and the polygons rasterised by pycocotools (1.0 if both are empty)."""
    mask = _check_mask(mask)
    rle = _polygons_rle(polygons, mask.shape)
    area = int(mask.sum())
    if rle is None:
        return 1.0 if area == 0 else 0.0
    mask_api = _import("pycocotools.mask")
    if area == 0:
        return 1.0 if int(mask_api.area(rle)) == 0 else 0.0
    mask_rle = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
    return float(mask_api.iou([rle], [mask_rle], [0])[0, 0])


def _closest_vertices(a: FloatArray, b: FloatArray) -> tuple[int, int]:
    """Indices ``(i, j)`` of the closest pair ``a[i]``, ``b[j]`` (in row blocks: bounded memory)."""
    best, pair = np.inf, (0, 0)
    for start in range(0, len(a), 1024):
        d = ((a[start : start + 1024, None, :] - b[None, :, :]) ** 2).sum(-1)
        k = int(np.argmin(d))
        i, j = divmod(k, len(b))
        if d[i, j] < best:
            best, pair = float(d[i, j]), (start + i, j)
    return pair


def join_parts(polygons: Sequence[npt.ArrayLike]) -> FloatArray:
    """Several parts as one polygon, joined by zero-width bridges (for formats with one polygon per object).

    The YOLO-seg convention of ultralytics (``merge_multi_segment`` in its COCO converter and its
    ``masks2segments``): each part is entered at the vertex closest to the previous part, walked round
    and left the way it was entered, so every bridge is traversed once in each direction and encloses
    nothing. Parts are chained from the first, each time to the nearest remaining part (by centroid),
    which keeps bridges short. Rasterised with the even-odd rule (pycocotools) the result covers the
    union of the parts.

    Args:
        polygons: ``(K_i, 2)`` XY arrays, ``K_i >= 3``.

    Returns:
        ``(K, 2)`` float64 XY, without a repeated closing vertex; the one part itself if there is one.
    """
    parts = _check_polygons(polygons)
    if not parts:
        raise ValueError("join_parts needs at least one polygon")
    centroids = np.array([p.mean(axis=0) for p in parts])
    order, left = [0], np.ones(len(parts), dtype=bool)
    left[0] = False
    while left.any():  # greedy nearest-neighbour chain
        d = ((centroids - centroids[order[-1]]) ** 2).sum(-1)
        d[~left] = np.inf
        order.append(int(np.argmin(d)))
        left[order[-1]] = False
    chain = [parts[i] for i in order]
    # entry[i]: where part i is entered (from part i - 1); exit[i]: where it is left for part i + 1.
    entry, exits = [0] * len(chain), [0] * len(chain)
    for i in range(1, len(chain)):
        exits[i - 1], entry[i] = _closest_vertices(chain[i - 1], chain[i])
    heads, tails = [], []
    for i, part in enumerate(chain):
        ring = np.concatenate([np.roll(part, -entry[i], axis=0), part[entry[i] : entry[i] + 1]])  # closed
        if i == len(chain) - 1:
            heads.append(ring)
            break
        e = (exits[i] - entry[i]) % len(part)
        heads.append(ring[: e + 1])
        tails.append(ring[e:])
    joined = np.concatenate(heads + tails[::-1])
    return joined[:-1]  # the walk ends where it started
