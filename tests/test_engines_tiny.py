"""The Predictor end to end on tiny exported graphs (fast tier): both families, both backends.

The tiny graphs (:mod:`tiny_models`) compute answers known in closed form: SAM masks are discs around
the prompt's target point, FastSAM has a fixed table of detections whose masks are discs, half planes
or whole boxes. So every step between the user's prompt and the returned masks (image loading and
preprocessing, prompt validation and layout, the graphs' feeds, SAM's upscaling, FastSAM's NMS,
letterbox, mask assembly, point and box rules, border rule, everything mode and its records) is
checked against numbers computed here by hand, not against the runtime itself.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import (
    DETECTION,
    FASTSAM_FEATURE_WEIGHT,
    RADII,
    SAM_ENCODER_BIAS,
    SAM_ENCODER_WEIGHT,
    WEIGHTS_LABEL,
    fastsam_detections,
    sam_iou,
    sam_low_res_logits,
)

import fastseg
from fastseg.records import MaskRecords, segmentation_to_mask

BACKENDS = ("openvino", "onnxruntime")
SAM_MEAN = np.array([123.675, 116.28, 103.53])
SAM_STD = np.array([58.395, 57.12, 57.375])


@pytest.fixture(scope="module")
def predictors(tiny_sam_folder: Path, tiny_fastsam_folder: Path):  # noqa: ANN201
    """Factory ``predictors(family, backend, **options)``: shared Predictors of the tiny folders."""
    folders = {"sam": tiny_sam_folder, "fastsam": tiny_fastsam_folder}
    made: dict[tuple, fastseg.Predictor] = {}

    def make(family: str, backend: str = "openvino", **options: float) -> fastseg.Predictor:
        key = (family, backend, tuple(sorted(options.items())))
        if key not in made:
            made[key] = fastseg.Predictor(folders[family], backend=backend, cache_dir=False, **options)
        return made[key]

    return make


# --------------------------------------------------------------------------------------------------
# Expected answers, computed by hand


def sam_resized(size: tuple[int, int]) -> tuple[int, int]:
    """SAM's resized size: longest side 1024, each side rounded half up (chelsea: 681 x 1024)."""
    h, w = size
    s = 1024 / max(h, w)
    return int(h * s + 0.5), int(w * s + 0.5)


def sam_to_input(xy: tuple[float, float], size: tuple[int, int]) -> tuple[float, float]:
    """Original pixels -> input-frame pixels (``x * new_w / w``, ``y * new_h / h``)."""
    new_h, new_w = sam_resized(size)
    return xy[0] * new_w / size[1], xy[1] * new_h / size[0]


def assert_disc(mask: np.ndarray, centre: tuple[float, float], radius: float, band: float = 1.5) -> None:
    """``mask`` (original resolution) is the disc of ``radius`` input pixels around ``centre``
    (original pixels), except within ``band`` input pixels of its circle.

    A pixel ``(x, y)`` covers ``[x, x + 1)``: its centre ``x + 0.5`` lies ``(x + 0.5 - cx) * new_w / w``
    input pixels from the centre along x.
    """
    h, w = mask.shape
    new_h, new_w = sam_resized((h, w))
    dx = (np.arange(w) + 0.5 - centre[0]) * new_w / w
    dy = (np.arange(h) + 0.5 - centre[1]) * new_h / h
    d = np.sqrt(dx[None, :] ** 2 + dy[:, None] ** 2)
    inside, outside = d < radius - band, d > radius + band
    assert inside.any()
    assert mask[inside].all(), f"{np.count_nonzero(~mask[inside])} pixels missing inside the disc"
    assert not mask[outside].any(), f"{np.count_nonzero(mask[outside])} pixels set outside the disc"


# FastSAM letterbox of chelsea (300 x 451), by hand: gain 1024/451, resized 681 x 1024, padding
# (1024 - 681) % 32 = 23 rows split 11 above / 12 below: input 704 x 1024.
CHELSEA_LETTERBOX = {"top": 11, "left": 0, "resized": (681, 1024), "input": (704, 1024)}


def fastsam_to_original(xy_in: tuple[float, float]) -> tuple[float, float]:
    """Letterboxed-input pixels -> chelsea's pixels."""
    g = CHELSEA_LETTERBOX
    return ((xy_in[0] - g["left"]) * 451 / g["resized"][1], (xy_in[1] - g["top"]) * 300 / g["resized"][0])


def fastsam_box(name: str) -> np.ndarray:
    """A detection's box in chelsea's pixels (``scale_boxes``), before the border rule."""
    x1, y1, x2, y2 = DETECTION[name].xyxy
    (a, b), (c, d) = fastsam_to_original((x1, y1)), fastsam_to_original((x2, y2))
    return np.clip(np.array([a, b, c, d]), 0, [451, 300, 451, 300])


def fastsam_expected(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Detection ``name``'s mask on chelsea and where it may differ (within 1.5 input pixels of its
    logit's zero line)."""
    det = DETECTION[name]
    g = CHELSEA_LETTERBOX
    x_in = (np.arange(451) + 0.5) * g["resized"][1] / 451 + g["left"]
    y_in = (np.arange(300) + 0.5) * g["resized"][0] / 300 + g["top"]
    logit = det.logit(x_in[None, :], y_in[:, None])
    slope = {"disc": 2 * det.mask[-1], "left_of": 1.0}.get(det.mask[0], 0.0)
    x1, y1, x2, y2 = fastsam_box(name)
    cols, rows = np.arange(451), np.arange(300)
    crop = ((cols >= x1) & (cols < x2))[None, :] & ((rows >= y1) & (rows < y2))[:, None]
    # Pixels c with x1 <= c < x2 are kept: only an edge within float32 rounding of an integer is unsure.
    near_edge = (np.minimum(abs(cols - x1), abs(cols - x2)) < 1e-3)[None, :] | (
        np.minimum(abs(rows - y1), abs(rows - y2)) < 1e-3
    )[:, None]
    uncertain = (np.abs(logit) < 1.5 * slope) | near_edge
    return (logit > 0) & crop, uncertain


def assert_fastsam_mask(mask: np.ndarray, name: str) -> None:
    expected, uncertain = fastsam_expected(name)
    wrong = (mask != expected) & ~uncertain
    assert not wrong.any(), f"detection {name}: {np.count_nonzero(wrong)} pixels differ from the expected mask"
    assert np.count_nonzero(uncertain & expected) < 0.2 * np.count_nonzero(expected)  # the check has teeth


# --------------------------------------------------------------------------------------------------
# SAM family


@pytest.mark.parametrize("backend", BACKENDS)
def test_sam_encoder_sees_the_resized_normalised_padded_image(predictors, photos, backend) -> None:
    """The encoder is 16 x 16 mean pooling + a 1 x 1 convolution: its output must be that of the
    photo resized by Pillow (bilinear) to 681 x 1024, normalised, and zero-padded bottom and right."""
    image = photos["chelsea"]
    predictor = predictors("sam", backend)
    predictor.set_image(image)
    embedding = predictor.get_image_embedding()
    assert embedding.original_size == (300, 451) and embedding.input_size == (681, 1024)
    assert embedding.model == "mobile_sam" and embedding.embedding.shape == (1, 256, 64, 64)
    resized = np.asarray(Image.fromarray(image).resize((1024, 681), Image.BILINEAR), dtype=np.float64)
    normalised = (resized - SAM_MEAN) / SAM_STD
    full_rows = 681 // 16  # rows of 16 x 16 blocks entirely inside the image
    blocks = normalised[: full_rows * 16].reshape(full_rows, 16, 64, 16, 3).mean(axis=(1, 3))  # (42, 64, 3)
    expected = np.einsum("ck,ijk->cij", SAM_ENCODER_WEIGHT, blocks) + SAM_ENCODER_BIAS[:, None, None]
    np.testing.assert_allclose(embedding.embedding[0, :, :full_rows], expected, atol=2e-4)
    # Blocks 43.. are padding only: zero after normalising, so the output is the bias.
    padding = embedding.embedding[0, :, full_rows + 1 :]
    np.testing.assert_allclose(padding, np.broadcast_to(SAM_ENCODER_BIAS[:, None, None], padding.shape), atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sam_point_prompt_gives_discs_around_the_click(predictors, photos, backend) -> None:
    predictor = predictors("sam", backend)
    predictor.set_image(photos["chelsea"])
    click = (225.0, 150.0)
    result = predictor.predict(points=[click], labels=[1])
    assert result.masks.shape == (3, 300, 451) and result.masks.dtype == np.bool_
    # SAM adds one padding point (label -1) to a prompt without a box; the tiny decoder adds 0.01 per one.
    np.testing.assert_allclose(result.scores, sam_iou(n_padding=1)[1:], rtol=1e-6)
    np.testing.assert_array_equal(result.prompt_index, [0, 0, 0])
    info = {"model": "mobile_sam", "weights": WEIGHTS_LABEL, "backend": backend, "precision": "f32"}
    assert info.items() <= result.info.items()
    # The decoder's logits, exactly: the click went to the input frame as x * 1024/451, y * 681/300.
    expected_logits = sam_low_res_logits(sam_to_input(click, (300, 451)))[1:]
    np.testing.assert_allclose(result.low_res_logits, expected_logits, rtol=0, atol=0.5)
    for mask, radius in zip(result.masks, RADII[1:]):
        assert mask[150, 225]
        assert_disc(mask, click, radius)
    # Boxes are the masks' bounding boxes: the discs' (radius / scale around the click, in pixels).
    for box, radius in zip(result.boxes, RADII[1:]):
        rx, ry = radius * 451 / 1024, radius * 300 / 681
        np.testing.assert_allclose(box, [225 - rx, 150 - ry, 225 + rx, 150 + ry], atol=1.5)

    single = predictor.predict(points=[click], multimask=False)
    assert single.masks.shape == (1, 300, 451)
    np.testing.assert_allclose(single.scores, sam_iou(n_padding=1)[:1], rtol=1e-6)
    assert_disc(single.masks[0], click, RADII[0])
    best = result.best()
    assert best.scores.tolist() == [pytest.approx(0.91)] and np.array_equal(best.masks[0], result.masks[1])


def test_sam_labels_choose_the_target(predictors, photos) -> None:
    """The tiny decoder centres its discs on the first foreground point, else the first point: the
    labels must reach the graph in the order given."""
    predictor = predictors("sam")
    predictor.set_image(photos["chelsea"])
    a, b = (100.0, 80.0), (300.0, 200.0)
    for labels, centre in (([1, 1], a), ([0, 1], b), ([1, 0], a), ([0, 0], a)):
        result = predictor.predict(points=[a, b], labels=labels, multimask=False)
        assert_disc(result.masks[0], centre, RADII[0])
    default = predictor.predict(points=np.array([b, a]), multimask=False)  # labels default to foreground
    assert_disc(default.masks[0], b, RADII[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_sam_boxes_one_prompt_set_each(predictors, photos, backend) -> None:
    """A box becomes its two corners (labels 2, 3; no padding point): the tiny decoder's target is the
    top-left corner. Several boxes run as one batch, one prompt set per box, in order."""
    predictor = predictors("sam", backend)
    predictor.set_image(photos["chelsea"])
    boxes = np.array([[100, 50, 300, 250], [200.5, 120, 400, 280]])
    one = predictor.predict(boxes=boxes[0])
    assert one.masks.shape == (3, 300, 451)
    np.testing.assert_allclose(one.scores, sam_iou(n_padding=0)[1:], rtol=1e-6)  # no padding point with a box
    for mask, radius in zip(one.masks, RADII[1:]):
        assert_disc(mask, (100, 50), radius)
    both = predictor.predict(boxes=boxes, multimask=False)
    assert both.masks.shape == (2, 300, 451)
    np.testing.assert_array_equal(both.prompt_index, [0, 1])
    assert_disc(both.masks[0], (100, 50), RADII[0])
    assert_disc(both.masks[1], (200.5, 120), RADII[0])
    parts = predictor.predict(boxes=boxes).by_prompt()
    assert [len(p) for p in parts] == [3, 3]
    np.testing.assert_array_equal(parts[0].masks, one.masks)
    # Points come first and apply to every box: a foreground point is the target of both sets.
    with_point = predictor.predict(points=[[330, 40]], boxes=boxes, multimask=False)
    np.testing.assert_allclose(with_point.scores, sam_iou(n_padding=0)[[0, 0]], rtol=1e-6)
    for mask in with_point.masks:
        assert_disc(mask, (330, 40), RADII[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_sam_mask_input_round_trip(predictors, photos, backend) -> None:
    """``low_res_logits`` passed back as ``mask_input`` reach the general decoder, which adds them to
    its logits: disc r=40 plus disc r=160 is positive within sqrt((40^2 + 160^2) / 2) = 116.6 px."""
    predictor = predictors("sam", backend)
    predictor.set_image(photos["chelsea"])
    click = (225.0, 150.0)
    first = predictor.predict(points=[click])
    previous = first.low_res_logits[2]  # decoder mask 3: radius 160
    again = predictor.predict(points=[click], mask_input=previous, multimask=False)
    target = sam_to_input(click, (300, 451))
    np.testing.assert_allclose(again.low_res_logits[0], sam_low_res_logits(target)[0] + previous, atol=1.0)
    assert_disc(again.masks[0], click, np.sqrt((RADII[0] ** 2 + RADII[3] ** 2) / 2))
    np.testing.assert_allclose(again.scores, sam_iou(n_padding=1)[:1], rtol=1e-6)
    for shape in ((1, 256, 256), (1, 1, 256, 256)):  # the other accepted layouts
        same = predictor.predict(points=[click], mask_input=previous.reshape(shape), multimask=False)
        np.testing.assert_array_equal(same.masks, again.masks)
    # One mask input per box, or one shared by all boxes.
    boxes = [[100, 50, 300, 250], [200, 120, 400, 280]]
    shared = predictor.predict(boxes=boxes, mask_input=previous, multimask=False)
    per_box = predictor.predict(boxes=boxes, mask_input=np.stack([previous, np.zeros_like(previous)]), multimask=False)
    np.testing.assert_array_equal(per_box.masks[0], shared.masks[0])
    assert_disc(per_box.masks[1], (200, 120), RADII[0])  # a zero mask input changes nothing


def test_sam_predict_matches_across_backends(predictors, photos) -> None:
    results = []
    for backend in BACKENDS:
        predictor = predictors("sam", backend)
        predictor.set_image(photos["astronaut"])
        results.append(predictor.predict(points=[[100, 400], [300, 50]], labels=[0, 1], boxes=[10, 20, 500, 480]))
    np.testing.assert_array_equal(results[0].masks, results[1].masks)
    assert_disc(results[0].masks[1], (300, 50), RADII[2])


def test_sam_session_wrapper_sees_every_graph_and_run(tiny_sam_folder, photos) -> None:
    runs: list[str] = []
    wrapped: list[str] = []

    class Counting:
        def __init__(self, graph: str, session) -> None:  # noqa: ANN001
            self.graph, self.session = graph, session
            self.input_names, self.output_names = session.input_names, session.output_names
            self.backend, self.precision = session.backend, session.precision

        def run(self, feeds):  # noqa: ANN001, ANN201
            runs.append(self.graph)
            return self.session.run(feeds)

    def wrap(graph: str, session):  # noqa: ANN001, ANN202
        wrapped.append(graph)
        return Counting(graph, session)

    predictor = fastseg.Predictor(tiny_sam_folder, backend="onnxruntime", session_wrapper=wrap)
    assert sorted(wrapped) == ["decoder", "decoder_image", "decoder_points", "encoder"]
    predictor.set_image(photos["chelsea"])
    assert runs == ["encoder", "decoder_image"]
    result = predictor.predict(points=[[10, 10]])
    predictor.predict(boxes=[[0, 0, 50, 50], [10, 10, 60, 60]])  # two prompt sets, one batch
    assert runs[2:] == ["decoder_points", "decoder_points"]
    predictor.predict(points=[[10, 10]], mask_input=result.low_res_logits[0])
    assert runs[4:] == ["decoder"]
    predictor.set_image_embedding(predictor.get_image_embedding())
    assert runs[5:] == ["decoder_image"]  # no encoder run


def test_sam_embedding_get_and_set(predictors, photos) -> None:
    predictor = predictors("sam")
    predictor.set_image(photos["coffee"])
    coffee = predictor.get_image_embedding()
    expected = predictor.predict(points=[[300, 200]])
    predictor.set_image(photos["chelsea"])
    assert predictor.image_size == (300, 451)
    predictor.set_image_embedding(coffee)
    assert predictor.image_size == (400, 600)
    got = predictor.predict(points=[[300, 200]])
    np.testing.assert_array_equal(got.masks, expected.masks)
    assert_disc(got.masks[0], (300, 200), RADII[1])


def test_sam_everything_discs_on_the_grid(predictors, photos) -> None:
    """Automatic mask generation on a 4 x 4 grid: of each point's three masks only the radius-120 one
    has predicted IoU > 0.88 (0.91: one padding point); the 16 discs hardly overlap, so box NMS keeps
    them all."""
    predictor = predictors("sam")
    records = predictor.everything(photos["chelsea"], points_per_side=4)
    assert isinstance(records, MaskRecords) and len(records) == 16
    assert records.image_size == (300, 451)
    grid = {((i + 0.5) * 451 / 4, (j + 0.5) * 300 / 4) for i in range(4) for j in range(4)}
    assert {tuple(r["point_coords"][0]) for r in records} == grid  # one mask per grid point
    for record in records:
        assert record["predicted_iou"] == pytest.approx(sam_iou(n_padding=1)[2])
        assert record["stability_score"] > 0.99 and record["crop_box"] == [0, 0, 451, 300]
        mask = segmentation_to_mask(record["segmentation"])
        assert record["area"] == np.count_nonzero(mask)
        ((x, y),) = record["point_coords"]
        assert_disc(mask, (x, y), RADII[2])
        ys, xs = np.nonzero(mask)
        assert record["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
    result = records.result()
    assert result.masks.shape == (16, 300, 451) and result.records is records
    np.testing.assert_allclose(result.scores, 0.91, rtol=1e-6)
    assert result.info["model"] == "mobile_sam" and result.info["weights"] == WEIGHTS_LABEL
    # A stricter predicted-IoU threshold keeps nothing; the image set is reused without an argument.
    assert len(predictor.everything(points_per_side=4, pred_iou_thresh=0.95)) == 0


def _decode_by_hand(counts: list[int], size: tuple[int, int]) -> np.ndarray:
    """Uncompressed COCO RLE: alternating runs of 0 and 1, column by column."""
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(size[1], size[0]).T


def test_records_encode_masks_touching_the_corners(predictors, photos) -> None:
    """Every output mode gives back the same masks, also masks whose first and last pixels are set
    (an uncompressed RLE then starts with a zero-length run of zeros)."""
    from fastseg.records import encode_segmentation

    predictor = predictors("sam")
    predictor.set_image(photos["chelsea"])
    result = predictor.predict(points=[[0, 0], [451, 300]], labels=[1, 0])  # discs around the top-left corner
    corner = predictor.predict(points=[[451, 300]]).masks[0]  # a disc around the bottom-right corner
    masks = [*result.masks, corner, ~corner, np.zeros((300, 451), bool)]
    assert masks[0][0, 0] and masks[3][-1, -1]
    for mask in masks:
        rle = encode_segmentation(mask, "uncompressed_rle")
        assert rle["size"] == [300, 451] and sum(rle["counts"]) == 300 * 451
        assert (rle["counts"][0] == 0) == bool(mask[0, 0])
        np.testing.assert_array_equal(_decode_by_hand(rle["counts"], (300, 451)), mask)
        coco = encode_segmentation(mask, "coco_rle")
        assert coco["size"] == [300, 451] and isinstance(coco["counts"], str)
        for segmentation in (rle, coco, encode_segmentation(mask, "binary_mask")):
            np.testing.assert_array_equal(segmentation_to_mask(segmentation), mask)


# --------------------------------------------------------------------------------------------------
# FastSAM


def test_chelsea_letterbox_is_as_computed_by_hand() -> None:
    from fastseg.fastsam import letterbox_geometry

    geo = letterbox_geometry((300, 451))
    assert (geo.top, geo.left, geo.resized_size, geo.input_size) == (
        CHELSEA_LETTERBOX["top"], CHELSEA_LETTERBOX["left"], CHELSEA_LETTERBOX["resized"], CHELSEA_LETTERBOX["input"]
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_fastsam_network_sees_the_letterboxed_image(predictors, photos, backend) -> None:
    """The network's raw outputs, kept in the image embedding: the fixed detections, and prototypes
    whose first channels are the cell centres and whose image features see 114-grey padding above
    (11 rows) and below (12 rows) chelsea, and the photo in between."""
    predictor = predictors("fastsam", backend)
    image = photos["chelsea"]
    predictor.set_image(image)
    emb = predictor.get_image_embedding()
    assert emb.model == "fastsam_s" and emb.original_size == (300, 451) and emb.input_size == (704, 1024)
    np.testing.assert_array_equal(emb.detections, fastsam_detections())
    protos = emb.protos[0]
    assert protos.shape == (32, 176, 256)
    cx = (np.arange(256) + 0.5) * 4
    cy = (np.arange(176) + 0.5) * 4
    np.testing.assert_array_equal(protos[0], 1)
    np.testing.assert_array_equal(protos[1], np.broadcast_to(cx, (176, 256)))
    np.testing.assert_array_equal(protos[2], np.broadcast_to(cy[:, None], (176, 256)))
    np.testing.assert_allclose(protos[3], cx[None] ** 2 + cy[:, None] ** 2, rtol=1e-6)
    grey = FASTSAM_FEATURE_WEIGHT @ np.full(3, 114 / 255)
    for row in (0, 1, 173, 174, 175):  # input rows 0..7 and 692..703: padding only
        np.testing.assert_allclose(protos[4:, row], np.broadcast_to(grey[:, None], (28, 256)), atol=1e-5)
    assert not np.allclose(protos[4:, 2], grey[:, None], atol=1e-3)  # rows 8..11 hold 3 rows of photo
    # In between, the photo: its mean colour survives resizing (to within a percent).
    content = protos[4:, 3:173].mean(axis=(1, 2))
    np.testing.assert_allclose(content, FASTSAM_FEATURE_WEIGHT @ (image.reshape(-1, 3).mean(0) / 255), atol=0.01)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fastsam_everything_records(predictors, photos, backend) -> None:
    """Defaults conf 0.4, iou 0.9: b is suppressed by a (IoU 0.97), e is below conf, f's mask is empty,
    zero has confidence 0: a, c, d remain, by confidence."""
    predictor = predictors("fastsam", backend)
    records = predictor.everything(photos["chelsea"])
    assert isinstance(records, MaskRecords) and records.image_size == (300, 451)
    assert [r["score"] for r in records] == pytest.approx([0.9, 0.7, 0.6])
    for record, name in zip(records, "acd"):
        mask = record["segmentation"]
        assert mask.shape == (300, 451) and mask.dtype == np.bool_
        assert_fastsam_mask(mask, name)
        assert record["area"] == np.count_nonzero(mask)
        x1, y1, x2, y2 = fastsam_box(name)
        if name == "c":
            x2 = 451  # 1000 px of input is 440.4 px of chelsea, within 20 px of the border: snapped
        np.testing.assert_allclose(record["bbox"], [x1, y1, x2 - x1, y2 - y1], atol=1e-3)
    assert records[0]["area"] == pytest.approx(np.pi * (90 * 451 / 1024) * (90 * 300 / 681), rel=0.02)
    result = records.result()
    assert result.masks.shape == (3, 300, 451) and result.records is records
    c_box = fastsam_box("c")
    np.testing.assert_allclose(result.boxes[1], [c_box[0], c_box[1], 451, c_box[3]], atol=1e-3)
    np.testing.assert_array_equal(result.masks, np.stack([r["segmentation"] for r in records]))
    np.testing.assert_allclose(result.scores, [0.9, 0.7, 0.6])
    assert result.info["backend"] == backend and result.info["weights"] == WEIGHTS_LABEL
    for mode in ("uncompressed_rle", "coco_rle"):
        encoded = predictor.everything(output_mode=mode)
        assert all(isinstance(r["segmentation"], dict) for r in encoded)
        np.testing.assert_array_equal(encoded.masks, result.masks)
        assert [r["area"] for r in encoded] == [r["area"] for r in records]


def test_fastsam_conf_and_iou_are_respected(predictors, photos) -> None:
    image = photos["chelsea"]
    low_conf = predictors("fastsam", "onnxruntime", conf=0.25).everything(image)
    assert [r["score"] for r in low_conf] == pytest.approx([0.9, 0.7, 0.6, 0.3])  # + e
    assert_fastsam_mask(low_conf[3]["segmentation"], "e")
    at_conf = predictors("fastsam", "onnxruntime", conf=0.3).everything(image)  # kept if conf > 0.3, strictly
    assert [r["score"] for r in at_conf] == pytest.approx([0.9, 0.7, 0.6])
    strict_iou = predictors("fastsam", "onnxruntime", iou=0.5).everything(image)
    assert [r["score"] for r in strict_iou] == pytest.approx([0.9, 0.7])  # d (IoU 0.64 with a) goes too
    loose_iou = predictors("fastsam", "onnxruntime", iou=0.99).everything(image)
    assert [r["score"] for r in loose_iou] == pytest.approx([0.9, 0.8, 0.7, 0.6])  # b stays
    assert_fastsam_mask(loose_iou[1]["segmentation"], "b")
    nothing = predictors("fastsam", "onnxruntime", conf=0.95).everything(image)
    assert len(nothing) == 0 and nothing.result().masks.shape == (0, 300, 451)
    assert len(predictors("fastsam", "onnxruntime", conf=0.95).predict(points=[[130, 130]])) == 0


def _pt(xy_in: tuple[float, float]) -> list[float]:
    return list(fastsam_to_original(xy_in))


@pytest.mark.parametrize("backend", BACKENDS)
def test_fastsam_point_prompts(predictors, photos, backend) -> None:
    """ultralytics' rule: the detections whose mask holds a positive point and no negative point."""
    predictor = predictors("fastsam", backend)
    predictor.set_image(photos["chelsea"])
    centre, top_of_a, right_of_c = _pt((300, 300)), _pt((300, 215)), _pt((950, 400))
    cases = [
        ([centre], [1], "ad"),  # inside both discs: both, by confidence
        ([top_of_a], [1], "a"),  # inside a's disc, outside d's box
        ([centre, top_of_a], [1, 0], "d"),  # a holds the negative point
        ([top_of_a, centre], [1, 0], ""),  # a holds the negative point, d does not hold the positive
        ([_pt((800, 400))], [1], "c"),
        ([right_of_c], [1], ""),  # inside c's box, but its mask is the left half only
        ([centre], [0], "c"),  # all negative: every non-empty detection without the point
    ]
    for points, labels, names in cases:
        result = predictor.predict(points=points, labels=labels)
        assert result.masks.shape == (len(names), 300, 451), (points, labels)
        assert result.scores.tolist() == pytest.approx([DETECTION[n].conf for n in names])
        for mask, name in zip(result.masks, names):
            assert_fastsam_mask(mask, name)
        assert result.low_res_logits is None and result.prompt_index.tolist() == [0] * len(names)
    multimask = predictor.predict(points=[centre], multimask=False)  # ignored by FastSAM
    assert len(multimask) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_fastsam_box_prompts(predictors, photos, backend) -> None:
    """Per box, the detection whose mask has the highest IoU with the box (mask pixels inside / union)."""
    predictor = predictors("fastsam", backend)
    predictor.set_image(photos["chelsea"])
    a_box, c_box = fastsam_box("a"), fastsam_box("c")
    around_d = [*_pt((250, 250)), *_pt((350, 350))]  # a's disc covers it all (IoU 0.39), d's disc 0.79 of it
    cases = [([a_box], "a"), ([around_d], "d"), ([c_box], "c"), ([c_box, a_box], "ac"), ([a_box, a_box], "a")]
    for boxes, names in cases:
        result = predictor.predict(boxes=boxes)
        assert result.scores.tolist() == pytest.approx([DETECTION[n].conf for n in names]), boxes
        for mask, name in zip(result.masks, names):
            assert_fastsam_mask(mask, name)
    # Points and boxes: the union of both selections, in detection order.
    both = predictor.predict(points=[_pt((800, 400))], boxes=[around_d])
    assert both.scores.tolist() == pytest.approx([0.7, 0.6])


def test_fastsam_embedding_restores_the_detections(predictors, photos) -> None:
    predictor = predictors("fastsam")
    predictor.set_image(photos["chelsea"])
    chelsea = predictor.get_image_embedding()
    expected = predictor.predict(boxes=[fastsam_box("a")])
    predictor.set_image(photos["astronaut"])  # 512 x 512: input 1024 x 1024, gain 2
    astro = predictor.predict(points=[[150, 150]])  # input (300, 300): a and d
    assert astro.masks.shape == (2, 512, 512) and astro.scores.tolist() == pytest.approx([0.9, 0.6])
    np.testing.assert_allclose(astro.boxes[0], [100, 100, 200, 200], atol=1e-4)
    predictor.set_image_embedding(chelsea)
    got = predictor.predict(boxes=[fastsam_box("a")])
    np.testing.assert_array_equal(got.masks, expected.masks)


def test_fastsam_session_wrapper(tiny_fastsam_folder, photos) -> None:
    runs: list[str] = []

    def wrap(graph: str, session):  # noqa: ANN001, ANN202
        class Counting:
            input_names, output_names = session.input_names, session.output_names
            backend, precision = session.backend, session.precision

            def run(self, feeds):  # noqa: ANN001, ANN202
                runs.append(graph)
                return session.run(feeds)

        return Counting()

    predictor = fastseg.Predictor(tiny_fastsam_folder, cache_dir=False, session_wrapper=wrap)
    predictor.set_image(photos["chelsea"])
    predictor.predict(points=[[10, 10]])
    predictor.everything()
    predictor.set_image_embedding(predictor.get_image_embedding())
    assert runs == ["network"]  # once per image: prompts, everything mode and restoring reuse it


# --------------------------------------------------------------------------------------------------
# fastseg.segment, threads, errors


def test_segment_one_call(tiny_sam_folder, tiny_fastsam_folder, photos, tmp_path) -> None:
    image = photos["chelsea"]
    path = tmp_path / "chelsea.png"
    Image.fromarray(image).save(path)
    result = fastseg.segment(path, model=tiny_sam_folder, points=[[225, 150]], multimask=False, backend="onnxruntime")
    assert isinstance(result, fastseg.SegmentationResult) and result.records is None
    assert_disc(result.masks[0], (225, 150), RADII[0])
    predictor = fastseg.Predictor(tiny_sam_folder, backend="onnxruntime")
    predictor.set_image(path)  # the PNG decoded to the same RGB array, so the same encoding
    from_file = predictor.get_image_embedding().embedding
    predictor.set_image(image)
    np.testing.assert_array_equal(from_file, predictor.get_image_embedding().embedding)
    whole = fastseg.segment(image, model=tiny_sam_folder, everything=True, everything_options={"points_per_side": 4},
                            backend="onnxruntime")
    assert isinstance(whole, fastseg.SegmentationResult) and whole.masks.shape == (16, 300, 451)
    assert isinstance(whole.records, MaskRecords) and len(whole.records) == 16
    detections = fastseg.segment(image, model=tiny_fastsam_folder, everything=True, conf=0.25, backend="onnxruntime")
    assert detections.scores.tolist() == pytest.approx([0.9, 0.7, 0.6, 0.3])
    picked = fastseg.segment(image, model=tiny_fastsam_folder, boxes=fastsam_box("c"), cache_dir=False)
    assert picked.scores.tolist() == pytest.approx([0.7])
    with pytest.raises(ValueError, match="everything=True segments the whole image without prompts"):
        fastseg.segment(image, model=tiny_sam_folder, everything=True, points=[[1, 1]])
    with pytest.raises(ValueError, match="everything_options apply to everything=True only"):
        fastseg.segment(image, model=tiny_sam_folder, points=[[1, 1]], everything_options={"points_per_side": 4})


def test_one_predictor_shared_by_threads(predictors, photos) -> None:
    """Calls are serialised: concurrent predicts on one image all get the sequential answer."""
    predictor = predictors("sam", "onnxruntime")
    predictor.set_image(photos["coffee"])
    prompts = [{"points": [[50 + 60 * i, 100]]} for i in range(6)]
    expected = [predictor.predict(**p).masks for p in prompts]
    got: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(3):
            got[i] = predictor.predict(**prompts[i]).masks

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(6):
        np.testing.assert_array_equal(got[i], expected[i])


@pytest.mark.parametrize("family", ["sam", "fastsam"])
def test_no_image_set(tiny_sam_folder, tiny_fastsam_folder, family) -> None:
    folder = tiny_sam_folder if family == "sam" else tiny_fastsam_folder
    predictor = fastseg.Predictor(folder, backend="onnxruntime")
    assert predictor.image_size is None
    for call in (lambda: predictor.predict(points=[[1, 1]]), predictor.get_image_embedding, predictor.everything):
        with pytest.raises(RuntimeError, match=r"no image is set: call set_image\(image\)"):
            call()


BAD_PROMPTS = [
    ({}, "predict needs points and/or boxes; no prompt was given"),
    ({"points": [[500, 10]]}, r"points must lie inside the 451x300 image .*got \[\[500.0, 10.0\]\]"),
    ({"points": [[-1, 10]]}, "points must lie inside"),
    ({"points": [[1, 2, 3]]}, r"points must have shape \(N, 2\) with N >= 1, got \(1, 3\)"),
    ({"points": np.zeros((0, 2))}, r"points must have shape \(N, 2\) with N >= 1, got \(0, 2\)"),
    ({"points": [[np.nan, 1]]}, "points must be finite"),
    ({"points": [["a", "b"]]}, "points must be numeric"),
    ({"points": [[1, 1], [2, 2]], "labels": [1]}, "got 2 points but 1 labels; they must match"),
    ({"points": [[1, 1]], "labels": [2]}, r"labels must be 1 \(foreground\) or 0 \(background\), got \[2\]"),
    ({"points": [[1, 1]], "labels": [[1]]}, r"labels must have shape \(N,\), got \(1, 1\)"),
    ({"labels": [1], "boxes": [0, 0, 5, 5]}, "labels were given without points"),
    ({"boxes": [10, 10, 5, 20]}, "boxes must be XYXY with x1 <= x2 and y1 <= y2"),
    ({"boxes": [0, 0, 500, 20]}, "boxes must lie inside the 451x300 image"),
    ({"boxes": [0, 0, 5]}, r"boxes must have shape \(4,\) or \(B, 4\) with B >= 1, XYXY, got \(3,\)"),
    ({"boxes": [[0, 0, np.inf, 5]]}, "boxes must be finite"),
]


@pytest.mark.parametrize("family", ["sam", "fastsam"])
@pytest.mark.parametrize(("prompts", "message"), BAD_PROMPTS, ids=[m[:30] for _, m in BAD_PROMPTS])
def test_bad_prompts_are_refused(predictors, photos, family, prompts, message) -> None:
    predictor = predictors(family)
    if predictor.image_size != (300, 451):
        predictor.set_image(photos["chelsea"])
    with pytest.raises(ValueError, match=message):
        predictor.predict(**prompts)


def test_bad_mask_inputs_are_refused(predictors, photos) -> None:
    sam, fastsam = predictors("sam"), predictors("fastsam")
    for predictor in (sam, fastsam):
        predictor.set_image(photos["chelsea"])
    logits = np.zeros((256, 256), np.float32)
    with pytest.raises(ValueError, match="this model takes no mask_input .*SAM-family prompt"):
        fastsam.predict(points=[[1, 1]], mask_input=logits)
    with pytest.raises(ValueError, match=r"mask_input must have shape \(256, 256\), .*got \(64, 64\)"):
        sam.predict(points=[[1, 1]], mask_input=np.zeros((64, 64)))
    with pytest.raises(ValueError, match="mask_input has 3 masks but there are 2 prompt sets"):
        sam.predict(boxes=[[0, 0, 5, 5], [1, 1, 6, 6]], mask_input=np.zeros((3, 256, 256)))
    with pytest.raises(ValueError, match="mask_input must be finite"):
        sam.predict(points=[[1, 1]], mask_input=np.full((256, 256), np.nan))
    with pytest.raises(ValueError, match="predict needs points and/or boxes"):
        sam.predict(mask_input=logits)


def test_wrong_embeddings_are_refused(predictors, photos) -> None:
    sam, fastsam = predictors("sam"), predictors("fastsam")
    sam.set_image(photos["chelsea"])
    fastsam.set_image(photos["chelsea"])
    sam_emb, fastsam_emb = sam.get_image_embedding(), fastsam.get_image_embedding()
    with pytest.raises(ValueError, match="expected a FastSamImageEmbedding, got ImageEmbedding"):
        fastsam.set_image_embedding(sam_emb)
    with pytest.raises(ValueError, match="expected a fastseg.sam.ImageEmbedding, got FastSamImageEmbedding"):
        sam.set_image_embedding(fastsam_emb)
    with pytest.raises(ValueError, match="made by 'sam_vit_b'; this predictor runs 'mobile_sam'"):
        sam.set_image_embedding(dataclasses.replace(sam_emb, model="sam_vit_b"))
    with pytest.raises(ValueError, match="made by 'fastsam_x', this engine runs 'fastsam_s'"):
        fastsam.set_image_embedding(dataclasses.replace(fastsam_emb, model="fastsam_x"))
    with pytest.raises(ValueError, match=r"image embedding must be float32 \(1, 256, 64, 64\), got float64"):
        sam.set_image_embedding(dataclasses.replace(sam_emb, embedding=sam_emb.embedding.astype(np.float64)))
    with pytest.raises(ValueError, match=r"input_size \(1024, 1024\), but an image of 300x451 is resized to"):
        sam.set_image_embedding(dataclasses.replace(sam_emb, input_size=(1024, 1024)))
    with pytest.raises(ValueError, match=r"protos must be \(1, 32, 176, 256\) for a 704x1024 input"):
        fastsam.set_image_embedding(dataclasses.replace(fastsam_emb, protos=fastsam_emb.protos[:, :, :100]))
    with pytest.raises(ValueError, match="expected a fastseg.sam.ImageEmbedding, got ndarray"):
        sam.set_image_embedding(sam_emb.embedding)
    # A refused embedding leaves no image set, never a mix of the old image and the new one.
    with pytest.raises(RuntimeError, match="no image is set"):
        sam.predict(points=[[225, 150]])
    sam.set_image_embedding(sam_emb)
    assert_disc(sam.predict(points=[[225, 150]]).masks[0], (225, 150), RADII[1])


def test_bad_everything_parameters_and_images(predictors, photos) -> None:
    sam, fastsam = predictors("sam"), predictors("fastsam")
    with pytest.raises(TypeError, match=r"unknown everything-mode parameter\(s\) \['points_per_sid'\]"):
        sam.everything(photos["chelsea"], points_per_sid=4)
    with pytest.raises(TypeError, match=r"unknown everything-mode parameter\(s\) \['conf'\]"):
        fastsam.everything(photos["chelsea"], conf=0.1)
    with pytest.raises(ValueError, match=r"FastSAM everything mode takes only output_mode .*\['points_per_side'\]"):
        fastsam.everything(photos["chelsea"], points_per_side=4)
    with pytest.raises(ValueError, match="output_mode must be one of"):
        fastsam.everything(photos["chelsea"], output_mode="polygons")
    with pytest.raises(ValueError, match="image array must be uint8, got float32"):
        sam.set_image(photos["chelsea"].astype(np.float32))
    with pytest.raises(ValueError, match=r"image array must have shape .*got \(2, 3, 4, 5\)"):
        fastsam.set_image(np.zeros((2, 3, 4, 5), np.uint8))
    with pytest.raises(FileNotFoundError, match="image not found"):
        sam.set_image("/nonexistent/photo.png")


def test_bad_predictor_options(tiny_sam_folder, tiny_fastsam_folder) -> None:
    with pytest.raises(ValueError, match=r"backend must be one of \('openvino', 'onnxruntime'\), got 'tensorrt'"):
        fastseg.Predictor(tiny_sam_folder, backend="tensorrt")
    with pytest.raises(ValueError, match="precision must be one of"):
        fastseg.Predictor(tiny_sam_folder, precision="f16")
    with pytest.raises(ValueError, match="the onnxruntime backend runs f32 only, got precision='bf16'"):
        fastseg.Predictor(tiny_sam_folder, backend="onnxruntime", precision="bf16")
    with pytest.raises(ValueError, match="num_threads must be a positive int or None, got 0"):
        fastseg.Predictor(tiny_sam_folder, num_threads=0)
    for option in ({"conf": 1.5}, {"iou": -0.1}, {"conf": True}):
        with pytest.raises(ValueError, match=f"{next(iter(option))} must be a number in \\[0, 1\\]"):
            fastseg.Predictor(tiny_fastsam_folder, backend="onnxruntime", **option)
