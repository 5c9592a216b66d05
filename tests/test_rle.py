"""Run-length encoding (``fastseg.rle``): uncompressed RLE, COCO RLE, StoredMask, the fused crop encoder.

Fast tier: hand-made cases, a run-length encoder written here from the definition (column-major, the
first count is the number of leading zeros), pycocotools' own reading of uncompressed RLE (the
runtime's ``rle`` extra, not a reference), and round trips on seeded random masks. Slow tier: the
same functions against ``segment_anything.utils.amg``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_api

from fastseg import rle
from fastseg.ops import masks_to_boxes


def _runs(mask: np.ndarray) -> list[int]:
    """The definition: run lengths of the column-major pixels, starting with a (possibly empty) run of zeros."""
    flat = [bool(v) for v in mask.T.reshape(-1)]
    counts, current, length = [], False, 0
    for v in flat:
        if v == current:
            length += 1
        else:
            counts.append(length)
            current, length = v, 1
    counts.append(length)
    return counts


def _edge_masks() -> list[np.ndarray]:
    out = []
    for shape in [(1, 1), (1, 7), (9, 1), (4, 5)]:
        h, w = shape
        out.append(np.zeros(shape, bool))
        out.append(np.ones(shape, bool))
        for y, x in [(0, 0), (h - 1, w - 1), (h - 1, 0), (0, w - 1)]:
            one = np.zeros(shape, bool)
            one[y, x] = True
            out.append(one)
            out.append(~one)
    return out


def _random_masks(seed: int = 0, trials: int = 60) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(trials):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        out.append(rng.random((h, w)) < rng.choice([0.0, 0.05, 0.5, 0.95, 1.0]))
    return out


# ----------------------------------------------------------------------------------------------
# uncompressed RLE
# ----------------------------------------------------------------------------------------------


def test_counts_layout_by_hand() -> None:
    # column-major pixels: (0, 1), (1, 0), (1, 1) -> 0 1 1 0 1 1
    mask = np.array([[0, 1, 1], [1, 0, 1]], bool)
    assert rle.masks_to_rle(mask[None])[0].tolist() == [1, 2, 1, 2]
    # the first pixel set: the leading zero run is empty; the last pixel set: no trailing zero count
    assert rle.masks_to_rle(np.array([[[1, 0], [1, 1]]], bool))[0].tolist() == [0, 2, 1, 1]
    assert rle.masks_to_rle(np.zeros((1, 3, 2), bool))[0].tolist() == [6]
    assert rle.masks_to_rle(np.ones((1, 3, 2), bool))[0].tolist() == [0, 6]
    assert rle.rle_area([1, 2, 1, 2]) == 4 and rle.rle_area([6]) == 0 and rle.rle_area([0, 6]) == 6
    np.testing.assert_array_equal(rle.rle_to_mask([1, 2, 1, 2], (2, 3)), mask)
    assert rle.masks_to_rle(np.zeros((0, 3, 2), bool)) == []


@pytest.mark.parametrize("source", ["edge", "random"])
def test_masks_to_rle_round_trip(source: str) -> None:
    masks = _edge_masks() if source == "edge" else _random_masks()
    for mask in masks:
        counts = rle.masks_to_rle(mask[None])[0]
        assert counts.dtype == np.int64
        assert counts.tolist() == _runs(mask), mask.shape
        assert int(counts.sum()) == mask.size and (counts[1:] > 0).all()
        assert rle.rle_area(counts) == int(mask.sum())
        back = rle.rle_to_mask(counts, mask.shape)
        assert back.dtype == np.bool_ and back.shape == mask.shape
        np.testing.assert_array_equal(back, mask)
    # a batch encodes each mask on its own
    rng = np.random.default_rng(1)
    batch = rng.random((5, 6, 7)) < 0.4
    assert [c.tolist() for c in rle.masks_to_rle(batch)] == [_runs(m) for m in batch]


def test_uncompressed_rle_is_what_pycocotools_reads() -> None:
    """pycocotools' own reading of uncompressed RLE (``frPyObjects``) gives the mask back: our count
    layout is COCO's, and ``coco_encode_rle`` equals pycocotools' compression of those counts."""
    for mask in _edge_masks() + _random_masks(seed=2, trials=30):
        h, w = mask.shape
        counts = rle.masks_to_rle(mask[None])[0]
        theirs = mask_api.frPyObjects({"size": [h, w], "counts": counts.tolist()}, h, w)
        np.testing.assert_array_equal(mask_api.decode(theirs).astype(bool), mask)
        ours = rle.coco_encode_rle(counts, (h, w))
        assert ours == {"size": [h, w], "counts": theirs["counts"].decode("ascii")}
        assert rle.coco_encode_mask(mask) == ours


def test_rle_to_mask_rejects_wrong_size() -> None:
    with pytest.raises(ValueError, match="RLE counts sum to 6, expected 12 for a 3x4 mask"):
        rle.rle_to_mask([2, 4], (3, 4))
    with pytest.raises(ValueError, match="RLE counts sum to 13, expected 12"):
        rle.rle_to_mask(np.array([1, 12]), (3, 4))


# ----------------------------------------------------------------------------------------------
# COCO RLE (pycocotools)
# ----------------------------------------------------------------------------------------------


def test_coco_encode_decode_round_trip() -> None:
    rng = np.random.default_rng(3)
    masks = rng.random((4, 11, 13)) < 0.3
    masks[1] = False
    masks[2] = True
    encoded = rle.encode(masks)
    assert [r["size"] for r in encoded] == [[11, 13]] * 4
    assert all(isinstance(r["counts"], str) for r in encoded)
    np.testing.assert_array_equal(rle.decode(encoded), masks)
    # pycocotools reads them (after to_pycocotools: counts as bytes) and agrees on the areas
    as_bytes = rle.to_pycocotools(encoded)
    assert all(isinstance(r["counts"], bytes) for r in as_bytes)
    assert rle.to_pycocotools(as_bytes) == as_bytes  # bytes stay bytes
    assert mask_api.area(as_bytes).tolist() == masks.sum(axis=(1, 2)).tolist()
    np.testing.assert_array_equal(mask_api.decode(as_bytes).transpose(2, 0, 1).astype(bool), masks)
    assert rle.encode(np.zeros((0, 4, 5), bool)) == []


def test_coco_errors() -> None:
    with pytest.raises(ValueError, match=r"masks must be \(N, H, W\), got shape \(4, 5\)"):
        rle.encode(np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="decode needs at least one RLE"):
        rle.decode([])


# ----------------------------------------------------------------------------------------------
# StoredMask
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("density", "packed"), [(0.0, False), (0.002, False), (0.5, True), (1.0, False)])
def test_stored_mask_is_compact_and_lossless(density: float, packed: bool) -> None:
    """Kept masks are stored as uint32 RLE, or bit-packed when that is smaller (speckled masks)."""
    rng = np.random.default_rng(5)
    mask = rng.random((1, 120, 90)) < density
    counts = rle.masks_to_rle(mask)[0]
    stored = rle.StoredMask.from_counts(counts, (120, 90))
    assert (stored.bits is not None) == packed and (stored.counts is None) == packed
    assert (stored.bits if packed else stored.counts).nbytes <= 120 * 90 // 8
    np.testing.assert_array_equal(stored.mask(), mask[0])
    np.testing.assert_array_equal(stored.column_major(), mask[0].T.reshape(-1))
    assert stored.rle().dtype == np.int64
    assert stored.rle().tolist() == counts.tolist() and stored.area == int(mask.sum())
    assert rle.coco_encode_mask(stored.mask()) == rle.coco_encode_rle(counts, (120, 90))


def test_stored_mask_switches_at_the_byte_count() -> None:
    """Counts are kept while 4 bytes per count fit in the mask's packed bits, ``ceil(H * W / 8)``."""
    h, w = 4, 8  # 32 pixels: 4 bytes of bits, so one uint32 count at most
    empty = rle.StoredMask.from_counts(np.array([32]), (h, w))
    assert empty.counts is not None and empty.counts.dtype == np.uint32 and empty.area == 0
    two = rle.StoredMask.from_counts(np.array([3, 29]), (h, w))
    assert two.bits is not None and two.bits.dtype == np.uint8 and two.area == 29
    for stored, counts in ((empty, [32]), (two, [3, 29])):
        assert stored.rle().tolist() == counts
        np.testing.assert_array_equal(stored.mask(), rle.rle_to_mask(counts, (h, w)))


# ----------------------------------------------------------------------------------------------
# the fused crop encoder
# ----------------------------------------------------------------------------------------------


def _random_crop_case(rng: np.random.Generator, trial: int) -> tuple[np.ndarray, list[int], tuple[int, int]]:
    h, w = (int(v) for v in rng.integers(1, 30, 2))
    x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
    x1, y1 = int(rng.integers(x0 + 1, w + 1)), int(rng.integers(y0 + 1, h + 1))
    if trial % 3 == 0:
        y0, y1 = 0, h  # full-height crops: runs may continue from one column into the next
    if trial % 7 == 0:
        x0, y0, x1, y1 = 0, 0, w, h  # the whole image
    masks = rng.random((3, y1 - y0, x1 - x0)) < rng.choice([0.0, 0.1, 0.5, 0.95, 1.0])
    return masks, [x0, y0, x1, y1], (h, w)


def test_crop_masks_to_rle_is_padding_then_encoding() -> None:
    """The fused encoder (column-major crop masks -> image-frame RLE + crop-frame boxes) equals placing
    each crop mask into an empty image-sized mask, then ``masks_to_rle``, and ``masks_to_boxes`` of the
    crop masks."""
    rng = np.random.default_rng(4)
    for trial in range(300):
        masks, crop, (h, w) = _random_crop_case(rng, trial)
        x0, y0, x1, y1 = crop
        padded = np.zeros((len(masks), h, w), bool)
        padded[:, y0:y1, x0:x1] = masks
        rles, boxes = rle.crop_masks_to_rle(np.ascontiguousarray(masks.transpose(0, 2, 1)), crop, (h, w))
        assert [r.tolist() for r in rles] == [r.tolist() for r in rle.masks_to_rle(padded)], (trial, crop, (h, w))
        assert boxes.dtype == np.int64
        np.testing.assert_array_equal(boxes, masks_to_boxes(masks).astype(np.int64))


def test_crop_masks_to_rle_by_hand() -> None:
    crop_mask = np.array([[0, 1], [1, 1]], bool)  # a 2x2 crop at x0=1, y0=2 of a 4x3 image
    rles, boxes = rle.crop_masks_to_rle(np.ascontiguousarray(crop_mask.T[None]), [1, 2, 3, 4], (4, 3))
    # image column-major: column 0 all zero (4), column 1: 0 0 0 1, column 2: 0 0 1 1
    assert rles[0].tolist() == [7, 1, 2, 2]
    assert boxes.tolist() == [[0, 0, 1, 1]]
    empty, box = rle.crop_masks_to_rle(np.zeros((1, 2, 2), bool), [1, 2, 3, 4], (4, 3))
    assert empty[0].tolist() == [12] and box.tolist() == [[0, 0, 0, 0]]


# ----------------------------------------------------------------------------------------------
# slow: segment_anything.utils.amg
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def reference_amg(reference_torch: Any) -> Any:
    from segment_anything.utils import amg

    return amg


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (13, 17), (40, 31)])
@pytest.mark.parametrize("density", [0.0, 0.2, 0.5, 1.0])
def test_rle_boxes_match_amg(shape: tuple[int, int], density: float, reference_amg: Any, reference_torch: Any) -> None:
    amg, torch = reference_amg, reference_torch
    rng = np.random.default_rng(hash((shape, density)) % 2**32)
    masks = rng.random((4, *shape)) < density
    ours = rle.masks_to_rle(masks)
    theirs = amg.mask_to_rle_pytorch(torch.from_numpy(masks))
    for counts, their, mask in zip(ours, theirs, masks):
        assert counts.tolist() == their["counts"]
        assert rle.rle_area(counts) == amg.area_from_rle(their) == int(mask.sum())
        np.testing.assert_array_equal(rle.rle_to_mask(counts, shape), amg.rle_to_mask(their))
        assert rle.coco_encode_rle(counts, shape) == amg.coco_encode_rle(their)
    np.testing.assert_array_equal(
        masks_to_boxes(masks).astype(np.int64), amg.batched_mask_to_box(torch.from_numpy(masks)).numpy()
    )


def test_crop_masks_to_rle_is_uncrop_then_encode(reference_amg: Any, reference_torch: Any) -> None:
    """The fused encoder equals ``amg.uncrop_masks`` + ``mask_to_rle_pytorch`` + ``batched_mask_to_box``."""
    amg, torch = reference_amg, reference_torch
    rng = np.random.default_rng(4)
    for trial in range(300):
        masks, crop, (h, w) = _random_crop_case(rng, trial)
        rles, boxes = rle.crop_masks_to_rle(np.ascontiguousarray(masks.transpose(0, 2, 1)), crop, (h, w))
        uncropped = amg.uncrop_masks(torch.from_numpy(masks), crop, h, w)
        assert [r.tolist() for r in rles] == [r["counts"] for r in amg.mask_to_rle_pytorch(uncropped)]
        np.testing.assert_array_equal(boxes, amg.batched_mask_to_box(torch.from_numpy(masks)).numpy())


def test_stored_mask_coco_matches_amg(reference_amg: Any) -> None:
    rng = np.random.default_rng(5)
    for density in (0.0, 0.002, 0.5, 1.0):
        mask = rng.random((1, 120, 90)) < density
        counts = rle.masks_to_rle(mask)[0]
        stored = rle.StoredMask.from_counts(counts, (120, 90))
        expected = reference_amg.coco_encode_rle({"size": [120, 90], "counts": counts.tolist()})
        assert rle.coco_encode_mask(stored.mask()) == expected
