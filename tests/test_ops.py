"""``fastseg.ops``: box formats, IoU, NMS, mask boxes and bilinear taps.

Fast tier: hand-computed cases, a dense reference written here, and golden values computed once from
``torchvision.ops.nms``. Slow tier: the same functions against ``torchvision`` and ``torch`` directly.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastseg import ops

# ------------------------------------------------------------------------------------------------
# Box formats
# ------------------------------------------------------------------------------------------------


def test_cxcywh_to_xyxy() -> None:
    boxes = np.array([[10, 20, 4, 6], [0, 0, 1, 1], [5.5, 2.5, 3, 0]], np.float32)
    got = ops.cxcywh_to_xyxy(boxes)
    assert got.dtype == np.float32
    assert got.tolist() == [[8, 17, 12, 23], [-0.5, -0.5, 0.5, 0.5], [4, 2.5, 7, 2.5]]
    assert ops.cxcywh_to_xyxy(np.zeros((0, 4), np.float32)).shape == (0, 4)


def test_xyxy_xywh_round_trip() -> None:
    xywh = ops.xyxy_to_xywh(np.array([1, 2, 4, 7], np.float32))
    assert xywh == [1.0, 2.0, 3.0, 5.0] and all(type(v) is float for v in xywh)
    given = [[1, 2, 3, 5], [0.5, 0, 2, 2]]
    xyxy = ops.xywh_to_xyxy(given)
    assert xyxy.dtype == np.float32 and xyxy.tolist() == [[1, 2, 4, 7], [0.5, 0, 2.5, 2]]
    assert given == [[1, 2, 3, 5], [0.5, 0, 2, 2]]  # the input is not modified
    assert ops.xywh_to_xyxy([1, 2, 3, 5]).shape == (1, 4)
    assert ops.xywh_to_xyxy(np.zeros((0, 4))).shape == (0, 4)


# ------------------------------------------------------------------------------------------------
# IoU
# ------------------------------------------------------------------------------------------------


def test_box_iou_hand_cases() -> None:
    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 0, 0]], np.float32)
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [1, 0, 2, 1]], np.float32)
    iou = ops.box_iou(a, b)
    assert iou.shape == (3, 3) and iou.dtype == np.float32
    np.testing.assert_allclose(iou[0], [1 / 7, 1.0, 1 / 4], rtol=1e-6)
    np.testing.assert_allclose(iou[1], [0.0, 1 / 4, 0.0], rtol=1e-6)  # [1, 0, 2, 1] only touches: 0
    assert iou[2].tolist() == [0.0, 0.0, 0.0]  # a zero-area box: 0 / eps, no NaN
    # ultralytics' eps sits in the union: two equal boxes of area 1e-8 have IoU 1e-8 / (1e-8 + 1e-7)
    tiny = np.array([[0, 0, 1e-4, 1e-4]], np.float32)
    np.testing.assert_allclose(ops.box_iou(tiny, tiny), [[1 / 11]], rtol=1e-3)
    assert ops.box_iou(a, np.zeros((0, 4), np.float32)).shape == (3, 0)


# ------------------------------------------------------------------------------------------------
# NMS
# ------------------------------------------------------------------------------------------------


def test_nms_empty_single_and_bad_shapes() -> None:
    keep = ops.nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5)
    assert keep.dtype == np.int64 and keep.shape == (0,)
    assert ops.nms([[0, 0, 1, 1]], [0.3], 0.5).tolist() == [0]
    with pytest.raises(ValueError, match=r"nms needs boxes \(N, 4\) and scores \(N,\), got \(4,\) and \(1,\)"):
        ops.nms([0, 0, 1, 1], [0.3], 0.5)
    with pytest.raises(ValueError, match=r"got \(2, 4\) and \(3,\)"):
        ops.nms(np.zeros((2, 4)), np.zeros(3), 0.5)


def test_nms_drops_only_above_the_threshold() -> None:
    boxes = np.array([[0, 0, 4, 1], [0, 0, 2, 1]], np.float32)  # IoU exactly 0.5
    scores = np.array([0.9, 0.8], np.float32)
    assert ops.nms(boxes, scores, 0.5).tolist() == [0, 1]  # 0.5 > 0.5 is false: kept
    assert ops.nms(boxes, scores, 0.49).tolist() == [0]
    assert ops.nms(boxes[::-1], scores, 0.49).tolist() == [0]  # the higher score wins, wherever it is
    assert ops.nms(boxes, scores[::-1], 0.49).tolist() == [1]
    # The IoU is float32, the threshold a double (torchvision's C++): float32(1/3) = 0.33333334 > 1/3,
    # so a 1/3 overlap is dropped at threshold 1/3 and kept at threshold float32(1/3). Golden values:
    # torchvision.ops.nms (torchvision 0.29) gives [0] and [0, 1] on these boxes.
    third = np.array([[0, 0, 2, 1], [1, 0, 3, 1]], np.float32)
    assert ops.nms(third, scores, 1 / 3).tolist() == [0]
    assert ops.nms(third, scores, float(np.float32(1 / 3))).tolist() == [0, 1]


def test_nms_ties_keep_input_order() -> None:
    same = np.array([[0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 2, 2]], np.float32)
    assert ops.nms(same, np.array([0.5, 0.5, 0.5], np.float32), 0.5).tolist() == [0]
    assert ops.nms(same, np.array([0.4, 0.5, 0.5], np.float32), 0.5).tolist() == [1]
    apart = np.array([[0, 0, 1, 1], [2, 0, 3, 1], [4, 0, 5, 1], [6, 0, 7, 1]], np.float32)
    assert ops.nms(apart, np.array([0.5, 0.7, 0.5, 0.7], np.float32), 0.5).tolist() == [1, 3, 0, 2]


def test_nms_is_greedy_suppressed_boxes_suppress_nothing() -> None:
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]], np.float32)  # neighbours: IoU 1/3
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert ops.nms(boxes, scores, 0.3).tolist() == [0, 2]  # 1 is dropped by 0; 2 overlaps only 1
    assert ops.nms(boxes, scores, 0.4).tolist() == [0, 1, 2]
    # zero-area boxes: IoU 0/0 is NaN, never > threshold: all kept (torchvision: [0, 1, 2])
    degenerate = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 2, 2]], np.float32)
    with np.errstate(invalid="ignore"):
        assert ops.nms(degenerate, np.array([0.5, 0.5, 0.4], np.float32), 0.5).tolist() == [0, 1, 2]


# 40 boxes with integer corners (many exact IoU ties) and five score levels: drawn once with
# np.random.default_rng(2024) (corners 0..15, sizes 2..13, scores 0.5..0.9). NMS_GOLDEN holds
# torchvision.ops.nms(boxes, scores / 10, threshold) on them (torchvision 0.29, CPU), computed once.
NMS_BOXES = [
    [3, 10, 8, 14], [1, 3, 10, 7], [5, 4, 9, 16], [14, 12, 25, 20], [14, 15, 26, 21], [1, 2, 3, 14],
    [13, 1, 16, 7], [2, 2, 9, 12], [14, 5, 17, 9], [4, 2, 7, 4], [7, 9, 11, 19], [12, 9, 20, 15],
    [15, 1, 25, 7], [7, 9, 20, 14], [11, 0, 21, 5], [3, 7, 11, 15], [1, 15, 14, 21], [10, 12, 13, 19],
    [8, 9, 17, 13], [5, 5, 18, 13], [2, 3, 9, 12], [12, 7, 20, 14], [13, 4, 21, 10], [11, 13, 24, 26],
    [13, 3, 21, 5], [5, 4, 11, 9], [12, 12, 21, 20], [7, 4, 10, 13], [1, 4, 3, 6], [2, 1, 4, 5],
    [12, 7, 25, 9], [15, 4, 24, 6], [6, 14, 8, 19], [9, 4, 12, 10], [5, 12, 7, 24], [5, 7, 12, 9],
    [7, 7, 9, 17], [7, 15, 13, 22], [3, 14, 13, 23], [3, 1, 13, 4],
]  # fmt: skip
NMS_SCORES = [8, 9, 7, 6, 6, 7, 8, 7, 5, 6, 5, 7, 6, 5, 8, 8, 6, 5, 7, 6, 6, 6, 5, 5, 9, 7, 7, 5, 8, 8, 9, 6, 5, 9, 9,
              7, 9, 5, 7, 8]  # fmt: skip
NMS_GOLDEN = {
    0.0: [1, 24, 30, 34, 36, 11, 4],
    0.2: [1, 24, 30, 33, 34, 36, 0, 28, 29, 39, 5, 11, 38, 3, 12, 19, 8, 17, 32],
    0.4: [1, 24, 30, 33, 34, 36, 0, 6, 14, 15, 28, 29, 39, 5, 7, 11, 18, 25, 26, 35, 38, 4, 9, 12, 19, 31, 8, 10, 17,
          22, 23, 27, 32],
    0.6: [1, 24, 30, 33, 34, 36, 0, 6, 14, 15, 28, 29, 39, 2, 5, 7, 11, 18, 25, 26, 35, 38, 3, 4, 9, 12, 16, 19, 31, 8,
          10, 13, 17, 22, 23, 27, 32, 37],
    0.8: [1, 24, 30, 33, 34, 36, 0, 6, 14, 15, 28, 29, 39, 2, 5, 7, 11, 18, 25, 26, 35, 38, 3, 4, 9, 12, 16, 19, 21,
          31, 8, 10, 13, 17, 22, 23, 27, 32, 37],
    1.0: [1, 24, 30, 33, 34, 36, 0, 6, 14, 15, 28, 29, 39, 2, 5, 7, 11, 18, 25, 26, 35, 38, 3, 4, 9, 12, 16, 19, 20,
          21, 31, 8, 10, 13, 17, 22, 23, 27, 32, 37],
}  # fmt: skip


@pytest.mark.parametrize("threshold", list(NMS_GOLDEN))
def test_nms_golden_torchvision(threshold: float) -> None:
    scores = np.array(NMS_SCORES, np.float32) / np.float32(10)
    assert ops.nms(np.array(NMS_BOXES, np.float32), scores, threshold).tolist() == NMS_GOLDEN[threshold]


def _brute_force_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy NMS as the definition reads, one pair at a time in float32 (this test's reference)."""
    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        ok = True
        for k in keep:
            x1, y1 = max(boxes[i][0], boxes[k][0]), max(boxes[i][1], boxes[k][1])
            x2, y2 = min(boxes[i][2], boxes[k][2]), min(boxes[i][3], boxes[k][3])
            inter = np.float32(max(x2 - x1, 0)) * np.float32(max(y2 - y1, 0))
            area_i = (boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1])
            area_k = (boxes[k][2] - boxes[k][0]) * (boxes[k][3] - boxes[k][1])
            if float(inter / (area_i + area_k - inter)) > threshold:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def test_nms_equals_the_definition_on_random_boxes() -> None:
    rng = np.random.default_rng(11)
    for _ in range(30):
        n = int(rng.integers(1, 60))
        xy = rng.uniform(0, 50, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(1, 25, (n, 2))], axis=1).astype(np.float32)
        scores = rng.choice(np.array([0.3, 0.5, 0.7, 0.9], np.float32), n)  # many ties
        threshold = float(rng.uniform(0.1, 0.9))
        assert ops.nms(boxes, scores, threshold).tolist() == _brute_force_nms(boxes, scores, threshold)


@pytest.fixture(scope="module")
def reference_torchvision():  # noqa: ANN201
    """(torch, torchvision), for the NMS parity tests (marks them slow)."""
    from conftest import import_torch

    torch = import_torch()
    import torchvision

    return torch, torchvision


def _random_boxes(rng: np.random.Generator, n: int, extent: float = 200.0) -> np.ndarray:
    xy = rng.uniform(0, extent, (n, 2))
    wh = rng.uniform(1, extent / 3, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


@pytest.mark.parametrize("n", [0, 1, 7, 300, 1500])
@pytest.mark.parametrize("iou", [0.3, 0.5, 0.7, 0.9])
def test_nms_matches_torchvision(reference_torchvision, n: int, iou: float) -> None:
    torch, torchvision = reference_torchvision
    rng = np.random.default_rng(n)
    boxes = _random_boxes(rng, n)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    expected = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou).numpy()
    np.testing.assert_array_equal(ops.nms(boxes, scores, iou), expected)


def test_nms_ties_keep_input_order_as_torchvision(reference_torchvision) -> None:
    torch, torchvision = reference_torchvision
    rng = np.random.default_rng(3)
    for _ in range(50):
        n = int(rng.integers(2, 300))
        boxes = _random_boxes(rng, n, extent=80.0)
        scores = rng.choice(np.array([0.5, 0.6, 0.7], np.float32), n)
        expected = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).numpy()
        np.testing.assert_array_equal(ops.nms(boxes, scores, 0.5), expected)


def test_nms_golden_values_are_torchvision(reference_torchvision) -> None:
    """Where NMS_GOLDEN comes from (recomputed when the reference is installed)."""
    torch, torchvision = reference_torchvision
    boxes = torch.tensor(NMS_BOXES, dtype=torch.float32)
    scores = torch.tensor(NMS_SCORES, dtype=torch.float32) / 10
    for threshold, keep in NMS_GOLDEN.items():
        assert torchvision.ops.nms(boxes, scores, threshold).tolist() == keep


# ------------------------------------------------------------------------------------------------
# Mask boxes
# ------------------------------------------------------------------------------------------------


def test_masks_to_boxes_hand_cases() -> None:
    masks = np.zeros((4, 5, 6), bool)
    masks[0, 2, 3] = masks[0, 4, 1] = True
    masks[2] = True
    masks[3, 0, 5] = True
    boxes = ops.masks_to_boxes(masks)
    assert boxes.dtype == np.float32
    # x2 / y2 are the last foreground pixel (inclusive); an empty mask gets zeros
    assert boxes.tolist() == [[1, 2, 3, 4], [0, 0, 0, 0], [0, 0, 5, 4], [5, 0, 5, 0]]
    assert ops.masks_to_boxes(np.zeros((0, 5, 6), bool)).shape == (0, 4)
    assert ops.masks_to_boxes(np.zeros((2, 0, 6), bool)).tolist() == [[0, 0, 0, 0]] * 2


def test_masks_to_boxes_on_random_masks() -> None:
    rng = np.random.default_rng(5)
    masks = rng.random((40, 17, 23)) < rng.uniform(0, 0.02, (40, 1, 1))
    expected = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        expected.append([xs.min(), ys.min(), xs.max(), ys.max()] if len(xs) else [0, 0, 0, 0])
    assert (masks.sum(axis=(1, 2)) == 0).any()  # some empty masks in the table
    assert ops.masks_to_boxes(masks).tolist() == expected


# ------------------------------------------------------------------------------------------------
# Bilinear taps
# ------------------------------------------------------------------------------------------------


def test_bilinear_taps_hand_cases() -> None:
    up = ops.bilinear_taps(2, 4)  # sources -0.25 -> 0, 0.25, 0.75, 1.25 (past the last sample)
    assert up.i0.tolist() == [0, 0, 0, 1] and up.i1.tolist() == [1, 1, 1, 1]
    assert up.w1.tolist() == [0, 0.25, 0.75, 0.25] and up.w0.tolist() == [1, 0.75, 0.25, 0.75]
    assert up.w0.dtype == up.w1.dtype == np.float32
    down = ops.bilinear_taps(4, 2)  # sources 0.5 and 2.5
    assert down.i0.tolist() == [0, 2] and down.i1.tolist() == [1, 3] and down.w1.tolist() == [0.5, 0.5]
    same = ops.bilinear_taps(5, 5)
    assert same.i0.tolist() == [0, 1, 2, 3, 4] and same.w0.tolist() == [1] * 5 and same.w1.tolist() == [0] * 5
    one = ops.bilinear_taps(1, 3)  # a single sample: everything reads it
    assert one.i0.tolist() == one.i1.tolist() == [0, 0, 0]
    np.testing.assert_allclose(one.w0 + one.w1, 1)
    exact = ops.bilinear_taps(7, 28, scale_factor=4, dtype=np.float64)
    assert exact.w1.dtype == np.float64
    assert exact.w1[:6].tolist() == [0, 0, 0.125, 0.375, 0.625, 0.875]


def _tent_matrix(n_in: int, n_out: int, scale: float) -> np.ndarray:
    """``(n_out, n_in)`` float64: output ``i`` samples the input at ``(i + 0.5) * scale - 0.5``, clamped
    to ``[0, n_in - 1]``, with the tent (triangle) kernel: torch's bilinear, ``align_corners=False``."""
    src = np.clip((np.arange(n_out) + 0.5) * scale - 0.5, 0, n_in - 1)
    return np.maximum(0.0, 1.0 - np.abs(src[:, None] - np.arange(n_in)[None, :]))


def _taps_matrix(taps: ops.Taps, n_in: int) -> np.ndarray:
    """The ``(n_out, n_in)`` matrix of ``taps``, in the taps' dtype (``w0 + w1`` where both read one sample)."""
    out = np.zeros((len(taps.i0), n_in), dtype=taps.w0.dtype)
    np.add.at(out, (np.arange(len(taps.i0)), taps.i0), taps.w0)
    np.add.at(out, (np.arange(len(taps.i1)), taps.i1), taps.w1)
    return out


SIZE_PAIRS = [(256, 1024), (576, 1080), (1024, 300), (7, 3), (3, 7), (1, 5), (5, 1), (4, 4), (176, 704), (681, 300)]


@pytest.mark.parametrize(("n_in", "n_out"), SIZE_PAIRS)
def test_bilinear_taps_equal_the_tent_kernel(n_in: int, n_out: int) -> None:
    exact = ops.bilinear_taps(n_in, n_out, dtype=np.float64)
    assert (exact.i1 - exact.i0 <= 1).all() and (exact.i1 < n_in).all() and (exact.i0 >= 0).all()
    np.testing.assert_allclose(_taps_matrix(exact, n_in), _tent_matrix(n_in, n_out, n_in / n_out), rtol=0, atol=1e-12)
    # float32: the source position (up to ~n_in) is rounded to float32, so weights move by ~n_in * 2**-24
    single = ops.bilinear_taps(n_in, n_out)
    np.testing.assert_allclose(_taps_matrix(single, n_in), _tent_matrix(n_in, n_out, n_in / n_out), rtol=0, atol=1e-4)


@pytest.mark.parametrize("factor", [2, 4])
def test_bilinear_taps_with_a_scale_factor(factor: int) -> None:
    taps = ops.bilinear_taps(50, 50 * factor, scale_factor=factor)
    np.testing.assert_allclose(_taps_matrix(taps, 50), _tent_matrix(50, 50 * factor, 1 / factor), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("n_in", "n_out", "factor"), [*((a, b, None) for a, b in SIZE_PAIRS), (64, 256, 4), (88, 176, 2)]
)
def test_bilinear_taps_are_torchs_float32_weights(reference_torch, n_in: int, n_out: int, factor: int | None) -> None:
    """float32 taps against the weights ``F.interpolate`` uses: interpolating unit impulses (column j of
    the identity) gives each output's weight on source j exactly.

    Bit for bit, with an integer scale factor and without: torch computes the source position
    ``scale * (dst + 0.5) - 0.5`` with a fused multiply-add (one rounding), as ``bilinear_taps`` does
    (two roundings differed on e.g. 15 of 1080 rows for 576 -> 1080).
    """
    eye = reference_torch.eye(n_in, dtype=reference_torch.float32).reshape(1, 1, n_in, n_in)
    interpolate = reference_torch.nn.functional.interpolate
    if factor is None:
        out = interpolate(eye, size=(n_out, n_in), mode="bilinear", align_corners=False)
    else:
        out = interpolate(eye, scale_factor=(factor, 1), mode="bilinear", align_corners=False)
    got = _taps_matrix(ops.bilinear_taps(n_in, n_out, scale_factor=factor), n_in)
    np.testing.assert_array_equal(got, out[0, 0].numpy())
