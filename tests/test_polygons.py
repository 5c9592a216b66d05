"""Masks as polygons (``fastseg.polygons``), measured the way COCO readers see them.

Fast tier. Every polygon is rasterised back with pycocotools (``frPyObjects`` + ``merge`` + ``decode``,
what ``COCO.annToMask`` does). Masks are segmentations of scikit-image's photos (the horse silhouette,
the coins, the cameraman, the astronaut, the cat), also scaled to 1080p, plus hand-made edge cases and
seeded random masks.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
import pytest
from pycocotools import mask as mask_api
from scipy import ndimage
from skimage import color, data, filters, measure, transform

from fastseg.polygons import (
    DEFAULT_TOLERANCE,
    PolygonStats,
    join_parts,
    mask_to_polygons,
    mask_to_polygons_with_stats,
    polygon_iou,
    polygons_to_mask,
)

# ----------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------


def _largest(mask: np.ndarray) -> np.ndarray:
    labels = measure.label(mask, connectivity=1)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == sizes.argmax()


def _without_specks(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    labels = measure.label(mask, connectivity=1)
    return (np.bincount(labels.ravel()) >= min_pixels)[labels] & mask


def _smooth_threshold(image: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Foreground of a lightly blurred photo (segmentation masks have smooth edges, not pixel noise)."""
    blurred = filters.gaussian(image, sigma=1.0, preserve_range=True)
    return blurred > (filters.threshold_otsu(blurred) if threshold is None else threshold)


def _to_1080p(mask: np.ndarray) -> np.ndarray:
    return transform.resize(mask.astype(float), (1080, 1920), order=1, anti_aliasing=False) > 0.5


def _gray(rgb: np.ndarray) -> np.ndarray:
    return color.rgb2gray(rgb)


BUILDERS: dict[str, Callable[[], np.ndarray]] = {
    "horse": lambda: ~data.horse().astype(bool),
    # 22 coins, each a part (holes filled, specks removed)
    "coins": lambda: _without_specks(ndimage.binary_fill_holes(_smooth_threshold(data.coins())), 150),
    "astronaut_suit": lambda: _largest(_smooth_threshold(_gray(data.astronaut()), 0.7)),
    "horse_1080p": lambda: _to_1080p(mask("horse")),
    "coins_1080p": lambda: _to_1080p(mask("coins")),
    # with holes
    "cameraman": lambda: _largest(~_smooth_threshold(data.camera(), 60)),
    "cameraman_1080p": lambda: _to_1080p(mask("cameraman")),
    "cat": lambda: _largest(_smooth_threshold(_gray(data.chelsea()), 0.45)),
    "coffee_cup": lambda: _largest(_smooth_threshold(_gray(data.coffee()), 0.7)),
    # raw thresholds: speckles, many parts, holes
    "coins_raw": lambda: data.coins() > 120,
    "camera_dark": lambda: data.camera() < 60,
}
#: Object masks as a segmenter gives them: few or no holes.
REALISTIC = ["horse", "coins", "astronaut_suit", "horse_1080p", "coins_1080p"]
WITH_HOLES = ["cameraman", "cameraman_1080p", "cat", "coffee_cup", "coins_raw", "camera_dark"]


@cache
def mask(name: str) -> np.ndarray:
    out = np.ascontiguousarray(BUILDERS[name]())
    out.setflags(write=False)
    return out


def filled(m: np.ndarray) -> np.ndarray:
    return ndimage.binary_fill_holes(m)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def check_polygons(polygons: list[np.ndarray], size: tuple[int, int]) -> None:
    h, w = size
    for p in polygons:
        assert p.dtype == np.float64 and p.ndim == 2 and p.shape[1] == 2 and len(p) >= 3
        assert not np.array_equal(p[0], p[-1]), "no repeated closing vertex"
        assert p[:, 0].min() >= 0 and p[:, 0].max() <= w and p[:, 1].min() >= 0 and p[:, 1].max() <= h


# ----------------------------------------------------------------------------------------------
# Realistic masks at the default tolerance
# ----------------------------------------------------------------------------------------------


def test_masks_are_what_they_claim() -> None:
    assert mask("coins").shape == (303, 384) and measure.label(mask("coins"), connectivity=1).max() >= 20
    assert mask("horse_1080p").shape == (1080, 1920)
    for name in WITH_HOLES:
        assert (filled(mask(name)) & ~mask(name)).sum() > 100, name
    for name in REALISTIC:
        assert 0.05 < mask(name).mean() < 0.6, name


@pytest.mark.parametrize("name", REALISTIC)
def test_default_tolerance_keeps_realistic_masks(name: str) -> None:
    m = mask(name)
    polygons, stats = mask_to_polygons_with_stats(m)
    check_polygons(polygons, m.shape)
    back = polygons_to_mask(polygons, m.shape)
    assert stats == PolygonStats(len(polygons), sum(len(p) for p in polygons), stats.raw_vertices, stats.iou)
    assert stats.iou == pytest.approx(iou(back, m), abs=1e-9)
    assert stats.iou >= 0.98, stats
    assert stats.vertices * 5 <= stats.raw_vertices, stats  # far fewer vertices than the traced outline
    assert stats.raw_vertices == sum(len(p) for p in mask_to_polygons(m, tolerance=0))
    assert stats.as_dict()["iou"] == stats.iou


@pytest.mark.parametrize("name", WITH_HOLES)
def test_holes_are_filled(name: str) -> None:
    m = mask(name)
    polygons, stats = mask_to_polygons_with_stats(m)
    back = polygons_to_mask(polygons, m.shape)
    holes = filled(m) & ~m
    assert iou(back, filled(m)) >= 0.98
    assert back[holes].mean() > 0.95  # the polygons cover the holes
    assert stats.iou < iou(back, filled(m))  # and the reported IoU (against the mask) counts them


def test_the_coins_are_separate_parts_largest_first() -> None:
    m = mask("coins")
    polygons = mask_to_polygons(m)
    parts = measure.label(m, connectivity=1).max()
    assert len(polygons) == parts
    areas = [float(_shoelace(p)) for p in polygons]
    assert areas == sorted(areas, reverse=True)


def _shoelace(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2


def test_larger_tolerance_fewer_vertices() -> None:
    counts = [sum(len(p) for p in mask_to_polygons(mask("horse"), tolerance=t)) for t in (0, 0.5, 1, 2, 4)]
    assert counts == sorted(counts, reverse=True) and counts[0] > 10 * counts[-1]
    assert DEFAULT_TOLERANCE == 1.0


def test_thin_parts_survive_simplification() -> None:
    """A 2-pixel-wide stroke is thinner than the tolerance allows for: it keeps its pixels."""
    m = np.zeros((60, 80), bool)
    rr, cc = np.nonzero(np.eye(40, dtype=bool))
    for dy in (0, 1):
        m[rr + 10 + dy, cc + 20] = True  # diagonal, 2 px wide
    m[5:7, 5:75] = True  # horizontal, 2 px tall
    polygons, stats = mask_to_polygons_with_stats(m)
    assert len(polygons) == 2 and stats.iou >= 0.99  # without the area check: 0.95


def test_min_area_drops_small_parts() -> None:
    m = mask("coins_raw")
    everything = mask_to_polygons(m)
    big = mask_to_polygons(m, min_area=50)
    assert 0 < len(big) < len(everything)
    assert all(_shoelace(p) >= 50 * 0.9 for p in big)  # traced area >= 50; simplified within 10%


# ----------------------------------------------------------------------------------------------
# The pixel frame: measured with pycocotools
# ----------------------------------------------------------------------------------------------


def _random_masks(seed: int = 0, trials: int = 40) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(trials):
        h, w = (int(v) for v in rng.integers(1, 48, 2))
        noise = rng.random((h, w)) < rng.choice([0.05, 0.3, 0.5, 0.7, 0.95])
        out.append(noise if rng.random() < 0.5 else ndimage.binary_opening(noise) | (rng.random((h, w)) < 0.02))
    return out


@pytest.mark.parametrize("name", ["horse", "coins", "camera_dark", "cat", "coins_1080p"])
def test_traced_outlines_rasterise_back_exactly(name: str) -> None:
    """The convention: pixel centres at integer + 0.5. Unsimplified, pycocotools gives back exactly the
    (hole-filled) mask; the other candidate, centres on integers (the outlines moved by -0.5), does not."""
    m = mask(name)
    polygons = mask_to_polygons(m, tolerance=0)
    np.testing.assert_array_equal(polygons_to_mask(polygons, m.shape), filled(m))
    assert polygon_iou([p - 0.5 for p in polygons], filled(m)) < 0.999


def test_random_masks_rasterise_back_exactly() -> None:
    for m in _random_masks():
        polygons = mask_to_polygons(m, tolerance=0)
        check_polygons(polygons, m.shape)
        np.testing.assert_array_equal(polygons_to_mask(polygons, m.shape), filled(m))
        assert polygon_iou(mask_to_polygons(m), filled(m)) > 0.5  # simplified: no crash, still close


# ----------------------------------------------------------------------------------------------
# Edge cases
# ----------------------------------------------------------------------------------------------


def _at(shape: tuple[int, int], *pixels: tuple[int, int]) -> np.ndarray:
    m = np.zeros(shape, bool)
    for y, x in pixels:
        m[y, x] = True
    return m


EDGE_CASES = {
    "one pixel": _at((5, 6), (2, 3)),
    "one pixel, top-left corner": _at((5, 6), (0, 0)),
    "one pixel, bottom-right corner": _at((5, 6), (4, 5)),
    "1x1 image": np.ones((1, 1), bool),
    "horizontal line": np.pad(np.ones((1, 9), bool), 2),
    "vertical line on the border": np.pad(np.ones((7, 1), bool), ((0, 0), (0, 4))),
    "diagonal line": np.eye(6, dtype=bool),
    "1xW image": np.ones((1, 30), bool),
    "Hx1 image": np.ones((30, 1), bool),
    "full image": np.ones((20, 30), bool),
    "left half": np.hstack([np.ones((20, 15), bool), np.zeros((20, 15), bool)]),
    "frame (hole touches nothing)": np.pad(np.zeros((6, 6), bool), 3, constant_values=True),
}


#: Exact at the default tolerance too (the simplification never shrinks a part by more than a tenth).
TINY = ["one pixel", "one pixel, top-left corner", "one pixel, bottom-right corner", "1x1 image",
        "horizontal line", "vertical line on the border", "diagonal line", "1xW image", "Hx1 image"]  # fmt: skip


@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_tiny_and_border_masks(name: str) -> None:
    """Tiny masks give valid polygons that rasterise back to exactly their pixels (a single pixel: a
    diamond around it); masks touching the border have vertices on it. Simplified, a rectangle's
    square pixel corners are cut (the traced outline passes through the middles of the pixel edges):
    at most two pixels per corner go missing."""
    m = EDGE_CASES[name]
    h, w = m.shape
    traced = mask_to_polygons(m, tolerance=0)
    check_polygons(traced, m.shape)
    np.testing.assert_array_equal(polygons_to_mask(traced, m.shape), filled(m))
    corners = np.concatenate(traced)
    assert (corners[:, 0].min() == 0) == m[:, 0].any() and (corners[:, 0].max() == w) == m[:, -1].any()
    assert (corners[:, 1].min() == 0) == m[0].any() and (corners[:, 1].max() == h) == m[-1].any()

    polygons, stats = mask_to_polygons_with_stats(m)
    check_polygons(polygons, m.shape)
    back = polygons_to_mask(polygons, m.shape)
    if name in TINY:
        np.testing.assert_array_equal(back, m)
        assert stats.iou == 1.0
    else:
        assert not (back & ~filled(m)).any() and (filled(m) & ~back).sum() <= 8


def test_one_pixel_is_a_diamond_around_its_centre() -> None:
    (p,) = mask_to_polygons(_at((5, 6), (2, 3)))
    assert sorted(map(tuple, p.tolist())) == [(3.0, 2.5), (3.5, 2.0), (3.5, 3.0), (4.0, 2.5)]


def test_empty_mask_has_no_polygons() -> None:
    m = np.zeros((40, 50), bool)
    polygons, stats = mask_to_polygons_with_stats(m)
    assert polygons == [] and stats == PolygonStats(0, 0, 0, 1.0)
    np.testing.assert_array_equal(polygons_to_mask([], (40, 50)), m)
    assert polygon_iou([], m) == 1.0
    assert polygon_iou([], _at((40, 50), (3, 3))) == 0.0
    assert polygon_iou(mask_to_polygons(_at((40, 50), (3, 3))), m) == 0.0


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((np.zeros((2, 3, 4), bool),), ValueError, r"\(H, W\)"),
        ((np.zeros((3, 4), np.uint8),), TypeError, "bool"),
        ((np.zeros((3, 4), bool), -1.0), ValueError, "tolerance"),
        ((np.zeros((3, 4), bool), float("nan")), ValueError, "tolerance"),
        ((np.zeros((3, 4), bool), 1.0, -5.0), ValueError, "min_area"),
    ],
)
def test_bad_masks(args: tuple, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        mask_to_polygons(*args)


@pytest.mark.parametrize(
    "polygons",
    [[np.array([[0, 0], [3, 3.0]])], [np.zeros((4, 3))], [np.array([[0, 0], [3, 0], [np.nan, 2]])]],
    ids=["two vertices", "not XY", "nan"],
)
def test_bad_polygons(polygons: list[np.ndarray]) -> None:
    with pytest.raises(ValueError, match="polygon 0"):
        polygons_to_mask(polygons, (10, 10))


def test_polygons_to_mask_is_pycocotools() -> None:
    polygons = mask_to_polygons(mask("coins"))
    h, w = mask("coins").shape
    rle = mask_api.merge(mask_api.frPyObjects([p.ravel().tolist() for p in polygons], h, w))
    np.testing.assert_array_equal(polygons_to_mask(polygons, (h, w)), mask_api.decode(rle).astype(bool))


# ----------------------------------------------------------------------------------------------
# Joining parts (YOLO-seg: one polygon per object)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["coins", "camera_dark", "coins_1080p"])
def test_joined_parts_cover_the_same_pixels(name: str) -> None:
    m = mask(name)
    polygons = mask_to_polygons(m)
    joined = join_parts(polygons)
    assert joined.shape == (sum(len(p) for p in polygons) + 2 * (len(polygons) - 1), 2)
    assert not np.array_equal(joined[0], joined[-1])
    np.testing.assert_array_equal(polygons_to_mask([joined], m.shape), polygons_to_mask(polygons, m.shape))


def test_a_bridge_across_another_part_changes_nothing() -> None:
    def square(x: float) -> np.ndarray:
        return np.array([[x, 1], [x + 4, 1], [x + 4, 5], [x, 5]], dtype=float)

    parts = [square(1), square(21), square(11)]
    joined = join_parts(parts)
    np.testing.assert_array_equal(polygons_to_mask([joined], (7, 30)), polygons_to_mask(parts, (7, 30)))
    np.testing.assert_array_equal(join_parts(parts[:1]), parts[0])


def test_join_parts_needs_a_polygon() -> None:
    with pytest.raises(ValueError, match="at least one"):
        join_parts([])
