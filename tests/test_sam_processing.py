"""SAM-family pre- and post-processing (``fastseg.sam``), and ``SamEngine`` on stand-in sessions.

Fast tier: hand-computed cases and dense float64 references written here (resize shapes, the
normalisation, prompt layout, upscaling as explicit matrices), and the engine with fake sessions.
Slow tier (``reference_*`` fixtures): the same functions against segment_anything's own
(``ResizeLongestSide``, ``Sam.preprocess``, ``PromptEncoder``, ``Sam.postprocess_masks``, torch's
``F.interpolate``); no model is built except the small prompt encoder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from fastseg import sam as rt
from fastseg.manifest import ModelFolder, ModelFolderError
from fastseg.prompts import validate_prompts
from fastseg.registry import get_spec

SPEC = get_spec("mobile_sam")
SIZES = [  # (H, W): landscape, portrait, square, tiny, extreme, odd, already 1024, larger than 1024
    (1080, 1920),
    (1920, 1080),
    (300, 451),
    (512, 512),
    (1, 1),
    (3, 2000),
    (2000, 7),
    (767, 1023),
    (1024, 1024),
    (1024, 700),
    (1365, 1024),
    (3000, 4000),
]


@pytest.fixture(scope="module")
def reference_segment_anything() -> SimpleNamespace:
    """torch and segment_anything's pieces (marks a test slow)."""
    from conftest import import_torch

    torch = import_torch()
    import torch.nn.functional as F  # noqa: N812
    from segment_anything.modeling import PromptEncoder, Sam
    from segment_anything.utils.transforms import ResizeLongestSide

    return SimpleNamespace(torch=torch, F=F, PromptEncoder=PromptEncoder, Sam=Sam, ResizeLongestSide=ResizeLongestSide)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A photo-like RGB uint8 image: smooth gradients plus noise (resampling errors would show)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255.0 / max(w, 1), yy * 255.0 / max(h, 1), (xx + yy) % 256], axis=-1)
    return np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Resize and normalisation

# ResizeLongestSide.get_preprocess_shape: scale long_side / max(h, w), each side int(x + 0.5)
PREPROCESS_SHAPES = {
    (300, 451): (681, 1024),  # 681.15
    (1080, 1920): (576, 1024),
    (767, 1023): (768, 1024),  # 767.75 -> 768: the short side can grow
    (5, 2048): (3, 1024),  # 2.5 -> 3: half up (Python's round would give 2)
    (2048, 5): (1024, 3),
    (3, 2000): (2, 1024),  # 1.536
    (1, 1): (1024, 1024),
    (1365, 1024): (1024, 768),  # 768.19
    (7, 3): (1024, 439),  # 438.86
    (683, 1025): (682, 1024),  # 682.33: shrinking
    (1024, 1024): (1024, 1024),
}


@pytest.mark.parametrize(("size", "expected"), PREPROCESS_SHAPES.items())
def test_preprocess_shape_hand_cases(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert rt.preprocess_shape(*size, 1024) == expected


def test_preprocess_shape_rejects_empty() -> None:
    with pytest.raises(ValueError, match=r"at least 1x1, got 0x5"):
        rt.preprocess_shape(0, 5, 1024)


@pytest.mark.parametrize("size", SIZES + list(PREPROCESS_SHAPES))
def test_preprocess_shape(reference_segment_anything, size: tuple[int, int]) -> None:
    expected = reference_segment_anything.ResizeLongestSide.get_preprocess_shape(*size, 1024)
    assert rt.preprocess_shape(*size, 1024) == expected


def test_resize_longest_side_hand_cases() -> None:
    image = _image(1024, 700)
    assert rt.resize_longest_side(image, 1024) is image  # already the size: untouched, as the original
    flat = np.full((300, 451, 3), 93, np.uint8)
    resized = rt.resize_longest_side(flat, 1024)
    assert resized.shape == (681, 1024, 3) and resized.dtype == np.uint8 and (resized == 93).all()
    # Pillow's bilinear filter (antialiased when shrinking), which torchvision's resize of a PIL image is
    photo = _image(300, 451, seed=3)
    pil = np.asarray(Image.fromarray(photo).resize((1024, 681), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(rt.resize_longest_side(photo, 1024), pil)
    # a horizontal ramp stays a non-decreasing ramp
    ramp = np.repeat(np.repeat(np.linspace(0, 255, 451).astype(np.uint8)[None, :, None], 30, 0), 3, 2)
    out = rt.resize_longest_side(ramp, 1024)[..., 0].astype(int)
    assert out.shape == (68, 1024) and (np.diff(out, axis=1) >= 0).all() and out[:, 0].max() <= 1
    assert out[:, -1].min() >= 254


@pytest.mark.parametrize("size", SIZES)
def test_resize_is_bit_exact(reference_segment_anything, size: tuple[int, int]) -> None:
    image = _image(*size)
    expected = reference_segment_anything.ResizeLongestSide(1024).apply_image(image)
    got = rt.resize_longest_side(image, 1024)
    assert got.dtype == np.uint8 and got.shape == expected.shape
    assert np.array_equal(got, expected)


def test_resize_is_bit_exact_on_photos(reference_segment_anything, photos: dict[str, np.ndarray]) -> None:
    transform = reference_segment_anything.ResizeLongestSide(1024)
    for name, image in photos.items():
        assert np.array_equal(rt.resize_longest_side(image, 1024), transform.apply_image(image)), name


def _normalised(resized: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` per RGB channel in float32, ``(3, h, w)``, from the spec's constants."""
    mean = np.array([123.675, 116.28, 103.53], np.float32)[:, None, None]
    std = np.array([58.395, 57.12, 57.375], np.float32)[:, None, None]
    return (resized.transpose(2, 0, 1).astype(np.float32) - mean) / std


def test_preprocess_normalises_and_pads_bottom_right() -> None:
    assert SPEC.pixel_mean == (123.675, 116.28, 103.53) and SPEC.pixel_std == (58.395, 57.12, 57.375)
    image = _image(1024, 700, seed=1)  # long side already 1024: no resize
    got, input_size = rt.preprocess(image, SPEC)
    assert got.dtype == np.float32 and got.shape == (1, 3, 1024, 1024) and input_size == (1024, 700)
    np.testing.assert_array_equal(got[0, :, :, :700], _normalised(image))
    assert (got[0, :, :, 700:] == 0).all()
    image = _image(300, 451, seed=2)
    got, input_size = rt.preprocess(image, SPEC)
    assert input_size == (681, 1024)
    np.testing.assert_array_equal(got[0, :, :681], _normalised(rt.resize_longest_side(image, 1024)))
    assert (got[0, :, 681:] == 0).all()
    # one colour: one value per channel inside, zero padding outside
    got, _ = rt.preprocess(np.full((2000, 7, 3), (10, 200, 60), np.uint8), SPEC)
    inside = got[0, :, :, :4]  # 2000x7 -> 1024x4
    expected = (np.array([10, 200, 60], np.float32) - np.array(SPEC.pixel_mean, np.float32)) / np.array(
        SPEC.pixel_std, np.float32
    )
    for c in range(3):
        assert (inside[c] == expected[c]).all()
    assert (got[0, :, :, 4:] == 0).all()


def test_preprocess_reads_the_spec() -> None:
    small = dataclasses.replace(SPEC, input_size=64, pixel_mean=(0.0, 0.0, 0.0), pixel_std=(1.0, 2.0, 4.0))
    image = _image(30, 40, seed=4)
    got, input_size = rt.preprocess(image, small)
    assert got.shape == (1, 3, 64, 64) and input_size == (48, 64)
    resized = rt.resize_longest_side(image, 64).transpose(2, 0, 1).astype(np.float32)
    np.testing.assert_array_equal(got[0, :, :48], resized / np.array([1, 2, 4], np.float32)[:, None, None])


@pytest.mark.parametrize("size", [(300, 451), (1080, 1920), (1024, 1024), (2000, 7)])
def test_preprocess_matches_sam_preprocess(reference_segment_anything, size: tuple[int, int]) -> None:
    ref = reference_segment_anything
    torch = ref.torch
    image = _image(*size, seed=1)
    # Sam.preprocess needs only these attributes of the model.
    fake_sam = SimpleNamespace(
        pixel_mean=torch.tensor(SPEC.pixel_mean).view(-1, 1, 1),
        pixel_std=torch.tensor(SPEC.pixel_std).view(-1, 1, 1),
        image_encoder=SimpleNamespace(img_size=1024),
    )
    resized = ref.ResizeLongestSide(1024).apply_image(image)
    x = torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None]
    expected = ref.Sam.preprocess(fake_sam, x).numpy()
    got, input_size = rt.preprocess(image, SPEC)
    assert got.dtype == np.float32 and got.shape == (1, 3, 1024, 1024)
    assert input_size == resized.shape[:2]
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10, 3))])
def test_preprocess_rejects_wrong_images(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"image must be RGB uint8 \(H, W, 3\), got"):
        rt.preprocess(bad, SPEC)


# ----------------------------------------------------------------------------------------------
# Prompt coordinates and layout


def test_coords_and_boxes_hand_cases() -> None:
    # 100x200 -> 512x1024: both axes scale by 5.12
    xy = rt.transform_coords(np.array([[10.0, 20.0], [200.0, 100.0], [0.0, 0.0]]), (100, 200), 1024)
    assert xy.dtype == np.float32
    np.testing.assert_array_equal(xy, np.array([[51.2, 102.4], [1024, 512], [0, 0]], np.float32))
    # 300x451 -> 681x1024: x * 1024 / 451, y * 681 / 300
    xy = rt.transform_coords(np.array([[225.5, 150.0], [451.0, 300.0]]), (300, 451), 1024)
    np.testing.assert_allclose(xy, [[512, 340.5], [1024, 681]], rtol=1e-7)
    # any leading shape; the input is not modified
    grid = np.ones((2, 3, 2))
    assert rt.transform_coords(grid, (100, 200), 1024).shape == (2, 3, 2) and (grid == 1).all()
    boxes = rt.transform_boxes(np.array([[0, 0, 50, 60], [10, 20, 200, 100]], np.float32), (100, 200), 1024)
    np.testing.assert_array_equal(boxes, np.array([[0, 0, 256, 307.2], [51.2, 102.4, 1024, 512]], np.float32))
    with pytest.raises(ValueError, match=r"coordinates must have shape \(\.\.\., 2\), got \(3,\)"):
        rt.transform_coords(np.zeros(3), (10, 10), 1024)
    with pytest.raises(ValueError, match=r"boxes must have shape \(B, 4\), got \(4,\)"):
        rt.transform_boxes(np.zeros(4), (10, 10), 1024)


@pytest.mark.parametrize("size", SIZES)
def test_coords_and_boxes(reference_segment_anything, size: tuple[int, int]) -> None:
    h, w = size
    rng = np.random.default_rng(2)
    points = (rng.random((7, 2)) * [w, h]).astype(np.float32)
    boxes = np.sort((rng.random((5, 2, 2)) * [w, h]).astype(np.float32), axis=1).reshape(5, 4)
    transform = reference_segment_anything.ResizeLongestSide(1024)
    # The original hands float64 results to torch as float32.
    assert np.array_equal(
        rt.transform_coords(points, size, 1024), transform.apply_coords(points, size).astype(np.float32)
    )
    assert np.array_equal(rt.transform_boxes(boxes, size, 1024), transform.apply_boxes(boxes, size).astype(np.float32))


def _f32(values) -> list:
    return np.asarray(values, np.float32).tolist()


def test_prompt_layout_points_then_padding_without_a_box() -> None:
    points = np.array([[10.0, 20.0], [30, 40]])
    coords, labels = rt.build_prompt_arrays(points, np.array([1, 0]), None, (100, 200), 1024)
    assert coords.dtype == labels.dtype == np.float32 and coords.flags.c_contiguous and labels.flags.c_contiguous
    assert coords.tolist() == [_f32([[51.2, 102.4], [153.6, 204.8], [0, 0]])]
    assert labels.tolist() == [[1, 0, -1]]
    _, labels = rt.build_prompt_arrays(np.array([[10.0, 20.0]]), None, None, (100, 200), 1024)
    assert labels.tolist() == [[1, -1]]  # no labels: foreground


def test_prompt_layout_box_corners_and_no_padding() -> None:
    coords, labels = rt.build_prompt_arrays(None, None, np.array([[0.0, 0, 50, 60]]), (100, 200), 1024)
    assert coords.tolist() == [_f32([[0, 0], [256, 307.2]])] and labels.tolist() == [[2, 3]]
    coords, labels = rt.build_prompt_arrays(
        np.array([[10.0, 20.0]]), np.array([0]), np.array([[0.0, 0, 50, 60]]), (100, 200), 1024
    )
    assert labels.tolist() == [[0, 2, 3]]
    assert coords.tolist() == [_f32([[51.2, 102.4], [0, 0], [256, 307.2]])]


def test_prompt_layout_shares_points_across_boxes() -> None:
    boxes = np.array([[0.0, 0, 50, 60], [10, 20, 200, 100], [1, 1, 2, 2]])
    coords, labels = rt.build_prompt_arrays(np.array([[10.0, 20.0]]), np.array([1]), boxes, (100, 200), 1024)
    assert coords.shape == (3, 3, 2) and labels.tolist() == [[1, 2, 3]] * 3
    assert (coords[:, 0] == np.float32([51.2, 102.4])).all()  # the point, in every set
    assert coords[1, 1:].tolist() == [_f32([51.2, 102.4]), _f32([1024, 512])]
    assert coords[2, 1:].tolist() == [_f32([5.12, 5.12]), _f32([10.24, 10.24])]
    coords, labels = rt.build_prompt_arrays(None, None, boxes, (100, 200), 1024)
    assert coords.shape == (3, 2, 2) and labels.tolist() == [[2, 3]] * 3


def test_prompt_layout_one_prompt_set_per_point_row() -> None:
    """points (B, N, 2) with labels (B, N): everything mode's grid, one padded set per row."""
    points = np.array([[[10.0, 20.0]], [[30.0, 40.0]], [[0.0, 100.0]]])
    coords, labels = rt.build_prompt_arrays(points, np.array([[1], [0], [1]]), None, (100, 200), 1024)
    assert coords.shape == (3, 2, 2) and labels.tolist() == [[1, -1], [0, -1], [1, -1]]
    assert coords.tolist() == [
        _f32([[51.2, 102.4], [0, 0]]),
        _f32([[153.6, 204.8], [0, 0]]),
        _f32([[0, 512], [0, 0]]),
    ]
    coords, labels = rt.build_prompt_arrays(np.zeros((4, 2, 2)), None, None, (100, 200), 1024)
    assert coords.shape == (4, 3, 2) and labels.tolist() == [[1, 1, -1]] * 4


def _bare_decoder(pe) -> SimpleNamespace:
    return SimpleNamespace(
        pe_layer=pe.pe_layer,
        point_embeddings=pe.point_embeddings,
        not_a_point_embed=pe.not_a_point_embed,
        input_h=pe.input_image_size[0],
        input_w=pe.input_image_size[1],
    )


PROMPTS = {
    "one point": (np.array([[120.0, 80.0]]), np.array([1]), None),
    "points": (np.array([[120.0, 80.0], [10.0, 290.0], [400.0, 5.0]]), np.array([1, 0, 1]), None),
    "box": (None, None, np.array([[20.0, 30.0, 300.0, 250.0]])),
    "box + points": (
        np.array([[120.0, 80.0], [10.0, 290.0]]),
        np.array([1, 0]),
        np.array([[20.0, 30.0, 300.0, 250.0]]),
    ),
    "boxes": (None, None, np.array([[20.0, 30.0, 300.0, 250.0], [0.0, 0.0, 451.0, 300.0], [5.0, 5.0, 6.0, 6.0]])),
    "boxes + point": (
        np.array([[120.0, 80.0]]),
        np.array([0]),
        np.array([[20.0, 30.0, 300.0, 250.0], [1.0, 2.0, 3.0, 4.0]]),
    ),
}


@pytest.mark.parametrize("case", PROMPTS)
def test_prompt_layout_gives_the_original_sparse_embeddings(reference_segment_anything, case: str) -> None:
    """build_prompt_arrays + the exported graph's point embedding == PromptEncoder(points, boxes)."""
    from fastseg_export.sam import SamDecoder

    ref = reference_segment_anything
    torch = ref.torch
    points, labels, boxes = PROMPTS[case]
    size = (300, 451)
    torch.manual_seed(0)
    encoder = ref.PromptEncoder(
        embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16
    )
    coords, point_labels = rt.build_prompt_arrays(
        None if points is None else points.astype(np.float32),
        labels,
        None if boxes is None else boxes.astype(np.float32),
        size,
        1024,
    )
    n_sets = 1 if boxes is None else len(boxes)
    n_points = 0 if points is None else len(points)
    assert coords.shape == (n_sets, n_points + (1 if boxes is None else 2), 2)
    assert coords.dtype == np.float32 and point_labels.dtype == np.float32

    transform = ref.ResizeLongestSide(1024)
    torch_points = None
    if points is not None:
        xy = torch.as_tensor(transform.apply_coords(points, size), dtype=torch.float)[None].expand(n_sets, -1, -1)
        torch_points = (xy, torch.as_tensor(labels, dtype=torch.int)[None].expand(n_sets, -1))
    torch_boxes = None if boxes is None else torch.as_tensor(transform.apply_boxes(boxes, size), dtype=torch.float)
    with torch.no_grad():
        expected, _ = encoder(points=torch_points, boxes=torch_boxes, masks=None)
        # SamDecoder.embed_points reads only the prompt encoder's parts
        got = SamDecoder.embed_points(_bare_decoder(encoder), torch.from_numpy(coords), torch.from_numpy(point_labels))
    # equal up to float32 rounding of the Fourier features (different matmul shapes round differently)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Mask upscaling


def _tent_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` float64: torch's bilinear (``align_corners=False``) on one axis as a tent kernel:
    output ``i`` samples the input at ``(i + 0.5) * n_in / n_out - 0.5``, clamped to ``[0, n_in - 1]``."""
    src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    return np.maximum(0.0, 1.0 - np.abs(src[:, None] - np.arange(n_in)[None, :]))


def _postprocess_axis(input_len: int, original_len: int, low_res: int = 256, padded: int = 1024) -> np.ndarray:
    """``Sam.postprocess_masks`` along one axis, ``(original_len, low_res)``: bilinear to the padded
    size, keep the first ``input_len`` samples, bilinear to the original size."""
    return _tent_matrix(input_len, original_len) @ _tent_matrix(low_res, padded)[:input_len]


def _dense_postprocess(logits: np.ndarray, input_size: tuple[int, int], original_size: tuple[int, int]) -> np.ndarray:
    """``Sam.postprocess_masks`` densely in float64 (separable: rows, then columns)."""
    wy = _postprocess_axis(input_size[0], original_size[0])
    wx = _postprocess_axis(input_size[1], original_size[1])
    return wy @ logits.astype(np.float64) @ wx.T


def _low_res_logits(n: int, seed: int) -> np.ndarray:
    """Mask-like logits: a smooth random field (std ~3) with a block of exact zeros and sharp edges."""
    coarse = np.random.default_rng(seed).standard_normal((n, 9, 9)) * 3
    up = _tent_matrix(9, 256)
    logits = up @ coarse @ up.T
    logits[:, 100:140, 30:90] = 0.0
    logits[:, 200:, 200:] = np.where(logits[:, 200:, 200:] > 0, 8.0, -8.0)
    return np.ascontiguousarray(logits, dtype=np.float32)


@pytest.mark.parametrize(
    ("n_in", "n_out"), [(256, 1024), (576, 1080), (1024, 300), (7, 3), (3, 7), (1, 5), (5, 1), (4, 4)]
)
def test_interpolation_matrix_is_the_tent_kernel(n_in: int, n_out: int) -> None:
    got = rt.interpolation_matrix(n_in, n_out)
    assert got.shape == (n_out, n_in) and got.dtype == np.float64
    np.testing.assert_allclose(got, _tent_matrix(n_in, n_out), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-12)


def test_interpolation_matrix_hand_case() -> None:
    assert rt.interpolation_matrix(2, 4).tolist() == [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]]
    assert rt.interpolation_matrix(4, 2).tolist() == [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]]


@pytest.mark.parametrize(
    ("n_in", "n_out"), [(256, 1024), (576, 1080), (1024, 300), (7, 3), (3, 7), (1, 5), (5, 1), (4, 4)]
)
def test_interpolation_matrix_is_torch_bilinear(reference_segment_anything, n_in: int, n_out: int) -> None:
    torch = reference_segment_anything.torch
    eye = torch.eye(n_in, dtype=torch.float64).reshape(1, 1, n_in, n_in)  # column j = unit impulse at j
    expected = reference_segment_anything.F.interpolate(eye, size=(n_out, n_in), mode="bilinear", align_corners=False)
    got = rt.interpolation_matrix(n_in, n_out)
    np.testing.assert_allclose(got, expected[0, 0].numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize(("input_len", "original_len"), [(681, 300), (1024, 451), (1024, 3000), (2, 3), (1024, 1024),
                                                         (576, 1080), (1, 1), (4, 2000)])
def test_upscale_matrix_is_the_composition(input_len: int, original_len: int) -> None:
    got = rt.upscale_matrix(256, 1024, input_len, original_len)
    assert got.shape == (original_len, 256)
    np.testing.assert_allclose(got, _postprocess_axis(input_len, original_len), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-12)
    nonzero = got != 0
    assert (nonzero.sum(axis=1) <= 3).all()  # at most three adjacent low-res samples per output
    span = nonzero.shape[1] - 1 - nonzero[:, ::-1].argmax(axis=1) - nonzero.argmax(axis=1)
    assert (span <= 2).all()


# the photo-like sizes except 3000x4000, whose dense float64 reference takes seconds
FAST_UPSCALE_SIZES = [s for s in SIZES if s != (3000, 4000)]


@pytest.mark.parametrize("size", FAST_UPSCALE_SIZES)
def test_upscaling_equals_the_dense_reference(size: tuple[int, int]) -> None:
    logits = _low_res_logits(2, seed=sum(size))
    input_size = rt.preprocess_shape(*size, 1024)
    expected = _dense_postprocess(logits, input_size, size)
    plan = rt.UpscalePlan(input_size, size)
    got = plan.logits(logits)
    assert got.shape == (2, *size) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    masks = plan.masks(logits)
    assert masks.shape == (2, *size) and masks.dtype == np.bool_
    assert np.array_equal(masks, got > 0)  # the fused threshold is the threshold of the same numbers
    # float32 against float64: only logits this close to 0 may flip (exact zeros stay exact)
    decided = (np.abs(expected) > 1e-3) | (expected == 0)
    assert decided.mean() > 0.999
    np.testing.assert_array_equal(masks[decided], expected[decided] > 0)
    decided = np.abs(expected - 1.5) > 1e-3
    np.testing.assert_array_equal(plan.masks(logits, threshold=1.5)[decided], expected[decided] > 1.5)


def test_upscale_plan_with_other_sizes() -> None:
    """A low-resolution size and padded size other than SAM's 256 / 1024 (the engine takes them from the folder)."""
    logits = _low_res_logits(1, seed=9)[:, ::2, ::2].copy()  # (1, 128, 128)
    plan = rt.UpscalePlan((40, 64), (50, 80), low_res=128, padded=64)
    wy = _tent_matrix(40, 50) @ _tent_matrix(128, 64)[:40]
    wx = _tent_matrix(64, 80) @ _tent_matrix(128, 64)
    np.testing.assert_allclose(plan.logits(logits)[0], wy @ logits[0].astype(np.float64) @ wx.T, rtol=0, atol=1e-4)


def test_upscale_masks_helper_and_empty_batch() -> None:
    logits = _low_res_logits(2, seed=5)
    expected = _dense_postprocess(logits, (576, 1024), (1080, 1920))
    got = rt.upscale_masks(logits, (576, 1024), (1080, 1920))
    decided = np.abs(expected) > 1e-3
    np.testing.assert_array_equal(got[decided], expected[decided] > 0)
    empty = rt.UpscalePlan((576, 1024), (1080, 1920)).masks(np.zeros((0, 256, 256), np.float32))
    assert empty.shape == (0, 1080, 1920)


def test_upscale_plan_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match=r"input_size must lie within 1024x1024, got \(1025, 3\)"):
        rt.UpscalePlan((1025, 3), (10, 10))
    with pytest.raises(ValueError, match=r"original_size must be at least 1x1, got \(0, 10\)"):
        rt.UpscalePlan((10, 10), (0, 10))
    with pytest.raises(ValueError, match=r"logits must have shape \(M, 256, 256\), got \(2, 128, 128\)"):
        rt.UpscalePlan((576, 1024), (1080, 1920)).masks(np.zeros((2, 128, 128), np.float32))


def _postprocess(ref: SimpleNamespace, logits: np.ndarray, input_size, original_size) -> np.ndarray:
    """segment_anything's Sam.postprocess_masks (the model is only asked for image_encoder.img_size)."""
    fake_sam = SimpleNamespace(image_encoder=SimpleNamespace(img_size=1024))
    with ref.torch.no_grad():
        out = ref.Sam.postprocess_masks(fake_sam, ref.torch.from_numpy(logits)[None], input_size, original_size)
    return out[0].numpy()


@pytest.mark.parametrize("size", SIZES)
def test_upscaling_matches_postprocess_masks(reference_segment_anything, size: tuple[int, int]) -> None:
    logits = _low_res_logits(3, seed=sum(size))
    input_size = rt.preprocess_shape(*size, 1024)
    expected = _postprocess(reference_segment_anything, logits, input_size, size)
    plan = rt.UpscalePlan(input_size, size)
    got = plan.logits(logits)
    assert got.shape == (3, *size) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    masks = plan.masks(logits)
    assert masks.shape == (3, *size) and masks.dtype == np.bool_
    assert np.array_equal(masks, got > 0)  # the fused threshold is the threshold of the same numbers
    agreement = (masks == (expected > 0)).mean(axis=(1, 2))
    assert agreement.min() >= 0.9999, agreement
    # A non-zero threshold, as a model's mask_threshold could be.
    assert (plan.masks(logits, threshold=1.5) == (expected > 1.5)).mean() >= 0.9999


def test_upscale_masks_helper_matches_postprocess_masks(reference_segment_anything) -> None:
    logits = _low_res_logits(2, seed=5)
    expected = _postprocess(reference_segment_anything, logits, (576, 1024), (1080, 1920)) > 0
    assert (rt.upscale_masks(logits, (576, 1024), (1080, 1920)) == expected).mean() >= 0.9999


# ----------------------------------------------------------------------------------------------
# SamEngine with stand-in sessions: the state and error handling, without a model

EXTRA = {"embedding_shape": [256, 64, 64], "low_res_size": 256, "num_mask_outputs": 4}


class _Session:
    def __init__(self, inputs: tuple[str, ...], outputs: tuple[str, ...], fn) -> None:
        self.input_names, self.output_names, self._fn = inputs, outputs, fn
        self.calls: list[dict[str, np.ndarray]] = []

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append(feeds)
        return self._fn(feeds)


def _folder(name: str = "mobile_sam", extra: dict | None = None) -> ModelFolder:
    spec = get_spec(name)
    manifest = {"model": name, "family": spec.family, "extra": EXTRA if extra is None else extra}
    return ModelFolder(path=Path("/nonexistent") / name, manifest=manifest, spec=spec)


def _squares(b: int, k: int = 4, size: int = 256) -> np.ndarray:
    """Low-res logits: mask k of prompt set i is a square of side 20 * (k + 1) + i at the top left."""
    low = np.full((b, k, size, size), -1.0, np.float32)
    for i in range(b):
        for j in range(k):
            low[i, j, : 20 * (j + 1) + i, : 20 * (j + 1) + i] = 1.0
    return low


def _sessions(decoder_fn=None, extra: dict | None = None) -> dict[str, _Session]:
    """Stand-ins for the four graphs: the decoders answer :func:`_squares`, iou 0, 1, 2, ..."""
    extra = EXTRA if extra is None else extra
    shape = (1, *extra["embedding_shape"])
    k, size = extra["num_mask_outputs"], extra["low_res_size"]

    def encode(feeds):
        return {"image_embeddings": np.full(shape, feeds["image"].mean(), np.float32)}

    def decode(feeds):
        b = feeds["point_coords"].shape[0]
        iou = np.arange(b * k, dtype=np.float32).reshape(b, k)
        return {"low_res_masks": _squares(b, k, size), "iou_predictions": iou}

    def image_side(feeds):
        level = float(feeds["image_embeddings"].mean())
        return {name: np.full((1, 4096, 8), level + i, np.float32) for i, name in enumerate(rt.DECODER_IMAGE_OUTPUTS)}

    return {
        "encoder": _Session(("image",), ("image_embeddings",), encode),
        "decoder": _Session(rt.DECODER_INPUTS, rt.DECODER_OUTPUTS, decoder_fn or decode),
        "decoder_image": _Session(("image_embeddings",), rt.DECODER_IMAGE_OUTPUTS, image_side),
        "decoder_points": _Session(rt.POINT_DECODER_INPUTS, rt.DECODER_OUTPUTS, decoder_fn or decode),
    }


def _engine(decoder_fn=None, name: str = "mobile_sam", extra: dict | None = None) -> rt.SamEngine:
    return rt.SamEngine(_folder(name, extra), _sessions(decoder_fn, extra))


def _prompts(size, points=None, labels=None, boxes=None, mask_input=None, low_res_size=256):
    return validate_prompts(size, points, labels, boxes, mask_input, low_res_size)


def test_engine_result_layout_and_feeds() -> None:
    engine = _engine()
    assert engine.family == "sam" and engine.model_name == "mobile_sam" and engine.low_res_size == 256
    with pytest.raises(RuntimeError, match="no image is set"):
        engine.predict(_prompts((300, 451), [[1.0, 1.0]], [1]), True)
    engine.set_image(_image(300, 451))
    assert engine._encoder.calls[0]["image"].shape == (1, 3, 1024, 1024)
    boxes = np.array([[0, 0, 100, 100], [10, 10, 200, 200]], np.float32)
    result = engine.predict(_prompts((300, 451), boxes=boxes), True)
    assert result.masks.shape == (6, 300, 451) and result.low_res_logits.shape == (6, 256, 256)
    assert result.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert result.scores.tolist() == [1, 2, 3, 5, 6, 7]  # masks 1..3 of each set
    np.testing.assert_array_equal(result.low_res_logits, _squares(2)[:, 1:].reshape(6, 256, 256))
    # without a mask input: decoder_points, fed decoder_image's outputs for this image (computed once)
    assert engine._decoder.calls == [] and len(engine._decoder_image.calls) == 1
    feeds = engine._decoder_points.calls[-1]
    assert feeds["point_coords"].shape == (2, 2, 2) and feeds["point_labels"].tolist() == [[2, 3], [2, 3]]
    np.testing.assert_array_equal(feeds["point_coords"], rt.transform_boxes(boxes, (300, 451), 1024).reshape(2, 2, 2))
    level = float(engine.get_image_embedding().embedding.mean())
    assert [float(feeds[n][0, 0, 0]) for n in rt.DECODER_IMAGE_OUTPUTS] == [
        float(np.float32(level + i)) for i in range(4)
    ]
    assert "mask_input" not in feeds
    # Mask 1 of set 0 is 1 on low-res [0, 40)^2, -1 elsewhere: > 0 up to 1024-grid position 159.5,
    # so the last photo pixel j inside has (j + 0.5) * input / original - 0.5 < 159.5.
    x2 = int(np.ceil(160 * 451 / 1024 - 0.5)) - 1
    y2 = int(np.ceil(160 * 300 / 681 - 0.5)) - 1
    assert result.boxes[0].tolist() == [0, 0, x2, y2]
    expected = np.zeros((300, 451), bool)
    expected[: y2 + 1, : x2 + 1] = True
    np.testing.assert_array_equal(result.masks[0], expected)
    single = engine.predict(_prompts((300, 451), [[5.0, 5.0]], [1], None, result.low_res_logits[:1]), False)
    assert len(single) == 1 and single.scores.tolist() == [0.0] and single.prompt_index.tolist() == [0]
    np.testing.assert_array_equal(single.low_res_logits, _squares(1)[:, 0])  # mask 0 without multimask
    feeds = engine._decoder.calls[-1]
    assert feeds["has_mask_input"].tolist() == [1.0] and feeds["mask_input"].shape == (1, 1, 256, 256)
    np.testing.assert_array_equal(feeds["mask_input"][0, 0], result.low_res_logits[0])
    assert feeds["point_labels"].tolist() == [[1.0, -1.0]]
    assert feeds["image_embeddings"] is engine.get_image_embedding().embedding


def test_engine_shares_points_across_boxes_and_broadcasts_one_mask_input() -> None:
    engine = _engine()
    engine.set_image(_image(30, 40))
    boxes = [[0, 0, 5, 5], [1, 1, 4, 4], [2, 2, 30, 20]]
    result = engine.predict(_prompts((30, 40), [[5.0, 5.0], [1, 2]], [1, 0], boxes), False)
    assert result.prompt_index.tolist() == [0, 1, 2] and result.scores.tolist() == [0, 4, 8]
    feeds = engine._decoder_points.calls[-1]
    assert feeds["point_coords"].shape == (3, 4, 2) and feeds["point_labels"].tolist() == [[1, 0, 2, 3]] * 3
    masked = engine.predict(_prompts((30, 40), None, None, boxes, np.zeros((256, 256))), True)
    assert len(masked) == 9 and engine._decoder.calls[-1]["mask_input"].shape == (1, 1, 256, 256)
    with pytest.raises(ValueError, match="mask_input has 2 masks but there are 3 prompt sets"):
        _prompts((30, 40), None, None, boxes, np.zeros((2, 256, 256)))


def test_engine_reads_its_sizes_from_the_folder() -> None:
    extra = {"embedding_shape": [256, 32, 32], "low_res_size": 128, "num_mask_outputs": 3}
    engine = _engine(extra=extra)
    assert engine.low_res_size == 128 and engine.num_mask_outputs == 3 and engine.embedding_shape == (1, 256, 32, 32)
    engine.set_image(_image(64, 64))
    result = engine.predict(_prompts((64, 64), [[5.0, 5.0]], [1], low_res_size=128), True)
    assert len(result) == 2 and result.low_res_logits.shape == (2, 128, 128)  # masks 1..2 of 3
    assert result.masks.shape == (2, 64, 64)
    with pytest.raises(ModelFolderError, match="'extra' entry needs low_res_size, num_mask_outputs and embedding_sh"):
        rt.SamEngine(_folder(extra={"low_res_size": 256}), _sessions())
    with pytest.raises(ModelFolderError, match="needs low_res_size, num_mask_outputs and embedding_shape"):
        rt.SamEngine(ModelFolder(Path("/x"), {"model": "mobile_sam", "family": "sam"}, SPEC), _sessions())


def test_engine_embedding_round_trip_and_refusals() -> None:
    engine = _engine()
    engine.set_image(_image(120, 80))
    emb = engine.get_image_embedding()
    assert emb.original_size == (120, 80) and emb.input_size == (1024, 683) and emb.model == "mobile_sam"
    other = _engine()
    other.set_image_embedding(emb)
    assert len(other.predict(_prompts((120, 80), [[5.0, 5.0]], [1]), True)) == 3
    assert other._encoder.calls == []  # restored without encoding
    assert len(other._decoder_image.calls) == 1  # the decoder's image side, recomputed from the embedding
    with pytest.raises(ValueError, match="made by 'mobile_sam'; this predictor runs 'sam_vit_b'"):
        _engine(name="sam_vit_b").set_image_embedding(emb)
    with pytest.raises(ValueError, match=r"must be float32 \(1, 256, 64, 64\), got float64"):
        other.set_image_embedding(
            rt.ImageEmbedding(emb.embedding.astype(np.float64), (120, 80), (1024, 683), "mobile_sam")
        )
    with pytest.raises(ValueError, match=r"must be float32 \(1, 256, 64, 64\), got float32 \(1, 256, 32, 32\)"):
        other.set_image_embedding(rt.ImageEmbedding(emb.embedding[..., :32, :32].copy(), (120, 80), (1024, 683),
                                                    "mobile_sam"))
    with pytest.raises(
        ValueError, match=r"input_size \(1024, 1024\), but an image of 120x80 is resized to \(1024, 683\)"
    ):
        other.set_image_embedding(rt.ImageEmbedding(emb.embedding, (120, 80), (1024, 1024), "mobile_sam"))
    with pytest.raises(ValueError, match="expected a fastseg.sam.ImageEmbedding, got ndarray"):
        other.set_image_embedding(emb.embedding)
    assert other.get_image_embedding() is emb  # a refused embedding changes nothing


def test_engine_refuses_wrong_sessions_and_outputs() -> None:
    folder = _folder()
    enc = _Session(("image",), ("image_embeddings",), lambda f: {})
    with pytest.raises(ValueError, match=r"missing \['decoder', 'decoder_image', 'decoder_points'\]"):
        rt.SamEngine(folder, {"encoder": enc})
    image_side = _Session(("image_embeddings",), rt.DECODER_IMAGE_OUTPUTS, lambda f: {})
    points = _Session(rt.POINT_DECODER_INPUTS, rt.DECODER_OUTPUTS, lambda f: {})
    bad = _Session(("image_embeddings", "point_coords"), rt.DECODER_OUTPUTS, lambda f: {})
    with pytest.raises(
        ValueError, match=r"decoder inputs must include .* missing \['point_labels', 'mask_input', 'has_mask_input'\]"
    ):
        rt.SamEngine(folder, {"encoder": enc, "decoder": bad, "decoder_image": image_side, "decoder_points": points})
    good = _Session(rt.DECODER_INPUTS, rt.DECODER_OUTPUTS, lambda f: {})
    with pytest.raises(ValueError, match=r"decoder_points inputs must include .* missing \['image_keys', 'token_keys'"):
        rt.SamEngine(folder, {"encoder": enc, "decoder": good, "decoder_image": image_side, "decoder_points": bad})
    fastsam = ModelFolder(Path("/x"), {"model": "fastsam_s", "family": "fastsam"}, get_spec("fastsam_s"))
    with pytest.raises(ModelFolderError, match="needs a SAM-family model resized by its longest side, got 'fastsam_s'"):
        rt.SamEngine(fastsam, {"encoder": enc, "decoder": bad})

    def two_masks(feeds):
        return {
            "low_res_masks": np.zeros((1, 2, 256, 256), np.float32),
            "iou_predictions": np.zeros((1, 2), np.float32),
        }

    engine = _engine(decoder_fn=two_masks)
    engine.set_image(_image(30, 40))
    with pytest.raises(
        RuntimeError, match=r"decoder_points returned low_res_masks \(1, 2, 256, 256\) .* expected \(1, 4, 256, 256\)"
    ):
        engine.predict(_prompts((30, 40), [[5.0, 5.0]], [1]), True)
    with pytest.raises(RuntimeError, match=r"^decoder returned low_res_masks \(1, 2, 256, 256\)"):  # with a mask input
        engine.predict(_prompts((30, 40), [[5.0, 5.0]], [1], None, np.zeros((1, 256, 256), np.float32)), True)


def test_engine_raw_decode_for_batched_callers() -> None:
    engine = _engine()
    with pytest.raises(RuntimeError, match="no image is set"):
        engine.decode(np.zeros((1, 2, 2), np.float32), np.zeros((1, 2), np.float32))
    engine.set_image(_image(50, 60))
    # everything mode's layout: one point per prompt set, each padded
    grid = np.array([[[10.0, 10.0]], [[30.0, 20.0]], [[59.0, 49.0]], [[0.0, 0.0]], [[5.0, 45.0]]])
    coords, labels = rt.build_prompt_arrays(grid, np.ones((5, 1)), None, (50, 60), 1024)
    low_res, iou = engine.decode(coords, labels)
    assert low_res.shape == (5, 4, 256, 256) and iou.shape == (5, 4)
    assert low_res.dtype == iou.dtype == np.float32
    np.testing.assert_array_equal(low_res, _squares(5))
    feeds = engine._decoder_points.calls[-1]
    assert feeds["point_coords"].shape == (5, 2, 2) and set(feeds) == set(rt.POINT_DECODER_INPUTS)
    assert feeds["point_labels"].tolist() == [[1, -1]] * 5
    np.testing.assert_array_equal(feeds["point_coords"][:, 0], rt.transform_coords(grid[:, 0], (50, 60), 1024))
    assert engine._decoder.calls == []
