"""SAM 2.1 for images: fastseg's numpy steps and its exported graphs against Meta's ``sam2`` package.

The fast tests check the numpy pieces on their own; the slow ones (which need torch and ``sam2``:
``SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0``) compare them with the original
(``SAM2Transforms``, ``MaskDecoder._dynamic_multimask_via_stability``) and compare ``Predictor`` on
random-weight ``sam2.1_hiera_tiny`` and ``sam2.1_hiera_base_plus`` exports (:data:`PARITY_MODELS`)
with ``SAM2ImagePredictor`` on the same checkpoints, on real photos, for every prompt type, on both
backends at f32, and everything mode with ``SAM2AutomaticMaskGenerator``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fastseg
from fastseg.ops import bilinear_taps
from fastseg.registry import get_spec
from fastseg.sam2 import (
    build_prompt_arrays,
    fill_small_regions,
    preprocess,
    resample_matrix,
    select_single_masks,
    stability_scores,
)

MODEL = "sam2.1_hiera_tiny"
#: The sizes the parity tests run on (small and large were checked by hand; README).
PARITY_MODELS = (MODEL, "sam2.1_hiera_base_plus")
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


def test_prompt_arrays_take_one_point_row_per_prompt_set() -> None:
    """Everything mode's grid: ``(B, 1, 2)`` points give B prompt sets of one point and the padding."""
    grid = np.array([[[100.0, 50.0]], [[300.0, 150.0]]])
    coords, labels = build_prompt_arrays(grid, np.ones((2, 1)), None, (200, 400), 1024)
    assert labels.tolist() == [[1, -1], [1, -1]]
    assert np.allclose(coords[:, 0], [[256.0, 256.0], [768.0, 768.0]]) and np.allclose(coords[:, 1], 0.0)


def _connected_regions_reference(region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What ``sam2``'s CUDA ``get_connected_componnets`` returns, from scikit-image: 8-connected labels
    (0 outside ``region``) and, at each pixel, the area of its region."""
    from skimage.measure import label

    labels = label(region, connectivity=2)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels, sizes[labels]


def _fill_reference(logits: np.ndarray, hole: int, sprinkle: int) -> np.ndarray:
    """``SAM2Transforms.postprocess_masks``' clean-up, written out with :func:`_connected_regions_reference`."""
    out = logits.copy()
    for i, plane in enumerate(logits):
        if hole > 0:
            labels, areas = _connected_regions_reference(plane <= 0)
            out[i] = np.where((labels > 0) & (areas <= hole), np.float32(10.0), out[i])
        if sprinkle > 0:
            labels, areas = _connected_regions_reference(plane > 0)
            out[i] = np.where((labels > 0) & (areas <= sprinkle), np.float32(-10.0), out[i])
    return out


@pytest.mark.parametrize(("hole", "sprinkle"), [(0, 0), (12, 0), (0, 12), (40, 25)])
def test_fill_small_regions_matches_the_definition(hole: int, sprinkle: int) -> None:
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((3, 48, 40)).astype(np.float32)
    logits[0] += 0.8  # mostly foreground: many small holes
    logits[1] -= 0.8  # mostly background: many small sprinkles
    logits[2, 10:20, 10:20] = 5.0  # a big region with a one-pixel hole on its diagonal neighbour
    logits[2, 15, 15] = -1.0
    got = fill_small_regions(logits, hole, sprinkle)
    assert got.dtype == np.float32 and got.shape == logits.shape
    expected = _fill_reference(logits, hole, sprinkle)
    assert np.array_equal(got, expected)
    if hole or sprinkle:
        assert not np.array_equal(got, logits)
    else:
        assert got is logits


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
def sam2_references(random_checkpoint) -> Any:  # noqa: ANN001
    """``name -> SAM2ImagePredictor`` on the session's random-weight checkpoint, as its README builds it."""
    from conftest import import_torch

    import_torch()
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from fastseg_export.references import SAM2_CONFIG

    made: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in made:
            made[name] = SAM2ImagePredictor(build_sam2(SAM2_CONFIG[name], str(random_checkpoint(name)), device="cpu"))
        return made[name]

    return get


@pytest.fixture(scope="module")
def sam2_reference(sam2_references) -> Any:  # noqa: ANN001
    return sam2_references(MODEL)


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


@pytest.mark.parametrize("model", PARITY_MODELS)
@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_predict_matches_sam2_image_predictor(
    model: str, backend: str, exported_model, sam2_references, photos: dict[str, np.ndarray]  # noqa: ANN001
) -> None:
    """Every prompt type, multimask on and off (off: SAM 2's own choice by stability), masks >= 99.9%
    of pixels equal, scores within 1e-3, the low-resolution logits (clamped, as returned) within 1e-3."""
    sam2_reference = sam2_references(model)
    predictor = fastseg.Predictor(exported_model(model), backend=backend, cache_dir=False)
    worst = {"agreement": 1.0, "score": 0.0, "logits": 0.0}
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
                assert result.low_res_logits is not None
                agreement = min(_agree(result.masks[i], masks[i] > 0) for i in range(len(masks)))
                worst["agreement"] = min(worst["agreement"], agreement)
                worst["score"] = max(worst["score"], float(np.abs(result.scores - scores).max()))
                worst["logits"] = max(worst["logits"], float(np.abs(result.low_res_logits - low_res).max()))
                assert agreement >= 0.999 and worst["score"] < 1e-3 and worst["logits"] < 1e-3, (where, worst)
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
    print(f"\n[sam2 parity] {model} / {backend}: lowest mask agreement {worst['agreement']:.6%}, "
          f"largest score difference {worst['score']:.1e}, largest low-res logit difference {worst['logits']:.1e}")


def test_embeddings_round_trip(exported_model, photos, tmp_path: Path) -> None:  # noqa: ANN001
    predictor = fastseg.Predictor(exported_model(MODEL), cache_dir=False)
    image = photos["chelsea"]
    predictor.set_image(image)
    first = predictor.predict(points=[[225, 150]], labels=[1])
    path = fastseg.save_embedding(tmp_path / "chelsea", predictor.get_image_embedding())
    other = fastseg.Predictor(exported_model(MODEL), cache_dir=False)
    other.set_image_embedding(fastseg.load_embedding(path))
    assert np.array_equal(other.predict(points=[[225, 150]], labels=[1]).masks, first.masks)
    with pytest.raises(ValueError, match="expected a fastseg.sam.ImageEmbedding, got Sam2ImageEmbedding"):
        fastseg.Predictor(exported_model("mobile_sam"), cache_dir=False).set_image_embedding(
            fastseg.load_embedding(path)
        )


# --------------------------------------------------------------------------------------------------
# everything mode against SAM2AutomaticMaskGenerator


def test_everything_parameters_are_sam2_automatic_mask_generators() -> None:
    import inspect

    from conftest import import_torch

    import_torch()
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    from fastseg import amg

    official = inspect.signature(SAM2AutomaticMaskGenerator.__init__).parameters
    assert set(amg.SAM2_PARAMETERS) == set(official) - {"self", "model", "kwargs"}
    ours = amg.Sam2EverythingParams()
    for name in amg.SAM2_PARAMETERS:
        default = official[name].default
        assert getattr(ours, name) == (None if default is None else default), name
    with pytest.raises(TypeError, match="unknown everything-mode parameter"):
        amg.sam2_params_from_options({"use_m2": True})
    with pytest.raises(ValueError, match="use_m2m must be True or False, got 1"):
        amg.sam2_params_from_options({"use_m2m": 1})
    with pytest.raises(ValueError, match="mask_threshold must be a finite number, got nan"):
        amg.sam2_params_from_options({"mask_threshold": float("nan")})
    with pytest.raises(TypeError, match="unknown everything-mode parameter.*use_m2m"):
        amg.params_from_options({"use_m2m": True})  # SAM 1's generator has no such parameter


@pytest.fixture
def sam2_generate(sam2_references, monkeypatch) -> Any:  # noqa: ANN001
    """``SAM2AutomaticMaskGenerator(model, **params).generate(image)`` on the reference model. The
    predictor's hole and sprinkle clean-up (``min_mask_region_area`` > 0) needs ``sam2``'s CUDA
    extension for its connected regions, which is not built here (the original then warns and skips
    it); :func:`_connected_regions_reference` stands in for it, with the kernel's definition."""
    import torch
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    from sam2.utils import misc

    def regions(mask: Any) -> tuple[Any, Any]:
        m = mask.numpy().astype(bool)
        labels, areas = np.zeros(m.shape, np.int32), np.zeros(m.shape, np.int32)
        for i in range(len(m)):
            labels[i, 0], areas[i, 0] = _connected_regions_reference(m[i, 0])
        return torch.from_numpy(labels), torch.from_numpy(areas)

    monkeypatch.setattr(misc, "get_connected_components", regions)

    def generate(image: np.ndarray, model: str = MODEL, **params: Any) -> list[dict[str, Any]]:
        with torch.no_grad():
            return SAM2AutomaticMaskGenerator(sam2_references(model).model, **params).generate(image)

    return generate


@pytest.mark.parametrize("model", PARITY_MODELS)
def test_everything_matches_sam2_generator_at_lowered_thresholds(
    model: str, exported_model, photos, sam2_generate  # noqa: ANN001
) -> None:
    """NMS off, thresholds lowered from our own run's score distribution (random weights keep nothing
    at the defaults: ``test_everything.py``'s module doc), both backends."""
    from everything_helpers import assert_parity, gap_threshold

    image = photos["chelsea"]
    for backend in ("openvino", "onnxruntime"):
        predictor = fastseg.Predictor(exported_model(model), backend=backend, cache_dir=False)
        predictor.set_image(image)
        every = predictor.everything(
            points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0,
            output_mode="uncompressed_rle",
        )
        assert len(every) == 3 * 64
        iou = np.array([r["predicted_iou"] for r in every])
        stability = np.array([r["stability_score"] for r in every])
        params = {"points_per_side": 8, "box_nms_thresh": 1.0, "pred_iou_thresh": gap_threshold(iou, 0.3)}
        params["stability_score_thresh"] = gap_threshold(stability[iou > params["pred_iou_thresh"]], 0.4)
        ours = predictor.everything(**params)
        assert 20 <= len(ours) < (iou > params["pred_iou_thresh"]).sum() < len(iou)  # each filter did something
        if backend == "openvino":
            reference = sam2_generate(image, model, **params)
        assert_parity(reference, ours, image.shape[:2])


@pytest.mark.parametrize(
    ("photo", "params"),
    [
        ("astronaut", {"points_per_side": 6, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}),
        ("chelsea", {"points_per_side": 3, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
                     "crop_n_layers": 1, "box_nms_thresh": 1.0, "crop_nms_thresh": 1.0}),
        ("chelsea", {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
                     "box_nms_thresh": 1.0, "use_m2m": True}),
        ("chelsea", {"points_per_side": 6, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
                     "box_nms_thresh": 1.0, "multimask_output": False}),
        ("coffee", {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
                    "box_nms_thresh": 1.0, "min_mask_region_area": 300}),
    ],
    ids=["nms-on", "crops", "m2m", "single-mask", "min-region-area"],
)
def test_everything_matches_sam2_generator(
    photo: str, params: dict[str, Any], exported_model, photos, sam2_generate  # noqa: ANN001
) -> None:
    """NMS on (random-weight masks all span the image: one is kept, the same one), crops (with the
    crop-edge filter), mask-to-mask refinement, single-mask output, the hole and sprinkle clean-up."""
    from everything_helpers import assert_parity

    image = photos[photo]
    predictor = fastseg.Predictor(exported_model(MODEL), cache_dir=False)
    predictor.set_image(image)
    ours = predictor.everything(**params)
    reference = sam2_generate(image, **params)
    assert len(reference) >= 1
    assert_parity(reference, ours, image.shape[:2])
    if params.get("min_mask_region_area"):
        plain = predictor.everything(**{**params, "min_mask_region_area": 0})
        changed = [not np.array_equal(a["segmentation"], b["segmentation"]) for a, b in zip(ours, plain)]
        assert len(plain) == len(ours) and any(changed), "the clean-up must have changed some mask here"
