"""Image embeddings saved to disk and read back (fastseg.save_embedding / fastseg.load_embedding)."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from reliability_files import sam_fields

import fastseg
from fastseg.fastsam import FastSamImageEmbedding
from fastseg.sam import ImageEmbedding


def _sam_embedding(seed: int = 0) -> ImageEmbedding:
    rng = np.random.default_rng(seed)
    return ImageEmbedding(
        embedding=rng.standard_normal((1, 256, 64, 64), dtype=np.float32),
        original_size=(451, 300),
        input_size=(1024, 681),
        model="mobile_sam",
    )


def _fastsam_embedding(seed: int = 0) -> FastSamImageEmbedding:
    rng = np.random.default_rng(seed)
    return FastSamImageEmbedding(
        model="fastsam_s",
        original_size=(400, 600),
        input_size=(704, 1024),
        detections=rng.standard_normal((1, 37, 14784), dtype=np.float32),
        protos=rng.standard_normal((1, 32, 176, 256), dtype=np.float32),
    )


@pytest.mark.parametrize("make", [_sam_embedding, _fastsam_embedding], ids=["sam", "fastsam"])
def test_round_trip_keeps_every_field(tmp_path, make) -> None:
    embedding = make()
    written = fastseg.save_embedding(tmp_path / "photo.emb", embedding)
    assert written == tmp_path / "photo.emb.npz" and written.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["photo.emb.npz"]  # no temporary file left behind
    loaded = fastseg.load_embedding(written)
    assert type(loaded) is type(embedding)
    for field in ("model", "original_size", "input_size"):
        assert getattr(loaded, field) == getattr(embedding, field)
    arrays = ("embedding",) if isinstance(embedding, ImageEmbedding) else ("detections", "protos")
    for name in arrays:
        assert getattr(loaded, name).dtype == np.float32
        np.testing.assert_array_equal(getattr(loaded, name), getattr(embedding, name))


def test_saving_replaces_an_existing_file(tmp_path) -> None:
    path = tmp_path / "a.npz"
    fastseg.save_embedding(path, _sam_embedding(0))
    fastseg.save_embedding(path, _sam_embedding(1))
    np.testing.assert_array_equal(fastseg.load_embedding(path).embedding, _sam_embedding(1).embedding)


def test_save_refuses_what_is_not_an_embedding(tmp_path) -> None:
    with pytest.raises(TypeError, match="expected an image embedding from Predictor.get_image_embedding.*ndarray"):
        fastseg.save_embedding(tmp_path / "x.npz", np.zeros((1, 256, 64, 64), np.float32))
    with pytest.raises(FileNotFoundError, match="folder .*missing does not exist"):
        fastseg.save_embedding(tmp_path / "missing" / "x.npz", _sam_embedding())
    bad = ImageEmbedding(np.zeros((1, 256, 64, 64)), (10, 10), (1024, 1024), "mobile_sam")  # float64
    with pytest.raises(ValueError, match="embedding.embedding must be float32, got float64"):
        fastseg.save_embedding(tmp_path / "x.npz", bad)
    assert list(tmp_path.iterdir()) == []


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "no image embedding file at"),
        ("garbage", "is not a fastseg image embedding file"),
        ("truncated", "is not a fastseg image embedding file"),
        ("npy", "a single .npy array, not an .npz"),
        ("pickled", "member 'model' holds Python objects .*fastseg refuses them"),
        ("no format", r"it lacks \['format'\]"),
        ("other format", "embedding file format 'fastseg-image-embedding/0', this fastseg reads"),
        ("other family", "unknown model family 'yolo'"),
        ("no arrays", r"a fastsam embedding file needs arrays \['detections', 'protos'\]; missing"),
        ("float64", "array 'embedding' must be float32, got float64"),
        ("bad size", "original_size must be two positive integers"),
    ],
)
def test_load_errors_say_what_is_wrong(tmp_path, case, message) -> None:
    path = tmp_path / "e.npz"
    if case == "garbage":
        path.write_bytes(b"this is not numpy at all\n" * 10)
    elif case == "truncated":
        _npz(path, **sam_fields())
        path.write_bytes(path.read_bytes()[:5000])
    elif case == "npy":
        path = tmp_path / "e.npy"
        np.save(path, np.zeros(3))
    elif case == "pickled":
        _npz(path, **sam_fields(model=np.array([{"a": 1}], dtype=object)))
    elif case == "no format":
        _npz(path, **sam_fields(format=None))
    elif case == "other format":
        _npz(path, **sam_fields(format=np.array("fastseg-image-embedding/0")))
    elif case == "other family":
        _npz(path, **sam_fields(family=np.array("yolo")))
    elif case == "no arrays":
        _npz(path, **sam_fields(family=np.array("fastsam")))
    elif case == "float64":
        _npz(path, **sam_fields(embedding=np.zeros((1, 256, 64, 64))))
    elif case == "bad size":
        _npz(path, **sam_fields(original_size=np.array([0, 300])))
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        fastseg.load_embedding(path)


def test_a_truncated_file_is_really_truncated(tmp_path) -> None:
    """The 'truncated' case above must fail on the zip, not on something the test did wrong."""
    path = _npz(tmp_path / "e.npz", **sam_fields())
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(zipfile.BadZipFile):
        np.load(path, allow_pickle=False)


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
@pytest.mark.parametrize("family", ["sam", "fastsam"])
def test_tiny_model_embedding_round_trip(tmp_path, tiny_sam_folder, tiny_fastsam_folder, photos, family, backend):
    """Encode, save, load into a new Predictor (of the other backend): the same masks; the loaded
    embedding equals the one saved, array for array."""
    folder = tiny_sam_folder if family == "sam" else tiny_fastsam_folder
    first = fastseg.Predictor(folder, backend=backend, cache_dir=False)
    first.set_image(photos["coffee"])
    # SAM: discs around the foreground point; FastSAM: (176, 170) is detections a and d's centre
    # (input (300, 300), tests/tiny_models.py).
    prompts = {"points": [[300, 200], [176, 170]], "labels": [0, 1]}
    expected = first.predict(**prompts)
    assert len(expected) == (3 if family == "sam" else 2)
    embedding = first.get_image_embedding()
    path = fastseg.save_embedding(tmp_path / "coffee", embedding)
    loaded = fastseg.load_embedding(path)
    assert type(loaded) is type(embedding) and loaded.model == embedding.model
    assert loaded.original_size == (400, 600) and loaded.input_size == embedding.input_size
    for name in ("embedding",) if family == "sam" else ("detections", "protos"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(embedding, name))
    second = fastseg.Predictor(folder, backend="onnxruntime" if backend == "openvino" else "openvino", cache_dir=False)
    assert second.image_size is None
    second.set_image_embedding(loaded)
    assert second.image_size == (400, 600)
    got = second.predict(**prompts)
    np.testing.assert_array_equal(got.masks, expected.masks)
    np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-6)


def test_tiny_embedding_of_another_family_is_refused(tmp_path, tiny_sam_folder, tiny_fastsam_folder, photos) -> None:
    sam = fastseg.Predictor(tiny_sam_folder, backend="onnxruntime")
    fastsam = fastseg.Predictor(tiny_fastsam_folder, backend="onnxruntime")
    sam.set_image(photos["chelsea"])
    fastsam.set_image(photos["chelsea"])
    sam_file = fastseg.save_embedding(tmp_path / "sam", sam.get_image_embedding())
    fastsam_file = fastseg.save_embedding(tmp_path / "fastsam", fastsam.get_image_embedding())
    with pytest.raises(ValueError, match="expected a FastSamImageEmbedding, got ImageEmbedding"):
        fastsam.set_image_embedding(fastseg.load_embedding(sam_file))
    with pytest.raises(ValueError, match="expected a fastseg.sam.ImageEmbedding, got FastSamImageEmbedding"):
        sam.set_image_embedding(fastseg.load_embedding(fastsam_file))


@pytest.mark.parametrize("name", ["mobile_sam", "fastsam_s"])
def test_a_saved_embedding_gives_the_same_masks_in_a_new_predictor(tmp_path, name, fastseg_cache, photos) -> None:
    """Encode once, save, load into another Predictor of the same folder: the same masks and scores."""
    image = photos["coffee"]
    options = {"conf": 0.05} if name.startswith("fastsam") else {}
    first = fastseg_cache.set_image(fastseg_cache.predictor(name, **options), image)
    h, w = image.shape[:2]
    prompts = {"points": [[w // 2, h // 2], [w // 4, h // 3]], "labels": [1, 0]}
    expected = first.predict(**prompts)
    assert len(expected.masks) > 0
    path = fastseg.save_embedding(tmp_path / "coffee", first.get_image_embedding())

    second = fastseg.Predictor(first.folder.path, cache_dir=fastseg_cache.compiled_dir, **options)
    second.set_image_embedding(fastseg.load_embedding(path))
    got = second.predict(**prompts)
    np.testing.assert_array_equal(got.masks, expected.masks)
    np.testing.assert_array_equal(got.scores, expected.scores)
    np.testing.assert_array_equal(got.boxes, expected.boxes)


def test_an_embedding_of_another_model_is_refused(tmp_path, fastseg_cache, photos) -> None:
    predictor = fastseg_cache.set_image(fastseg_cache.predictor("mobile_sam"), photos["chelsea"])
    path = fastseg.save_embedding(tmp_path / "chelsea", predictor.get_image_embedding())
    other = fastseg_cache.predictor("fastsam_s")
    with pytest.raises(ValueError, match="expected a FastSamImageEmbedding, got ImageEmbedding"):
        other.set_image_embedding(fastseg.load_embedding(path))
