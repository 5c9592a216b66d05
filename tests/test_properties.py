"""Property-based tests (hypothesis) over everything a user hands fastseg: images, prompts, embedding
files and model folders. Every input either gives a correct result or one of fastseg's documented
exceptions (``ValueError``, ``TypeError``, ``FileNotFoundError``; ``ModelFolderError`` is a
``ValueError``), never another exception type, a crash or unbounded memory.

Fast tier: examples are bounded and derandomized (the same examples on every run, so CI does not
flake; ``FASTSEG_PROPERTY_SCALE`` runs more, random ones); the fuzz targets of the loaders
(``tests/fuzz_targets.py``) run here for a few hundred examples each, and for as long as wanted by hand.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fuzz_targets import (
    ALLOWED,
    embedding_seeds,
    fuzz,
    fuzz_load_embedding,
    fuzz_load_image,
    fuzz_load_model_folder,
    image_seeds,
    manifest_seeds,
    model_folder_workdir,
    mutated,
    run_bounded,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps
from reliability_files import npy_bytes, npy_header_only, write_npz

import fastseg
from fastseg.embeddings import FORMAT
from fastseg.fastsam import FastSamImageEmbedding
from fastseg.image import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, load_image
from fastseg.manifest import MANIFEST_NAME, ModelFolder, load_model_folder
from fastseg.prompts import Prompts, validate_prompts
from fastseg.sam import ImageEmbedding

#: ``FASTSEG_PROPERTY_SCALE=50 pytest tests/test_properties.py`` runs 50x the examples, random ones
#: (the default, 1, runs the fast tier's fixed examples).
SCALE = int(os.environ.get("FASTSEG_PROPERTY_SCALE", "1"))


def bounded(examples: int) -> settings:
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        derandomize=SCALE == 1,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


@pytest.fixture(scope="module")
def workdir() -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


@pytest.fixture(scope="module")
def predictors(tiny_sam_folder: Path, tiny_fastsam_folder: Path) -> dict[str, fastseg.Predictor]:
    return {
        "sam": fastseg.Predictor(tiny_sam_folder, backend="onnxruntime", cache_dir=False),
        "fastsam": fastseg.Predictor(tiny_fastsam_folder, backend="onnxruntime", cache_dir=False),
    }


@pytest.fixture(scope="module", autouse=True)
def _cache_in_tmp(workdir: Path) -> Any:
    """Model folders may keep verified digests in the cache root: keep it out of the home folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FASTSEG_CACHE", str(workdir / "cache"))
        yield


# --------------------------------------------------------------------------------------------------
# Images


def _expected_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    return array[:, :, :3]


DTYPES = (np.uint8, np.uint16, np.int8, np.int64, np.float32, np.float64, np.bool_, np.complex64)
#: Sides: small ones, and ones past fastseg's limits (made as zero-stride views: no memory).
SIDES = st.one_of(st.integers(0, 6), st.sampled_from([20000, MAX_IMAGE_SIDE, MAX_IMAGE_SIDE + 1, 10**6]))


@bounded(150)
@given(
    dtype=st.sampled_from(DTYPES),
    shape=st.tuples(st.lists(SIDES, max_size=2), st.lists(st.integers(0, 5), max_size=2)).map(lambda t: t[0] + t[1]),
    broadcast=st.booleans(),
)
def test_image_arrays(dtype: Any, shape: list[int], broadcast: bool) -> None:
    small = all(s <= 6 for s in shape)
    if small and not broadcast:
        array = (np.arange(math.prod(shape)) % 251).astype(dtype).reshape(shape)
    else:  # a view of one element: any declared size, no memory
        array = np.broadcast_to(np.ones((1,) * len(shape), dtype), shape)
    result = run_bounded(lambda: load_image(array))
    valid = dtype == np.uint8 and array.ndim in (2, 3) and (array.ndim == 2 or shape[2] in (1, 3, 4))
    if not valid or 0 in shape[:2]:
        assert isinstance(result, ValueError), result
        return
    h, w = shape[:2]
    if h > MAX_IMAGE_SIDE or w > MAX_IMAGE_SIDE or h * w > MAX_IMAGE_PIXELS:
        assert isinstance(result, ValueError) and "at most" in str(result), result
        return
    assert not isinstance(result, Exception), result
    assert result.dtype == np.uint8 and result.shape == (h, w, 3) and result.flags.c_contiguous
    np.testing.assert_array_equal(result, _expected_rgb(np.asarray(array)))


PIL_MODES = ("1", "L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr", "HSV", "I;16", "I", "F", "La", "RGBa")
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
#: EXIF orientations that turn the image a quarter (width and height swap).
QUARTER_TURNS = (5, 6, 7, 8)


@bounded(120)
@given(
    mode=st.sampled_from(PIL_MODES),
    size=st.tuples(st.integers(0, 9), st.integers(0, 9)),
    fmt=st.one_of(st.none(), st.sampled_from(FORMATS)),
    orientation=st.one_of(st.none(), st.integers(0, 10)),
    seed=st.integers(0, 3),
)
def test_pil_images_and_files(
    workdir: Path, mode: str, size: tuple[int, int], fmt: str | None, orientation: int | None, seed: int
) -> None:
    """A PIL image of any mode and size, as itself or saved in any format with any EXIF orientation."""
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    try:
        image = Image.fromarray(rgb).convert(mode) if size[0] and size[1] else Image.new(mode, size)
    except ValueError:  # a conversion Pillow lacks: not fastseg's concern
        return
    if fmt is None:
        result = run_bounded(lambda: load_image(image))
        expected_size = size
    else:
        buf = io.BytesIO()
        exif = Image.Exif()
        if orientation is not None:
            exif[0x0112] = orientation
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                image.save(buf, format=fmt, exif=exif)
        except (OSError, ValueError, KeyError, TypeError, SystemError, MemoryError):  # Pillow cannot write that
            return
        path = workdir / f"image.{fmt.lower()}"
        path.write_bytes(buf.getvalue())
        result = run_bounded(lambda: load_image(path))
        try:  # upright as Pillow's exif_transpose turns it (formats keep the EXIF, or apply it, differently)
            with Image.open(path) as written:
                expected_size = ImageOps.exif_transpose(written).size
        except (OSError, ValueError):
            expected_size = size
        if fmt == "PNG" and not isinstance(result, Exception):  # PNG keeps pixels and EXIF as written
            assert expected_size == (size[::-1] if orientation in QUARTER_TURNS else size)
    if isinstance(result, Exception):
        assert isinstance(result, ValueError), result
        unsupported = mode in ("I;16", "I", "F", "La", "RGBa", "PA") or 0 in size
        assert unsupported or fmt is not None, f"mode {mode} {size} refused: {result}"
        assert "mode" in str(result) or "empty" in str(result) or "cannot read" in str(result), result
        return
    w, h = expected_size
    assert result.dtype == np.uint8 and result.shape == (h, w, 3) and result.flags.c_contiguous


def test_fuzz_load_image(workdir: Path) -> None:
    fuzz(bounded(200), mutated(image_seeds()), fuzz_load_image, workdir)


# --------------------------------------------------------------------------------------------------
# Prompts

SIZE = (40, 60)  # (H, W)
NUMBERS = st.one_of(
    st.floats(-10, 70, allow_nan=False),
    st.sampled_from([0.0, 40.0, 60.0, np.nan, np.inf, -np.inf, 1e300, -0.0]),
    st.integers(-5, 65),
)


def _arrays(last: int) -> st.SearchStrategy[Any]:
    rows = st.lists(st.lists(NUMBERS, min_size=last, max_size=last), min_size=0, max_size=4)
    odd = st.one_of(
        st.lists(NUMBERS, min_size=0, max_size=6),  # flat
        st.lists(st.lists(NUMBERS, min_size=0, max_size=5), min_size=1, max_size=3),  # ragged or wrong width
        st.sampled_from(["1, 2", b"xy", None, {"x": 1}, object(), [["a", "b"]], [[1 + 2j, 3]]]),
    )
    return st.one_of(rows, rows.map(np.array), odd)


LABELS = st.one_of(
    st.none(),
    st.lists(st.sampled_from([0, 1, True, False, 2, -1, 0.5, 1.0, "1", None]), min_size=0, max_size=4),
    st.sampled_from([1, 0, np.array([[1]]), "1"]),
)
MASKS = st.one_of(
    st.none(),
    st.sampled_from([(16, 16), (1, 16, 16), (2, 16, 16), (1, 1, 16, 16), (3, 1, 16, 16), (8, 8), (1, 2, 16, 16)]).map(
        lambda shape: np.zeros(shape, np.float32)
    ),
    st.sampled_from([np.full((16, 16), np.nan), "mask", [[1, 2]]]),
)


@bounded(300)
@given(
    points=st.one_of(st.none(), _arrays(2)),
    labels=LABELS,
    boxes=st.one_of(st.none(), _arrays(4)),
    mask=MASKS,
    low_res=st.sampled_from([None, 16]),
)
def test_validate_prompts(points: Any, labels: Any, boxes: Any, mask: Any, low_res: int | None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. numpy's ComplexWarning: what matters is the outcome
        try:
            prompts = validate_prompts(SIZE, points, labels, boxes, mask, low_res)
        except (ValueError, TypeError):
            return
    h, w = SIZE
    assert isinstance(prompts, Prompts)
    assert prompts.points is not None or prompts.boxes is not None
    if prompts.points is not None:
        pts = prompts.points
        assert pts.dtype == np.float64 and pts.ndim == 2 and pts.shape[1] == 2 and len(pts) >= 1
        assert np.isfinite(pts).all() and (pts >= 0).all() and (pts[:, 0] <= w).all() and (pts[:, 1] <= h).all()
        assert prompts.labels is not None and prompts.labels.shape == (len(pts),)
        assert set(prompts.labels.tolist()) <= {0, 1}
    else:
        assert prompts.labels is None
    if prompts.boxes is not None:
        b = prompts.boxes
        assert b.ndim == 2 and b.shape[1] == 4 and np.isfinite(b).all()
        assert (b[:, 0] <= b[:, 2]).all() and (b[:, 1] <= b[:, 3]).all() and (b >= 0).all()
        assert (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
    if prompts.mask_input is not None:
        assert low_res is not None and prompts.mask_input.shape[1:] == (low_res, low_res)
        assert prompts.mask_input.shape[0] in (1, prompts.n_sets)


VALID_POINTS = st.lists(st.tuples(st.floats(0, 451), st.floats(0, 300)), min_size=1, max_size=3)
VALID_BOXES = st.lists(
    st.tuples(st.floats(0, 200), st.floats(0, 150), st.floats(0, 251), st.floats(0, 150)).map(
        lambda b: (b[0], b[1], b[0] + b[2], b[1] + b[3])
    ),
    min_size=1,
    max_size=3,
)


@bounded(30)
@given(
    family=st.sampled_from(["sam", "fastsam"]),
    points=st.one_of(st.none(), VALID_POINTS),
    boxes=st.one_of(st.none(), VALID_BOXES),
    multimask=st.booleans(),
    bad=st.sampled_from([None, np.nan, 1e9]),
)
def test_predict_end_to_end(
    predictors: dict[str, fastseg.Predictor],
    photos: dict[str, np.ndarray],
    family: str,
    points: Any,
    boxes: Any,
    multimask: bool,
    bad: float | None,
) -> None:
    """Prompts through a tiny Predictor: masks of the image's size, one score and box per mask, or a
    ValueError for what validation refuses (no prompt, NaN, outside the image)."""
    predictor = predictors[family]
    if predictor.image_size != (300, 451):
        predictor.set_image(photos["chelsea"])
    if bad is not None and points is not None:
        points = [*points[:-1], (bad, 10.0)]
    try:
        result = predictor.predict(points=points, boxes=boxes, multimask=multimask)
    except ValueError as exc:
        assert points is None and boxes is None or bad is not None, exc
        return
    assert bad is None or points is None
    n = len(result)
    assert result.masks.shape == (n, 300, 451) and result.masks.dtype == np.bool_
    assert result.scores.shape == (n,) and np.isfinite(result.scores).all()
    assert result.boxes.shape == (n, 4)
    if family == "sam":
        n_sets = 1 if boxes is None else len(boxes)
        assert n == n_sets * (3 if multimask else 1)
        assert result.prompt_index.tolist() == np.repeat(np.arange(n_sets), 3 if multimask else 1).tolist()


# --------------------------------------------------------------------------------------------------
# Embedding files

DESCRS = ("<f4", ">f4", "<f8", "<f2", "<i8", "<u4", "|u1", "|b1", "<c8", "<U8", "|S4", "|V4", "|O", "<M8[s]", "<U0")
DIMS = st.one_of(st.integers(0, 4), st.sampled_from([64, 256, 10**6, 2**40, -1]))


@st.composite
def npy_members(draw: st.DrawFn) -> bytes:
    """A valid member, one with a random header (any dtype and shape) and random data length, or junk."""
    kind = draw(st.sampled_from(("array", "header", "junk")))
    if kind == "array":
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=4)))
        descr = draw(st.sampled_from(("<f4", "<i8", "<U8", "<f8")))
        return npy_bytes(np.zeros(shape, descr))
    if kind == "header":
        shape = tuple(draw(st.lists(DIMS, max_size=4)))
        descr = draw(st.sampled_from(DESCRS))
        data = b"\0" * draw(st.integers(0, 300))
        try:
            return npy_header_only(shape, descr, data)
        except (ValueError, TypeError):
            return data
    return draw(st.binary(max_size=200))


VALID_MEMBERS = {
    "sam": {
        "format": np.array(FORMAT),
        "family": np.array("sam"),
        "model": np.array("mobile_sam"),
        "original_size": np.array([300, 451]),
        "input_size": np.array([681, 1024]),
        "embedding": np.zeros((1, 256, 64, 64), np.float32),
    },
    "fastsam": {
        "format": np.array(FORMAT),
        "family": np.array("fastsam"),
        "model": np.array("fastsam_s"),
        "original_size": np.array([300, 451]),
        "input_size": np.array([704, 1024]),
        "detections": np.zeros((1, 37, 14784), np.float32),
        "protos": np.zeros((1, 32, 176, 256), np.float32),
    },
}


@functools.cache
def _valid_members(family: str) -> dict[str, bytes]:
    return {k: npy_bytes(v) for k, v in VALID_MEMBERS[family].items()}


@bounded(80)
@given(
    family=st.sampled_from(["sam", "fastsam"]),
    replaced=st.dictionaries(
        st.sampled_from(
            ["format", "family", "model", "original_size", "input_size", "embedding", "detections", "protos"]
        ),
        npy_members(),
        max_size=3,
    ),
    dropped=st.sets(
        st.sampled_from(["format", "family", "model", "original_size", "input_size", "embedding"]), max_size=1
    ),
    extra=st.dictionaries(st.text("abcxyz_", min_size=1, max_size=6), npy_members(), max_size=2),
    compress=st.booleans(),
)
def test_embedding_files(
    workdir: Path,
    predictors: dict[str, fastseg.Predictor],
    family: str,
    replaced: dict[str, bytes],
    dropped: set[str],
    extra: dict[str, bytes],
    compress: bool,
) -> None:
    """Random members and ``.npy`` headers: an embedding (that the Predictor of its family accepts or
    refuses with a ValueError) or a ValueError; bounded memory either way."""
    members = {k: v for k, v in _valid_members(family).items() if k not in dropped}
    members.update(replaced)
    members.update({"x_" + k: v for k, v in extra.items()})
    # Compressed or stored; the large valid arrays are compressed only when small ones are (time).
    path = write_npz(workdir / "e.npz", members, compress=compress and family == "sam")
    loaded = run_bounded(lambda: fastseg.load_embedding(path))
    if isinstance(loaded, Exception):
        assert isinstance(loaded, ValueError), loaded
        return
    assert isinstance(loaded, (ImageEmbedding, FastSamImageEmbedding))
    predictor = predictors["sam" if isinstance(loaded, ImageEmbedding) else "fastsam"]
    try:
        predictor.set_image_embedding(loaded)
    except ValueError:
        return
    assert predictor.image_size == tuple(loaded.original_size)


def test_fuzz_load_embedding(workdir: Path) -> None:
    fuzz(bounded(200), mutated(embedding_seeds()), fuzz_load_embedding, workdir)


# --------------------------------------------------------------------------------------------------
# Model folders


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (keys / indices) into a JSON value."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-2, 2**40),
        st.floats(allow_nan=True),
        st.text(max_size=12),
        st.sampled_from(["../manifest.json", "/etc/passwd", "encoder.onnx", "sam", "fastsam", "mobile_sam"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def manifest_edits(draw: st.DrawFn, manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with a few values replaced by random JSON, or deleted."""
    edited = copy.deepcopy(manifest)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(edited)))
        if not path:
            continue
        parent = edited
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JSON_VALUES)
    return edited


@pytest.fixture(scope="module")
def fuzz_folder(tiny_sam_folder: Path, workdir: Path) -> Path:
    return model_folder_workdir(tiny_sam_folder, workdir / "folders")


def test_manifest_edits(fuzz_folder: Path) -> None:
    manifest = json.loads((fuzz_folder / MANIFEST_NAME).read_text())

    @bounded(80)
    @given(manifest_edits(manifest))
    def check(edited: dict[str, Any]) -> None:
        (fuzz_folder / MANIFEST_NAME).write_text(json.dumps(edited))
        result = run_bounded(lambda: load_model_folder(fuzz_folder))
        if isinstance(result, Exception):
            assert isinstance(result, ALLOWED), result
            return
        assert isinstance(result, ModelFolder) and result.family in ("sam", "fastsam")

    try:
        check()
    finally:
        (fuzz_folder / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_fuzz_load_model_folder(fuzz_folder: Path) -> None:
    seeds = manifest_seeds(fuzz_folder)
    try:
        fuzz(bounded(200), mutated(seeds), fuzz_load_model_folder, fuzz_folder)
    finally:
        (fuzz_folder / MANIFEST_NAME).write_bytes(seeds[0])
