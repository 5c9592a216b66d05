"""Bad input gets a clear error naming what was expected and what came: images and prompts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fastseg.image import load_image
from fastseg.prompts import Prompts, validate_prompts

SIZE = (300, 451)  # (H, W) of chelsea


class _PathLike:
    """An ``os.PathLike`` that is neither ``str`` nor ``pathlib.Path``."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def __fspath__(self) -> str:
        return str(self._path)


def _rgb(h: int = 6, w: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((10, 10, 3), dtype=np.float32), r"must be uint8, got float32 \(scale 0..1 floats with"),
        (np.zeros((10, 10, 3), dtype=np.float64), "must be uint8, got float64"),
        (np.zeros((10, 10, 3), dtype=np.uint16), r"must be uint8, got uint16$"),
        (np.zeros((10, 10, 3), dtype=np.int64), "must be uint8, got int64"),
        (np.zeros((10, 10, 3), dtype=bool), "must be uint8, got bool"),
        (np.zeros((10, 10, 2), dtype=np.uint8), r"\(H, W, 1\), \(H, W, 3\) or \(H, W, 4\), got \(10, 10, 2\)"),
        (np.zeros((10, 10, 5), dtype=np.uint8), r"got \(10, 10, 5\)"),
        (np.zeros((2, 10, 10, 3), dtype=np.uint8), r"got \(2, 10, 10, 3\)"),
        (np.zeros((0, 10, 3), dtype=np.uint8), r"image is empty: shape \(0, 10, 3\)"),
        (np.zeros((10, 0), dtype=np.uint8), r"image is empty: shape \(10, 0, 1\)"),
        (np.zeros((10,), dtype=np.uint8), r"got \(10,\)"),
        (np.zeros((), dtype=np.uint8), r"got \(\)"),
    ],
)
def test_bad_image_arrays(array: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_image(array)


def test_array_conversions() -> None:
    rgb = _rgb()
    gray = rgb[:, :, 0]
    rgba = np.concatenate([rgb, np.full((6, 7, 1), 9, np.uint8)], axis=2)
    for given, expected in [
        (rgb, rgb),
        (gray, np.repeat(gray[:, :, None], 3, axis=2)),
        (gray[:, :, None], np.repeat(gray[:, :, None], 3, axis=2)),
        (rgba, rgb),  # alpha dropped, colours kept as they are (not blended)
        (rgb[:, ::-1], rgb[:, ::-1]),  # a strided view
        (np.asfortranarray(rgb), rgb),
    ]:
        out = load_image(given)
        assert out.dtype == np.uint8 and out.shape == (6, 7, 3) and out.flags.c_contiguous
        np.testing.assert_array_equal(out, expected)


def test_pil_images() -> None:
    rgb = _rgb()
    gray = rgb[:, :, 0]
    rgba = np.concatenate([rgb, np.full((6, 7, 1), 9, np.uint8)], axis=2)
    np.testing.assert_array_equal(load_image(Image.fromarray(rgb)), rgb)
    np.testing.assert_array_equal(load_image(Image.fromarray(rgba)), rgb)
    np.testing.assert_array_equal(load_image(Image.fromarray(gray)), np.repeat(gray[:, :, None], 3, axis=2))
    palette = Image.fromarray(rgb).quantize(8)
    assert palette.mode == "P"
    np.testing.assert_array_equal(load_image(palette), np.asarray(palette.convert("RGB")))
    bilevel = Image.fromarray(gray > 128)
    assert bilevel.mode == "1"
    np.testing.assert_array_equal(load_image(bilevel), np.repeat(np.where(gray > 128, 255, 0)[:, :, None], 3, axis=2))
    la = Image.fromarray(gray).convert("LA")
    np.testing.assert_array_equal(load_image(la), np.repeat(gray[:, :, None], 3, axis=2))
    with pytest.raises(ValueError, match=r"image is empty: 0x5"):
        load_image(Image.new("RGB", (0, 5)))
    premultiplied = Image.new("La", (3, 2))  # Pillow converts it to nothing but L / LA
    with pytest.raises(ValueError, match=r"image mode 'La' cannot be converted to RGB: conversion from La"):
        load_image(premultiplied)
    for deep in (np.zeros((3, 4), np.uint16), np.zeros((3, 4), np.float32), np.zeros((3, 4), np.int32)):
        pil = Image.fromarray(deep)
        with pytest.raises(ValueError, match=rf"image mode '{pil.mode}' \(16/32-bit\) is not supported"):
            load_image(pil)


def test_image_files(tmp_path: Path) -> None:
    rgb = _rgb()
    path = tmp_path / "x.png"
    Image.fromarray(rgb).save(path)
    for given in (path, str(path), _PathLike(path)):
        out = load_image(given)
        assert out.flags.c_contiguous
        np.testing.assert_array_equal(out, rgb)
    gray = tmp_path / "gray.png"
    Image.fromarray(rgb[:, :, 1]).save(gray)
    np.testing.assert_array_equal(load_image(gray), np.repeat(rgb[:, :, 1:2], 3, axis=2))
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.concatenate([rgb, np.zeros((6, 7, 1), np.uint8)], axis=2)).save(rgba)
    np.testing.assert_array_equal(load_image(rgba), rgb)


@pytest.mark.parametrize(
    ("orientation", "turn"),
    [
        (1, lambda a: a),
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, -1)),  # "rotate 90 CW to view"
        (8, lambda a: np.rot90(a, 1)),
        (2, lambda a: a[:, ::-1]),
    ],
)
def test_exif_orientation_is_applied(orientation: int, turn: Any, tmp_path: Path) -> None:
    rgb = _rgb(4, 9)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path, exif=exif)
    np.testing.assert_array_equal(load_image(path), turn(rgb))


def test_image_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="image not found: .*nope.png"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(FileNotFoundError, match="image not found"):
        load_image(_PathLike(tmp_path / "nope.png"))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="cannot read .*bad.png as an image"):
        load_image(bad)
    whole = tmp_path / "whole.png"
    Image.fromarray(_rgb(64, 64)).save(whole)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole.read_bytes()[: os.path.getsize(whole) // 2])
    with pytest.raises(ValueError, match="cannot read .*truncated.png as an image"):
        load_image(truncated)
    with pytest.raises(ValueError, match="cannot read .* as an image"):
        load_image(tmp_path)  # a directory


@pytest.mark.parametrize(("value", "name"), [([[1, 2], [3, 4]], "list"), (None, "NoneType"), (b"x.png", "bytes")])
def test_image_type_errors(value: Any, name: str) -> None:
    with pytest.raises(TypeError, match=f"image must be a file path, a PIL image or a numpy array, got {name}"):
        load_image(value)


# ----------------------------------------------------------------------------------------------
# prompts
# ----------------------------------------------------------------------------------------------

NO_PROMPT = r"predict needs points and/or boxes; no prompt was given"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, NO_PROMPT),
        ({"mask_input": np.zeros((256, 256)), "low_res_size": 256}, NO_PROMPT),
        ({"points": [[1, 2, 3]]}, r"points must have shape \(N, 2\) with N >= 1, got \(1, 3\)"),
        ({"points": [1, 2, 3]}, r"points must have shape \(N, 2\)"),
        ({"points": np.zeros((0, 2))}, r"N >= 1, got \(0, 2\)"),
        ({"points": np.zeros((1, 1, 2))}, r"points must have shape \(N, 2\)"),
        ({"points": [[np.nan, 3]]}, r"points must be finite, got \[\[nan, 3.0\]\]"),
        ({"points": [[np.inf, 3]]}, "points must be finite"),
        ({"points": [[500, 10]]}, r"inside the 451x300 image \(0 <= x <= 451, 0 <= y <= 300\), got \[\[500.0, 10"),
        ({"points": [[-1, 10]]}, "inside the 451x300 image"),
        ({"points": [[10, 301]]}, "inside the 451x300 image"),
        ({"points": [[10, -0.5]]}, "inside the 451x300 image"),
        ({"points": [[1, 2], [3, 4]], "labels": [1]}, "got 2 points but 1 labels; they must match"),
        ({"points": [[1, 2]], "labels": [2]}, r"labels must be 1 \(foreground\) or 0 \(background\), got \[2\]"),
        ({"points": [[1, 2]], "labels": [0.5]}, r"labels must be 1 \(foreground\) or 0"),
        ({"points": [[1, 2]], "labels": ["1"]}, r"labels must be 1 \(foreground\) or 0"),
        ({"points": [[1, 2]], "labels": [-1]}, r"labels must be 1 \(foreground\) or 0"),
        ({"points": [[1, 2]], "labels": [[1]]}, r"labels must have shape \(N,\), got \(1, 1\)"),
        ({"labels": [1]}, "labels were given without points"),
        ({"labels": [1], "boxes": [0, 0, 5, 5]}, "labels were given without points"),
        ({"points": "abc"}, "points must be numeric, got str"),
        ({"points": [[1, 2], [3]]}, "points must be numeric"),
        ({"boxes": [10, 10, 5, 20]}, r"x1 <= x2 and y1 <= y2, got \[\[10.0, 10.0, 5.0, 20.0\]\]"),
        ({"boxes": [10, 30, 50, 20]}, "x1 <= x2 and y1 <= y2"),
        ({"boxes": [1, 2, 3]}, r"boxes must have shape \(4,\) or \(B, 4\) with B >= 1, XYXY, got \(3,\)"),
        ({"boxes": np.zeros((0, 4))}, r"boxes must have shape .* got \(0, 4\)"),
        ({"boxes": [0, 0, 452, 10]}, r"boxes must lie inside the 451x300 image, got \[\[0.0, 0.0, 452.0, 10.0\]\]"),
        ({"boxes": [-1, 0, 4, 10]}, "inside the 451x300 image"),
        ({"boxes": [0, np.nan, 4, 10]}, "boxes must be finite"),
        ({"boxes": "0 0 4 4"}, "boxes must be numeric"),
        (
            {"points": [[1, 2]], "mask_input": np.zeros((256, 256))},
            r"this model takes no mask_input \(that is a SAM-family prompt\); pass points or boxes",
        ),
        (
            {"points": [[1, 2]], "mask_input": np.zeros((64, 64)), "low_res_size": 256},
            r"mask_input must have shape \(256, 256\), \(B, 256, 256\) or \(B, 1, 256, 256\), got \(64, 64\)",
        ),
        ({"points": [[1, 2]], "mask_input": np.zeros((256, 256)), "low_res_size": 128}, r"\(128, 128\).* \(256, 256\)"),
        ({"points": [[1, 2]], "mask_input": np.zeros((1, 2, 256, 256)), "low_res_size": 256}, "mask_input must have"),
        ({"points": [[1, 2]], "mask_input": np.full((256, 256), np.inf), "low_res_size": 256}, "must be finite"),
        ({"points": [[1, 2]], "mask_input": "zeros", "low_res_size": 256}, "mask_input must be numeric"),
        (
            {"boxes": [[0, 0, 5, 5], [1, 1, 6, 6]], "mask_input": np.zeros((3, 256, 256)), "low_res_size": 256},
            "mask_input has 3 masks but there are 2 prompt sets",
        ),
        (
            {"points": [[1, 2]], "mask_input": np.zeros((2, 256, 256)), "low_res_size": 256},
            "mask_input has 2 masks but there are 1 prompt sets",
        ),
    ],
)
def test_bad_prompts(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_prompts(SIZE, **kwargs)


def test_prompts_normalised() -> None:
    p = validate_prompts(
        SIZE, points=[10, 20], boxes=[1, 2, 30, 40], mask_input=np.zeros((1, 1, 256, 256)), low_res_size=256
    )
    assert isinstance(p, Prompts) and p.n_sets == 1
    assert p.points is not None and p.points.shape == (1, 2) and p.points.dtype == np.float64
    assert p.labels is not None and p.labels.tolist() == [1] and p.labels.dtype == np.int64
    assert p.boxes is not None and p.boxes.shape == (1, 4) and p.boxes.dtype == np.float64
    assert p.mask_input is not None and p.mask_input.shape == (1, 256, 256) and p.mask_input.dtype == np.float32
    edge = validate_prompts(SIZE, points=[[451, 300], [0, 0]], labels=[0, True])
    assert edge.labels is not None and edge.labels.tolist() == [0, 1]
    assert edge.boxes is None and edge.mask_input is None and edge.n_sets == 1
    assert validate_prompts(SIZE, points=[[1, 2]], labels=1).labels.tolist() == [1]  # a scalar label
    assert validate_prompts(SIZE, points=[[1, 2]], labels=np.array([1.0])).labels.tolist() == [1]
    assert validate_prompts(SIZE, points=[[1, 2]], labels=[False]).labels.tolist() == [0]
    # boxes alone, several of them: one prompt set each; degenerate (zero-size) boxes are allowed
    boxes = validate_prompts(SIZE, boxes=[[0, 0, 451, 300], [5, 5, 5, 9], [1, 2, 3, 4]])
    assert boxes.n_sets == 3 and boxes.points is None and boxes.labels is None
    # coordinates are kept as given (no float32 round trip): FastSAM truncates them as ultralytics does
    exact = validate_prompts(SIZE, points=[[100.99999999, 5.0]], boxes=[[0.0, 0.0, 200.99999999, 50.0]])
    assert exact.points is not None and exact.points[0, 0] == 100.99999999
    assert exact.boxes is not None and exact.boxes[0, 2] == 200.99999999


@pytest.mark.parametrize(
    ("mask_shape", "n_boxes", "expected"),
    [
        ((256, 256), 1, (1, 256, 256)),
        ((1, 256, 256), 1, (1, 256, 256)),
        ((1, 1, 256, 256), 1, (1, 256, 256)),
        ((1, 256, 256), 3, (1, 256, 256)),  # one mask for every box
        ((3, 256, 256), 3, (3, 256, 256)),
        ((3, 1, 256, 256), 3, (3, 256, 256)),
    ],
)
def test_mask_input_shapes(mask_shape: tuple[int, ...], n_boxes: int, expected: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    mask = rng.normal(size=mask_shape)
    boxes = [[0, 0, 10 + i, 10] for i in range(n_boxes)]
    p = validate_prompts(SIZE, boxes=boxes, mask_input=mask, low_res_size=256)
    assert p.mask_input is not None and p.mask_input.shape == expected and p.mask_input.dtype == np.float32
    np.testing.assert_array_equal(p.mask_input, mask.reshape(expected).astype(np.float32))
    small = validate_prompts(SIZE, boxes=boxes, mask_input=np.zeros((64, 64)), low_res_size=64)
    assert small.mask_input is not None and small.mask_input.shape == (1, 64, 64)
