"""The result type: validation, indexing, grouping, boxes, RLE, overlay."""

from __future__ import annotations

import numpy as np
import pytest

from fastseg.draw import overlay, palette
from fastseg.results import SegmentationResult, masks_to_boxes


def _result() -> SegmentationResult:
    masks = np.zeros((4, 8, 10), dtype=bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 0:8, 0:10] = True
    masks[3, 5, 9] = True
    return SegmentationResult(
        masks=masks,
        scores=np.array([0.1, 0.9, 0.5, 0.7], np.float32),
        boxes=masks_to_boxes(masks),
        prompt_index=np.array([0, 0, 1, 1]),
    )


def test_masks_to_boxes_matches_segment_anything() -> None:
    torch = pytest.importorskip("torch")
    from segment_anything.utils.amg import batched_mask_to_box

    rng = np.random.default_rng(1)
    masks = rng.random((6, 20, 30)) > 0.97
    masks[2] = False
    expected = batched_mask_to_box(torch.from_numpy(masks)).numpy()
    assert np.array_equal(masks_to_boxes(masks), expected.astype(np.float32))


def test_indexing_and_grouping() -> None:
    r = _result()
    assert len(r) == 4 and r.image_size == (8, 10)
    assert len(r[1]) == 1 and r[1].scores.tolist() == [pytest.approx(0.9)]
    groups = r.by_prompt()
    assert [len(g) for g in groups] == [2, 2]
    best = r.best()
    assert best.scores.tolist() == pytest.approx([0.9, 0.7])
    assert best.prompt_index.tolist() == [0, 1]
    assert r.boxes[0].tolist() == [2, 1, 4, 2]
    assert r.boxes[2].tolist() == [0, 0, 0, 0]


def test_validation() -> None:
    with pytest.raises(ValueError, match=r"scores must have shape \(2,\)"):
        SegmentationResult(np.zeros((2, 3, 3), bool), np.zeros(3, np.float32), np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="masks must be"):
        SegmentationResult(np.zeros((2, 3, 3), np.uint8), np.zeros(2, np.float32), np.zeros((2, 4), np.float32))


def test_rle_round_trip_with_pycocotools() -> None:
    mask_api = pytest.importorskip("pycocotools.mask")
    r = _result()
    rles = r.to_rle()
    assert [rle["size"] for rle in rles] == [[8, 10]] * 4
    decoded = mask_api.decode([{"size": x["size"], "counts": x["counts"].encode()} for x in rles])
    assert np.array_equal(decoded.transpose(2, 0, 1).astype(bool), r.masks)


def test_overlay_paints_each_mask() -> None:
    r = _result()
    image = np.full((8, 10, 3), 100, np.uint8)
    out = r.overlay(image, alpha=1.0)
    colours = palette(4)
    assert np.array_equal(out[1, 2], colours[0])  # small mask painted over the big one
    assert np.array_equal(out[7, 0], colours[1])
    assert np.array_equal(out[5, 9], colours[3])
    assert np.array_equal(overlay(image, r.masks[:0]), image)
    with pytest.raises(ValueError, match=r"image is \(7, 10\) but masks are \(8, 10\)"):
        overlay(image[:7], r.masks)
    assert len({tuple(c) for c in palette(12)}) == 12
