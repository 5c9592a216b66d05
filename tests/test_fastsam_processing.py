"""FastSAM pre- and post-processing in numpy against the code it reproduces (fast, no model).

References: ``cv2.resize`` and ultralytics ``LetterBox`` (letterbox), ``torchvision.ops.nms`` and
ultralytics ``non_max_suppression`` (NMS), ultralytics ``scale_boxes`` and FastSAM's border rule,
ultralytics ``FastSAMPredictor.postprocess`` / ``prompt`` (retina masks and prompt rules) on
synthetic network outputs and hand-made masks.
"""

from __future__ import annotations

import types

import cv2
import numpy as np
import pytest
import torch
import torchvision

from fastseg import fastsam as fs
from fastseg.prompts import validate_prompts
from fastseg.registry import get_spec

# ------------------------------------------------------------------------------------------------
# Letterbox and resize
# ------------------------------------------------------------------------------------------------

# (h, w) of original images: photos of common shapes, the parity photos, exact 2x / 3x shrinks,
# upscales, extreme aspect ratios, odd and even paddings.
IMAGE_SIZES = [
    (300, 451),  # chelsea: odd vertical padding
    (512, 512),  # astronaut: square, 2x upscale
    (400, 600),  # coffee
    (810, 1080),
    (1080, 810),
    (1536, 2048),  # exact 2x shrink: OpenCV switches to its area filter
    (1365, 2048),
    (3072, 2304),  # exact 3x shrink: stays bilinear
    (764, 1024),  # no resize, 4 px padding
    (1024, 1024),
    (1, 3000),
    (3000, 1),
    (7, 9),
    (33, 1000),
    (2000, 3000),
]


def _ultralytics_letterbox():
    from ultralytics.data.augment import LetterBox

    return LetterBox(new_shape=(1024, 1024), auto=True, stride=32)


@pytest.mark.parametrize("size", IMAGE_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_letterbox_geometry_matches_ultralytics(size):
    params = _ultralytics_letterbox().get_params({"img": np.zeros((*size, 3), np.uint8)})
    geo = fs.letterbox_geometry(size, 1024, 32)
    new_w, new_h = params["new_unpad"]
    assert geo.resized_size == (new_h, new_w)
    assert (geo.top, geo.left) == (params["top"], params["left"])
    assert geo.input_size == (new_h + params["top"] + params["bottom"], new_w + params["left"] + params["right"])
    assert geo.input_size[0] % 32 == 0 and geo.input_size[1] % 32 == 0


RESIZES = [
    # (in_h, in_w, out_h, out_w)
    (810, 1080, 768, 1024),
    (300, 451, 681, 1024),
    (1536, 2048, 768, 1024),  # 2x: area path
    (1536, 2048, 768, 1023),  # almost 2x: linear path
    (3072, 2304, 1024, 768),  # 3x
    (5, 7, 1024, 1433),  # large upscale
    (1000, 1, 1024, 1),
    (1, 1000, 1, 1024),
    (2, 2, 1, 1),
    (100, 37, 1024, 379),  # row width not a multiple of the SIMD width
    (773, 107, 1024, 142),
    (2127, 1594, 1024, 767),
]


@pytest.mark.parametrize("shape", RESIZES, ids=lambda s: "{}x{}->{}x{}".format(*s))
def test_resize_linear_is_bit_exact_with_cv2(shape):
    in_h, in_w, out_h, out_w = shape
    image = np.random.default_rng(sum(shape)).integers(0, 256, (in_h, in_w, 3), dtype=np.uint8)
    expected = cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(fs.resize_linear(image, out_h, out_w), expected)


def test_resize_linear_is_bit_exact_with_cv2_on_random_shapes():
    rng = np.random.default_rng(7)
    mismatches = []
    for _ in range(60):
        in_h, in_w = (int(v) for v in rng.integers(1, 1400, 2))
        out_h, out_w = (int(v) for v in rng.integers(1, 1100, 2))
        image = rng.integers(0, 256, (in_h, in_w, 3), dtype=np.uint8)
        expected = cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        got = fs.resize_linear(image, out_h, out_w)
        if not np.array_equal(got, expected):
            mismatches.append(((in_h, in_w, out_h, out_w), int(np.abs(got.astype(int) - expected).max())))
    assert not mismatches, f"resize differs from cv2 (shape, max |diff|): {mismatches}"


@pytest.mark.parametrize("size", IMAGE_SIZES[:9], ids=lambda s: f"{s[0]}x{s[1]}")
def test_letterbox_and_preprocess_match_ultralytics(size):
    rgb = np.random.default_rng(size[0] * 7 + size[1]).integers(0, 256, (*size, 3), dtype=np.uint8)
    bgr = np.ascontiguousarray(rgb[..., ::-1])  # ultralytics reads numpy images as BGR
    expected = _ultralytics_letterbox()(image=bgr)
    canvas, geo = fs.letterbox(rgb)
    np.testing.assert_array_equal(canvas, expected[..., ::-1])
    # BasePredictor.preprocess: HWC BGR uint8 -> BCHW RGB float32 / 255
    reference = torch.from_numpy(expected)[None].permute(0, 3, 1, 2).flip(1).float().div_(255).numpy()
    tensor, _ = fs.preprocess(rgb)
    assert tensor.dtype == np.float32 and tensor.shape == (1, 3, *geo.input_size)
    np.testing.assert_array_equal(tensor, reference)


def test_letterbox_rejects_non_rgb_uint8():
    with pytest.raises(ValueError, match=r"RGB uint8 \(H, W, 3\), got float32"):
        fs.letterbox(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match=r"got uint8 \(10, 10\)"):
        fs.letterbox(np.zeros((10, 10), np.uint8))


# ------------------------------------------------------------------------------------------------
# NMS
# ------------------------------------------------------------------------------------------------


def _random_boxes(rng, n, extent=200.0):
    xy = rng.uniform(0, extent, (n, 2))
    wh = rng.uniform(1, extent / 3, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


@pytest.mark.parametrize("n", [0, 1, 7, 300, 1500])
@pytest.mark.parametrize("iou", [0.3, 0.5, 0.7, 0.9])
def test_nms_matches_torchvision(n, iou):
    rng = np.random.default_rng(n)
    boxes = _random_boxes(rng, n)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    expected = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou).numpy()
    np.testing.assert_array_equal(fs.nms(boxes, scores, iou), expected)


def test_nms_ties_keep_input_order_as_torchvision():
    rng = np.random.default_rng(3)
    for _ in range(50):
        n = int(rng.integers(2, 300))
        boxes = _random_boxes(rng, n, extent=80.0)
        scores = rng.choice(np.array([0.5, 0.6, 0.7], np.float32), n)
        expected = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).numpy()
        np.testing.assert_array_equal(fs.nms(boxes, scores, 0.5), expected)


def _random_prediction(rng, in_h, in_w, n_above, n_coef=32, conf=0.4):
    anchors = sum((in_h // s) * (in_w // s) for s in (8, 16, 32))
    pred = np.zeros((1, 5 + n_coef, anchors), np.float32)
    pred[0, 0] = rng.uniform(0, in_w, anchors)
    pred[0, 1] = rng.uniform(0, in_h, anchors)
    pred[0, 2] = rng.uniform(4, in_w, anchors)
    pred[0, 3] = rng.uniform(4, in_h, anchors)
    scores = rng.uniform(0, conf, anchors)
    above = rng.choice(anchors, n_above, replace=False)
    scores[above] = rng.uniform(conf, 1, n_above)
    scores[above[:3]] = np.float32(conf)  # exactly at the threshold (float32): not kept
    scores[above[3:6]] = np.nextafter(np.float32(conf), np.float32(1))  # just above: kept
    pred[0, 4] = scores
    pred[0, 5:] = rng.standard_normal((n_coef, anchors))
    return pred


@pytest.mark.parametrize(
    "in_size, n_above, conf, iou",
    [
        ((1024, 1024), 50, 0.4, 0.9),
        ((704, 1024), 400, 0.4, 0.9),
        ((448, 1024), 1200, 0.25, 0.7),
        ((64, 96), 0, 0.4, 0.9),
    ],
)
def test_non_max_suppression_matches_ultralytics(in_size, n_above, conf, iou):
    from ultralytics.utils.nms import non_max_suppression

    pred = _random_prediction(np.random.default_rng(n_above), *in_size, n_above, conf=conf)
    ref = non_max_suppression(torch.from_numpy(pred.copy()), conf, iou, agnostic=True, max_det=300, nc=1)[0].numpy()
    found = fs.non_max_suppression(pred, conf, iou, max_det=300)
    assert len(found) == len(ref) <= 300
    if n_above > 300:
        assert len(found) == 300  # max_det cuts
    np.testing.assert_array_equal(found.boxes, ref[:, :4])
    np.testing.assert_array_equal(found.scores, ref[:, 4])
    np.testing.assert_array_equal(found.coefficients, ref[:, 6:])


# ------------------------------------------------------------------------------------------------
# Boxes
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", IMAGE_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_scale_boxes_matches_ultralytics(size):
    from ultralytics.utils.ops import scale_boxes

    geo = fs.letterbox_geometry(size)
    in_h, in_w = geo.input_size
    rng = np.random.default_rng(size[0] + size[1])
    boxes = _random_boxes(rng, 200, extent=max(in_h, in_w)) - 20  # some outside: clipped
    expected = scale_boxes((in_h, in_w), torch.from_numpy(boxes.copy()), (*size, 3)).numpy()
    np.testing.assert_array_equal(fs.scale_boxes(boxes, geo.input_size, size), expected)


@pytest.mark.parametrize("size", [(300, 451), (1080, 810), (40, 50)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_border_rule_matches_fastsam(size):
    from ultralytics.models.fastsam.utils import adjust_bboxes_to_image_border
    from ultralytics.utils.metrics import box_iou

    h, w = size
    rng = np.random.default_rng(h)
    near = np.stack(
        [rng.uniform(0, 30, 100), rng.uniform(0, 30, 100), w - rng.uniform(0, 30, 100), h - rng.uniform(0, 30, 100)], 1
    )
    boxes = np.concatenate([near, np.clip(_random_boxes(rng, 100, extent=max(h, w)), 0, [w, h, w, h])]).astype(
        np.float32
    )
    # FastSAMPredictor.postprocess, on the result's box view (so the border snap sticks to every box)
    ref = torch.from_numpy(boxes.copy())
    full = torch.tensor([0, 0, w, h], dtype=torch.float32)
    adjusted = adjust_bboxes_to_image_border(ref, (h, w))
    idx = torch.nonzero(box_iou(full[None], adjusted)[0] > 0.9).flatten()
    ref[idx] = full
    got = fs.snap_boxes_to_image(boxes, size)
    np.testing.assert_array_equal(got, ref.numpy())
    assert (got == [0, 0, w, h]).all(axis=1).sum() >= 1  # the table exercises the full-box rule


# ------------------------------------------------------------------------------------------------
# Prompt rules on hand-made masks (ultralytics FastSAMPredictor.prompt)
# ------------------------------------------------------------------------------------------------

H, W = 24, 32


def _hand_masks() -> np.ndarray:
    masks = np.zeros((5, H, W), dtype=bool)
    masks[0, 2:20, 2:30] = True  # large
    masks[1, 4:10, 4:12] = True  # inside 0
    masks[2, 12:22, 16:28] = True  # overlaps 0
    masks[3, 0:3, 0:3] = True  # corner
    masks[4, 6:8, 6:8] = True  # tiny, inside 0 and 1
    return masks


POINT_CASES = [
    ([[5, 5]], [1]),
    ([[6.9, 6.2]], [1]),  # truncated to (6, 6): masks 0, 1, 4
    ([[1.99999999, 2.0]], [1]),  # truncated from the given value to (1, 2): mask 3; a float32 cast made it (2, 2)
    ([[6, 6], [5, 5]], [1, 0]),
    ([[20, 15], [7, 7]], [1, 0]),
    ([[7, 7], [25, 20]], [0, 0]),  # all negative: every mask without a negative point
    ([[31, 23]], [0]),
    ([[32, 24]], [1]),  # on the far border: clipped to (31, 23)
    ([[1, 1], [20, 15], [29, 19]], [1, 1, 1]),
    ([[0, 0]], [1]),
]

BOX_CASES = [
    [[4, 4, 12, 10]],  # exactly mask 1
    [[0, 0, 32, 24]],  # whole image
    [[0, 0, 3, 3]],  # mask 3
    [[16, 12, 28, 22], [4.7, 4.2, 12.9, 10.1]],  # int32 truncation
    [[0, 0, 0.99999999, 24]],  # x2 truncated to 0 as ultralytics does (a float32 cast made it 1: another mask)
    [[30, 0, 32, 2]],  # touches nothing: IoU 0 for all -> the first mask
    [[6, 6, 6, 10]],  # zero width
    [[6, 6, 8, 8], [6, 6, 8, 8]],  # the same box twice: one mask
]


def _ultralytics_prompt(masks, boxes=None, points=None, labels=None):
    from ultralytics.engine.results import Results
    from ultralytics.models.fastsam import FastSAMPredictor

    n = len(masks)
    det = torch.zeros((n, 6))
    det[:, 4] = torch.linspace(0.9, 0.5, n)
    result = Results(
        np.zeros((H, W, 3), np.uint8),
        path="hand.png",
        names={0: "object"},
        boxes=det,
        masks=torch.from_numpy(masks.astype(np.uint8)),
    )
    predictor = FastSAMPredictor(overrides={"verbose": False})
    out = predictor.prompt([result], bboxes=boxes, points=points, labels=labels)[0]
    # selected masks -> their indices (masks are distinct)
    chosen = out.masks.data.numpy().astype(bool) if len(out) else np.zeros((0, H, W), bool)
    return [int(np.flatnonzero((masks == m).all(axis=(1, 2)))[0]) for m in chosen]


@pytest.mark.parametrize("points, labels", POINT_CASES)
def test_point_rule_matches_ultralytics(points, labels):
    masks = _hand_masks()
    xy = fs.point_pixels(validate_prompts((H, W), points=points, labels=labels).points, (H, W))
    values = masks[:, xy[:, 1], xy[:, 0]]
    chosen = np.flatnonzero(fs.select_by_points(values, np.asarray(labels)))
    assert chosen.tolist() == _ultralytics_prompt(masks, points=points, labels=labels)


@pytest.mark.parametrize("boxes", BOX_CASES)
def test_box_rule_matches_ultralytics(boxes):
    masks = _hand_masks()
    b = fs.box_pixels(validate_prompts((H, W), boxes=boxes).boxes, (H, W))
    inside = np.array([[m[y1:y2, x1:x2].sum() for m in masks] for x1, y1, x2, y2 in b], dtype=np.int64)
    winners = fs.select_by_boxes(inside, masks.sum(axis=(1, 2)).astype(np.int64), b)
    assert sorted(set(winners.tolist())) == _ultralytics_prompt(masks, boxes=boxes)


# ------------------------------------------------------------------------------------------------
# Whole post-processing on synthetic network outputs (FastSAMPredictor.postprocess)
# ------------------------------------------------------------------------------------------------


def _smooth_protos(rng, in_h, in_w, n=32):
    coarse = torch.from_numpy(rng.standard_normal((1, n, 6, 8)).astype(np.float32))
    return torch.nn.functional.interpolate(coarse, size=(in_h // 4, in_w // 4), mode="bicubic").numpy()


class FakeSession:
    """Returns fixed network outputs; checks that it was fed the letterboxed input size."""

    def __init__(self, detections, protos):
        self.detections, self.protos = detections, protos
        self.calls = 0

    def run(self, feeds):
        self.calls += 1
        assert feeds["images"].shape == (1, 3, self.protos.shape[2] * 4, self.protos.shape[3] * 4)
        return {"detections": self.detections, "protos": self.protos}


def _fake_folder(name="fastsam_s"):
    return types.SimpleNamespace(spec=get_spec(name), name=name, manifest={}, path=None)


def _ultralytics_postprocess(det, protos, image_size, prompts, conf=0.4, iou=0.9):
    from ultralytics.models.fastsam import FastSAMPredictor

    predictor = FastSAMPredictor(overrides={"conf": conf, "iou": iou, "retina_masks": True, "verbose": False})
    predictor.model = types.SimpleNamespace(names={0: "object"}, end2end=False)
    predictor.batch = [["synthetic.jpg"]]
    predictor.set_prompts(prompts)
    img = torch.zeros((1, 3, protos.shape[2] * 4, protos.shape[3] * 4))
    orig = np.zeros((*image_size, 3), np.uint8)
    preds = (torch.from_numpy(det.copy()), torch.from_numpy(protos.copy()))
    return predictor, predictor.postprocess(preds, img, [orig])[0]


# image sizes covering the pre-upsampling factor f = 4 (odd padding), 2 (padding 4 mod 8), 1 (none),
# downscaled and upscaled masks
SYNTHETIC_SIZES = [(300, 451), (764, 1024), (512, 512), (1500, 2000), (333, 777)]


@pytest.fixture(scope="module", params=SYNTHETIC_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def synthetic(request):
    """Synthetic network outputs, our engine on them, and ultralytics' un-prompted result and predictor."""
    size = request.param
    rng = np.random.default_rng(size[0] * 31 + size[1])
    in_h, in_w = fs.letterbox_geometry(size).input_size
    det = _random_prediction(rng, in_h, in_w, 150)
    # boxes of all sizes, some hugging the border, some hanging out of the image
    det[0, 2] = rng.uniform(4, in_w, det.shape[2]) ** rng.uniform(0.6, 1.0, det.shape[2])
    det[0, 3] = rng.uniform(4, in_h, det.shape[2]) ** rng.uniform(0.6, 1.0, det.shape[2])
    protos = _smooth_protos(rng, in_h, in_w)
    protos -= np.float32(0.6)  # many detections' masks are empty, some nearly so
    engine = fs.FastSamEngine(_fake_folder(), {"network": FakeSession(det, protos)})
    engine.set_image(np.zeros((*size, 3), np.uint8))
    predictor, reference = _ultralytics_postprocess(det, protos, size, {})
    return size, det, engine, predictor, reference


def _assert_same(result, ref, size, what):
    masks = ref.masks.data.numpy().astype(bool) if len(ref) else np.zeros((0, *size), bool)
    assert len(result) == len(ref), f"{what}: {len(result)} masks, ultralytics {len(ref)}"
    np.testing.assert_array_equal(result.scores, ref.boxes.conf.numpy(), err_msg=what)
    np.testing.assert_array_equal(result.boxes, ref.boxes.xyxy.numpy(), err_msg=what)
    differing = int((result.masks != masks).sum())
    assert differing <= 1e-5 * max(masks.sum(), 1), f"{what}: {differing} pixels differ from ultralytics"


def test_everything_matches_ultralytics(synthetic):
    size, det, engine, _, ref = synthetic
    result = engine.everything()
    _assert_same(result, ref, size, "everything")
    found = fs.non_max_suppression(det)
    assert 0 < len(result) < len(found), "the table should exercise the empty-mask rule"


def _prompt_cases(size):
    h, w = size
    rng = np.random.default_rng(h + w)
    pts = np.round(rng.uniform([0, 0], [w, h], (4, 2))).astype(np.float32)
    return [
        {"points": pts[:1], "labels": np.array([1])},
        {"points": pts, "labels": np.array([1, 0, 1, 1])},
        {"points": pts[:2], "labels": np.array([0, 0])},
        {"points": np.array([[w, h], [0, 0]], np.float32), "labels": np.array([1, 1])},
        {"boxes": np.array([[0.1 * w, 0.2 * h, 0.6 * w, 0.9 * h]], np.float32)},
        {"boxes": np.array([[0, 0, w / 3, h / 3], [w / 2, h / 2, w, h], [10, 10, 12, 12], [0, 0, w, h]], np.float32)},
        {"boxes": np.array([[0.2 * w, 0.2 * h, 0.2 * w, 0.5 * h]], np.float32)},  # zero width
        {"points": pts[:1], "labels": np.array([1]), "boxes": np.array([[0, 0, w / 2, h / 2]], np.float32)},
    ]


def test_prompted_postprocess_equals_prompt_on_unprompted_results():
    """The prompt tests call ``predictor.prompt`` on one un-prompted result; check that shortcut once."""
    size = (300, 451)
    rng = np.random.default_rng(5)
    in_h, in_w = fs.letterbox_geometry(size).input_size
    det, protos = _random_prediction(rng, in_h, in_w, 60), _smooth_protos(rng, in_h, in_w)
    prompts = {"points": [[200, 100], [50, 60]], "labels": [1, 0], "bboxes": [[10, 10, 200, 250]]}
    _, direct = _ultralytics_postprocess(det, protos, size, prompts)
    predictor, unprompted = _ultralytics_postprocess(det, protos, size, {})
    shortcut = predictor.prompt([unprompted], **prompts)[0]
    assert len(direct) == len(shortcut) > 0
    np.testing.assert_array_equal(direct.masks.data.numpy(), shortcut.masks.data.numpy())
    np.testing.assert_array_equal(direct.boxes.data.numpy(), shortcut.boxes.data.numpy())


@pytest.mark.parametrize("case", range(8))
def test_prompts_match_ultralytics(synthetic, case):
    size, _, engine, predictor, unprompted = synthetic
    prompt = _prompt_cases(size)[case]
    points, labels, boxes = prompt.get("points"), prompt.get("labels"), prompt.get("boxes")
    # FastSAMPredictor.postprocess ends with self.prompt(results, ...) on the un-prompted results
    ref = predictor.prompt(
        [unprompted],
        bboxes=None if boxes is None else boxes.tolist(),
        points=None if points is None else points.tolist(),
        labels=None if labels is None else labels.tolist(),
    )[0]
    result = engine.predict(points, labels, boxes, None, True)
    _assert_same(result, ref, size, f"prompt {prompt}")
    assert result.low_res_logits is None and (result.prompt_index == 0).all()


def test_low_resolution_decisions_equal_full_evaluation(synthetic):
    """Emptiness and point values decided from the box crop / single pixels equal the full masks."""
    size, _, engine, _, _ = synthetic
    masks = engine._require_state().masks
    full = np.stack([masks.full_mask(i) for i in range(len(masks))])
    np.testing.assert_array_equal(masks.nonempty(), full.any(axis=(1, 2)))
    rng = np.random.default_rng(1)
    xy = np.stack([rng.integers(0, size[1], 50), rng.integers(0, size[0], 50)], 1)
    np.testing.assert_array_equal(masks.values_at_points(np.arange(len(masks)), xy), full[:, xy[:, 1], xy[:, 0]])


# ------------------------------------------------------------------------------------------------
# Engine contract
# ------------------------------------------------------------------------------------------------


@pytest.fixture()
def engine():
    rng = np.random.default_rng(0)
    det = _random_prediction(rng, 704, 1024, 80)
    protos = _smooth_protos(rng, 704, 1024)
    eng = fs.FastSamEngine(_fake_folder(), {"network": FakeSession(det, protos)}, conf=0.4, iou=0.9)
    eng.set_image(np.zeros((300, 451, 3), np.uint8))
    return eng


def test_engine_rejects_unsupported_prompts(engine):
    point = np.array([[10, 10]], np.float32)
    with pytest.raises(ValueError, match="mask_input"):
        engine.predict(point, np.array([1]), None, np.zeros((1, 256, 256), np.float32), True)
    with pytest.raises(ValueError, match="points or boxes; got neither"):
        engine.predict(None, None, None, None, True)
    with pytest.raises(ValueError, match="text prompts are not supported"):
        engine.predict(point, np.array([1]), None, None, True, texts="a cat")


def test_engine_needs_an_image_and_rgb_uint8():
    det = _random_prediction(np.random.default_rng(0), 64, 64, 5)
    eng = fs.FastSamEngine(_fake_folder(), {"network": FakeSession(det, np.zeros((1, 32, 16, 16), np.float32))})
    with pytest.raises(RuntimeError, match="no image is set"):
        eng.predict(np.array([[1, 1]], np.float32), np.array([1]), None, None, True)
    with pytest.raises(ValueError, match=r"RGB uint8 array \(H, W, 3\), got float64"):
        eng.set_image(np.zeros((10, 10, 3)))
    with pytest.raises(ValueError, match="conf must be in"):
        fs.FastSamEngine(_fake_folder(), {"network": None}, conf=1.5)
    with pytest.raises(ValueError, match="needs a session for graph 'network'"):
        fs.FastSamEngine(_fake_folder(), {"encoder": None})


def test_image_embedding_round_trip(engine):
    prompt = (np.array([[200, 150]], np.float32), np.array([1]), np.array([[50, 50, 300, 250]], np.float32))
    before = engine.predict(*prompt, None, True)
    embedding = engine.get_image_embedding()
    assert embedding.original_size == (300, 451) and embedding.input_size == (704, 1024)
    other = fs.FastSamEngine(_fake_folder(), {"network": FakeSession(None, None)})
    other.set_image_embedding(embedding)  # no network run
    after = other.predict(*prompt, None, True)
    np.testing.assert_array_equal(after.masks, before.masks)
    np.testing.assert_array_equal(after.scores, before.scores)
    with pytest.raises(ValueError, match="made by 'fastsam_s', this engine runs 'fastsam_x'"):
        fs.FastSamEngine(_fake_folder("fastsam_x"), {"network": None}).set_image_embedding(embedding)
