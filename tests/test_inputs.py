"""Bad input gets a clear error naming what was expected and what came: images and prompts."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fastseg.image import load_image
from fastseg.prompts import validate_prompts

SIZE = (300, 451)  # (H, W) of chelsea


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((10, 10, 3), dtype=np.float32), "must be uint8, got float32"),
        (np.zeros((10, 10, 3), dtype=np.uint16), "must be uint8, got uint16"),
        (np.zeros((10, 10, 2), dtype=np.uint8), r"got \(10, 10, 2\)"),
        (np.zeros((2, 10, 10, 3), dtype=np.uint8), r"got \(2, 10, 10, 3\)"),
        (np.zeros((0, 10, 3), dtype=np.uint8), "empty"),
        (np.zeros((10,), dtype=np.uint8), r"got \(10,\)"),
    ],
)
def test_bad_image_arrays(array: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_image(array)


def test_image_conversions(tmp_path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    gray = rgb[:, :, 0]
    rgba = np.concatenate([rgb, np.full((6, 7, 1), 9, np.uint8)], axis=2)
    assert np.array_equal(load_image(rgb), rgb)
    assert np.array_equal(load_image(gray), np.repeat(gray[:, :, None], 3, axis=2))
    assert np.array_equal(load_image(gray[:, :, None]), np.repeat(gray[:, :, None], 3, axis=2))
    assert np.array_equal(load_image(rgba), rgb)
    assert np.array_equal(load_image(Image.fromarray(rgba)), rgb)
    path = tmp_path / "x.png"
    Image.fromarray(rgb).save(path)
    assert np.array_equal(load_image(path), rgb)
    assert np.array_equal(load_image(str(path)), rgb)


def test_image_file_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="image not found"):
        load_image(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="cannot read .* as an image"):
        load_image(bad)
    with pytest.raises(TypeError, match="file path, a PIL image or a numpy array, got list"):
        load_image([[1, 2], [3, 4]])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"points": [[1, 2, 3]]}, r"points must have shape \(N, 2\)"),
        ({"points": np.zeros((0, 2))}, r"N >= 1, got \(0, 2\)"),
        ({"points": [[np.nan, 3]]}, "points must be finite"),
        ({"points": [[np.inf, 3]]}, "points must be finite"),
        ({"points": [[500, 10]]}, r"inside the 451x300 image .* got \[\[500.0, 10.0\]\]"),
        ({"points": [[-1, 10]]}, "inside the 451x300 image"),
        ({"points": [[10, 301]]}, "inside the 451x300 image"),
        ({"points": [[1, 2], [3, 4]], "labels": [1]}, "got 2 points but 1 labels"),
        ({"points": [[1, 2]], "labels": [2]}, r"labels must be 1 \(foreground\) or 0"),
        ({"points": [[1, 2]], "labels": [[1]]}, r"labels must have shape \(N,\)"),
        ({"labels": [1]}, "labels were given without points"),
        ({"points": "abc"}, "points must be numeric"),
        ({"boxes": [10, 10, 5, 20]}, "x1 <= x2 and y1 <= y2"),
        ({"boxes": [10, 30, 50, 20]}, "x1 <= x2 and y1 <= y2"),
        ({"boxes": [1, 2, 3]}, r"boxes must have shape \(4,\) or \(B, 4\)"),
        ({"boxes": [0, 0, 452, 10]}, "inside the 451x300 image"),
        ({"boxes": [0, np.nan, 4, 10]}, "boxes must be finite"),
        ({"points": [[1, 2]], "mask_input": np.zeros((64, 64))}, r"mask_input must have shape \(256, 256\)"),
        ({"points": [[1, 2]], "mask_input": np.full((256, 256), np.nan)}, "mask_input must be finite"),
        (
            {"boxes": [[0, 0, 5, 5], [1, 1, 6, 6]], "mask_input": np.zeros((3, 256, 256))},
            "mask_input has 3 masks but there are 2 prompt sets",
        ),
    ],
)
def test_bad_prompts(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_prompts(SIZE, **kwargs)


def test_prompts_normalised() -> None:
    p = validate_prompts(SIZE, points=[10, 20], boxes=[1, 2, 30, 40], mask_input=np.zeros((1, 1, 256, 256)))
    assert p.points is not None and p.points.shape == (1, 2) and p.points.dtype == np.float64
    assert p.labels is not None and p.labels.tolist() == [1] and p.labels.dtype == np.int64
    assert p.boxes is not None and p.boxes.shape == (1, 4)
    assert p.mask_input is not None and p.mask_input.shape == (1, 256, 256)
    edge = validate_prompts(SIZE, points=[[451, 300], [0, 0]], labels=[0, True])
    assert edge.labels is not None and edge.labels.tolist() == [0, 1]
    assert validate_prompts(SIZE).empty
    # coordinates are kept as given (no float32 round trip): FastSAM truncates them as ultralytics does
    exact = validate_prompts(SIZE, points=[[100.99999999, 5.0]], boxes=[[0.0, 0.0, 200.99999999, 50.0]])
    assert exact.points is not None and exact.points[0, 0] == 100.99999999
    assert exact.boxes is not None and exact.boxes[0, 2] == 200.99999999
