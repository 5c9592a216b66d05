"""Everything mode's records (``fastseg.records``): segmentations in each output mode, JSON, the overlay,
and :class:`~fastseg.records.MaskRecords` (the list ``Predictor.everything`` returns).

All fast: pycocotools (the runtime's ``rle`` extra) reads the JSON back; records come from hand-made
masks and from the generator driven by the synthetic decoder (``everything_helpers``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from everything_helpers import synthetic_engine
from pycocotools import mask as mask_api

import fastseg
from fastseg import amg, records
from fastseg.draw import overlay as draw_overlay
from fastseg.ops import masks_to_boxes
from fastseg.records import MaskRecords
from fastseg.results import SegmentationResult
from fastseg.rle import StoredMask, masks_to_rle

SIZE = (12, 17)


def _masks() -> np.ndarray:
    rng = np.random.default_rng(0)
    masks = np.zeros((4, *SIZE), bool)
    masks[0, 2:9, 3:12] = True
    masks[1, 5:7, 1:16] = True
    masks[2] = rng.random(SIZE) < 0.3  # speckled: stored bit-packed
    masks[3, 11, 16] = True  # the last pixel only
    return masks


def _records(masks: np.ndarray, output_mode: str = "binary_mask", score_key: str = "score") -> MaskRecords:
    out = []
    for i, mask in enumerate(masks):
        x0, y0, x1, y1 = masks_to_boxes(mask[None])[0].astype(int).tolist()
        out.append(
            {
                "segmentation": records.encode_segmentation(mask, output_mode),
                "area": int(mask.sum()),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                score_key: np.float32(0.9 - 0.1 * i),  # a numpy scalar, as a generator may leave it
            }
        )
    return MaskRecords(out, image_size=SIZE, score_key=score_key, info={"model": "hand-made"})


def _coco_decode(segmentation: dict[str, Any]) -> np.ndarray:
    return mask_api.decode({"size": segmentation["size"], "counts": segmentation["counts"].encode()}).astype(bool)


# ----------------------------------------------------------------------------------------------
# segmentations
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("output_mode", records.OUTPUT_MODES)
def test_encode_and_decode_segmentation(output_mode: str) -> None:
    for mask in _masks():
        stored = StoredMask.from_counts(masks_to_rle(mask[None])[0], SIZE)
        for source in (mask, stored):
            seg = records.encode_segmentation(source, output_mode)
            if output_mode == "binary_mask":
                assert isinstance(seg, np.ndarray) and seg.dtype == np.bool_
            elif output_mode == "uncompressed_rle":
                assert seg == {"size": list(SIZE), "counts": masks_to_rle(mask[None])[0].tolist()}
                assert all(type(c) is int for c in seg["counts"])
            else:
                assert set(seg) == {"size", "counts"} and isinstance(seg["counts"], str)
                np.testing.assert_array_equal(_coco_decode(seg), mask)
            back = records.segmentation_to_mask(seg)
            assert back.dtype == np.bool_
            np.testing.assert_array_equal(back, mask)
    # COCO counts as bytes are read too
    coco = records.encode_segmentation(_masks()[2], "coco_rle")
    as_bytes = {"size": coco["size"], "counts": coco["counts"].encode()}
    np.testing.assert_array_equal(records.segmentation_to_mask(as_bytes), _masks()[2])


def test_output_mode_and_segmentation_errors() -> None:
    assert records.check_output_mode("coco_rle") == "coco_rle"
    with pytest.raises(ValueError, match=r"one of \('binary_mask', 'uncompressed_rle', 'coco_rle'\), got 'polygon'"):
        records.check_output_mode("polygon")
    with pytest.raises(ValueError, match=r"a binary mask segmentation must be \(H, W\), got \(1, 12, 17\)"):
        records.segmentation_to_mask(np.zeros((1, *SIZE), bool))
    with pytest.raises(ValueError, match="segmentation must be an .* RLE dict with 'size' and 'counts', got list"):
        records.segmentation_to_mask([[0, 1]])
    with pytest.raises(ValueError, match="segmentation must be .* got dict"):
        records.segmentation_to_mask({"counts": [3]})
    with pytest.raises(ValueError, match="RLE counts sum to 3, expected 204 for a 12x17 mask"):
        records.segmentation_to_mask({"size": list(SIZE), "counts": [3]})
    # a 0/1 array is taken as a mask
    np.testing.assert_array_equal(records.segmentation_to_mask(_masks()[0].astype(np.uint8)), _masks()[0])


def test_records_to_masks() -> None:
    masks = _masks()
    for mode in records.OUTPUT_MODES:
        np.testing.assert_array_equal(records.records_to_masks(_records(masks, mode), SIZE), masks)
    assert records.records_to_masks([], SIZE).shape == (0, *SIZE)
    assert [m.sum() for m in records.iter_masks(_records(masks, "coco_rle"))] == masks.sum(axis=(1, 2)).tolist()
    with pytest.raises(ValueError, match=r"record 0 has a \(12, 17\) mask, expected \(12, 16\)"):
        records.records_to_masks(_records(masks), (12, 16))


# ----------------------------------------------------------------------------------------------
# overlay
# ----------------------------------------------------------------------------------------------


def test_overlay_is_draw_overlay_of_the_masks() -> None:
    masks = _masks()
    image = np.random.default_rng(1).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    expected = draw_overlay(image, masks)
    assert (expected != image).any()
    for mode in records.OUTPUT_MODES:
        recs = _records(masks, mode)
        np.testing.assert_array_equal(records.overlay(image, recs), expected)
        np.testing.assert_array_equal(recs.overlay(image), expected)
        np.testing.assert_array_equal(records.overlay(image, recs, alpha=0.2), draw_overlay(image, masks, alpha=0.2))
    np.testing.assert_array_equal(records.overlay(image, []), image)
    with pytest.raises(ValueError, match="record 1 has no 'area'"):
        records.overlay(image, [{"segmentation": masks[0], "area": 1}, {"segmentation": masks[1]}])
    with pytest.raises(ValueError, match=r"mask 0 is \(12, 17\), the image is \(12, 16\)"):
        records.overlay(image[:, :16], _records(masks[:1]))


# ----------------------------------------------------------------------------------------------
# JSON
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("output_mode", records.OUTPUT_MODES)
def test_to_json_decodes_to_the_masks(output_mode: str) -> None:
    masks = _masks()
    recs = _records(masks, output_mode)
    out = records.to_json(recs, image={"file": Path("a/b.png"), "height": np.int64(12)}, model="hand-made")
    text = json.dumps(out)  # plain JSON: no numpy values left
    saved = json.loads(text)
    assert saved["image"] == {"file": str(Path("a/b.png")), "height": 12} and saved["model"] == "hand-made"
    assert list(saved) == ["image", "model", "annotations"]
    assert len(saved["annotations"]) == len(masks)
    for ann, rec, mask in zip(saved["annotations"], recs, masks):
        assert list(ann) == ["segmentation", "area", "bbox", "score"]
        np.testing.assert_array_equal(_coco_decode(ann["segmentation"]), mask)
        assert ann["segmentation"]["size"] == list(SIZE)
        assert ann["area"] == int(mask.sum()) and ann["bbox"] == rec["bbox"]
        assert ann["score"] == pytest.approx(float(rec["score"]))
    assert records.to_json(recs) == records.to_json(_records(masks, "coco_rle"))  # the same whatever the mode
    assert recs.to_json(model="x") == records.to_json(recs, model="x")


def test_to_json_refuses_what_json_cannot_hold() -> None:
    with pytest.raises(TypeError, match="object is not JSON serialisable"):
        records.to_json(_records(_masks()), model=object())
    recs = _records(_masks())
    recs[0]["extra"] = {1, 2}
    with pytest.raises(TypeError, match="set is not JSON serialisable"):
        records.to_json(recs)


def test_write_json(tmp_path: Path) -> None:
    masks = _masks()
    recs = _records(masks, "uncompressed_rle")
    path = records.write_json(str(tmp_path / "out.json"), recs, model="hand-made")
    assert path == tmp_path / "out.json" and isinstance(path, Path)
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(records.to_json(recs, model="hand-made")))
    for ann, mask in zip(saved["annotations"], masks):
        np.testing.assert_array_equal(_coco_decode(ann["segmentation"]), mask)
    again = recs.write_json(tmp_path / "again.json", model="hand-made")
    assert again.read_text(encoding="utf-8") == path.read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.json", "out.json"]


def test_write_json_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed write leaves the previous file as it was and no partial file behind."""
    path = tmp_path / "out.json"
    path.write_text("previous", encoding="utf-8")
    with pytest.raises(TypeError, match="not JSON serialisable"):
        records.write_json(path, _records(_masks()), model=object())
    assert path.read_text(encoding="utf-8") == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]

    def broken_replace(src: Any, dst: Any) -> None:
        assert Path(src).exists() and Path(src).parent == tmp_path  # the full text was written next to it
        raise OSError("disk full")

    monkeypatch.setattr(records.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        records.write_json(path, _records(_masks()))
    monkeypatch.undo()
    assert path.read_text(encoding="utf-8") == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    new = tmp_path / "new.json"
    monkeypatch.setattr(records.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        records.write_json(new, _records(_masks()))
    monkeypatch.undo()
    assert not new.exists() and [p.name for p in tmp_path.iterdir()] == ["out.json"]
    assert os.replace is not broken_replace


# ----------------------------------------------------------------------------------------------
# MaskRecords
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("output_mode", records.OUTPUT_MODES)
def test_mask_records_views(output_mode: str) -> None:
    masks = _masks()
    recs = _records(masks, output_mode, score_key="predicted_iou")
    assert isinstance(recs, list) and len(recs) == 4 and isinstance(recs[0], dict)
    assert recs.image_size == SIZE and recs.score_key == "predicted_iou"
    assert recs.scores.dtype == np.float32
    np.testing.assert_allclose(recs.scores, [0.9, 0.8, 0.7, 0.6], rtol=1e-6)
    expected_boxes = masks_to_boxes(masks)
    assert recs.boxes.dtype == np.float32
    np.testing.assert_array_equal(recs.boxes, expected_boxes)  # XYXY from the records' XYWH
    np.testing.assert_array_equal(recs.masks, masks)
    result = recs.result()
    assert isinstance(result, SegmentationResult) and result.records is recs
    np.testing.assert_array_equal(result.masks, masks)
    np.testing.assert_array_equal(result.scores, recs.scores)
    np.testing.assert_array_equal(result.boxes, expected_boxes)
    assert result.info == {"model": "hand-made"} and result.info is not recs.info
    assert result.low_res_logits is None and result.prompt_index.tolist() == [0, 0, 0, 0]
    image = np.full((*SIZE, 3), 40, np.uint8)
    np.testing.assert_array_equal(recs.overlay(image), draw_overlay(image, masks))
    np.testing.assert_array_equal(recs.overlay(image), result.overlay(image))


def test_empty_mask_records() -> None:
    empty = MaskRecords(image_size=SIZE, score_key="score")
    assert len(empty) == 0 and empty.info == {}
    assert empty.scores.shape == (0,) and empty.boxes.shape == (0, 4) and empty.masks.shape == (0, *SIZE)
    result = empty.result()
    assert len(result) == 0 and result.image_size == SIZE
    image = np.zeros((*SIZE, 3), np.uint8)
    np.testing.assert_array_equal(empty.overlay(image), image)
    assert empty.to_json() == {"annotations": []}


def test_generated_records_as_a_result() -> None:
    """The generator's records: every box and score of the SegmentationResult view agree with the masks."""
    image = np.zeros((90, 120, 3), np.uint8)
    engine = synthetic_engine()
    engine.set_image(image)
    params = amg.params_from_options({"points_per_side": 4, "pred_iou_thresh": 0.5, "stability_score_thresh": 0.8,
                                      "output_mode": "coco_rle"})
    recs = amg.generate(engine, params, image)
    assert len(recs) >= 5 and recs.image_size == (90, 120)
    result = recs.result()
    np.testing.assert_array_equal(result.boxes, masks_to_boxes(result.masks))
    np.testing.assert_array_equal(result.scores, np.float32([r["predicted_iou"] for r in recs]))
    assert result.masks.sum(axis=(1, 2)).tolist() == [r["area"] for r in recs]
    np.testing.assert_array_equal(recs.overlay(image), draw_overlay(image, result.masks))


# ----------------------------------------------------------------------------------------------
# everything-mode argument errors of fastseg.segment (checked before any model is loaded)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"everything": True, "points": [[1, 1]]}, "everything=True segments the whole image without prompts"),
        ({"everything": True, "boxes": [0, 0, 2, 2]}, "everything=True segments the whole image without prompts"),
        ({"everything": True, "labels": [1]}, "everything=True segments the whole image without prompts"),
        ({"everything": True, "mask_input": np.zeros((256, 256))}, "everything=True segments the whole image"),
        ({"everything_options": {"points_per_side": 4}}, "everything_options apply to everything=True only"),
    ],
)
def test_segment_everything_argument_errors(kwargs: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        fastseg.segment(np.zeros((4, 4, 3), np.uint8), tmp_path / "no-model", **kwargs)
