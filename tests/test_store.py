"""The embedding store (fastseg.store) and ``Predictor(..., store=...)``.

A hit skips the encoder and gives the masks encoding gives; the store never hands out another
image's or another model's embedding (different pixels, backend or precision, an entry copied under
another name), a damaged entry is a miss with a warning and is replaced; several processes writing at
once leave only complete entries; keys are hex only, so no path leaves the store.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fastseg
from fastseg.fastsam import FastSamImageEmbedding
from fastseg.image import load_image
from fastseg.manifest import load_model_folder
from fastseg.sam import ImageEmbedding
from fastseg.store import MARKER_NAME, EmbeddingStore, StoreWarning, image_key, model_key

# --------------------------------------------------------------------------------------------------
# helpers


class EncoderCounter:
    """A ``session_wrapper`` that counts the runs of the image graph (SAM ``encoder``, FastSAM ``network``)."""

    def __init__(self) -> None:
        self.runs = 0

    def __call__(self, graph: str, session):  # noqa: ANN001, ANN204
        if graph not in ("encoder", "network"):
            return session
        counter = self

        class Counting:
            input_names, output_names = session.input_names, session.output_names
            backend, precision = session.backend, session.precision

            def run(self, feeds):  # noqa: ANN001, ANN202
                counter.runs += 1
                return session.run(feeds)

        return Counting()


def _predictor(folder: Path, store, backend: str = "onnxruntime") -> tuple[fastseg.Predictor, EncoderCounter]:  # noqa: ANN001
    counter = EncoderCounter()
    predictor = fastseg.Predictor(folder, backend=backend, cache_dir=False, session_wrapper=counter, store=store)
    return predictor, counter


def _sam_embedding(value: float = 0.0, size: tuple[int, int] = (30, 40), model: str = "mobile_sam") -> ImageEmbedding:
    return ImageEmbedding(np.full((1, 8, 4, 4), value, np.float32), size, (1024, 1024), model)


def _keys(*names: str) -> list[str]:
    return [image_key(np.full((2, 3, 3), i, np.uint8)) for i, _ in enumerate(names)]


def _entries(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name not in (MARKER_NAME, "model.json"))


@pytest.fixture
def sam_key(tiny_sam_folder: Path) -> str:
    return model_key(load_model_folder(tiny_sam_folder), "onnxruntime", "f32")


# --------------------------------------------------------------------------------------------------
# keys


def test_image_key_is_of_the_pixels_and_shape(tmp_path, photos) -> None:
    cat = photos["chelsea"]
    assert image_key(cat) == image_key(cat.copy())
    assert len(image_key(cat)) == 64 and set(image_key(cat)) <= set("0123456789abcdef")
    assert image_key(cat[:, ::-1]) == image_key(np.ascontiguousarray(cat[:, ::-1]))  # a strided view
    assert image_key(cat) != image_key(photos["coffee"])
    changed = cat.copy()
    changed[0, 0, 0] ^= 1
    assert image_key(changed) != image_key(cat)
    flat = np.arange(36, dtype=np.uint8)
    assert image_key(flat.reshape(2, 6, 3)) != image_key(flat.reshape(4, 3, 3))  # same bytes, other shape
    # The same picture in two lossless files is one key; so is a photo turned upright by its EXIF tag.
    Image.fromarray(cat).save(tmp_path / "cat.png")
    Image.fromarray(cat).save(tmp_path / "cat.bmp")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the viewer turns it 90 degrees clockwise
    Image.fromarray(np.ascontiguousarray(np.rot90(cat, 1))).save(tmp_path / "turned.png", exif=exif)
    keys = {image_key(load_image(tmp_path / name)) for name in ("cat.png", "cat.bmp", "turned.png")}
    assert keys == {image_key(cat)}


@pytest.mark.parametrize(
    ("pixels", "error", "message"),
    [
        ([[1, 2, 3]], TypeError, "pixels must be a numpy array"),
        (np.zeros((4, 4), np.uint8), ValueError, r"RGB uint8 of shape \(H, W, 3\).*got uint8 \(4, 4\)"),
        (np.zeros((4, 4, 3), np.float32), ValueError, "got float32"),
        (np.zeros((4, 4, 4), np.uint8), ValueError, r"got uint8 \(4, 4, 4\)"),
    ],
)
def test_image_key_refuses_what_is_not_rgb_pixels(pixels, error, message) -> None:
    with pytest.raises(error, match=message):
        image_key(pixels)


def test_model_key_names_model_backend_and_precision(tiny_sam_folder, tiny_fastsam_folder) -> None:
    sam, fastsam = load_model_folder(tiny_sam_folder), load_model_folder(tiny_fastsam_folder)
    keys = {
        model_key(sam, "onnxruntime", "f32"),
        model_key(sam, "openvino", "f32"),
        model_key(sam, "openvino", "bf16"),
        model_key(fastsam, "openvino", "f32"),
    }
    assert len(keys) == 4
    assert model_key(sam, "openvino", "f32") == model_key(load_model_folder(tiny_sam_folder), "openvino", "f32")
    with pytest.raises(ValueError, match="backend must be one of"):
        model_key(sam, "tensorrt", "f32")


# --------------------------------------------------------------------------------------------------
# the store folder


def test_a_store_is_created_in_a_missing_folder_and_reopened(tmp_path, sam_key) -> None:
    root = tmp_path / "a" / "b" / "store"
    store = EmbeddingStore(root)
    assert [p.name for p in root.iterdir()] == [MARKER_NAME]
    (key,) = _keys("x")
    assert not store.contains(key, sam_key) and store.get(key, sam_key) is None
    path = store.put(key, sam_key, _sam_embedding(1.0))
    assert path == root / sam_key[:16] / key[:2] / f"{key}.npz" == store.path(key, sam_key)
    assert store.contains(key, sam_key)
    info = (root / sam_key[:16] / "model.json").read_text()
    assert sam_key in info and "mobile_sam" in info
    again = EmbeddingStore(str(root))  # an existing store opens, entries kept
    got = again.get(key, sam_key, model="mobile_sam", original_size=(30, 40))
    assert isinstance(got, ImageEmbedding) and got.original_size == (30, 40)
    np.testing.assert_array_equal(got.embedding, _sam_embedding(1.0).embedding)
    assert [p.name for p in root.rglob(".*")] == []  # no temporary file left
    # An entry is an ordinary embedding file too.
    assert isinstance(fastseg.load_embedding(path), ImageEmbedding)


def test_an_empty_folder_becomes_a_store(tmp_path) -> None:
    EmbeddingStore(tmp_path)
    assert (tmp_path / MARKER_NAME).is_file()


def test_refuses_what_is_not_a_store(tmp_path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    with pytest.raises(
        ValueError, match=r"photos is not an embedding store: it holds files \(cat.jpg\) and no fastseg"
    ):
        EmbeddingStore(tmp_path / "photos")
    assert [p.name for p in (tmp_path / "photos").iterdir()] == ["cat.jpg"]  # untouched
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="an embedding store is a folder; .*file is a file"):
        EmbeddingStore(tmp_path / "file")
    for content, message in [
        ('{"format": "fastseg-embedding-store", "version": 99}', "store of version 99; this fastseg reads version 1"),
        ('{"format": "something else", "version": 1}', "is not an embedding store marker"),
        ("{not json", "is not a readable embedding store marker"),
    ]:
        folder = tmp_path / f"s{len(content)}"
        folder.mkdir()
        (folder / MARKER_NAME).write_text(content)
        with pytest.raises(ValueError, match=message):
            EmbeddingStore(folder)


@pytest.mark.parametrize(
    "bad",
    ["../" * 21 + "etc", "/" + "a" * 63, "A" * 64, "a" * 63, "a" * 65, "g" * 64, "a" * 62 + "/.", "", None, 7],
)
def test_keys_are_64_hex_digits_so_paths_stay_inside(tmp_path, sam_key, bad) -> None:
    store = EmbeddingStore(tmp_path / "store")
    (good,) = _keys("x")
    for call in (store.path, store.contains, store.get):
        with pytest.raises(ValueError, match="image_key must be 64 lowercase hex digits"):
            call(bad, sam_key)
        with pytest.raises(ValueError, match="model_key must be 64 lowercase hex digits"):
            call(good, bad)
    with pytest.raises(ValueError, match="image_key must be 64 lowercase hex digits"):
        store.put(bad, sam_key, _sam_embedding())
    assert [p.name for p in (tmp_path / "store").iterdir()] == [MARKER_NAME]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_put_refuses_what_is_not_an_embedding(tmp_path, sam_key) -> None:
    store = EmbeddingStore(tmp_path)
    (key,) = _keys("x")
    with pytest.raises(TypeError, match="expected an image embedding"):
        store.put(key, sam_key, np.zeros((1, 256, 64, 64), np.float32))
    assert _entries(tmp_path) == []


# --------------------------------------------------------------------------------------------------
# never another image's or model's embedding


def test_another_image_or_model_is_a_miss(tmp_path, tiny_sam_folder, sam_key) -> None:
    store = EmbeddingStore(tmp_path)
    a, b = _keys("a", "b")
    store.put(a, sam_key, _sam_embedding(1.0))
    other_model = model_key(load_model_folder(tiny_sam_folder), "openvino", "bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # plain misses are silent
        assert store.get(b, sam_key) is None
        assert store.get(a, other_model) is None
        assert not store.contains(b, sam_key) and not store.contains(a, other_model)


def test_an_entry_copied_under_another_name_is_a_miss_then_replaced(tmp_path, sam_key) -> None:
    store = EmbeddingStore(tmp_path)
    a, b = _keys("a", "b")
    path_a = store.put(a, sam_key, _sam_embedding(1.0))
    path_b = store.path(b, sam_key)
    path_b.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(path_a, path_b)  # image A's embedding under image B's name
    assert store.contains(b, sam_key)  # the file is there ...
    with pytest.warns(StoreWarning, match=r"records image key .* not .*copied or renamed by hand"):
        assert store.get(b, sam_key) is None  # ... but it is not B's
    store.put(b, sam_key, _sam_embedding(2.0))
    got = store.get(b, sam_key)
    assert got is not None and float(got.embedding.flat[0]) == 2.0
    # the same under another model's folder
    other = "f" * 64
    path_other = store.path(a, other)
    path_other.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(path_a, path_other)
    with pytest.warns(StoreWarning, match="records model key"):
        assert store.get(a, other) is None


def test_an_entry_of_another_model_name_or_size_is_a_miss(tmp_path, sam_key) -> None:
    store = EmbeddingStore(tmp_path)
    (a,) = _keys("a")
    store.put(a, sam_key, _sam_embedding(1.0, size=(30, 40), model="sam_vit_b"))
    with pytest.warns(StoreWarning, match="model 'sam_vit_b', not 'mobile_sam'"):
        assert store.get(a, sam_key, model="mobile_sam") is None
    with pytest.warns(StoreWarning, match=r"image size \(30, 40\), not \(40, 30\)"):
        assert store.get(a, sam_key, original_size=(40, 30)) is None
    assert store.get(a, sam_key, model="sam_vit_b", original_size=(30, 40)) is not None


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "plain embedding file"])
def test_a_damaged_entry_is_a_miss_with_a_warning_then_replaced(tmp_path, sam_key, damage) -> None:
    store = EmbeddingStore(tmp_path)
    (a,) = _keys("a")
    path = store.put(a, sam_key, _sam_embedding(1.0))
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    elif damage == "garbage":
        path.write_bytes(os.urandom(5000))
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a valid embedding file without the store's keys
        fastseg.save_embedding(path, _sam_embedding(1.0))
    expected = "lacks the tags" if damage == "plain embedding file" else "is not a fastseg image embedding file"
    with pytest.warns(StoreWarning, match=f"store entry .* cannot be read .*{expected}.*will be replaced"):
        assert store.get(a, sam_key) is None
    store.put(a, sam_key, _sam_embedding(3.0))
    got = store.get(a, sam_key)
    assert got is not None and float(got.embedding.flat[0]) == 3.0


def test_fastsam_entries_round_trip(tmp_path, tiny_fastsam_folder) -> None:
    key = model_key(load_model_folder(tiny_fastsam_folder), "openvino", "f32")
    store = EmbeddingStore(tmp_path)
    (a,) = _keys("a")
    rng = np.random.default_rng(0)
    embedding = FastSamImageEmbedding(
        "fastsam_s",
        (20, 30),
        (64, 96),
        rng.standard_normal((1, 37, 126), dtype=np.float32),
        rng.standard_normal((1, 32, 16, 24), dtype=np.float32),
    )
    store.put(a, key, embedding)
    got = store.get(a, key, model="fastsam_s", original_size=(20, 30))
    assert isinstance(got, FastSamImageEmbedding)
    np.testing.assert_array_equal(got.protos, embedding.protos)
    assert '"family": "fastsam"' in (tmp_path / key[:16] / "model.json").read_text()


# --------------------------------------------------------------------------------------------------
# the Predictor


def test_a_hit_skips_the_encoder_and_gives_the_same_masks(tmp_path, tiny_sam_folder, photos) -> None:
    cat = photos["chelsea"]
    prompts = {"points": [[150, 120]], "labels": [1]}
    first, encoder = _predictor(tiny_sam_folder, tmp_path / "store")
    assert isinstance(first.store, EmbeddingStore) and first.store_model_key is not None
    first.set_image(cat)
    assert (encoder.runs, first.store_hits, first.store_misses) == (1, 0, 1)
    encoded = first.predict(**prompts)
    assert len(_entries(tmp_path / "store")) == 1

    second, encoder = _predictor(tiny_sam_folder, EmbeddingStore(tmp_path / "store"))
    handle = second.set_image(cat.copy())
    assert (encoder.runs, second.store_hits, second.store_misses) == (0, 1, 0)
    assert handle.pixels is not None  # the handle keeps the pixels on a hit too
    np.testing.assert_array_equal(handle.pixels, cat)
    hit = second.predict(**prompts)
    np.testing.assert_array_equal(hit.masks, encoded.masks)
    np.testing.assert_array_equal(hit.scores, encoded.scores)
    np.testing.assert_array_equal(second.get_image_embedding().embedding, first.get_image_embedding().embedding)

    # encode() and everything(image) look up too; an image file is keyed by its pixels.
    Image.fromarray(cat).save(tmp_path / "cat.png")
    handle = second.encode(tmp_path / "cat.png")
    np.testing.assert_array_equal(second.predict(**prompts, image=handle).masks, encoded.masks)
    records = second.everything(tmp_path / "cat.png", points_per_side=4)
    assert (encoder.runs, second.store_hits, second.store_misses) == (0, 3, 0)
    expected = first.everything(cat, points_per_side=4)  # a hit on the first Predictor too
    assert [r["area"] for r in records] == [r["area"] for r in expected]
    assert (first.store_hits, first.store_misses) == (1, 1)

    # another image: a miss, encoded and stored
    second.encode(photos["coffee"])
    assert (encoder.runs, second.store_hits, second.store_misses) == (1, 3, 1)
    assert len(_entries(tmp_path / "store")) == 2


def test_embeddings_passed_in_are_not_stored(tmp_path, tiny_sam_folder, photos) -> None:
    plain, _ = _predictor(tiny_sam_folder, None)
    assert plain.store is None and plain.store_model_key is None
    plain.set_image(photos["chelsea"])
    embedding = plain.get_image_embedding()
    stored, encoder = _predictor(tiny_sam_folder, tmp_path)
    stored.set_image_embedding(embedding)
    stored.encode(embedding)
    assert (encoder.runs, stored.store_hits, stored.store_misses) == (0, 0, 0)
    assert _entries(tmp_path) == []


def test_another_backend_is_another_entry(tmp_path, tiny_sam_folder, photos) -> None:
    onnx, onnx_encoder = _predictor(tiny_sam_folder, tmp_path)
    openvino, openvino_encoder = _predictor(tiny_sam_folder, tmp_path, backend="openvino")
    assert onnx.store_model_key != openvino.store_model_key
    onnx.set_image(photos["chelsea"])
    openvino.set_image(photos["chelsea"])
    assert (onnx_encoder.runs, openvino_encoder.runs) == (1, 1)
    assert (openvino.store_hits, openvino.store_misses) == (0, 1)
    assert len(_entries(tmp_path)) == 2
    assert len({p.parent.parent for p in _entries(tmp_path)}) == 2  # one folder per model key


def test_a_damaged_or_foreign_entry_is_encoded_again_and_replaced(tmp_path, tiny_sam_folder, photos) -> None:
    cat, coffee = photos["chelsea"], photos["coffee"][:300, :400]
    predictor, encoder = _predictor(tiny_sam_folder, tmp_path)
    predictor.set_image(cat)
    predictor.set_image(coffee)
    cat_path = predictor.store.path(image_key(cat), predictor.store_model_key)
    coffee_path = predictor.store.path(image_key(coffee), predictor.store_model_key)
    shutil.copy(coffee_path, cat_path)  # coffee's embedding under the cat's name
    with pytest.warns(StoreWarning, match="records image key"):
        predictor.set_image(cat)
    assert (encoder.runs, predictor.store_hits, predictor.store_misses) == (3, 0, 3)
    cat_path.write_bytes(cat_path.read_bytes()[:1000])  # the new entry, truncated
    with pytest.warns(StoreWarning, match="cannot be read"):
        predictor.set_image(cat)
    assert encoder.runs == 4
    # an entry with the right keys but NaNs (written by a broken encoder): refused by the engine
    nan = predictor.get_image_embedding()
    nan = ImageEmbedding(np.full_like(nan.embedding, np.nan), nan.original_size, nan.input_size, nan.model)
    predictor.store.put(image_key(cat), predictor.store_model_key, nan)
    with pytest.warns(StoreWarning, match="stored embedding of this image is refused .*NaN"):
        predictor.set_image(cat)
    assert encoder.runs == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh, fresh_encoder = _predictor(tiny_sam_folder, tmp_path)
        fresh.set_image(cat)  # every bad entry was replaced by a good one
    assert (fresh_encoder.runs, fresh.store_hits) == (0, 1)
    np.testing.assert_array_equal(fresh.get_image_embedding().embedding, predictor.get_image_embedding().embedding)


def test_a_store_that_cannot_be_written_warns_and_encodes(tmp_path, tiny_sam_folder, photos) -> None:
    predictor, encoder = _predictor(tiny_sam_folder, tmp_path)
    # the image's entry folder is taken by a file: the put fails
    blocker = predictor.store.path(image_key(photos["chelsea"]), predictor.store_model_key).parent
    blocker.parent.mkdir(parents=True)
    blocker.write_text("")
    with pytest.warns(StoreWarning, match="could not store the embedding"):
        handle = predictor.set_image(photos["chelsea"])
    assert encoder.runs == 1 and predictor.predict(points=[[10, 10]], image=handle).masks.shape[0] == 3


def test_fastsam_everything_from_the_store(tmp_path, tiny_fastsam_folder, photos) -> None:
    image = photos["astronaut"][:320, :480]
    first, encoder = _predictor(tiny_fastsam_folder, tmp_path, backend="openvino")
    expected = first.everything(image)
    second, encoder = _predictor(tiny_fastsam_folder, tmp_path, backend="openvino")
    records = second.everything(image)
    assert (encoder.runs, second.store_hits) == (0, 1)
    assert len(records) == len(expected) > 0
    for got, want in zip(records, expected):
        np.testing.assert_array_equal(got["segmentation"], want["segmentation"])
    np.testing.assert_array_equal(
        second.predict(boxes=[0, 0, 200, 200]).masks, first.predict(boxes=[0, 0, 200, 200]).masks
    )


# --------------------------------------------------------------------------------------------------
# several processes at once

#: Entries every writer puts (the same ones), and per writer a few of its own.
SHARED, OWN, ROUNDS = 3, 2, 4


def _writer(args: tuple[str, str, int]) -> int:
    """Create (or open) the store, then put and read back entries, checking every read: an entry is
    always one writer's complete embedding, never a mixture or a part."""
    root, key, writer = args
    warnings.simplefilter("error", StoreWarning)
    store = EmbeddingStore(root)
    names = [f"shared{i}" for i in range(SHARED)] + [f"own{writer}-{i}" for i in range(OWN)]
    keys = {name: image_key(np.frombuffer(name.encode().ljust(12, b"."), np.uint8).reshape(2, 2, 3)) for name in names}
    checked, written = 0, set()
    for round_ in range(ROUNDS):
        for index, name in enumerate(names):
            value = float(writer * 1000 + round_ * 10 + index)
            store.put(keys[name], key, ImageEmbedding(np.full((1, 64, 64, 64), value, np.float32), (2, 2), (4, 4), "m"))
            written.add(name)
            for other_index, other in enumerate(names):
                got = store.get(keys[other], key, model="m", original_size=(2, 2))
                if got is None:
                    assert other not in written, f"{other} was written, then missing"
                    continue  # not written yet by anyone
                array = got.embedding
                assert array.shape == (1, 64, 64, 64) and np.all(array == array.flat[0]), "a mixed or partial entry"
                assert int(array.flat[0]) % 10 == other_index, "another entry's embedding"
                checked += 1
    return checked


def test_several_processes_writing_at_once_leave_only_complete_entries(tmp_path, sam_key) -> None:
    root = tmp_path / "new" / "store"  # created by the writers themselves, at once
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        checked = pool.map(_writer, [(str(root), sam_key, w) for w in range(4)])
    assert all(n >= (ROUNDS - 1) * (SHARED + OWN) ** 2 for n in checked), checked
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert not [f for f in files if Path(f).name.startswith(".")], files  # no temporary file left
    entries = _entries(root)
    assert len(entries) == SHARED + 4 * OWN
    assert files == sorted(
        [MARKER_NAME, f"{sam_key[:16]}/model.json"] + [e.relative_to(root).as_posix() for e in entries]
    )
    store = EmbeddingStore(root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for entry in entries:
            got = store.get(entry.stem, sam_key)
            assert got is not None
            value = float(got.embedding.flat[0])
            assert np.all(got.embedding == value) and 0 <= value < 4000  # one writer's complete embedding
