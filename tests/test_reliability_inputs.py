"""Issue #11, bad inputs: hostile embedding files, huge images, impossible aspect ratios, absurd
everything-mode work, large box batches and small CLI mistakes. Each defect's test failed before its
fix; ``test_fastsam_handles_a_1x5000_image`` pins behaviour that already held."""

from __future__ import annotations

import dataclasses
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from reliability_files import constant_png, embedding_npz, npy_bytes, npy_header_only, sam_fields, write_npz

import fastseg
from fastseg import amg
from fastseg.cli import main
from fastseg.embeddings import MAX_ARRAY_ELEMENTS
from fastseg.fastsam import letterbox_geometry
from fastseg.image import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, load_image
from fastseg.prompts import check_flag
from fastseg.sam import MAX_DECODER_BATCH, preprocess_shape


def _peak_bytes(call: Callable[[], Any]) -> tuple[Any, int]:
    """``call()``'s result (or the exception it raised) and the peak of memory traced while it ran
    (NumPy reports its array buffers to tracemalloc, so a decompressed member or an array allocated
    from a header shows here)."""
    tracemalloc.start()
    try:
        try:
            result: Any = call()
        except Exception as exc:  # noqa: BLE001 - returned for the caller to check
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


MB = 1 << 20


@pytest.fixture(scope="module")
def sam(tiny_sam_folder: Path) -> fastseg.Predictor:
    return fastseg.Predictor(tiny_sam_folder, backend="onnxruntime", cache_dir=False)


@pytest.fixture(scope="module")
def fastsam(tiny_fastsam_folder: Path) -> fastseg.Predictor:
    return fastseg.Predictor(tiny_fastsam_folder, backend="onnxruntime", cache_dir=False)


# --------------------------------------------------------------------------------------------------
# 8: load_embedding reads only known members, checks each header first, bounds every size


def test_a_zip_bomb_member_that_is_not_known_is_never_read(tmp_path: Path) -> None:
    """100 MB of zeros compress to ~0.1 MB; the loader used to decompress every member."""
    bomb = np.zeros((10000, 10000), np.uint8)
    path = embedding_npz(tmp_path / "e.npz", sam_fields(), extra={"junk": npy_bytes(bomb)})
    del bomb
    assert path.stat().st_size < 2 * MB
    loaded, peak = _peak_bytes(lambda: fastseg.load_embedding(path))
    assert not isinstance(loaded, Exception), loaded
    assert loaded.embedding.shape == (1, 256, 64, 64)
    assert peak < 16 * MB, f"peak {peak / MB:.0f} MB"


def test_a_zip_bomb_in_a_known_member_is_refused_from_its_header(tmp_path: Path) -> None:
    bomb = np.zeros((1, 256, 4096, 4096), np.float32)  # 16 GiB declared: written without allocating it
    member = npy_header_only(bomb.shape, data=b"")
    del bomb
    path = write_npz(
        tmp_path / "e.npz", {**{k: npy_bytes(v) for k, v in sam_fields(embedding=None).items()}, "embedding": member}
    )
    error, peak = _peak_bytes(lambda: fastseg.load_embedding(path))
    assert isinstance(error, ValueError), error
    assert "(1, 256, 4096, 4096)" in str(error) and f"{MAX_ARRAY_ELEMENTS:,}" in str(error)
    assert peak < 16 * MB


def test_a_compressed_zero_embedding_of_the_wrong_shape_is_not_decompressed(tmp_path: Path) -> None:
    path = embedding_npz(tmp_path / "e.npz", sam_fields(embedding=np.zeros((1, 10000, 10000), np.uint8)))
    assert path.stat().st_size < 2 * MB
    error, peak = _peak_bytes(lambda: fastseg.load_embedding(path))
    assert isinstance(error, ValueError) and "'embedding'" in str(error), error
    assert peak < 16 * MB


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 256, 50000, 50000), "more than"),
        ((256, 64, 64), "must have shape (1, C, H, W)"),
        ((1, 256, 0, 64), "is empty"),
    ],
)
def test_a_declared_shape_is_checked_before_reading(tmp_path: Path, shape: tuple[int, ...], message: str) -> None:
    fields = {k: npy_bytes(v) for k, v in sam_fields(embedding=None).items()}
    path = write_npz(tmp_path / "e.npz", {**fields, "embedding": npy_header_only(shape)})
    error, peak = _peak_bytes(lambda: fastseg.load_embedding(path))
    assert isinstance(error, ValueError) and message in str(error), error
    assert peak < 16 * MB


def test_fastsam_arrays_are_bounded_too(tmp_path: Path) -> None:
    fields = {
        "format": npy_bytes(np.array(fastseg.embeddings.FORMAT)),
        "family": npy_bytes(np.array("fastsam")),
        "model": npy_bytes(np.array("fastsam_s")),
        "original_size": npy_bytes(np.array([400, 600])),
        "input_size": npy_bytes(np.array([704, 1024])),
        "detections": npy_header_only((1, 37, 10**9)),
        "protos": npy_header_only((1, 32, 176, 256)),
    }
    error, peak = _peak_bytes(lambda: fastseg.load_embedding(write_npz(tmp_path / "e.npz", fields)))
    assert isinstance(error, ValueError) and "'detections'" in str(error) and "more than" in str(error), error
    assert peak < 16 * MB


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("original_size", [200000, 200000], f"at most {MAX_IMAGE_SIDE:,} pixels per side"),
        ("original_size", [30000, 30000], f"at most {MAX_IMAGE_PIXELS:,} pixels"),
        ("input_size", [1024, 100000], "input_size"),
        ("model", "x" * 5000, "'model'"),
        ("format", np.zeros((1000, 1000), "U1"), "'format'"),
    ],
)
def test_sizes_and_strings_are_bounded(tmp_path: Path, key: str, value: Any, message: str) -> None:
    path = embedding_npz(tmp_path / "e.npz", sam_fields(**{key: np.asarray(value)}))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fastseg.load_embedding(path)


def test_a_huge_original_size_is_refused_by_the_engines(sam, fastsam, photos) -> None:
    sam.set_image(photos["chelsea"])
    emb = sam.get_image_embedding()
    with pytest.raises(ValueError, match=f"at most {MAX_IMAGE_SIDE:,} pixels per side"):
        sam.set_image_embedding(dataclasses.replace(emb, original_size=(40000, 40000), input_size=(1024, 1024)))
    fastsam.set_image(photos["chelsea"])
    femb = fastsam.get_image_embedding()
    with pytest.raises(ValueError, match=f"at most {MAX_IMAGE_SIDE:,} pixels per side"):
        fastsam.set_image_embedding(dataclasses.replace(femb, original_size=(1, 40000)))


# --------------------------------------------------------------------------------------------------
# 11: refusals never point to the unsafe path


def test_a_text_file_is_refused_without_suggesting_allow_pickle(tmp_path: Path) -> None:
    path = tmp_path / "notes.npz"
    path.write_text("hello world\n" * 10)
    with pytest.raises(ValueError) as info:
        fastseg.load_embedding(path)
    message = str(info.value)
    assert "allow_pickle" not in message and "pickle.load" not in message
    assert "is not a fastseg image embedding file" in message and "not a .npz" in message


def test_pickled_members_are_refused_and_say_why(tmp_path: Path) -> None:
    path = tmp_path / "e.npz"
    np.savez(path, **sam_fields(model=np.array([{"a": 1}], dtype=object)))
    with pytest.raises(ValueError) as info:
        fastseg.load_embedding(path)
    message = str(info.value)
    assert "allow_pickle" not in message and "'model'" in message
    assert "Python objects" in message and "refuse" in message


# --------------------------------------------------------------------------------------------------
# 12: embedding contents are checked


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_embeddings_are_refused(sam, fastsam, photos, bad: float) -> None:
    sam.set_image(photos["chelsea"])
    emb = sam.get_image_embedding()
    array = emb.embedding.copy()
    array[0, 5, 6, 7] = bad
    with pytest.raises(ValueError, match="image embedding holds 1 NaN or infinite value"):
        sam.set_image_embedding(dataclasses.replace(emb, embedding=array))
    fastsam.set_image(photos["chelsea"])
    femb = fastsam.get_image_embedding()
    for name in ("detections", "protos"):
        array = getattr(femb, name).copy()
        array.reshape(-1)[3] = bad
        with pytest.raises(ValueError, match=f"{name} holds 1 NaN or infinite value"):
            fastsam.set_image_embedding(dataclasses.replace(femb, **{name: array}))


def test_fastsam_original_size_must_give_the_input_size(fastsam, photos) -> None:
    fastsam.set_image(photos["chelsea"])  # 300 x 451 -> input 704 x 1024
    femb = fastsam.get_image_embedding()
    assert femb.input_size == letterbox_geometry((300, 451)).input_size == (704, 1024)
    with pytest.raises(ValueError, match=r"input_size \(704, 1024\), but an image of 1000x451 is letterboxed to"):
        fastsam.set_image_embedding(dataclasses.replace(femb, original_size=(1000, 451)))
    fastsam.set_image_embedding(dataclasses.replace(femb, original_size=(310, 460)))  # same letterbox: fine


# --------------------------------------------------------------------------------------------------
# 13: SAM refuses aspect ratios beyond 2048:1 clearly; FastSAM handles them


def test_sam_aspect_ratio_limit() -> None:
    assert preprocess_shape(1, 2048, 1024) == (1, 1024)  # 0.5 rounds up: the last size that works
    with pytest.raises(ValueError, match=r"1x2049 image would be 0 pixels high.*up to 2048:1"):
        preprocess_shape(1, 2049, 1024)
    with pytest.raises(ValueError, match=r"5000x1 image would be 0 pixels wide"):
        preprocess_shape(5000, 1, 1024)


def test_sam_refuses_a_1x5000_image_clearly(sam) -> None:
    with pytest.raises(ValueError, match="SAM resizes the longest side to 1024: a 1x5000 image would be 0 pixels high"):
        sam.set_image(np.zeros((1, 5000, 3), np.uint8))
    sam.set_image(np.zeros((1, 2048, 3), np.uint8))
    assert sam.predict(points=[[1000, 0.5]]).masks.shape == (3, 1, 2048)


def test_fastsam_handles_a_1x5000_image(fastsam) -> None:
    assert letterbox_geometry((1, 5000)).resized_size == (1, 1024)
    fastsam.set_image(np.full((1, 5000, 3), 200, np.uint8))
    result = fastsam.predict(points=[[2500, 0.5]])
    assert result.masks.shape[1:] == (1, 5000)
    records = fastsam.everything()
    assert records.image_size == (1, 5000)


# --------------------------------------------------------------------------------------------------
# 15: absurd everything-mode work is refused with its projected cost


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"points_per_side": 10000},
            r"points_per_side must be at most 256 \(65,536 prompt sets per crop\), "
            r"got 10000 \(100,000,000 prompt sets per crop\)",
        ),
        ({"crop_n_layers": 5}, r"crop_n_layers=5 runs the encoder on 1,365 crops; at most 341 \(crop_n_layers <= 4\)"),
        (
            {"crop_n_layers": 10**9, "crop_n_points_downscale_factor": 2},
            r"crop_n_layers=1000000000 runs the encoder on more than 10\*\*10 crops; at most 341",
        ),
        (
            {"points_per_side": 256, "crop_n_layers": 2},
            r"ask for 1,376,256 prompt sets \(1 crop x 65,536 \+ 4 crops x 65,536 \+ 16 crops x 65,536\) and 21 "
            r"encoder runs; the limit is 1,048,576 prompt sets",
        ),
        (
            {"points_per_side": None, "point_grids": [np.full((amg.MAX_PROMPT_SETS + 1, 2), 0.5)]},
            r"ask for 1,048,577 prompt sets \(1 crop x 1,048,577\) and 1 encoder runs",
        ),
    ],
)
def test_absurd_everything_work_is_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        amg.params_from_options(options)


def test_the_largest_allowed_work_is_accepted() -> None:
    assert amg.params_from_options({"points_per_side": 256}).projected_work() == (65536, 1)
    assert amg.params_from_options({"points_per_side": 32, "crop_n_layers": 4}).projected_work() == (341 * 1024, 341)
    downscaled = amg.params_from_options(
        {"points_per_side": 256, "crop_n_layers": 4, "crop_n_points_downscale_factor": 2}
    )
    assert downscaled.projected_work() == (65536 * 5, 341)  # every layer: 4**i crops of (256 / 2**i)**2 points


def test_absurd_work_is_refused_through_the_predictor_before_encoding(sam, photos) -> None:
    with pytest.raises(ValueError, match="points_per_side must be at most 256"):
        sam.everything(photos["chelsea"], points_per_side=10000)


# --------------------------------------------------------------------------------------------------
# 2: SAM predict with many boxes runs the decoders in bounded batches


def _counting_predictor(folder: Path, batches: dict[str, list[int]]) -> fastseg.Predictor:
    class Counting:
        def __init__(self, graph: str, session: Any) -> None:
            self.graph, self.session = graph, session
            self.input_names, self.output_names = session.input_names, session.output_names
            self.backend, self.precision = session.backend, session.precision

        def run(self, feeds: dict[str, np.ndarray]) -> Any:
            if "point_coords" in feeds:
                batches.setdefault(self.graph, []).append(int(feeds["point_coords"].shape[0]))
            return self.session.run(feeds)

    return fastseg.Predictor(folder, backend="onnxruntime", cache_dir=False, session_wrapper=Counting)


N_BOXES = 40  # two decoder runs: 32 + 8


def test_many_boxes_run_in_bounded_decoder_batches(tiny_sam_folder: Path, photos, monkeypatch) -> None:
    batches: dict[str, list[int]] = {}
    predictor = _counting_predictor(tiny_sam_folder, batches)
    image = photos["chelsea"]
    predictor.set_image(image)
    rng = np.random.default_rng(0)
    x1, y1 = rng.uniform(0, 300, N_BOXES), rng.uniform(0, 200, N_BOXES)
    boxes = np.stack([x1, y1, x1 + rng.uniform(0, 150, N_BOXES), y1 + rng.uniform(0, 100, N_BOXES)], axis=1)
    together = predictor.predict(boxes=boxes, multimask=False)
    assert batches["decoder_points"] == [MAX_DECODER_BATCH, N_BOXES - MAX_DECODER_BATCH]
    assert len(together) == N_BOXES and together.prompt_index.tolist() == list(range(N_BOXES))
    one_by_one = [predictor.predict(boxes=box, multimask=False) for box in boxes]
    np.testing.assert_array_equal(together.masks, np.concatenate([r.masks for r in one_by_one]))
    np.testing.assert_array_equal(together.scores, np.concatenate([r.scores for r in one_by_one]))
    np.testing.assert_array_equal(together.low_res_logits, np.concatenate([r.low_res_logits for r in one_by_one]))

    # The mask-input decoder too, with one mask per box or one mask shared by every box: the same
    # answers as the decoder run on all prompt sets at once.
    masks = np.random.default_rng(1).normal(size=(N_BOXES, 256, 256)).astype(np.float32)
    for mask_input in (masks, masks[:1]):
        batches.clear()
        chunked = predictor.predict(boxes=boxes, mask_input=mask_input)
        assert batches == {"decoder": [MAX_DECODER_BATCH, N_BOXES - MAX_DECODER_BATCH]}
        with monkeypatch.context() as patch:
            patch.setattr("fastseg.sam.MAX_DECODER_BATCH", 1000)
            at_once = predictor.predict(boxes=boxes, mask_input=mask_input)
        assert batches["decoder"][2:] == [N_BOXES]
        np.testing.assert_array_equal(chunked.masks, at_once.masks)
        np.testing.assert_array_equal(chunked.scores, at_once.scores)
        np.testing.assert_array_equal(chunked.low_res_logits, at_once.low_res_logits)


# --------------------------------------------------------------------------------------------------
# 9: decompression bombs and images beyond fastseg's size limit


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return constant_png(tmp_path_factory.mktemp("huge") / "huge.png", 20000, 20000)


def test_a_decompression_bomb_png_is_a_value_error(huge_png: Path) -> None:
    assert huge_png.stat().st_size < MB
    with pytest.raises(ValueError) as info:
        load_image(huge_png)
    message = str(info.value)
    assert "400,000,000 pixels" in message and f"{Image.MAX_IMAGE_PIXELS:,}" in message
    assert "MAX_IMAGE_PIXELS" in message and str(huge_png) in message


def test_an_image_past_pillows_warning_limit_is_refused_without_a_warning(tmp_path: Path) -> None:
    path = constant_png(tmp_path / "big.png", 10000, 10000)  # 100 M pixels: between Pillow's limit and twice it
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < 10000 * 10000 < 2 * Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=rf"100,000,000 pixels.*{Image.MAX_IMAGE_PIXELS:,}"):
            load_image(path)


def test_images_beyond_the_side_limit_are_refused(tmp_path: Path) -> None:
    wide = constant_png(tmp_path / "wide.png", MAX_IMAGE_SIDE + 1, 2)
    message = f"at most {MAX_IMAGE_SIDE:,} pixels per side"
    with pytest.raises(ValueError, match=rf"image is 2x{MAX_IMAGE_SIDE + 1} .*{message}"):
        load_image(Image.open(wide))
    with pytest.raises(ValueError, match=message):
        load_image(wide)
    with pytest.raises(ValueError, match=message):
        load_image(np.zeros((1, MAX_IMAGE_SIDE + 1), np.uint8))
    assert load_image(np.zeros((1, MAX_IMAGE_SIDE), np.uint8)).shape == (1, MAX_IMAGE_SIDE, 3)


def test_the_cli_says_it_in_one_line(huge_png: Path, tiny_sam_folder: Path, capsys) -> None:
    assert main(["segment", str(huge_png), "--model", str(tiny_sam_folder), "--point", "1,1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastseg: error: ") and err.count("\n") == 1 and "400,000,000 pixels" in err, err


# --------------------------------------------------------------------------------------------------
# Minor: --mask / --overlay must be PNG files; a flag must be a bool


@pytest.mark.parametrize("option", ["--mask", "--overlay"])
def test_mask_and_overlay_must_be_png(tmp_path: Path, tiny_sam_folder: Path, capsys, option: str) -> None:
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(image)
    out = tmp_path / "m.jpg"
    assert main(["segment", str(image), "--model", str(tiny_sam_folder), "--point", "1,1", option, str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{option} writes a PNG file: give a path ending in .png, got {out}" in err, err
    assert not out.exists()
    ok = tmp_path / "m.PNG"
    args = ["segment", str(image), "--model", str(tiny_sam_folder), "--point", "1,1", option, str(ok)]
    assert main([*args, "--backend", "onnxruntime"]) == 0
    assert Image.open(ok).format == "PNG"


def test_check_flag() -> None:
    for value in (True, False, np.bool_(True), np.bool_(False)):
        assert check_flag("multimask", value) is bool(value)
    for value in ("no", "False", 0, 1, None, np.array([True, False]), 1.0):
        with pytest.raises(TypeError, match=r"multimask must be True or False, got "):
            check_flag("multimask", value)
