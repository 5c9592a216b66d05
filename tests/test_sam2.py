"""SAM 2.1 for images: fastseg's numpy steps and its exported graphs against Meta's ``sam2`` package.

The fast tests check the numpy pieces on their own; the slow ones (which need torch and ``sam2``:
``SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0``) compare them with the original
(``SAM2Transforms``, ``MaskDecoder._dynamic_multimask_via_stability``) and compare ``Predictor`` on a
random-weight ``sam2.1_hiera_tiny`` export with ``SAM2ImagePredictor`` on the same checkpoint, on real
photos, for every prompt type, on both backends at f32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fastseg
from fastseg.ops import bilinear_taps
from fastseg.registry import get_spec
from fastseg.sam2 import build_prompt_arrays, preprocess, resample_matrix, select_single_masks, stability_scores

MODEL = "sam2.1_hiera_tiny"
SPEC = get_spec(MODEL)


# --------------------------------------------------------------------------------------------------
# numpy pieces


@pytest.mark.parametrize(("n_in", "n_out"), [(1080, 1024), (300, 1024), (1024, 1024), (5000, 1024), (7, 3)])
def test_resample_taps_are_normalised_and_local(n_in: int, n_out: int) -> None:
    index, weights = resample_matrix(n_in, n_out)
    assert index.shape == weights.shape and index.shape[0] == n_out
    assert np.allclose(weights.sum(axis=1), 1.0, atol=1e-6) and (weights >= 0).all()
    assert index.min() >= 0 and index.max() < n_in
    centers = (np.arange(n_out) + 0.5) * n_in / n_out
    used = np.where(weights > 0, index + 0.5, np.nan)
    assert (np.abs(used - centers[:, None]) <= max(1.0, n_in / n_out) + 1e-9)[weights > 0].all()


def test_resample_is_the_identity_at_the_same_size_and_bilinear_when_enlarging() -> None:
    index, weights = resample_matrix(64, 64)
    x = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    assert np.array_equal((x[index] * weights).sum(axis=1), x)
    index, weights = resample_matrix(300, 1024)  # enlarging: no antialiasing, torch's bilinear
    taps = bilinear_taps(300, 1024, dtype=np.float64)
    dense = np.zeros((1024, 300))
    np.add.at(dense, (np.arange(1024)[:, None], index), weights)
    expected = np.zeros((1024, 300))
    np.add.at(expected, (np.arange(1024), taps.i0), taps.w0)
    np.add.at(expected, (np.arange(1024), taps.i1), taps.w1)
    assert np.allclose(dense, expected, atol=1e-6)


def test_preprocess_is_square_and_normalised() -> None:
    image = np.full((30, 50, 3), 255, dtype=np.uint8)
    out = preprocess(image, SPEC)
    assert out.shape == (1, 3, 1024, 1024) and out.dtype == np.float32
    expected = (1.0 - np.asarray(SPEC.pixel_mean)) / np.asarray(SPEC.pixel_std)
    assert np.allclose(out[0, :, ::97, ::89], expected[:, None, None], atol=1e-5)
    with pytest.raises(ValueError, match="RGB uint8"):
        preprocess(np.zeros((4, 4), np.uint8), SPEC)


def test_prompt_arrays_put_boxes_first_and_always_pad() -> None:
    points = np.array([[100.0, 50.0], [10.0, 20.0]])
    coords, labels = build_prompt_arrays(points, np.array([1, 0]), None, (200, 400), 1024)
    assert labels.tolist() == [[1, 0, -1]]
    assert np.allclose(coords[0], [[256.0, 256.0], [25.6, 102.4], [0.0, 0.0]])
    boxes = np.array([[0.0, 0.0, 400.0, 200.0], [40.0, 20.0, 80.0, 60.0]])
    coords, labels = build_prompt_arrays(points[:1], np.array([1]), boxes, (200, 400), 1024)
    assert labels.tolist() == [[2, 3, 1, -1], [2, 3, 1, -1]]
    assert np.allclose(coords[0, :2], [[0.0, 0.0], [1024.0, 1024.0]]) and np.allclose(coords[1, 2], [256.0, 256.0])
    coords, labels = build_prompt_arrays(None, None, boxes[:1], (200, 400), 1024)
    assert labels.tolist() == [[2, 3, -1]]


def test_single_mask_is_mask_zero_when_stable_else_the_best_candidate() -> None:
    rng = np.random.default_rng(0)
    low = rng.standard_normal((2, 4, 8, 8)).astype(np.float32) * 5
    low[0, 0] = 10.0  # decisive everywhere: stable
    low[1, 0] = 0.01  # every logit within the stability band: unstable
    iou = np.array([[0.1, 0.2, 0.9, 0.3], [0.1, 0.8, 0.2, 0.95]], dtype=np.float32)
    assert stability_scores(low[:, 0], 0.05).tolist() == [1.0, 0.0]
    masks, scores = select_single_masks(low, iou, 0.05, 0.98)
    assert masks.shape == (2, 1, 8, 8) and np.array_equal(scores, iou[[0, 1], [0, 3]][:, None])
    assert np.array_equal(masks[0, 0], low[0, 0]) and np.array_equal(masks[1, 0], low[1, 3])


# --------------------------------------------------------------------------------------------------
# against the original


@pytest.fixture(scope="module")
def sam2_reference(random_checkpoint) -> Any:  # noqa: ANN001
    """``SAM2ImagePredictor`` on the session's random-weight checkpoint, as its README builds it."""
    from conftest import import_torch

    import_torch()
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from fastseg_export.references import SAM2_CONFIG

    model = build_sam2(SAM2_CONFIG[MODEL], str(random_checkpoint(MODEL)), device="cpu")
    return SAM2ImagePredictor(model)


def test_preprocess_matches_sam2_transforms(sam2_reference, photos: dict[str, np.ndarray]) -> None:  # noqa: ANN001
    for name, image in photos.items():
        expected = sam2_reference._transforms(image).numpy()
        got = preprocess(image, SPEC)[0]
        assert np.abs(got - expected).max() < 1e-5, name


def test_single_mask_selection_matches_the_mask_decoder(sam2_reference) -> None:  # noqa: ANN001
    import torch

    decoder = sam2_reference.model.sam_mask_decoder
    assert decoder.dynamic_multimask_via_stability  # build_sam2's default post-processing
    rng = np.random.default_rng(1)
    low = rng.standard_normal((6, 4, 32, 32)).astype(np.float32)
    low[:3, 0] *= 50  # stable single masks; the others fall back to the best of 1..3
    iou = rng.random((6, 4)).astype(np.float32)
    select = decoder._dynamic_multimask_via_stability
    expected_masks, expected_iou = select(torch.from_numpy(low), torch.from_numpy(iou))
    masks, scores = select_single_masks(
        low, iou, decoder.dynamic_multimask_stability_delta, decoder.dynamic_multimask_stability_thresh
    )
    assert np.array_equal(masks, expected_masks.numpy()) and np.array_equal(scores, expected_iou.numpy())


def _cases(h: int, w: int) -> dict[str, dict[str, Any]]:
    box = [w * 0.2, h * 0.2, w * 0.8, h * 0.7]
    return {
        "point": {"points": [[w * 0.5, h * 0.5]], "labels": [1]},
        "two points": {"points": [[w * 0.4, h * 0.5], [w * 0.7, h * 0.3]], "labels": [1, 0]},
        "box": {"boxes": [box]},
        "point and box": {"points": [[w * 0.5, h * 0.5]], "labels": [1], "boxes": [box]},
    }


def _reference(predictor: Any, case: dict[str, Any], multimask: bool, mask_input: Any = None) -> tuple:
    return predictor.predict(
        point_coords=np.array(case["points"], np.float32) if "points" in case else None,
        point_labels=np.array(case["labels"]) if "labels" in case else None,
        box=np.array(case["boxes"], np.float32) if "boxes" in case else None,
        mask_input=mask_input,
        multimask_output=multimask,
    )


def _agree(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float((ours == theirs).mean())


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_predict_matches_sam2_image_predictor(
    backend: str, exported_model, sam2_reference, photos: dict[str, np.ndarray]  # noqa: ANN001
) -> None:
    """Every prompt type, multimask on and off (off: SAM 2's own choice by stability), masks >= 99.9%
    of pixels equal, scores within 1e-3, the low-resolution logits (clamped, as returned) within 1e-3."""
    predictor = fastseg.Predictor(exported_model(MODEL), backend=backend, cache_dir=False)
    for name, image in photos.items():
        h, w = image.shape[:2]
        sam2_reference.set_image(image)
        predictor.set_image(image)
        for case_name, case in _cases(h, w).items():
            for multimask in (True, False):
                result = predictor.predict(multimask=multimask, **case)
                masks, scores, low_res = _reference(sam2_reference, case, multimask)
                where = f"{name} / {case_name} / multimask={multimask}"
                assert result.masks.shape == masks.shape, where
                for i in range(len(masks)):
                    assert _agree(result.masks[i], masks[i] > 0) >= 0.999, where
                assert np.abs(result.scores - scores).max() < 1e-3, where
                assert result.low_res_logits is not None
                assert np.abs(result.low_res_logits - low_res).max() < 1e-3, where
        # the low-resolution logits fed back as mask_input, as a labeling tool refines a mask
        first = predictor.predict(points=[[w * 0.5, h * 0.5]], labels=[1], multimask=False)
        _, _, ref_low = sam2_reference.predict(
            point_coords=np.array([[w * 0.5, h * 0.5]], np.float32), point_labels=np.array([1]), multimask_output=False
        )
        refine = {"points": [[w * 0.5, h * 0.5], [w * 0.3, h * 0.3]], "labels": [1, 0]}
        again = predictor.predict(mask_input=first.low_res_logits, multimask=False, **refine)
        masks, scores, _ = _reference(sam2_reference, refine, False, mask_input=ref_low)
        assert _agree(again.masks[0], masks[0] > 0) >= 0.999 and abs(again.scores[0] - scores[0]) < 1e-3, name
        # several boxes in one call: one prompt set each
        boxes = np.array([[w * 0.1, h * 0.1, w * 0.5, h * 0.5], [w * 0.4, h * 0.3, w * 0.9, h * 0.9]], np.float32)
        both = predictor.predict(boxes=boxes, multimask=False)
        masks, scores, _ = sam2_reference.predict(box=boxes, multimask_output=False)
        assert both.prompt_index is not None and both.prompt_index.tolist() == [0, 1]
        for i in range(2):
            assert _agree(both.masks[i], masks[i, 0] > 0) >= 0.999, name
        assert np.abs(both.scores - scores.reshape(-1)).max() < 1e-3, name


def test_embeddings_round_trip_and_everything_is_refused(exported_model, photos, tmp_path: Path) -> None:  # noqa: ANN001
    predictor = fastseg.Predictor(exported_model(MODEL), cache_dir=False)
    image = photos["chelsea"]
    predictor.set_image(image)
    first = predictor.predict(points=[[225, 150]], labels=[1])
    path = fastseg.save_embedding(tmp_path / "chelsea", predictor.get_image_embedding())
    other = fastseg.Predictor(exported_model(MODEL), cache_dir=False)
    other.set_image_embedding(fastseg.load_embedding(path))
    assert np.array_equal(other.predict(points=[[225, 150]], labels=[1]).masks, first.masks)
    with pytest.raises(ValueError, match="everything mode is not available for SAM 2.1"):
        predictor.everything(image)
    with pytest.raises(ValueError, match="expected a fastseg.sam.ImageEmbedding, got Sam2ImageEmbedding"):
        fastseg.Predictor(exported_model("mobile_sam"), cache_dir=False).set_image_embedding(
            fastseg.load_embedding(path)
        )
