"""Connected components and small-region removal (``fastseg.components``).

Fast tier: hand-made shapes, and a breadth-first flood fill written here (8-connectivity, components
numbered in raster order of their first pixel) compared with the run-based union-find on seeded
random masks; ``remove_small_regions`` against the same flood fill with the original's rules
(``amg.remove_small_regions``). Slow tier: against segment_anything's OpenCV-based original.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import pytest

from fastseg.components import connected_components, remove_small_regions

NEIGHBOURS_8 = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def flood_fill_labels(mask: np.ndarray) -> np.ndarray:
    """Label image of the 8-connected components of ``mask`` (-1 off the mask), numbered 0.. in raster
    order of each component's first pixel."""
    h, w = mask.shape
    labels = np.full((h, w), -1, dtype=np.int64)
    n = 0
    for y in range(h):
        for x in range(w):
            if not mask[y, x] or labels[y, x] >= 0:
                continue
            labels[y, x] = n
            queue = deque([(y, x)])
            while queue:
                cy, cx = queue.popleft()
                for dy, dx in NEIGHBOURS_8:
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and labels[ny, nx] < 0:
                        labels[ny, nx] = n
                        queue.append((ny, nx))
            n += 1
    return labels


def label_image(mask: np.ndarray) -> np.ndarray:
    """``connected_components`` painted back into a label image (-1 off the mask)."""
    rows, starts, stops, labels = connected_components(mask)
    out = np.full(mask.shape, -1, dtype=np.int64)
    for r, a, b, k in zip(rows, starts, stops, labels):
        assert (out[r, a:b] == -1).all(), "runs overlap"
        out[r, a:b] = k
    return out


def reference_remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """The original's rules on flood-fill components: fill holes / drop islands smaller than
    ``area_thresh``; ``changed`` whenever a small region exists; if no island would remain, keep the
    largest (the first in raster order on a tie)."""
    working = ~mask if mode == "holes" else mask
    labels = flood_fill_labels(working)
    sizes = np.bincount(labels[labels >= 0], minlength=labels.max() + 1)
    small = np.flatnonzero(sizes < area_thresh)
    if len(small) == 0:
        return mask, False
    if mode == "holes":
        return mask | np.isin(labels, small), True
    keep = np.flatnonzero(sizes >= area_thresh)
    if len(keep) == 0:
        keep = [int(np.argmax(sizes))]
    return np.isin(labels, keep), True


def _random_masks(seed: int, trials: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for trial in range(trials):
        h, w = (int(v) for v in rng.integers(1, 36, 2))
        mask = rng.random((h, w)) < rng.uniform(0.1, 0.9)
        if trial % 2:  # blobs: neighbours agree, so components are larger than single pixels
            mask = (mask.astype(int) + np.roll(mask, 1, axis=0) + np.roll(mask, 1, axis=1)) >= 2
        out.append(mask)
    return out


# ----------------------------------------------------------------------------------------------
# connected components
# ----------------------------------------------------------------------------------------------


def test_connected_components_known_shapes() -> None:
    mask = np.zeros((6, 8), dtype=bool)
    mask[0, 0] = mask[1, 1] = True  # diagonal neighbours: one component with 8-connectivity
    mask[0, 5:8] = True
    mask[1:5, 6] = True  # an L: one component
    mask[4, 0:3] = True  # a bar ...
    mask[3, 3] = True  # ... and a pixel touching its end (4, 2) diagonally
    rows, starts, stops, labels = connected_components(mask)
    assert rows.tolist() == [0, 0, 1, 1, 2, 3, 3, 4, 4]  # horizontal runs in raster order
    assert starts.tolist() == [0, 5, 1, 6, 6, 3, 6, 0, 6] and stops.tolist() == [1, 8, 2, 7, 7, 4, 7, 3, 7]
    sizes = np.bincount(labels, weights=stops - starts)
    # raster order of first pixels: (0, 0), then (0, 5), then the bar via (3, 3)
    assert labels.tolist() == [0, 1, 0, 1, 1, 2, 1, 2, 1]
    assert sizes.tolist() == [2.0, 7.0, 4.0]


@pytest.mark.parametrize(
    ("rows", "components"),
    [
        (["#.", ".#"], 1),  # diagonal
        ([".#", "#."], 1),  # anti-diagonal
        (["#.#", ".#.", "#.#"], 1),  # an X
        (["#.#", "...", "#.#"], 4),  # corners two apart
        (["##..##", "..##.."], 1),  # a zigzag of runs touching at corners
        (["#..#", ".##.", "#..#"], 1),
        (["#...", "..#."], 2),  # two columns apart: not neighbours
        (["....", "...."], 0),
        (["####", "####"], 1),
        (["#.#.#.#"], 4),
        (["#", ".", "#"], 2),
    ],
)
def test_eight_connectivity_by_hand(rows: list[str], components: int) -> None:
    mask = np.array([[c == "#" for c in row] for row in rows])
    labels = connected_components(mask)[3]
    assert (labels.max() + 1 if len(labels) else 0) == components


def test_connected_components_spiral() -> None:
    """One long component that turns back on itself (union-find needs several rounds)."""
    n = 21
    mask = np.zeros((n, n), bool)
    y0, x0, y1, x1 = 0, 0, n - 1, n - 1
    while y0 <= y1 and x0 <= x1:
        mask[y0, x0 : x1 + 1] = mask[y0 : y1 + 1, x1] = mask[y1, x0 : x1 + 1] = True
        mask[y0 + 2 : y1 + 1, x0] = True
        mask[y0 + 2, x0 : x1 - 1] = True
        y0, x0, y1, x1 = y0 + 4, x0 + 4, y1 - 4, x1 - 4
    np.testing.assert_array_equal(label_image(mask), flood_fill_labels(mask))


def test_connected_components_equal_a_flood_fill() -> None:
    """The same components, numbered the same way (raster order of first pixels), on random masks."""
    for mask in _random_masks(seed=0, trials=120):
        np.testing.assert_array_equal(label_image(mask), flood_fill_labels(mask), err_msg=str(mask.astype(int)))


def test_connected_components_empty() -> None:
    rows, starts, stops, labels = connected_components(np.zeros((3, 4), bool))
    assert len(rows) == len(starts) == len(stops) == len(labels) == 0
    assert labels.dtype == np.int64


# ----------------------------------------------------------------------------------------------
# remove_small_regions
# ----------------------------------------------------------------------------------------------


def test_remove_small_holes_and_islands_by_hand() -> None:
    mask = np.zeros((8, 10), bool)
    mask[1:7, 1:7] = True
    mask[3, 3] = False  # a 1-pixel hole
    mask[2:5, 5] = False  # a 3-pixel hole
    mask[1, 8] = True  # a 1-pixel island
    mask[5:7, 8:10] = True  # a 4-pixel island
    filled, changed = remove_small_regions(mask, 2, "holes")
    assert changed
    expected = mask.copy()
    expected[3, 3] = True
    np.testing.assert_array_equal(filled, expected)
    filled, _ = remove_small_regions(mask, 4, "holes")
    expected[2:5, 5] = True
    np.testing.assert_array_equal(filled, expected)
    cleaned, changed = remove_small_regions(mask, 4, "islands")
    assert changed
    expected = mask.copy()
    expected[1, 8] = False
    np.testing.assert_array_equal(cleaned, expected)
    # nothing small: unchanged, and not reported as changed
    same, changed = remove_small_regions(mask, 1, "islands")
    assert not changed and same is mask
    same, changed = remove_small_regions(np.zeros((4, 4), bool), 5, "islands")
    assert not changed and not same.any()


def test_every_island_small_keeps_the_largest() -> None:
    mask = np.zeros((5, 9), bool)
    mask[0, 0] = True  # 1 pixel
    mask[2:4, 2:4] = True  # 4 pixels: the largest
    mask[0, 6:8] = True  # 2 pixels
    kept, changed = remove_small_regions(mask, 10, "islands")
    assert changed
    expected = np.zeros_like(mask)
    expected[2:4, 2:4] = True
    np.testing.assert_array_equal(kept, expected)
    # a tie between equally large islands: the first in raster order of first pixels
    tie = np.zeros((3, 7), bool)
    tie[2, 0:2] = True
    tie[0, 5:7] = True
    kept, _ = remove_small_regions(tie, 5, "islands")
    np.testing.assert_array_equal(kept, tie & (np.arange(3)[:, None] == 0))


def test_holes_are_eight_connected_too() -> None:
    """Holes are components of the complement, also 8-connected: a diagonal pair of background pixels
    is one 2-pixel hole (kept at threshold 2), not two 1-pixel holes."""
    mask = np.ones((5, 5), bool)
    mask[1, 1] = mask[2, 2] = False
    filled, changed = remove_small_regions(mask, 2, "holes")
    assert not changed and not filled[1, 1] and not filled[2, 2]
    filled, changed = remove_small_regions(mask, 3, "holes")
    assert changed and filled.all()


def test_remove_small_regions_equals_the_reference_rules() -> None:
    rng = np.random.default_rng(2)
    changed = 0
    for i, mask in enumerate(_random_masks(seed=1, trials=150)):
        area = int(rng.integers(1, 40))
        for mode in ("holes", "islands"):
            ours, ours_changed = remove_small_regions(mask, area, mode)
            theirs, theirs_changed = reference_remove_small_regions(mask, area, mode)
            np.testing.assert_array_equal(ours, theirs, err_msg=f"trial {i}, {mode}, area {area}")
            assert ours.dtype == np.bool_ and ours_changed == theirs_changed
            changed += ours_changed
    assert changed > 50  # the comparison exercised actual removals


def test_remove_small_regions_bad_mode() -> None:
    with pytest.raises(ValueError, match="mode must be 'holes' or 'islands', got 'hole'"):
        remove_small_regions(np.zeros((2, 2), bool), 3, "hole")


# ----------------------------------------------------------------------------------------------
# slow: the original (OpenCV)
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def reference_amg(reference_torch: Any) -> Any:
    from segment_anything.utils import amg

    return amg


def test_remove_small_regions_matches_opencv(reference_amg: Any) -> None:
    """The numpy 8-connected components give OpenCV's result (``amg.remove_small_regions`` uses cv2)."""
    from scipy import ndimage

    rng = np.random.default_rng(2)
    changed = 0
    for trial in range(150):
        h, w = (int(v) for v in rng.integers(1, 50, 2))
        noise = rng.random((h, w)) < rng.uniform(0.1, 0.9)
        mask = ndimage.binary_opening(noise) if trial % 2 else noise
        area = int(rng.integers(1, 40))
        for mode in ("holes", "islands"):
            ours, ours_changed = remove_small_regions(mask, area, mode)
            theirs, theirs_changed = reference_amg.remove_small_regions(mask, area, mode)
            np.testing.assert_array_equal(ours, theirs, err_msg=f"trial {trial}, {mode}, area {area}")
            assert ours_changed == theirs_changed
            changed += ours_changed
    assert changed > 50  # the comparison exercised actual removals
