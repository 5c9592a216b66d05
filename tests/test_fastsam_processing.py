"""FastSAM pre- and post-processing in numpy (``fastseg.fastsam``), without a model.

Fast tier: letterbox geometry and resize (hand cases, golden arrays computed once with ``cv2``),
preprocessing from the spec, NMS on hand-made detections, box scaling and FastSAM's border rule,
the prompt rules on hand-made masks, mask assembly against a dense numpy evaluation written here,
and the engine end to end on network outputs whose masks are known by construction.

Slow tier (``reference_*`` fixtures): the same steps against the code they reproduce: ``cv2.resize``
and ultralytics ``LetterBox`` (letterbox), ultralytics ``non_max_suppression``, ``scale_boxes`` and
FastSAM's border rule, ``FastSAMPredictor.postprocess`` / ``prompt`` (retina masks and prompt rules)
on synthetic network outputs and hand-made masks.
"""

from __future__ import annotations

import hashlib
import types
from pathlib import Path

import numpy as np
import pytest

from fastseg import fastsam as fs
from fastseg import ops
from fastseg.manifest import ModelFolder, ModelFolderError
from fastseg.prompts import validate_prompts
from fastseg.registry import get_spec

SPEC = get_spec("fastsam_s")


@pytest.fixture(scope="module")
def reference_cv2():  # noqa: ANN201
    import cv2

    return cv2


@pytest.fixture(scope="module")
def reference_ultralytics():  # noqa: ANN201
    """torch, with ultralytics importable: for the tests that run ultralytics' own code (marks them slow)."""
    from conftest import import_torch

    torch = import_torch()
    # ultralytics' NMS runs torchvision.ops.nms when torchvision is imported and its own TorchNMS
    # otherwise; they order equal scores differently. FastSAM.predict imports torchvision, so its runs
    # use torchvision's: so do these tests, whatever other test files ran before in the process.
    import torchvision  # noqa: F401
    import ultralytics  # noqa: F401

    return torch


def _folder(name: str = "fastsam_s", coefficients: int = 32) -> ModelFolder:
    """A model folder as the engine sees it (it reads no file)."""
    spec = get_spec(name)
    manifest = {"model": name, "family": spec.family, "extra": {"num_mask_coefficients": coefficients}}
    return ModelFolder(path=Path("/nonexistent") / name, manifest=manifest, spec=spec)


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

# (h, w), size -> resized (h, w), input (H, W), top, left; worked out by hand from ultralytics'
# LetterBox(auto=True): r = size / max(h, w), sides round(side * r) (half to even), the padding
# (size - side) % 32 split as round(d - 0.1) before and round(d + 0.1) after.
LETTERBOX_CASES = [
    ((300, 451), 1024, (681, 1024), (704, 1024), 11, 0),  # 681.15 -> 681; pad 23 -> 11 + 12
    ((451, 300), 1024, (1024, 681), (1024, 704), 0, 11),
    ((512, 512), 1024, (1024, 1024), (1024, 1024), 0, 0),
    ((764, 1024), 1024, (764, 1024), (768, 1024), 2, 0),  # pad 4 -> 2 + 2
    ((1023, 1024), 1024, (1023, 1024), (1024, 1024), 0, 0),  # pad 1 -> round(0.4) + round(0.6) = 0 + 1
    ((5, 2048), 1024, (2, 1024), (32, 1024), 15, 0),  # 2.5 -> 2 (half to even); pad 30 -> 15 + 15
    ((1, 3000), 1024, (1, 1024), (32, 1024), 15, 0),  # at least 1 px; pad 31 -> 15 + 16
    ((33, 1000), 1024, (34, 1024), (64, 1024), 15, 0),  # 33.792 -> 34; pad 30
    ((7, 9), 1024, (796, 1024), (800, 1024), 2, 0),  # 796.44 -> 796
    ((300, 451), 640, (426, 640), (448, 640), 11, 0),  # another size: 425.72 -> 426; pad 22 -> 11 + 11
]


@pytest.mark.parametrize(("size", "long_side", "resized", "input_size", "top", "left"), LETTERBOX_CASES)
def test_letterbox_geometry_hand_cases(size, long_side, resized, input_size, top, left) -> None:
    geo = fs.letterbox_geometry(size, long_side, 32)
    assert geo == fs.Letterbox(image_size=size, resized_size=resized, input_size=input_size, top=top, left=left)


@pytest.mark.parametrize("size", IMAGE_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_letterbox_geometry_invariants(size) -> None:
    geo = fs.letterbox_geometry(size)
    (h, w), (new_h, new_w), (in_h, in_w) = size, geo.resized_size, geo.input_size
    assert max(new_h, new_w) == 1024 and min(new_h, new_w) >= 1
    assert in_h % 32 == 0 and in_w % 32 == 0 and in_h - new_h < 32 and in_w - new_w < 32
    for pad, before in ((in_h - new_h, geo.top), (in_w - new_w, geo.left)):
        assert before == pad // 2  # the odd pixel goes after
    assert abs(new_h / new_w - h / w) <= max(1 / new_h, 1 / new_w) * (h / w + 1)


def test_letterbox_geometry_rejects_empty() -> None:
    with pytest.raises(ValueError, match="image size must be positive, got 0x5"):
        fs.letterbox_geometry((0, 5))


@pytest.mark.parametrize("size", IMAGE_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_letterbox_geometry_matches_ultralytics(reference_ultralytics, size) -> None:
    from ultralytics.data.augment import LetterBox

    params = LetterBox(new_shape=(1024, 1024), auto=True, stride=32).get_params({"img": np.zeros((*size, 3), np.uint8)})
    geo = fs.letterbox_geometry(size, 1024, 32)
    new_w, new_h = params["new_unpad"]
    assert geo.resized_size == (new_h, new_w)
    assert (geo.top, geo.left) == (params["top"], params["left"])
    assert geo.input_size == (new_h + params["top"] + params["bottom"], new_w + params["left"] + params["right"])
    assert geo.input_size[0] % 32 == 0 and geo.input_size[1] % 32 == 0


@pytest.mark.parametrize(("size", "long_side", "resized", "input_size", "top", "left"), LETTERBOX_CASES)
def test_letterbox_hand_cases_are_ultralytics(reference_ultralytics, size, long_side, resized, input_size, top, left):
    from ultralytics.data.augment import LetterBox

    box = LetterBox(new_shape=(long_side, long_side), auto=True, stride=32)
    params = box.get_params({"img": np.zeros((*size, 3), np.uint8)})
    new_w, new_h = params["new_unpad"]
    assert (new_h, new_w) == resized and (params["top"], params["left"]) == (top, left)
    assert (new_h + params["top"] + params["bottom"], new_w + params["left"] + params["right"]) == input_size


def _pattern(h: int, w: int, c: int = 3) -> np.ndarray:
    """Pseudo-random uint8 ``(h, w, c)`` from an integer hash of the pixel position (no RNG, stable)."""
    i = np.arange(h, dtype=np.int64)[:, None, None]
    j = np.arange(w, dtype=np.int64)[None, :, None]
    k = np.arange(c, dtype=np.int64)[None, None, :]
    return (((i * 7919 + j * 104729 + k * 31 + 17) * 2654435761) >> 11 & 255).astype(np.uint8)


# cv2.resize(_pattern(h, w), (out_w, out_h), interpolation=cv2.INTER_LINEAR), computed once with
# OpenCV 5.0.0 (x86-64 wheel) while writing this test.
RESIZE_GOLDEN_ARRAYS = {
    (4, 5, 3, 7): [
        [[212, 204, 195], [188, 179, 171], [157, 148, 140], [127, 118, 110], [96, 88, 109], [84, 76, 92],
         [84, 75, 67]],
        [[99, 91, 82], [75, 66, 131], [81, 72, 155], [142, 134, 125], [111, 103, 186], [136, 127, 192],
         [185, 177, 168]],
        [[199, 190, 182], [175, 166, 182], [156, 148, 170], [157, 148, 140], [126, 118, 109], [96, 88, 79],
         [72, 63, 55]],
    ],
    (3, 3, 7, 5): [
        [[226, 218, 209], [209, 201, 192], [184, 175, 167], [158, 149, 141], [141, 132, 124]],
        [[214, 206, 197], [197, 189, 180], [172, 163, 155], [146, 137, 129], [129, 120, 112]],
        [[177, 169, 160], [160, 152, 143], [135, 126, 118], [110, 101, 93], [92, 84, 75]],
        [[141, 133, 124], [124, 116, 107], [99, 90, 82], [73, 65, 56], [56, 48, 39]],
        [[105, 96, 88], [88, 79, 115], [63, 54, 155], [103, 94, 130], [129, 121, 113]],
        [[69, 60, 52], [52, 43, 123], [26, 18, 228], [132, 124, 203], [203, 194, 186]],
        [[57, 48, 40], [40, 31, 125], [14, 6, 253], [142, 134, 228], [227, 219, 211]],
    ],
    (6, 8, 3, 4): [  # exact 2x shrink: OpenCV's area filter
        [[163, 154, 146], [77, 69, 124], [120, 112, 167], [163, 155, 146]],
        [[121, 113, 168], [164, 155, 147], [79, 70, 126], [122, 113, 169]],
        [[80, 71, 127], [122, 114, 170], [165, 157, 148], [80, 72, 127]],
    ],
    (5, 7, 5, 3): [
        [[198, 189, 181], [98, 90, 81], [84, 76, 238]],
        [[113, 104, 96], [14, 5, 253], [170, 162, 154]],
        [[28, 20, 182], [185, 176, 168], [86, 77, 69]],
        [[199, 191, 182], [100, 92, 83], [86, 78, 240]],
        [[115, 106, 98], [15, 7, 255], [172, 164, 155]],
    ],
    (2, 9, 5, 2): [
        [[152, 143, 135], [216, 207, 199]],
        [[143, 134, 126], [208, 199, 191]],
        [[109, 101, 92], [174, 165, 157]],
        [[75, 67, 58], [140, 131, 123]],
        [[67, 58, 50], [131, 122, 114]],
    ],
}

# The first 16 hex digits of sha256(cv2.resize(_pattern(h, w), (out_w, out_h), INTER_LINEAR).tobytes()),
# computed once with OpenCV 5.0.0 (x86-64 wheel): the SIMD paths (rows not a multiple of the vector
# width), the 2x area path and its near miss, large up- and downscales, single rows and columns.
RESIZE_GOLDEN_DIGESTS = {
    (810, 1080, 768, 1024): "e5cd3c973703a344",
    (300, 451, 681, 1024): "f63ffbc04fb535a5",
    (1536, 2048, 768, 1024): "b67773820d859c52",
    (1536, 2048, 768, 1023): "44484077b621a93e",
    (3072, 2304, 1024, 768): "814ab183c161139f",
    (5, 7, 1024, 1433): "fa74c3c9a5a004d3",
    (1000, 1, 1024, 1): "0baea125f5143024",
    (1, 1000, 1, 1024): "008f4e0de92f3c68",
    (100, 37, 1024, 379): "804600642d6f7e42",
    (773, 107, 1024, 142): "d9dc936c0748acf4",
    (2127, 1594, 1024, 767): "83543328060125cb",
}


@pytest.mark.parametrize("shape", list(RESIZE_GOLDEN_ARRAYS), ids=lambda s: "{}x{}->{}x{}".format(*s))
def test_resize_linear_golden_arrays(shape) -> None:
    in_h, in_w, out_h, out_w = shape
    got = fs.resize_linear(_pattern(in_h, in_w), out_h, out_w)
    assert got.dtype == np.uint8
    assert got.tolist() == RESIZE_GOLDEN_ARRAYS[shape]


@pytest.mark.parametrize("shape", list(RESIZE_GOLDEN_DIGESTS), ids=lambda s: "{}x{}->{}x{}".format(*s))
def test_resize_linear_golden_digests(shape) -> None:
    in_h, in_w, out_h, out_w = shape
    got = fs.resize_linear(_pattern(in_h, in_w), out_h, out_w)
    assert got.shape == (out_h, out_w, 3)
    assert hashlib.sha256(got.tobytes()).hexdigest()[:16] == RESIZE_GOLDEN_DIGESTS[shape]


def test_resize_linear_hand_cases() -> None:
    image = _pattern(9, 13)
    same = fs.resize_linear(image, 9, 13)
    assert np.array_equal(same, image) and same is not image  # a copy
    flat = np.full((7, 5, 3), 77, np.uint8)
    for out_h, out_w in ((3, 2), (20, 11), (7, 1), (1, 9)):
        assert (fs.resize_linear(flat, out_h, out_w) == 77).all()
    # exact 2x shrink: the mean of each 2x2 block, rounded half up ((sum + 2) >> 2)
    block = np.array([[1, 2, 10, 10], [3, 4, 10, 11], [0, 0, 255, 255], [0, 1, 255, 254]], np.uint8)
    got = fs.resize_linear(np.repeat(block[:, :, None], 3, axis=2), 2, 2)[..., 0]
    assert got.tolist() == [[3, 10], [0, 255]]  # 10/4 = 2.5 -> 3, 41/4 = 10.25 -> 10, 1/4 -> 0, 1019/4 -> 255
    # a 2x upscale of two pixels: 0.75 / 0.25 weights inside, the edge pixels repeat
    row = np.array([[[0, 0, 0], [200, 200, 200]]], np.uint8)
    assert fs.resize_linear(row, 1, 4)[0, :, 0].tolist() == [0, 50, 150, 200]


def test_resize_linear_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"image must be uint8 \(H, W, C\), got float32"):
        fs.resize_linear(np.zeros((4, 4, 3), np.float32), 2, 2)
    with pytest.raises(ValueError, match="output size must be positive, got 0x3"):
        fs.resize_linear(np.zeros((4, 4, 3), np.uint8), 0, 3)


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
def test_resize_linear_is_bit_exact_with_cv2(reference_cv2, shape):
    in_h, in_w, out_h, out_w = shape
    image = np.random.default_rng(sum(shape)).integers(0, 256, (in_h, in_w, 3), dtype=np.uint8)
    expected = reference_cv2.resize(image, (out_w, out_h), interpolation=reference_cv2.INTER_LINEAR)
    np.testing.assert_array_equal(fs.resize_linear(image, out_h, out_w), expected)


def test_resize_linear_is_bit_exact_with_cv2_on_random_shapes(reference_cv2):
    cv2 = reference_cv2
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


def test_resize_golden_values_are_cv2(reference_cv2):
    """Where the golden arrays and digests come from (recomputed when OpenCV is installed)."""
    cv2 = reference_cv2
    for (in_h, in_w, out_h, out_w), expected in RESIZE_GOLDEN_ARRAYS.items():
        got = cv2.resize(_pattern(in_h, in_w), (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        assert got.tolist() == expected
    for (in_h, in_w, out_h, out_w), digest in RESIZE_GOLDEN_DIGESTS.items():
        got = cv2.resize(_pattern(in_h, in_w), (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        assert hashlib.sha256(got.tobytes()).hexdigest()[:16] == digest


@pytest.mark.parametrize("size", [(300, 451), (451, 300), (764, 1024), (1024, 1024), (7, 9)])
def test_letterbox_places_the_resized_image_on_114(size) -> None:
    image = _pattern(*size)
    canvas, geo = fs.letterbox(image)
    assert canvas.dtype == np.uint8 and canvas.shape == (*geo.input_size, 3)
    (new_h, new_w), top, left = geo.resized_size, geo.top, geo.left
    inside = np.zeros(geo.input_size, bool)
    inside[top : top + new_h, left : left + new_w] = True
    assert (canvas[~inside] == fs.PAD_VALUE).all()
    resized = image if (new_h, new_w) == size else fs.resize_linear(image, new_h, new_w)
    np.testing.assert_array_equal(canvas[top : top + new_h, left : left + new_w], resized)


def test_preprocess_divides_rgb_by_255_as_the_spec_says() -> None:
    assert SPEC.pixel_mean == (0.0, 0.0, 0.0) and SPEC.pixel_std == (255.0, 255.0, 255.0)
    assert SPEC.input_size == 1024 and SPEC.stride == 32
    image = np.zeros((300, 451, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 128, 255  # R, G, B
    tensor, geo = fs.preprocess(image, SPEC)
    assert tensor.dtype == np.float32 and tensor.shape == (1, 3, 704, 1024) and tensor.flags.c_contiguous
    assert geo == fs.letterbox_geometry((300, 451))
    inner = tensor[0, :, 11 : 11 + 681, :]
    for channel, value in enumerate((10, 128, 255)):
        assert (inner[channel] == np.float32(value) / np.float32(255)).all()  # RGB order kept
    assert (tensor[0, :, :11] == np.float32(114) / np.float32(255)).all()
    assert (tensor[0, :, 11 + 681 :] == np.float32(114) / np.float32(255)).all()
    rgb = _pattern(300, 451)
    canvas, _ = fs.letterbox(rgb)
    expected = canvas.transpose(2, 0, 1)[None].astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(fs.preprocess(rgb, SPEC)[0], expected)


def test_preprocess_reads_the_spec() -> None:
    import dataclasses

    small = dataclasses.replace(SPEC, input_size=640, stride=64)
    tensor, geo = fs.preprocess(_pattern(300, 451), small)
    assert geo.resized_size == (426, 640) and geo.input_size == (448, 640) and tensor.shape == (1, 3, 448, 640)
    other = dataclasses.replace(SPEC, pixel_mean=(1.0, 2.0, 3.0), pixel_std=(2.0, 4.0, 8.0))
    tensor, _ = fs.preprocess(np.full((64, 64, 3), 9, np.uint8), other)
    assert [float(v) for v in tensor[0, :, 0, 0]] == [4.0, 1.75, 0.75]  # (9 - mean) / std per channel


@pytest.mark.parametrize("size", IMAGE_SIZES[:9], ids=lambda s: f"{s[0]}x{s[1]}")
def test_letterbox_and_preprocess_match_ultralytics(reference_ultralytics, size):
    from ultralytics.data.augment import LetterBox

    torch = reference_ultralytics
    rgb = np.random.default_rng(size[0] * 7 + size[1]).integers(0, 256, (*size, 3), dtype=np.uint8)
    bgr = np.ascontiguousarray(rgb[..., ::-1])  # ultralytics reads numpy images as BGR
    expected = LetterBox(new_shape=(1024, 1024), auto=True, stride=32)(image=bgr)
    canvas, geo = fs.letterbox(rgb)
    np.testing.assert_array_equal(canvas, expected[..., ::-1])
    # BasePredictor.preprocess: HWC BGR uint8 -> BCHW RGB float32 / 255
    reference = torch.from_numpy(expected)[None].permute(0, 3, 1, 2).flip(1).float().div_(255).numpy()
    tensor, _ = fs.preprocess(rgb, SPEC)
    assert tensor.dtype == np.float32 and tensor.shape == (1, 3, *geo.input_size)
    np.testing.assert_array_equal(tensor, reference)


def test_letterbox_rejects_non_rgb_uint8():
    with pytest.raises(ValueError, match=r"RGB uint8 \(H, W, 3\), got float32"):
        fs.letterbox(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match=r"got uint8 \(10, 10\)"):
        fs.letterbox(np.zeros((10, 10), np.uint8))


# ------------------------------------------------------------------------------------------------
# Detections: confidence filter, NMS, max_det
# ------------------------------------------------------------------------------------------------


def _detections(rows: list[tuple[list[float], float, list[float]]]) -> np.ndarray:
    """``(1, 5 + M, A)`` network output from ``(xyxy box, confidence, coefficients)`` per anchor."""
    out = np.zeros((1, 5 + len(rows[0][2]), len(rows)), np.float32)
    for a, (box, conf, coefficients) in enumerate(rows):
        x1, y1, x2, y2 = box
        out[0, :4, a] = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
        out[0, 4, a] = conf
        out[0, 5:, a] = coefficients
    return out


def test_non_max_suppression_hand_case() -> None:
    conf = np.float32(0.4)
    det = _detections(
        [
            ([0, 0, 10, 10], 0.7, [1, 0]),  # 0: kept
            ([50, 50, 60, 60], conf, [2, 0]),  # 1: exactly at the threshold: dropped (> conf)
            ([0, 0, 10, 11], 0.8, [3, 0]),  # 2: kept, suppresses 0 (IoU 100 / 110 > 0.9)
            ([20, 0, 30, 10], float(np.nextafter(conf, np.float32(1))), [4, 0]),  # 3: just above: kept
            ([21, 0, 30, 10], 0.1, [5, 0]),  # 4: below
            ([100, 100, 140, 120], 0.95, [6, 7]),  # 5: kept, first
        ]
    )
    found = fs.non_max_suppression(det, 0.4, 0.9, max_det=300)
    assert len(found) == 3
    assert found.boxes.dtype == found.scores.dtype == found.coefficients.dtype == np.float32
    assert found.boxes.tolist() == [[100, 100, 140, 120], [0, 0, 10, 11], [20, 0, 30, 10]]
    assert found.coefficients.tolist() == [[6, 7], [3, 0], [4, 0]]
    np.testing.assert_array_equal(found.scores, np.array([0.95, 0.8, np.nextafter(conf, np.float32(1))], np.float32))
    # a looser IoU keeps 0 too; max_det cuts after NMS, in score order
    assert fs.non_max_suppression(det, 0.4, 0.95).coefficients[:, 0].tolist() == [6, 3, 1, 4]
    assert fs.non_max_suppression(det, 0.4, 0.95, max_det=2).coefficients[:, 0].tolist() == [6, 3]
    # a (5 + M, A) array without the batch axis is the same image
    assert fs.non_max_suppression(det[0], 0.4, 0.9).boxes.tolist() == found.boxes.tolist()
    none = fs.non_max_suppression(det, 0.99, 0.9)
    assert len(none) == 0 and none.boxes.shape == (0, 4) and none.coefficients.shape == (0, 2)


def test_non_max_suppression_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="detections must hold one image, got batch 2"):
        fs.non_max_suppression(np.zeros((2, 37, 10), np.float32))
    with pytest.raises(ValueError, match=r"detections must have shape \(1, 5 \+ M, A\), got \(1, 4, 10\)"):
        fs.non_max_suppression(np.zeros((1, 4, 10), np.float32))


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
def test_non_max_suppression_matches_ultralytics(reference_ultralytics, in_size, n_above, conf, iou):
    from ultralytics.utils.nms import non_max_suppression

    torch = reference_ultralytics
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


def test_scale_boxes_hand_cases() -> None:
    # 300x451 -> 681x1024 inside a 704x1024 input, 11 rows above: x * 451 / 1024, (y - 11) * 300 / 681
    boxes = np.array([[0, 11, 1024, 692], [224, 238, 448, 465], [-50, -50, 2000, 2000], [0, 0, 0, 5]], np.float32)
    got = fs.scale_boxes(boxes, (704, 1024), (300, 451))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [[0, 0, 451, 300], [98.65625, 100, 197.3125, 200], [0, 0, 451, 300], [0, 0, 0, 0]],
                               rtol=1e-6)
    assert boxes[2].tolist() == [-50, -50, 2000, 2000]  # the input is not modified
    # portrait: the padding is on the left
    np.testing.assert_allclose(fs.scale_boxes(np.array([[11, 0, 692, 1024]], np.float32), (1024, 704), (451, 300)),
                               [[0, 0, 300, 451]], rtol=1e-6)


@pytest.mark.parametrize("size", IMAGE_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_scale_boxes_inverts_the_letterbox(size) -> None:
    geo = fs.letterbox_geometry(size)
    h, w = size
    rng = np.random.default_rng(h + w)
    corners = np.sort(rng.uniform(0, 1, (50, 2, 2)), axis=1) * [w, h]
    boxes = corners.reshape(50, 4)  # x1, y1, x2, y2 in original pixels, inside the image
    gain_x, gain_y = geo.resized_size[1] / w, geo.resized_size[0] / h
    in_input = boxes * [gain_x, gain_y, gain_x, gain_y] + [geo.left, geo.top, geo.left, geo.top]
    back = fs.scale_boxes(in_input.astype(np.float32), geo.input_size, size)
    np.testing.assert_allclose(back, boxes, rtol=0, atol=1e-3 * max(1.0, 1 / min(gain_x, gain_y)))


@pytest.mark.parametrize("size", IMAGE_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_scale_boxes_matches_ultralytics(reference_ultralytics, size):
    from ultralytics.utils.ops import scale_boxes

    torch = reference_ultralytics
    geo = fs.letterbox_geometry(size)
    in_h, in_w = geo.input_size
    rng = np.random.default_rng(size[0] + size[1])
    boxes = _random_boxes(rng, 200, extent=max(in_h, in_w)) - 20  # some outside: clipped
    expected = scale_boxes((in_h, in_w), torch.from_numpy(boxes.copy()), (*size, 3)).numpy()
    np.testing.assert_array_equal(fs.scale_boxes(boxes, geo.input_size, size), expected)


def _random_boxes(rng, n, extent=200.0):
    xy = rng.uniform(0, extent, (n, 2))
    wh = rng.uniform(1, extent / 3, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def test_border_rule_hand_cases() -> None:
    h, w = 300, 451
    boxes = np.array(
        [
            [5, 5, 100, 100],  # near the top-left corner: snapped there
            [30, 30, 440, 290],  # right and bottom within 20 px: snapped; IoU with the image 0.84: stays
            [10, 10, 445, 295],  # snapped on all sides: the whole image
            [21, 0, 451, 300],  # nothing to snap; IoU 430 / 451 = 0.953 > 0.9: the whole image
            [25, 22, 451, 300],  # IoU 0.875: stays
            [20, 20, 431, 280],  # exactly 20 px from every border: not snapped (< and >, strictly)
            [19.9, 100, 200, 280.1],
        ],
        np.float32,
    )
    got = fs.snap_boxes_to_image(boxes, (h, w))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(
        got,
        np.array(
            [
                [0, 0, 100, 100],
                [30, 30, 451, 300],
                [0, 0, 451, 300],
                [0, 0, 451, 300],
                [25, 22, 451, 300],
                [20, 20, 431, 280],
                [0, 100, 200, 300],
            ],
            np.float32,
        ),
    )
    assert boxes[0].tolist() == [5, 5, 100, 100]  # the input is not modified
    assert fs.snap_boxes_to_image(np.zeros((0, 4), np.float32), (h, w)).shape == (0, 4)


@pytest.mark.parametrize("size", [(300, 451), (1080, 810), (40, 50)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_border_rule_matches_fastsam(reference_ultralytics, size):
    from ultralytics.models.fastsam.utils import adjust_bboxes_to_image_border
    from ultralytics.utils.metrics import box_iou

    torch = reference_ultralytics
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


# (points, labels, the masks ultralytics selects: worked out by hand, and checked against ultralytics
# in the slow tier)
POINT_CASES = [
    ([[5, 5]], [1], [0, 1]),
    ([[6.9, 6.2]], [1], [0, 1, 4]),  # truncated to (6, 6)
    ([[1.99999999, 2.0]], [1], [3]),  # truncated from the given value to (1, 2); a float32 cast made it (2, 2)
    ([[6, 6], [5, 5]], [1, 0], [4]),
    ([[20, 15], [7, 7]], [1, 0], [2]),
    ([[7, 7], [25, 20]], [0, 0], [3]),  # all negative: every mask without a negative point
    ([[31, 23]], [0], [0, 1, 2, 3, 4]),
    ([[32, 24]], [1], []),  # on the far border: clipped to (31, 23), in no mask
    ([[1, 1], [20, 15], [29, 19]], [1, 1, 1], [0, 2, 3]),
    ([[0, 0]], [1], [3]),
]

# (boxes, the masks ultralytics selects)
BOX_CASES = [
    ([[4, 4, 12, 10]], [1]),  # exactly mask 1
    ([[0, 0, 32, 24]], [0]),  # whole image: the largest mask has the highest IoU
    ([[0, 0, 3, 3]], [3]),  # mask 3
    ([[16, 12, 28, 22], [4.7, 4.2, 12.9, 10.1]], [1, 2]),  # int32 truncation
    ([[0, 0, 0.99999999, 24]], [0]),  # x2 truncated to 0 as ultralytics does (a float32 cast made it 1: mask 3)
    ([[30, 0, 32, 2]], [0]),  # touches nothing: IoU 0 for all -> the first mask
    ([[6, 6, 6, 10]], [0]),  # zero width
    ([[6, 6, 8, 8], [6, 6, 8, 8]], [4]),  # the same box twice: one mask
]


def _point_rule(points, labels) -> list[int]:
    masks = _hand_masks()
    xy = fs.point_pixels(validate_prompts((H, W), points=points, labels=labels).points, (H, W))
    values = masks[:, xy[:, 1], xy[:, 0]]
    return np.flatnonzero(fs.select_by_points(values, np.asarray(labels))).tolist()


def _box_rule(boxes) -> list[int]:
    masks = _hand_masks()
    b = fs.box_pixels(validate_prompts((H, W), boxes=boxes).boxes, (H, W))
    inside = np.array([[m[y1:y2, x1:x2].sum() for m in masks] for x1, y1, x2, y2 in b], dtype=np.int64)
    winners = fs.select_by_boxes(inside, masks.sum(axis=(1, 2)).astype(np.int64), b)
    return sorted(set(winners.tolist()))


@pytest.mark.parametrize(("points", "labels", "expected"), POINT_CASES)
def test_point_rule_hand_cases(points, labels, expected):
    assert _point_rule(points, labels) == expected


@pytest.mark.parametrize(("boxes", "expected"), BOX_CASES)
def test_box_rule_hand_cases(boxes, expected):
    assert _box_rule(boxes) == expected


def test_prompt_pixels_truncate_then_clip() -> None:
    xy = fs.point_pixels(np.array([[1.99999999, 2.0], [-0.5, 3.7], [32, 24], [100, -3]]), (H, W))
    assert xy.dtype == np.int64 and xy.tolist() == [[1, 2], [0, 3], [31, 23], [31, 0]]
    b = fs.box_pixels(np.array([[4.7, 4.2, 12.9, 10.1], [-3, -1, 40, 30], [0, 0, 0.99999999, 24]]), (H, W))
    assert b.dtype == np.int32 and b.tolist() == [[4, 4, 12, 10], [0, 0, 32, 24], [0, 0, 0, 24]]


def test_select_by_boxes_ties_take_the_first() -> None:
    boxes = np.array([[0, 0, 10, 10]], np.int32)
    inside = np.array([[50, 50, 80, 0]], np.int64)
    areas = np.array([100, 100, 80, 0], np.int64)  # IoU 0.5, 0.5, 0.8, 0 (an empty mask: 0 / 100)
    assert fs.select_by_boxes(inside, areas, boxes).tolist() == [2]
    assert fs.select_by_boxes(inside[:, :2], areas[:2], boxes).tolist() == [0]
    with pytest.raises(ValueError, match="2 point values per detection but 3 labels"):
        fs.select_by_points(np.zeros((4, 2), bool), np.array([1, 0, 1]))


def _ultralytics_prompt(torch, masks, boxes=None, points=None, labels=None):
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


@pytest.mark.parametrize(("points", "labels", "expected"), POINT_CASES)
def test_point_rule_matches_ultralytics(reference_ultralytics, points, labels, expected):
    reference = _ultralytics_prompt(reference_ultralytics, _hand_masks(), points=points, labels=labels)
    assert _point_rule(points, labels) == reference == expected


@pytest.mark.parametrize(("boxes", "expected"), BOX_CASES)
def test_box_rule_matches_ultralytics(reference_ultralytics, boxes, expected):
    assert _box_rule(boxes) == _ultralytics_prompt(reference_ultralytics, _hand_masks(), boxes=boxes) == expected


# ------------------------------------------------------------------------------------------------
# The engine on network outputs whose masks are known by construction
# ------------------------------------------------------------------------------------------------


class FakeSession:
    """Returns fixed network outputs; checks that it was fed the letterboxed input size."""

    def __init__(self, detections, protos):
        self.detections, self.protos = detections, protos
        self.calls = 0

    def run(self, feeds):
        self.calls += 1
        assert feeds["images"].shape == (1, 3, self.protos.shape[2] * 4, self.protos.shape[3] * 4)
        return {"detections": self.detections, "protos": self.protos}


# A 1024x1024 image: the letterbox is the identity, boxes stay as given, the 256x256 prototypes are
# upsampled 4x. Prototype 0 is 1 everywhere (its mask is the whole box crop); prototype 1 is +1 on
# prototype columns < 128 and -1 from 128 on: bilinear to 1024 columns it is > 0 exactly on columns
# < 512 (column 511 samples 127.375 -> 0.625 - 0.375 > 0; column 512 samples 127.625 -> < 0).
SIDE = 1024
HAND_DETECTIONS = {  # name: (xyxy box, confidence, coefficients)
    "C": ([600, 600, 700, 700], 0.7, [-1, 0]),  # an empty mask (logits -1)
    "E": ([50, 50, 60, 60], float(np.float32(0.4)), [1, 0]),  # at the confidence threshold: dropped
    "B": ([300, 200, 800, 600], 0.8, [0, 1]),  # mask: rows 200..599, columns 300..511
    "F": ([101, 100, 400, 300], 0.85, [1, 0]),  # IoU 0.997 with A: suppressed by NMS
    "A": ([100, 100, 400, 300], 0.9, [1, 0]),  # mask: its box
    "G": ([0, 0, 1024, 1024], 0.1, [1, 0]),  # below the threshold
    "H": ([600, 100, 900, 300], 0.75, [1, 0]),  # mask: its box, the size of A's
    "D": ([5, 5, 1015, 1015], 0.6, [1, 0]),  # mask: rows and columns 5..1014; reported box snapped to the image
}


def _hand_engine(empty: bool = False) -> fs.FastSamEngine:
    """The detections above; ``empty``: every mask empty (logits -1)."""
    rows = [(box, conf, [-1, 0] if empty else coef) for box, conf, coef in HAND_DETECTIONS.values()]
    protos = np.ones((1, 2, SIDE // 4, SIDE // 4), np.float32)
    protos[0, 1, :, SIDE // 8 :] = -1
    engine = fs.FastSamEngine(_folder(coefficients=2), {"network": FakeSession(_detections(rows), protos)})
    engine.set_image(np.zeros((SIDE, SIDE, 3), np.uint8))
    return engine


def _hand_mask(name: str) -> np.ndarray:
    mask = np.zeros((SIDE, SIDE), bool)
    if name == "A":
        mask[100:300, 100:400] = True
    elif name == "H":
        mask[100:300, 600:900] = True
    elif name == "B":
        mask[200:600, 300:512] = True
    elif name == "D":
        mask[5:1015, 5:1015] = True
    return mask


HAND_BOXES = {"A": [100, 100, 400, 300], "B": [300, 200, 800, 600], "H": [600, 100, 900, 300], "D": [0, 0, SIDE, SIDE]}
HAND_SCORES = {"A": 0.9, "B": 0.8, "H": 0.75, "D": 0.6}


def _assert_hand_result(result, names: list[str]) -> None:
    assert len(result) == len(names)
    np.testing.assert_array_equal(result.masks, np.array([_hand_mask(n) for n in names]).reshape(-1, SIDE, SIDE))
    assert result.boxes.tolist() == [HAND_BOXES[n] for n in names]
    np.testing.assert_array_equal(result.scores, np.array([HAND_SCORES[n] for n in names], np.float32))
    assert result.low_res_logits is None and result.prompt_index.tolist() == [0] * len(names)


def test_hand_engine_detections_and_masks() -> None:
    engine = _hand_engine()
    masks = engine._require_state().masks
    assert len(masks) == 5  # A, B, H, C, D (in confidence order): E, F, G are gone
    assert masks.nonempty().tolist() == [True, True, True, False, True]
    for i, name in enumerate("ABHCD"):
        np.testing.assert_array_equal(masks.full_mask(i), _hand_mask(name))
    assert masks.region(4) == (5, 1015, 5, 1015)  # the crop uses the box before the border rule


def test_hand_engine_everything_records() -> None:
    records = _hand_engine().everything(fs.FastSamEverythingParams())
    assert [r["bbox"] for r in records] == [
        [100.0, 100.0, 300.0, 200.0],
        [300.0, 200.0, 500.0, 400.0],
        [600.0, 100.0, 300.0, 200.0],
        [0.0, 0.0, 1024.0, 1024.0],
    ]
    assert [r["area"] for r in records] == [200 * 300, 400 * 212, 200 * 300, 1010 * 1010]
    assert [r["score"] for r in records] == [float(np.float32(s)) for s in (0.9, 0.8, 0.75, 0.6)]
    assert records.image_size == (SIDE, SIDE)
    _assert_hand_result(records.result(), ["A", "B", "H", "D"])
    rle = _hand_engine().everything(fs.FastSamEverythingParams(output_mode="uncompressed_rle"))
    assert rle[0]["segmentation"]["size"] == [SIDE, SIDE]
    np.testing.assert_array_equal(rle.masks, records.masks)
    assert _hand_engine(empty=True).everything(fs.FastSamEverythingParams()) == []  # every mask empty


# (points, labels, boxes) -> the detections selected (worked out by hand from the masks above)
HAND_PROMPTS = [
    ({"points": [[150, 150]], "labels": [1]}, ["A", "D"]),
    ({"points": [[520, 300]], "labels": [1]}, ["D"]),  # column 520: outside B's mask, inside its box
    ({"points": [[450, 250]], "labels": [1]}, ["B", "D"]),
    ({"points": [[450, 250], [150, 150]], "labels": [1, 0]}, ["B"]),  # D holds the negative point
    ({"points": [[150, 150]], "labels": [0]}, ["B", "H"]),  # all negative: non-empty masks without it (not C)
    ({"points": [[1024, 1024]], "labels": [1]}, []),  # clipped to (1023, 1023): in no mask
    ({"boxes": [[100, 100, 400, 300]]}, ["A"]),
    ({"boxes": [[300, 200, 512, 600]]}, ["B"]),  # B's mask exactly (A overlaps it too)
    ({"boxes": [[600, 600, 700, 700]]}, ["D"]),  # C's box, but C's mask is empty
    ({"boxes": [[0, 0, 3, 3]]}, ["A"]),  # IoU 0 with every mask: the first non-empty detection
    ({"boxes": [[600, 100, 900, 300]]}, ["H"]),
    ({"boxes": [[250, 100, 750, 300]]}, ["A"]),  # IoU 3/13 with A and with H: the first one
    ({"boxes": [[300, 200, 512, 600], [100, 100, 400, 300]]}, ["A", "B"]),  # detection order, not box order
    ({"points": [[1000, 20]], "labels": [1], "boxes": [[100, 100, 400, 300]]}, ["A", "D"]),
]


@pytest.mark.parametrize(("prompt", "expected"), HAND_PROMPTS)
def test_hand_engine_prompts(prompt, expected) -> None:
    engine = _hand_engine()
    _assert_hand_result(engine.predict(validate_prompts((SIDE, SIDE), **prompt), True), expected)


def test_hand_engine_without_masks_selects_nothing() -> None:
    engine = _hand_engine(empty=True)
    for prompt in ({"boxes": [[100, 100, 400, 300]]}, {"points": [[150, 150]], "labels": [0]}):
        result = engine.predict(validate_prompts((SIDE, SIDE), **prompt), True)
        assert len(result) == 0 and result.masks.shape == (0, SIDE, SIDE)


# ------------------------------------------------------------------------------------------------
# Mask assembly against a dense evaluation
# ------------------------------------------------------------------------------------------------


def _tent_matrix(n_in: int, n_out: int, scale: float) -> np.ndarray:
    """``(n_out, n_in)`` float64: torch's bilinear (``align_corners=False``) on one axis, as a tent kernel
    at source positions ``(i + 0.5) * scale - 0.5`` clamped to ``[0, n_in - 1]``."""
    src = np.clip((np.arange(n_out) + 0.5) * scale - 0.5, 0, n_in - 1)
    return np.maximum(0.0, 1.0 - np.abs(src[:, None] - np.arange(n_in)[None, :]))


def _smooth_protos(rng, in_h, in_w, n=32):
    """Smooth random prototypes ``(1, n, in_h / 4, in_w / 4)``: a 6 x 8 random grid, bilinear upsampled."""
    coarse = rng.standard_normal((n, 6, 8))
    rows, cols = _tent_matrix(6, in_h // 4, 6 / (in_h // 4)), _tent_matrix(8, in_w // 4, 8 / (in_w // 4))
    return (rows @ coarse @ cols.T)[None].astype(np.float32)


def _dense_retina_logits(protos: np.ndarray, coefficients: np.ndarray, image_size: tuple[int, int]) -> tuple:
    """ultralytics' retina mask logits before the box crop, densely in float64: ``coefficients @
    protos``, bilinear upsampling by the smallest factor f in (1, 2, 4) that puts the letterbox
    padding on whole pixels, crop the padding, bilinear resize to the image. Returns ``(logits, f)``."""
    m, mh, mw = protos.shape
    h, w = image_size
    r = min(4 * mh / h, 4 * mw / w)  # the letterbox gain: the image fills the 4x prototype grid
    new_h, new_w = max(round(h * r), 1), max(round(w * r), 1)
    top, left = round((4 * mh - new_h) / 2 - 0.1), round((4 * mw - new_w) / 2 - 0.1)
    f = next(f for f in (1, 2, 4) if all(v * f % 4 == 0 for v in (top, left, new_h, new_w)))
    up_rows = _tent_matrix(mh, mh * f, 1 / f)[top * f // 4 : (top + new_h) * f // 4]  # (cropped rows, mh)
    up_cols = _tent_matrix(mw, mw * f, 1 / f)[left * f // 4 : (left + new_w) * f // 4]
    rows = _tent_matrix(len(up_rows), h, len(up_rows) / h) @ up_rows  # (h, mh)
    cols = _tent_matrix(len(up_cols), w, len(up_cols) / w) @ up_cols  # (w, mw)
    logits = (coefficients.astype(np.float64) @ protos.reshape(m, -1).astype(np.float64)).reshape(-1, mh, mw)
    return rows @ logits @ cols.T, f


def _box_crop(box: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """ultralytics ``crop_mask``: pixels with ``x1 <= column < x2`` and ``y1 <= row < y2`` (float32)."""
    h, w = image_size
    cols, rows = np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)
    x1, y1, x2, y2 = (np.float32(v) for v in box)
    return ((rows >= y1) & (rows < y2))[:, None] & ((cols >= x1) & (cols < x2))[None, :]


def _synthetic_engine(rng, size, n_above):
    """Random network outputs for an image of ``size`` (many detections' masks empty, some nearly so)
    and a FastSamEngine that has run on them."""
    in_h, in_w = fs.letterbox_geometry(size).input_size
    det = _random_prediction(rng, in_h, in_w, n_above)
    # boxes of all sizes, some hugging the border, some hanging out of the image
    det[0, 2] = rng.uniform(4, in_w, det.shape[2]) ** rng.uniform(0.6, 1.0, det.shape[2])
    det[0, 3] = rng.uniform(4, in_h, det.shape[2]) ** rng.uniform(0.6, 1.0, det.shape[2])
    protos = _smooth_protos(rng, in_h, in_w)
    protos -= np.float32(0.6)
    engine = fs.FastSamEngine(_folder(), {"network": FakeSession(det, protos)})
    engine.set_image(np.zeros((*size, 3), np.uint8))
    return det, protos, engine


# pre-upsampling f = 4 (odd padding: 30x45, 451x300 on the left, 250x1100 upscaled), f = 2 (padding
# 4 mod 8), f = 1 (padding 0 mod 8: 64x47 on the left, 120x1100 upscaled), and 256x256, where the
# upsampled grid is the image
FAST_SIZES = [(30, 45), (191, 256), (64, 47), (256, 256), (451, 300), (250, 1100), (120, 1100)]


@pytest.fixture(scope="module", params=FAST_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def small_synthetic(request):
    size = request.param
    det, protos, engine = _synthetic_engine(np.random.default_rng(size[0] * 31 + size[1]), size, 40)
    return size, det, protos, engine


def test_mask_assembly_equals_dense_evaluation(small_synthetic) -> None:
    size, det, protos, engine = small_synthetic
    masks = engine._require_state().masks
    found = fs.non_max_suppression(det, engine.conf, engine.iou)
    n = len(masks)
    assert n == len(found) >= 10
    dense, f = _dense_retina_logits(protos[0], found.coefficients, size)
    assert masks.factor == f
    h, w = size
    got = masks.logits_at(np.arange(n), np.arange(h), np.arange(w))
    np.testing.assert_allclose(got, dense, rtol=0, atol=2e-4)
    decided = np.abs(dense) > 1e-3  # float32 against float64: only logits this close to 0 may flip
    assert decided.mean() > 0.999
    full = np.stack([masks.full_mask(i) for i in range(n)])
    for i in range(n):
        crop = _box_crop(masks.boxes[i], size)
        expected = (dense[i] > 0) & crop
        assert not full[i][~crop].any()
        np.testing.assert_array_equal(full[i][decided[i]], expected[decided[i]])
        r0, r1, c0, c1 = masks.region(i)
        assert crop[r0:r1, c0:c1].all() and crop.sum() == max(r1 - r0, 0) * max(c1 - c0, 0)
        np.testing.assert_array_equal(masks.box_mask(i), full[i][r0:r1, c0:c1])
    # the table has empty and non-empty masks
    nonempty = full.any(axis=(1, 2))
    assert 0 < nonempty.sum() < n
    np.testing.assert_array_equal(masks.nonempty(), nonempty)
    rng = np.random.default_rng(1)
    xy = np.stack([rng.integers(0, w, 200), rng.integers(0, h, 200)], 1)
    np.testing.assert_array_equal(masks.values_at_points(np.arange(n), xy), full[:, xy[:, 1], xy[:, 0]])
    np.testing.assert_array_equal(masks.values_at_points(np.arange(n)[::3], xy[:7]), full[::3][:, xy[:7, 1], xy[:7, 0]])


def test_engine_selection_equals_the_rules_on_dense_masks(small_synthetic) -> None:
    """Prompts through the engine == the prompt rules applied to every full mask."""
    size, _, _, engine = small_synthetic
    h, w = size
    masks = engine._require_state().masks
    full = np.stack([masks.full_mask(i) for i in range(len(masks))])
    nonempty = np.flatnonzero(full.any(axis=(1, 2)))
    rng = np.random.default_rng(h * w)
    for case in range(12):
        n_points = int(rng.integers(1, 4))
        points = rng.uniform([0, 0], [w, h], (n_points, 2))
        labels = rng.integers(0, 2, n_points) if case % 3 else np.zeros(n_points, np.int64)
        corners = np.sort(rng.uniform(0, 1, (2, 2)), axis=0) * [w, h]
        box = corners.reshape(1, 4)
        for prompt in ({"points": points, "labels": labels}, {"boxes": box}):
            prompts = validate_prompts(size, **prompt)
            chosen = np.zeros(len(masks), bool)
            if prompts.boxes is not None:
                b = fs.box_pixels(prompts.boxes, size)
                x1, y1, x2, y2 = b[0]
                inside = full[nonempty][:, y1:y2, x1:x2].sum(axis=(1, 2))[None].astype(np.int64)
                chosen[nonempty[fs.select_by_boxes(inside, full[nonempty].sum(axis=(1, 2)), b)]] = True
            else:
                xy = fs.point_pixels(prompts.points, size)
                values = full[nonempty][:, xy[:, 1], xy[:, 0]]
                chosen[nonempty[fs.select_by_points(values, prompts.labels)]] = True
            result = engine.predict(prompts, True)
            np.testing.assert_array_equal(result.masks, full[chosen])


# ------------------------------------------------------------------------------------------------
# Whole post-processing against ultralytics on synthetic network outputs (FastSAMPredictor.postprocess)
# ------------------------------------------------------------------------------------------------


def _ultralytics_postprocess(torch, det, protos, image_size, prompts, conf=0.4, iou=0.9):
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
def synthetic(request, reference_ultralytics):
    """Synthetic network outputs, our engine on them, and ultralytics' un-prompted result and predictor."""
    size = request.param
    det, protos, engine = _synthetic_engine(np.random.default_rng(size[0] * 31 + size[1]), size, 150)
    predictor, reference = _ultralytics_postprocess(reference_ultralytics, det, protos, size, {})
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
    records = engine.everything(fs.FastSamEverythingParams())
    # bbox is XYWH of ultralytics' XYXY box; XYXY from it again in float64 is exact
    bboxes = np.array([r["bbox"] for r in records], np.float64).reshape(-1, 4)
    assert bboxes.tolist() == [ops.xyxy_to_xywh(b) for b in ref.boxes.xyxy.numpy()]
    boxes = np.concatenate([bboxes[:, :2], bboxes[:, :2] + bboxes[:, 2:]], axis=1).astype(np.float32)
    result = records.result()
    result.boxes = boxes
    _assert_same(result, ref, size, "everything")
    assert [r["area"] for r in records] == result.masks.sum(axis=(1, 2)).tolist()
    found = fs.non_max_suppression(det)
    assert 0 < len(records) < len(found), "the table should exercise the empty-mask rule"


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


def test_prompted_postprocess_equals_prompt_on_unprompted_results(reference_ultralytics):
    """The prompt tests call ``predictor.prompt`` on one un-prompted result; check that shortcut once."""
    size = (300, 451)
    rng = np.random.default_rng(5)
    in_h, in_w = fs.letterbox_geometry(size).input_size
    det, protos = _random_prediction(rng, in_h, in_w, 60), _smooth_protos(rng, in_h, in_w)
    prompts = {"points": [[200, 100], [50, 60]], "labels": [1, 0], "bboxes": [[10, 10, 200, 250]]}
    _, direct = _ultralytics_postprocess(reference_ultralytics, det, protos, size, prompts)
    predictor, unprompted = _ultralytics_postprocess(reference_ultralytics, det, protos, size, {})
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
    result = engine.predict(validate_prompts(size, points, labels, boxes), True)
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
    eng = fs.FastSamEngine(_folder(), {"network": FakeSession(det, protos)}, conf=0.4, iou=0.9)
    eng.set_image(np.zeros((300, 451, 3), np.uint8))
    return eng


def test_engine_rejects_unsupported_prompts(engine):
    # the Predictor validates prompts with the engine's low_res_size: None, so no mask input
    assert engine.low_res_size is None and engine.family == "fastsam" and engine.model_name == "fastsam_s"
    point = np.array([[10, 10]], np.float32)
    with pytest.raises(ValueError, match="this model takes no mask_input"):
        validate_prompts((300, 451), point, [1], None, np.zeros((1, 256, 256), np.float32), engine.low_res_size)
    with pytest.raises(ValueError, match="predict needs points and/or boxes; no prompt was given"):
        validate_prompts((300, 451), low_res_size=engine.low_res_size)


def test_engine_needs_an_image_and_rgb_uint8():
    det = _random_prediction(np.random.default_rng(0), 64, 64, 5)
    eng = fs.FastSamEngine(_folder(), {"network": FakeSession(det, np.zeros((1, 32, 16, 16), np.float32))})
    with pytest.raises(RuntimeError, match="no image is set"):
        eng.predict(validate_prompts((64, 64), [[1, 1]], [1]), True)
    with pytest.raises(RuntimeError, match="no image is set"):
        eng.everything(fs.FastSamEverythingParams())
    with pytest.raises(ValueError, match=r"RGB uint8 array \(H, W, 3\), got float64"):
        eng.set_image(np.zeros((10, 10, 3)))
    with pytest.raises(ValueError, match=r"conf must be a number in \[0, 1\], got 1.5"):
        fs.FastSamEngine(_folder(), {"network": None}, conf=1.5)
    with pytest.raises(ValueError, match=r"iou must be a number in \[0, 1\], got True"):
        fs.FastSamEngine(_folder(), {"network": None}, iou=True)
    with pytest.raises(ValueError, match="needs a session for graph 'network'"):
        fs.FastSamEngine(_folder(), {"encoder": None})
    with pytest.raises(ModelFolderError, match="needs a fastsam model folder with letterbox resizing, got family 's"):
        fs.FastSamEngine(_folder("mobile_sam"), {"network": None})


def test_engine_refuses_malformed_network_outputs():
    eng = fs.FastSamEngine(_folder(), {"network": FakeSession(np.zeros((1, 37, 10), np.float32),
                                                              np.zeros((1, 32, 16, 16), np.float32))})
    eng.session = types.SimpleNamespace(run=lambda feeds: {"detections": np.zeros((1, 37, 10), np.float32)})
    with pytest.raises(ValueError, match=r"outputs must include 'detections' and 'protos', got \['detections'\]"):
        eng.set_image(np.zeros((64, 64, 3), np.uint8))
    eng.session = types.SimpleNamespace(
        run=lambda feeds: {"detections": np.zeros((1, 37, 10), np.float32), "protos": np.zeros((1, 32, 8, 8))}
    )
    with pytest.raises(ValueError, match=r"protos must be \(1, 32, 160, 256\) for a 640x1024 input, got \(1, 32, 8, 8"):
        eng.set_image(np.zeros((40, 64, 3), np.uint8))
    eng.session = types.SimpleNamespace(run=lambda feeds: {"detections": np.zeros((37, 10), np.float32), "protos": 0})
    with pytest.raises(ValueError, match=r"detections must be \(1, 37, A\) \(5 \+ 32 mask coefficients\), got \(37,"):
        eng.set_image(np.zeros((64, 64, 3), np.uint8))
    eng.session = types.SimpleNamespace(run=lambda feeds: {"detections": np.zeros((1, 7, 10), np.float32), "protos": 0})
    with pytest.raises(ValueError, match=r"detections must be \(1, 37, A\) .* got \(1, 7, 10\)"):
        eng.set_image(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ModelFolderError, match="'extra' entry needs num_mask_coefficients for a FastSAM model"):
        fs.FastSamEngine(ModelFolder(Path("/nonexistent"), {"model": "fastsam_s", "family": "fastsam"}, SPEC),
                         {"network": None})


def test_engine_everything_params():
    eng = fs.FastSamEngine(_folder(), {"network": None})
    assert eng.everything_params({}) == fs.FastSamEverythingParams("binary_mask")
    assert eng.everything_params({"output_mode": "coco_rle"}).to_dict() == {"output_mode": "coco_rle"}
    with pytest.raises(ValueError, match=r"takes only output_mode .* parameter\(s\) \[.points_per_side.\]"):
        eng.everything_params({"points_per_side": 16})
    with pytest.raises(ValueError, match="output_mode must be one of"):
        eng.everything_params({"output_mode": "polygons"})


def test_image_embedding_round_trip(engine):
    prompt = validate_prompts((300, 451), [[200, 150]], [1], [[50, 50, 300, 250]])
    before = engine.predict(prompt, True)
    assert len(before) > 0
    embedding = engine.get_image_embedding()
    assert embedding.original_size == (300, 451) and embedding.input_size == (704, 1024)
    other = fs.FastSamEngine(_folder(), {"network": FakeSession(None, None)})
    other.set_image_embedding(embedding)  # no network run
    after = other.predict(prompt, True)
    np.testing.assert_array_equal(after.masks, before.masks)
    np.testing.assert_array_equal(after.scores, before.scores)
    with pytest.raises(ValueError, match="made by 'fastsam_s', this engine runs 'fastsam_x'"):
        fs.FastSamEngine(_folder("fastsam_x"), {"network": None}).set_image_embedding(embedding)
    with pytest.raises(ValueError, match="expected a FastSamImageEmbedding, got ndarray"):
        other.set_image_embedding(embedding.protos)
