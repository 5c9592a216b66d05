"""Masks as polygons, for the label formats that have no masks (COCO polygons, YOLO-seg, labelme).

**Frame.** Coordinates are XY in COCO's continuous pixel frame: pixel ``(row r, column c)`` covers the
square ``[c, c + 1] x [r, r + 1]``, its centre is ``(c + 0.5, r + 0.5)``, and every polygon of an
``(H, W)`` mask lies within ``[0, W] x [0, H]``. The outlines are the marching-squares contours at
level 0.5 (``skimage.measure.find_contours`` on the zero-padded mask): they run through the middles of
the pixel edges between the mask and the background, a single pixel becomes a diamond around its
centre, and a part on the image border has vertices on the border. Of the candidate frames this is
the one that ``pycocotools`` (how COCO readers rasterise polygons: ``frPyObjects`` + ``merge`` +
``decode``, see :func:`polygons_to_mask`) turns back into exactly the traced pixels; in the
pixel-index frame (centres on integers) the outlines come back half a pixel off.
``tests/test_polygons.py`` measures both.

**Parts and holes.** A part is a 4-connected component of the mask (two pixels touching only at a
corner are two parts; the background is 8-connected) and gives one polygon; the parts come largest
first. COCO, YOLO-seg and labelme polygons have no holes, so a part's holes are joined into its outer
boundary as *keyholes*: the walk round the outer boundary leaves it at the vertex closest to a hole
(or to a hole already joined), goes round the hole and comes back along the same segment. That
bridge is walked once each way and encloses nothing, so under the even-odd rule (pycocotools,
OpenCV's ``fillPoly`` that ultralytics rasterises with, PIL's polygon fill that labelme uses) the
keyholed polygon covers the part without its holes; a hole also runs the other way round than its
outer boundary, so a nonzero-winding fill leaves it out too. Every hole adds its vertices and two
more. This is how ultralytics joins the parts of one object (:func:`join_parts`, which accepts
keyholed parts). A part inside a hole of another (an island) is a part of its own.

**Simplification and the IoU floor.** The outer boundary and the holes of a part are simplified
together with shapely's Douglas-Peucker (``preserve_topology=True``), so the holes stay inside their
part and apart. At ``tolerance`` pixels first; a part that this would shrink or grow by more than a
tenth of its area (a thin limb) is simplified with half the tolerance, and so on; parts of a few
pixels (at most eight traced vertices, no hole) are kept as traced. Then the IoU of all the
polygons, rasterised with pycocotools, with the mask is measured, and while it is below ``min_iou``
(:data:`DEFAULT_MIN_IOU`) everything is simplified again at half the tolerance. Below a twentieth of
a pixel the traced outlines are kept, and those rasterise back to exactly the mask (holes included),
so the polygons of every mask meet any ``min_iou <= 1``. ``min_iou=None`` switches the floor off:
the polygons at ``tolerance`` are kept whatever their IoU. Parts dropped by ``min_area`` are left
out of the mask the floor measures against. :class:`PolygonStats` reports the vertex counts, the IoU
and the tolerance the floor settled on.

The traced outline cuts a square pixel corner diagonally; once simplified, such a corner may lose
its corner pixel (boxy masks; the outlines of segmentation models' masks are smooth). The optional
dependencies (extra ``polygons``) are imported when first used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_MIN_AREA",
    "DEFAULT_MIN_IOU",
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
#: The IoU floor: the polygons are simplified less until their IoU with the mask reaches this.
DEFAULT_MIN_IOU = 0.98
#: Parts whose traced polygon encloses less than this many square pixels (holes excluded) are dropped
#: (a single pixel's outline encloses 0.5, a one-pixel-wide line of ``n`` pixels ``n - 0.5``).
DEFAULT_MIN_AREA = 0.0
#: A part is simplified with a smaller tolerance when its area would change by more than this fraction.
_MAX_AREA_CHANGE = 0.1
#: Parts without holes of at most this many traced vertices (a few pixels) are kept as traced.
_TINY = 8
#: Below this tolerance the outlines are kept as traced.
_MIN_TOLERANCE = 0.05


@dataclass(frozen=True)
class PolygonStats:
    """How well one mask's polygons stand for it.

    Attributes:
        parts: number of polygons (4-connected parts of the mask).
        vertices: vertices of all polygons (bridge vertices of the keyholes included).
        raw_vertices: vertices of the traced, unsimplified polygons of the same parts (what
            ``tolerance=0`` gives).
        iou: intersection over union of the mask and the polygons rasterised by pycocotools (1.0
            when both are empty).
        holes: holes joined into the polygons as keyholes.
        tolerance: the tolerance the IoU floor settled on (the requested one, or a half, a quarter...
            of it; 0.0 when the traced outlines were kept). Thin parts and specks may have been
            simplified with less.
    """

    parts: int
    vertices: int
    raw_vertices: int
    iou: float
    holes: int
    tolerance: float

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


@dataclass
class _Part:
    """One 4-connected part as traced: rings of ``(K, 2)`` XY vertices without the closing vertex."""

    shell: FloatArray
    holes: list[FloatArray]
    area: float  # enclosed by the shell, less the holes
    label: int  # in the labelled, padded crop


def _signed_area(xy: FloatArray) -> float:
    """Shoelace area of a ring (positive for the traced outer boundaries, XY with y down)."""
    x, y = xy[:, 0], xy[:, 1]
    return float(x[:-1] @ y[1:] - x[1:] @ y[:-1] + x[-1] * y[0] - x[0] * y[-1]) / 2


def _trace(mask: BoolArray) -> tuple[list[_Part], npt.NDArray[np.int32], tuple[int, int]]:
    """The parts' outer boundaries and holes, the labels of the zero-padded crop and the crop's corner."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return [], np.zeros((0, 0), np.int32), (0, 0)
    r0, c0 = int(rows[0]), int(cols[0])
    padded = np.pad(mask[r0 : int(rows[-1]) + 1, c0 : int(cols[-1]) + 1], 1)
    ndimage = _import("scipy.ndimage")  # scikit-image's own dependency
    measure = _import("skimage.measure")
    labels, _ = ndimage.label(padded)  # 4-connected, as find_contours' default separates the mask
    contours = measure.find_contours(padded.astype(np.uint8), 0.5)  # closed: the last vertex repeats the first
    sizes = np.array([len(c) for c in contours])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rc = np.concatenate(contours)
    # Each contour separates one part from one background region. Every vertex lies halfway between a
    # mask pixel and a background pixel: the part is the label of one of the two.
    first = rc[starts]
    lo, hi = np.floor(first).astype(np.intp), np.ceil(first).astype(np.intp)
    label_of = np.maximum(labels[lo[:, 0], lo[:, 1]], labels[hi[:, 0], hi[:, 1]])
    # In XY (y down) a part's outer boundary has a positive shoelace area, a hole's a negative one.
    x, y = rc[:, 1], rc[:, 0]
    cross = np.append(x[:-1] * y[1:] - x[1:] * y[:-1], 0.0)
    cross[starts + sizes - 1] = 0.0  # the pairs that span two contours
    signed = np.add.reduceat(cross, starts) / 2
    # (row, col) of the padded crop -> XY: -1 (padding), +0.5 (pixel centres), + the crop's corner
    xy = rc[:, ::-1] + np.array([c0 - 0.5, r0 - 0.5])
    shells: dict[int, tuple[FloatArray, float]] = {}
    holes: dict[int, list[tuple[FloatArray, float]]] = {}
    for start, size, label, area in zip(starts.tolist(), sizes.tolist(), label_of.tolist(), signed.tolist()):
        ring = xy[start : start + size - 1]
        if area > 0:
            shells[label] = (ring, area)
        else:
            holes.setdefault(label, []).append((ring, -area))
    parts = []
    for label, (shell, area) in shells.items():
        inner = holes.get(label, [])
        parts.append(_Part(shell, [h for h, _ in inner], area - sum(a for _, a in inner), label))
    return parts, labels, (r0, c0)


def _walk(ring: FloatArray, start: int, attached: list[tuple[int, list[FloatArray]]], close: bool) -> list[FloatArray]:
    """Pieces of the walk round ``ring`` from vertex ``start``, detouring into the ``attached`` walks
    (``(vertex, pieces)``: a closed walk entered after that vertex, which is then repeated)."""
    n = len(ring)
    rot = np.roll(ring, -start, axis=0)
    out: list[FloatArray] = []
    prev = 0
    for at, pieces in sorted(attached, key=lambda a: (a[0] - start) % n):
        at = (at - start) % n
        out.append(rot[prev : at + 1])
        out.extend(pieces)
        prev = at
    out.append(rot[prev:])
    if close:
        out.append(rot[:1])
    return out


def _keyhole(shell: FloatArray, holes: Sequence[FloatArray]) -> FloatArray:
    """One polygon for a shell and its holes, joined by zero-width bridges (see the module docstring).

    The holes are taken in the order of their leftmost x; each is bridged from its closest vertex to
    the closest vertex of the shell or of a hole before it (which is where it is entered), so the
    bridges form a tree rooted at the shell and stay short. Every bridge adds two vertices. The holes
    run the other way round than the shell, so a nonzero-winding fill leaves them out as well.
    """
    if not holes:
        return shell
    rings = [r if (_signed_area(r) > 0) == (i == 0) else r[::-1] for i, r in enumerate([shell, *holes])]
    shell = rings[0]
    order = [0, *sorted(range(1, len(rings)), key=lambda i: float(rings[i][:, 0].min()))]
    rank = np.empty(len(rings), dtype=np.int64)
    rank[order] = np.arange(len(rings))
    sizes = np.array([len(r) for r in rings])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    points = np.concatenate(rings)
    rank_of = rank[np.repeat(np.arange(len(rings)), sizes)]
    tree = _import("scipy.spatial").cKDTree(points)
    attached: list[list[tuple[int, list[FloatArray]]]] = [[] for _ in rings]
    for h in reversed(order[1:]):  # a hole's own attached holes come after it: walked before it
        k = min(len(points), 8)
        while True:
            dist, idx = tree.query(rings[h], k=k)
            earlier = rank_of[idx] < rank[h]
            if earlier.any() or k == len(points):  # with every point, the shell is among them
                break
            k = min(len(points), 4 * k)
        v, j = np.unravel_index(int(np.argmin(np.where(earlier, dist, np.inf))), dist.shape)
        target = int(idx[v, j])
        parent = int(np.searchsorted(starts, target, side="right")) - 1
        attached[parent].append((target - int(starts[parent]), _walk(rings[h], int(v), attached[h], close=True)))
    return np.concatenate(_walk(shell, 0, attached[0], close=False))


def _union(rles: list[dict[str, Any]]) -> dict[str, Any]:
    """pycocotools' union of RLEs (``merge``, as ``COCO.annToRLE`` unites an object's polygons), taken
    a few at a time in a tree: the same union, without merging each one into an ever longer RLE."""
    mask_api = _import("pycocotools.mask")
    while len(rles) > 1:
        rles = [mask_api.merge(rles[i : i + 16]) if i + 1 < len(rles) else rles[i] for i in range(0, len(rles), 16)]
    return rles[0]


def _rle_iou(rle: dict[str, Any], target: dict[str, Any]) -> float:
    mask_api = _import("pycocotools.mask")
    return float(mask_api.iou([rle], [target], [0])[0, 0])


def _check_options(tolerance: float, min_area: float, min_iou: float | None) -> None:
    if not np.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be a finite number >= 0 (pixels), got {tolerance}")
    if not np.isfinite(min_area) or min_area < 0:
        raise ValueError(f"min_area must be a finite number >= 0 (square pixels), got {min_area}")
    if min_iou is not None and (not np.isfinite(min_iou) or min_iou < 0):
        raise ValueError(f"min_iou must be a finite number >= 0 (or None: no floor), got {min_iou}")


@dataclass(frozen=True)
class _Fit:
    polygons: list[FloatArray]
    holes: int
    raw_vertices: int
    tolerance: float  # the level the IoU floor settled on (0.0: as traced)
    iou: float | None  # with the mask, if measured on the way


def _to_shapely(shapely: Any, parts: Sequence[_Part], which: npt.NDArray[np.bool_]) -> npt.NDArray[np.object_]:
    """Shapely polygons of the parts ``which`` selects (None for the others)."""
    out = np.full(len(parts), None, dtype=object)
    plain = [i for i in np.flatnonzero(which).tolist() if not parts[i].holes]
    if plain:  # one call for the parts without holes
        coords = np.concatenate([parts[i].shell for i in plain])
        index = np.repeat(np.arange(len(plain)), [len(parts[i].shell) for i in plain])
        out[plain] = shapely.polygons(shapely.linearrings(coords, indices=index))
    for i in np.flatnonzero(which).tolist():
        if parts[i].holes:
            out[i] = shapely.Polygon(parts[i].shell, parts[i].holes)
    return out


def _from_shapely(shapely: Any, polygons: npt.NDArray[np.object_]) -> list[tuple[FloatArray, list[FloatArray]]]:
    """Outer rings and holes of shapely polygons, ``(K, 2)`` arrays without the closing vertex."""
    coords, index = shapely.get_coordinates(shapely.get_exterior_ring(polygons), return_index=True)
    cuts = np.flatnonzero(np.diff(index)) + 1
    shells = [ring[:-1] for ring in np.split(coords, cuts)]
    has_holes = shapely.get_num_interior_rings(polygons) > 0
    holes = [
        [np.asarray(r.coords, dtype=np.float64)[:-1] for r in p.interiors] if h else []
        for p, h in zip(polygons, has_holes)
    ]
    return list(zip(shells, holes))


def _target(
    mask: BoolArray, parts: list[_Part], dropped: bool, labels: npt.NDArray[np.int32], corner: tuple[int, int]
) -> BoolArray:
    """What the IoU floor measures against: the mask, without the parts ``min_area`` dropped."""
    if not dropped:
        return mask
    inside = np.isin(labels[1:-1, 1:-1], [p.label for p in parts])
    kept = np.zeros_like(mask)
    r0, c0 = corner
    kept[r0 : r0 + inside.shape[0], c0 : c0 + inside.shape[1]] = inside
    return kept


class _Levels:
    """The parts' polygons at the levels of simplification: level ``k`` simplifies at ``tolerance /
    2**k``, level ``top`` keeps the traced outlines. Polygons and their RLEs are made once each."""

    def __init__(self, parts: list[_Part], tolerance: float) -> None:
        self.parts = parts
        self.tolerances: list[float] = []
        while tolerance / 2 ** len(self.tolerances) >= _MIN_TOLERANCE:
            self.tolerances.append(tolerance / 2 ** len(self.tolerances))
        self.top = len(self.tolerances)
        self.area = np.array([p.area for p in parts])
        # shapes[i][k]: part i's keyholed polygon at level k, None if that level changes its area too much
        self.shapes: list[dict[int, FloatArray | None]] = [{} for _ in parts]
        self.rles: list[dict[int, dict[str, Any]]] = [{} for _ in parts]
        # Parts of a few pixels (no holes, at most _TINY vertices) stay as traced: nothing to gain.
        self.level = np.array([0 if p.holes or len(p.shell) > _TINY else self.top for p in parts], dtype=np.int64)
        self.shapely = _import("shapely") if self.top else None
        self.raw = _to_shapely(self.shapely, parts, self.level < self.top) if self.shapely else None

    def polygons(self, k: int) -> list[FloatArray]:
        """One polygon per part, each simplified at level ``k`` or, where that changes the part's
        area by more than ``_MAX_AREA_CHANGE``, at the first level after ``k`` that does not."""
        self.level = np.maximum(self.level, k)
        while True:
            for lv in np.unique(self.level).tolist():
                todo = np.array([i for i in np.flatnonzero(self.level == lv) if lv not in self.shapes[i]], np.intp)
                if todo.size:
                    self._simplify(todo, lv)
            failed = [i for i, lv in enumerate(self.level.tolist()) if self.shapes[i][lv] is None]
            if not failed:
                break
            self.level[failed] += 1
        return [p for i, lv in enumerate(self.level.tolist()) if (p := self.shapes[i][lv]) is not None]

    def _simplify(self, todo: npt.NDArray[np.intp], lv: int) -> None:
        if lv == self.top:
            for i in todo.tolist():
                self.shapes[i][lv] = _keyhole(self.parts[i].shell, self.parts[i].holes)
            return
        shapely, raw, area = self.shapely, self.raw, self.area[todo]
        assert shapely is not None and raw is not None
        simple = shapely.simplify(raw[todo], self.tolerances[lv], preserve_topology=True)
        keep = (shapely.get_type_id(simple) == 3) & (np.abs(shapely.area(simple) - area) <= _MAX_AREA_CHANGE * area)
        for i in todo[~keep].tolist():
            self.shapes[i][lv] = None
        for i, rings in zip(todo[keep].tolist(), _from_shapely(shapely, simple[keep])):
            self.shapes[i][lv] = _keyhole(*rings)

    def union(self, size: tuple[int, int]) -> dict[str, Any]:
        """The RLE of the polygons :meth:`polygons` gave last, as pycocotools rasterises them."""
        levels = self.level.tolist()
        new = [i for i, lv in enumerate(levels) if lv not in self.rles[i]]
        if new:
            flat = [self.shapes[i][levels[i]].ravel().tolist() for i in new]  # type: ignore[union-attr]
            for i, rle in zip(new, _import("pycocotools.mask").frPyObjects(flat, *size)):
                self.rles[i][levels[i]] = rle
        return _union([self.rles[i][lv] for i, lv in enumerate(levels)])


def _fit(mask: BoolArray, tolerance: float, min_area: float, min_iou: float | None) -> _Fit:
    _check_options(tolerance, min_area, min_iou)
    mask = _check_mask(mask)
    traced, labels, corner = _trace(mask)
    parts = sorted((p for p in traced if p.area > 0 and p.area >= min_area), key=lambda p: -p.area)  # largest first
    if not parts:
        return _Fit([], 0, 0, 0.0, None)
    holes = sum(len(p.holes) for p in parts)
    raw_vertices = sum(len(p.shell) + sum(len(r) + 2 for r in p.holes) for p in parts)
    levels = _Levels(parts, tolerance)
    if min_iou is None or not levels.top:  # no floor, or nothing to simplify
        return _Fit(levels.polygons(0), holes, raw_vertices, levels.tolerances[0] if levels.top else 0.0, None)
    dropped = len(parts) < len(traced)
    target = _target(mask, parts, dropped, labels, corner)
    target_rle = _import("pycocotools.mask").encode(np.asfortranarray(target.astype(np.uint8)))
    for k in range(levels.top + 1):
        polygons = levels.polygons(k)
        iou = _rle_iou(levels.union(mask.shape), target_rle)
        if iou >= min_iou or k == levels.top:
            settled = levels.tolerances[k] if k < levels.top else 0.0
            return _Fit(polygons, holes, raw_vertices, settled, None if dropped else iou)
    raise AssertionError("unreachable: the traced level returns")


def mask_to_polygons(
    mask: BoolArray,
    tolerance: float = DEFAULT_TOLERANCE,
    min_area: float = DEFAULT_MIN_AREA,
    min_iou: float | None = DEFAULT_MIN_IOU,
) -> list[FloatArray]:
    """A mask's parts as polygons, holes joined in as keyholes, simplified down to an IoU floor.

    Args:
        mask: ``(H, W)`` bool.
        tolerance: simplification tolerance in pixels (0 keeps the traced outlines).
        min_area: parts whose traced polygon encloses less (square pixels, holes excluded) are dropped.
        min_iou: the IoU floor: while the polygons' IoU with the mask (its parts of at least
            ``min_area``) is below it, they are simplified again at half the tolerance, down to the
            traced outlines (IoU 1.0): a number >= 0, above 1 always the traced outlines. ``None``:
            simplify at ``tolerance`` only.

    Returns:
        One ``(K, 2)`` float64 array of XY vertices per 4-connected part, ``K >= 3``, without a
        repeated closing vertex, in the COCO pixel frame (see the module docstring), largest part
        first. A part with holes is one keyholed polygon (two more vertices per hole). An empty mask
        gives ``[]``; a single pixel a 4-vertex diamond around it.
    """
    return _fit(mask, tolerance, min_area, min_iou).polygons


def mask_to_polygons_with_stats(
    mask: BoolArray,
    tolerance: float = DEFAULT_TOLERANCE,
    min_area: float = DEFAULT_MIN_AREA,
    min_iou: float | None = DEFAULT_MIN_IOU,
) -> tuple[list[FloatArray], PolygonStats]:
    """:func:`mask_to_polygons` and its :class:`PolygonStats` (vertex counts, IoU with ``mask``)."""
    fit = _fit(mask, tolerance, min_area, min_iou)
    iou = polygon_iou(fit.polygons, mask) if fit.iou is None else fit.iou
    vertices = sum(len(p) for p in fit.polygons)
    return fit.polygons, PolygonStats(len(fit.polygons), vertices, fit.raw_vertices, iou, fit.holes, fit.tolerance)


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
    return _union(_import("pycocotools.mask").frPyObjects([p.ravel().tolist() for p in checked], h, w))


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
