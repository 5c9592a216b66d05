"""The result type (validation, indexing, grouping, RLE, overlay), mask boxes, and drawing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_api

from fastseg import draw
from fastseg.draw import overlay, palette
from fastseg.ops import masks_to_boxes
from fastseg.results import SegmentationResult


def _result() -> SegmentationResult:
    masks = np.zeros((4, 8, 10), dtype=bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 0:8, 0:10] = True
    masks[3, 5, 9] = True
    return SegmentationResult(
        masks=masks,
        scores=np.array([0.1, 0.9, 0.5, 0.7], np.float32),
        boxes=masks_to_boxes(masks),
        low_res_logits=np.arange(4 * 2 * 2, dtype=np.float32).reshape(4, 2, 2),
        prompt_index=np.array([0, 0, 1, 1]),
        info={"model": "test"},
    )


# ----------------------------------------------------------------------------------------------
# masks_to_boxes
# ----------------------------------------------------------------------------------------------


def test_masks_to_boxes_by_hand() -> None:
    masks = np.zeros((5, 6, 9), bool)
    masks[0, 1:3, 2:5] = True  # rows 1-2, columns 2-4
    masks[1] = True
    masks[3, 5, 8] = True  # the last pixel
    masks[4, 0, 0] = masks[4, 4, 7] = True  # two pixels far apart
    boxes = masks_to_boxes(masks)
    assert boxes.dtype == np.float32
    # XYXY, x2 / y2 the last foreground column / row (inclusive), an empty mask all zeros
    assert boxes.tolist() == [[2, 1, 4, 2], [0, 0, 8, 5], [0, 0, 0, 0], [8, 5, 8, 5], [0, 0, 7, 4]]
    assert masks_to_boxes(np.zeros((0, 6, 9), bool)).shape == (0, 4)


def test_masks_to_boxes_on_random_masks() -> None:
    rng = np.random.default_rng(1)
    masks = rng.random((30, 20, 30)) > 0.97
    masks[2] = False
    for mask, box in zip(masks, masks_to_boxes(masks)):
        ys, xs = np.nonzero(mask)
        expected = [xs.min(), ys.min(), xs.max(), ys.max()] if len(xs) else [0, 0, 0, 0]
        assert box.tolist() == expected


def test_masks_to_boxes_matches_segment_anything(reference_torch: Any) -> None:
    from segment_anything.utils.amg import batched_mask_to_box

    rng = np.random.default_rng(1)
    masks = rng.random((6, 20, 30)) > 0.97
    masks[2] = False
    expected = batched_mask_to_box(reference_torch.from_numpy(masks)).numpy()
    assert np.array_equal(masks_to_boxes(masks), expected.astype(np.float32))


# ----------------------------------------------------------------------------------------------
# SegmentationResult
# ----------------------------------------------------------------------------------------------


def test_indexing() -> None:
    r = _result()
    assert len(r) == 4 and r.image_size == (8, 10)
    for index in (1, np.int64(1), [1], np.array([False, True, False, False])):
        one = r[index]
        assert isinstance(one, SegmentationResult) and len(one) == 1
        assert one.scores.tolist() == [pytest.approx(0.9)]
        np.testing.assert_array_equal(one.masks, r.masks[1:2])
        np.testing.assert_array_equal(one.boxes, r.boxes[1:2])
        np.testing.assert_array_equal(one.low_res_logits, r.low_res_logits[1:2])
        assert one.prompt_index.tolist() == [0]
    tail = r[2:]
    assert len(tail) == 2 and tail.prompt_index.tolist() == [1, 1] and tail.scores.tolist() == pytest.approx([0.5, 0.7])
    picked = r[[3, 0]]
    assert picked.scores.tolist() == pytest.approx([0.7, 0.1])
    assert r[1].info == {"model": "test"} and r[1].info is not r.info  # a copy
    assert len(r[[]]) == 0 and r[[]].image_size == (8, 10)
    assert r.boxes[0].tolist() == [2, 1, 4, 2] and r.boxes[2].tolist() == [0, 0, 0, 0]


def test_grouping_and_best() -> None:
    r = _result()
    groups = r.by_prompt()
    assert [len(g) for g in groups] == [2, 2]
    assert [g.scores.tolist() for g in groups] == [pytest.approx([0.1, 0.9]), pytest.approx([0.5, 0.7])]
    best = r.best()
    assert best.scores.tolist() == pytest.approx([0.9, 0.7])
    assert best.prompt_index.tolist() == [0, 1]
    np.testing.assert_array_equal(best.masks, r.masks[[1, 3]])
    # a prompt set without masks between two with masks still gets its (empty) group
    gap = SegmentationResult(r.masks[:2], r.scores[:2], r.boxes[:2], prompt_index=np.array([0, 2]))
    assert [len(g) for g in gap.by_prompt()] == [1, 0, 1]
    assert gap.best().prompt_index.tolist() == [0, 2]
    # ties: the first mask of the set
    tie = SegmentationResult(r.masks[:2], np.float32([0.5, 0.5]), r.boxes[:2])
    assert tie.best().boxes.tolist() == [r.boxes[0].tolist()]
    empty = r[[]]
    assert empty.by_prompt() == [] and len(empty.best()) == 0


def test_defaults() -> None:
    r = SegmentationResult(np.zeros((3, 2, 2), bool), np.zeros(3, np.float32), np.zeros((3, 4), np.float32))
    assert r.prompt_index.tolist() == [0, 0, 0] and r.prompt_index.dtype == np.int64
    assert r.low_res_logits is None and r.records is None and r.info == {}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"masks": np.zeros((2, 3, 3), np.uint8)}, r"masks must be \(N, H, W\) bool, got \(2, 3, 3\) uint8"),
        ({"masks": np.zeros((3, 3), bool)}, r"masks must be \(N, H, W\) bool, got \(3, 3\) bool"),
        ({"scores": np.zeros(3, np.float32)}, r"scores must have shape \(2,\), got \(3,\)"),
        ({"scores": np.zeros((2, 1), np.float32)}, r"scores must have shape \(2,\), got \(2, 1\)"),
        ({"boxes": np.zeros((2, 2), np.float32)}, r"boxes must have shape \(2, 4\), got \(2, 2\)"),
        ({"boxes": np.zeros((3, 4), np.float32)}, r"boxes must have shape \(2, 4\), got \(3, 4\)"),
        ({"low_res_logits": np.zeros((3, 4, 4), np.float32)}, r"low_res_logits must be \(2, h, w\), got \(3, 4, 4\)"),
        ({"low_res_logits": np.zeros((2, 4), np.float32)}, r"low_res_logits must be \(2, h, w\), got \(2, 4\)"),
        ({"prompt_index": np.zeros(3, np.int64)}, r"prompt_index must have shape \(2,\), got \(3,\)"),
    ],
)
def test_validation(kwargs: dict[str, Any], message: str) -> None:
    fields = {"masks": np.zeros((2, 3, 3), bool), "scores": np.zeros(2, np.float32), "boxes": np.zeros((2, 4))}
    with pytest.raises(ValueError, match=message):
        SegmentationResult(**{**fields, **kwargs})


def test_rle_round_trip_with_pycocotools() -> None:
    r = _result()
    rles = r.to_rle()
    assert [rle["size"] for rle in rles] == [[8, 10]] * 4
    decoded = mask_api.decode([{"size": x["size"], "counts": x["counts"].encode()} for x in rles])
    assert np.array_equal(decoded.transpose(2, 0, 1).astype(bool), r.masks)
    assert mask_api.area([{"size": x["size"], "counts": x["counts"].encode()} for x in rles]).tolist() == [6, 80, 0, 1]


# ----------------------------------------------------------------------------------------------
# drawing
# ----------------------------------------------------------------------------------------------


def test_overlay_paints_each_mask() -> None:
    r = _result()
    image = np.full((8, 10, 3), 100, np.uint8)
    out = r.overlay(image, alpha=1.0)
    colours = palette(4)
    assert np.array_equal(out[1, 2], colours[0])  # small mask painted over the big one
    assert np.array_equal(out[7, 0], colours[1])
    assert np.array_equal(out[5, 9], colours[3])
    assert np.array_equal(overlay(image, r.masks[:0]), image)
    np.testing.assert_array_equal(r.overlay(image, alpha=0.0), image)
    assert len({tuple(c) for c in palette(12)}) == 12
    np.testing.assert_array_equal(palette(3), palette(5)[:3])  # the same colour for the same index


def test_overlay_blends_by_alpha() -> None:
    image = np.zeros((2, 3, 3), np.uint8)
    image[..., 0] = 200
    mask = np.zeros((1, 2, 3), bool)
    mask[0, 0, 1] = True
    colour = palette(1)[0].astype(np.float64)
    out = overlay(image, mask, alpha=0.25)
    expected = np.round(0.75 * np.array([200.0, 0, 0]) + 0.25 * colour).astype(np.uint8)
    np.testing.assert_array_equal(out[0, 1], expected)
    out[0, 1] = image[0, 1]
    np.testing.assert_array_equal(out, image)  # only the mask's pixel changed
    assert out.dtype == np.uint8 and image[0, 1, 0] == 200  # the input is left alone


def test_overlay_of_a_sequence_and_given_areas() -> None:
    r = _result()
    image = np.full((8, 10, 3), 30, np.uint8)
    np.testing.assert_array_equal(overlay(image, list(r.masks)), overlay(image, r.masks))
    # areas decide the painting order (larger first): claim the full mask is the smallest
    swapped = overlay(image, r.masks, alpha=1.0, areas=[6, 1, 0, 2])
    assert np.array_equal(swapped[1, 2], palette(4)[1])


@pytest.mark.parametrize(
    ("image", "masks", "kwargs", "message"),
    [
        (np.zeros((8, 10), np.uint8), np.zeros((1, 8, 10), bool), {}, r"image must be RGB uint8 \(H, W, 3\)"),
        (np.zeros((8, 10, 3), np.float32), np.zeros((1, 8, 10), bool), {}, "image must be RGB uint8 .* float32"),
        (np.zeros((7, 10, 3), np.uint8), np.zeros((2, 8, 10), bool), {}, r"mask 0 is \(8, 10\), the image is \(7,"),
        (np.zeros((8, 10, 3), np.uint8), np.zeros((1, 8, 10), bool), {"alpha": 1.5}, r"alpha must be in \[0, 1\]"),
        (np.zeros((8, 10, 3), np.uint8), np.zeros((2, 8, 10), bool), {"areas": [1]}, "got 2 masks but 1 areas"),
    ],
)
def test_overlay_errors(image: np.ndarray, masks: np.ndarray, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        overlay(image, masks, **kwargs)


def test_save_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = _result()
    rgb = r.overlay(np.full((8, 10, 3), 100, np.uint8))
    path = draw.save_png(rgb, str(tmp_path / "o.png"))
    assert path == tmp_path / "o.png"
    np.testing.assert_array_equal(np.asarray(Image.open(path)), rgb)
    mask_path = draw.save_png(r.masks[0], tmp_path / "m.png")
    saved = np.asarray(Image.open(mask_path))
    assert saved.dtype == np.uint8 and set(np.unique(saved)) == {0, 255}
    np.testing.assert_array_equal(saved == 255, r.masks[0])

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(draw.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        draw.save_png(rgb, tmp_path / "o.png")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.png", "o.png"]  # no partial file left
    np.testing.assert_array_equal(np.asarray(Image.open(path)), rgb)  # the previous file intact
