"""SAM-family pre- and post-processing (``fastseg.sam``) against segment_anything's own functions.

Fast: no model is built except the small prompt encoder; every comparison runs the original code.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from segment_anything.modeling import PromptEncoder, Sam
from segment_anything.utils.transforms import ResizeLongestSide

from fastseg import sam as rt
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


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A photo-like RGB uint8 image: smooth gradients plus noise (resampling errors would show)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255.0 / max(w, 1), yy * 255.0 / max(h, 1), (xx + yy) % 256], axis=-1)
    return np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", SIZES)
def test_preprocess_shape(size: tuple[int, int]) -> None:
    assert rt.preprocess_shape(*size, 1024) == ResizeLongestSide.get_preprocess_shape(*size, 1024)


def test_preprocess_shape_rejects_empty() -> None:
    with pytest.raises(ValueError, match=r"at least 1x1, got 0x5"):
        rt.preprocess_shape(0, 5, 1024)


@pytest.mark.parametrize("size", SIZES)
def test_resize_is_bit_exact(size: tuple[int, int]) -> None:
    image = _image(*size)
    expected = ResizeLongestSide(1024).apply_image(image)
    got = rt.resize_longest_side(image, 1024)
    assert got.dtype == np.uint8 and got.shape == expected.shape
    assert np.array_equal(got, expected)


def test_resize_is_bit_exact_on_photos(photos: dict[str, np.ndarray]) -> None:
    for name, image in photos.items():
        assert np.array_equal(rt.resize_longest_side(image, 1024), ResizeLongestSide(1024).apply_image(image)), name


@pytest.mark.parametrize("size", [(300, 451), (1080, 1920), (1024, 1024), (2000, 7)])
def test_preprocess_matches_sam_preprocess(size: tuple[int, int]) -> None:
    image = _image(*size, seed=1)
    # Sam.preprocess needs only these attributes of the model.
    fake_sam = SimpleNamespace(
        pixel_mean=torch.tensor(SPEC.pixel_mean).view(-1, 1, 1),
        pixel_std=torch.tensor(SPEC.pixel_std).view(-1, 1, 1),
        image_encoder=SimpleNamespace(img_size=1024),
    )
    resized = ResizeLongestSide(1024).apply_image(image)
    x = torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None]
    expected = Sam.preprocess(fake_sam, x).numpy()
    got, input_size = rt.preprocess(image, SPEC)
    assert got.dtype == np.float32 and got.shape == (1, 3, 1024, 1024)
    assert input_size == resized.shape[:2]
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10, 3))])
def test_preprocess_rejects_wrong_images(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"image must be RGB uint8 \(H, W, 3\), got"):
        rt.preprocess(bad, SPEC)


@pytest.mark.parametrize("size", SIZES)
def test_coords_and_boxes(size: tuple[int, int]) -> None:
    h, w = size
    rng = np.random.default_rng(2)
    points = (rng.random((7, 2)) * [w, h]).astype(np.float32)
    boxes = np.sort((rng.random((5, 2, 2)) * [w, h]).astype(np.float32), axis=1).reshape(5, 4)
    transform = ResizeLongestSide(1024)
    # The original hands float64 results to torch as float32.
    assert np.array_equal(
        rt.transform_coords(points, size, 1024), transform.apply_coords(points, size).astype(np.float32)
    )
    assert np.array_equal(rt.transform_boxes(boxes, size, 1024), transform.apply_boxes(boxes, size).astype(np.float32))


def _prompt_encoder() -> PromptEncoder:
    torch.manual_seed(0)
    return PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16)


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
def test_prompt_layout_gives_the_original_sparse_embeddings(case: str) -> None:
    """build_prompt_arrays + the exported graph's point embedding == PromptEncoder(points, boxes)."""
    from fastseg_export.sam import SamDecoder

    points, labels, boxes = PROMPTS[case]
    size = (300, 451)
    encoder = _prompt_encoder()
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

    transform = ResizeLongestSide(1024)
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


def _bare_decoder(pe: PromptEncoder) -> SimpleNamespace:
    return SimpleNamespace(
        pe_layer=pe.pe_layer,
        point_embeddings=pe.point_embeddings,
        not_a_point_embed=pe.not_a_point_embed,
        input_h=pe.input_image_size[0],
        input_w=pe.input_image_size[1],
    )


def test_padding_point_only_without_box() -> None:
    xy, labels = rt.build_prompt_arrays(np.array([[10.0, 20.0]], np.float32), np.array([1]), None, (100, 200), 1024)
    assert labels.tolist() == [[1.0, -1.0]] and xy[0, 1].tolist() == [0.0, 0.0]
    xy, labels = rt.build_prompt_arrays(
        np.array([[10.0, 20.0]], np.float32), np.array([0]), np.array([[0, 0, 50, 60]], np.float32), (100, 200), 1024
    )
    assert labels.tolist() == [[0.0, 2.0, 3.0]]
    assert xy[0, 1:].tolist() == [[0.0, 0.0], [256.0, 307.20001220703125]]


def test_prompt_arrays_need_a_prompt() -> None:
    with pytest.raises(ValueError, match="at least one point or one box"):
        rt.build_prompt_arrays(None, None, None, (10, 10), 1024)
    with pytest.raises(ValueError, match="labels must be given with points"):
        rt.build_prompt_arrays(np.zeros((1, 2), np.float32), None, None, (10, 10), 1024)


@pytest.mark.parametrize(
    ("n_in", "n_out"), [(256, 1024), (576, 1080), (1024, 300), (7, 3), (3, 7), (1, 5), (5, 1), (4, 4)]
)
def test_interpolation_matrix_is_torch_bilinear(n_in: int, n_out: int) -> None:
    eye = torch.eye(n_in, dtype=torch.float64).reshape(1, 1, n_in, n_in)  # column j = unit impulse at j
    expected = F.interpolate(eye, size=(n_out, n_in), mode="bilinear", align_corners=False)[0, 0].numpy()
    got = rt.interpolation_matrix(n_in, n_out)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-12)


def _postprocess(logits: np.ndarray, input_size: tuple[int, int], original_size: tuple[int, int]) -> np.ndarray:
    """segment_anything's Sam.postprocess_masks (the model is only asked for image_encoder.img_size)."""
    fake_sam = SimpleNamespace(image_encoder=SimpleNamespace(img_size=1024))
    with torch.no_grad():
        out = Sam.postprocess_masks(fake_sam, torch.from_numpy(logits)[None], input_size, original_size)
    return out[0].numpy()


def _low_res_logits(n: int, seed: int) -> np.ndarray:
    """Mask-like logits: a smooth random field (std ~3) with a block of exact zeros and sharp edges."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, n, 9, 9, generator=gen) * 3
    logits = F.interpolate(coarse, size=(256, 256), mode="bicubic", align_corners=False)[0].numpy()
    logits[:, 100:140, 30:90] = 0.0
    logits[:, 200:, 200:] = np.where(logits[:, 200:, 200:] > 0, 8.0, -8.0)
    return np.ascontiguousarray(logits, dtype=np.float32)


@pytest.mark.parametrize("size", SIZES)
def test_upscaling_matches_postprocess_masks(size: tuple[int, int]) -> None:
    logits = _low_res_logits(3, seed=sum(size))
    input_size = rt.preprocess_shape(*size, 1024)
    expected = _postprocess(logits, input_size, size)
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


def test_upscale_masks_helper_and_empty_batch() -> None:
    logits = _low_res_logits(2, seed=5)
    expected = _postprocess(logits, (576, 1024), (1080, 1920)) > 0
    assert (rt.upscale_masks(logits, (576, 1024), (1080, 1920)) == expected).mean() >= 0.9999
    empty = rt.UpscalePlan((576, 1024), (1080, 1920)).masks(np.zeros((0, 256, 256), np.float32))
    assert empty.shape == (0, 1080, 1920)


def test_upscale_plan_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match=r"input_size must lie within 1024x1024, got \(1025, 3\)"):
        rt.UpscalePlan((1025, 3), (10, 10))
    with pytest.raises(ValueError, match=r"logits must have shape \(M, 256, 256\), got \(2, 128, 128\)"):
        rt.UpscalePlan((576, 1024), (1080, 1920)).masks(np.zeros((2, 128, 128), np.float32))


# ----------------------------------------------------------------------------------------------
# SamEngine with stand-in sessions: the state and error handling, without a model


class _Session:
    def __init__(self, inputs: tuple[str, ...], outputs: tuple[str, ...], fn) -> None:
        self.input_names, self.output_names, self._fn = inputs, outputs, fn
        self.calls: list[dict[str, np.ndarray]] = []

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append(feeds)
        return self._fn(feeds)


def _engine(decoder_fn=None, name: str = "mobile_sam") -> rt.SamEngine:
    spec = get_spec(name)
    folder = SimpleNamespace(
        spec=spec, name=name, manifest={"extra": {"embedding_shape": [256, 64, 64], "low_res_size": 256}}
    )

    def encode(feeds):
        return {"image_embeddings": np.full((1, 256, 64, 64), feeds["image"].mean(), np.float32)}

    def decode(feeds):
        b = feeds["point_coords"].shape[0]
        low = np.full((b, 4, 256, 256), -1.0, np.float32)
        for i in range(b):  # mask k of prompt set i: a square of side 20 * (k + 1) + i
            for k in range(4):
                low[i, k, : 20 * (k + 1) + i, : 20 * (k + 1) + i] = 1.0
        return {"low_res_masks": low, "iou_predictions": np.arange(b * 4, dtype=np.float32).reshape(b, 4)}

    def image_side(feeds):
        level = float(feeds["image_embeddings"].mean())
        return {name: np.full((1, 4096, 8), level + i, np.float32) for i, name in enumerate(rt.DECODER_IMAGE_OUTPUTS)}

    sessions = {
        "encoder": _Session(("image",), ("image_embeddings",), encode),
        "decoder": _Session(rt.DECODER_INPUTS, rt.DECODER_OUTPUTS, decoder_fn or decode),
        "decoder_image": _Session(("image_embeddings",), rt.DECODER_IMAGE_OUTPUTS, image_side),
        "decoder_points": _Session(rt.POINT_DECODER_INPUTS, rt.DECODER_OUTPUTS, decoder_fn or decode),
    }
    return rt.SamEngine(folder, sessions)


def test_engine_result_layout_and_feeds() -> None:
    engine = _engine()
    with pytest.raises(RuntimeError, match="no image is set"):
        engine.predict(np.array([[1.0, 1.0]], np.float32), np.array([1]), None, None, True)
    engine.set_image(_image(300, 451))
    boxes = np.array([[0, 0, 100, 100], [10, 10, 200, 200]], np.float32)
    result = engine.predict(None, None, boxes, None, True)
    assert result.masks.shape == (6, 300, 451) and result.low_res_logits.shape == (6, 256, 256)
    assert result.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert result.scores.tolist() == [1, 2, 3, 5, 6, 7]  # masks 1..3 of each set
    # without a mask input: decoder_points, fed decoder_image's outputs for this image (computed once)
    assert engine._decoder.calls == [] and len(engine._decoder_image.calls) == 1
    feeds = engine._decoder_points.calls[-1]
    assert feeds["point_coords"].shape == (2, 2, 2) and feeds["point_labels"].tolist() == [[2, 3], [2, 3]]
    level = float(engine.get_image_embedding().embedding.mean())
    assert [float(feeds[n][0, 0, 0]) for n in rt.DECODER_IMAGE_OUTPUTS] == [float(np.float32(level + i))
                                                                            for i in range(4)]
    assert "mask_input" not in feeds
    # Mask 1 of set 0 is 1 on low-res [0, 40)^2, -1 elsewhere: > 0 up to 1024-grid position 159.5,
    # so the last photo pixel j inside has (j + 0.5) * input / original - 0.5 < 159.5.
    x2 = int(np.ceil(160 * 451 / 1024 - 0.5)) - 1
    y2 = int(np.ceil(160 * 300 / 681 - 0.5)) - 1
    assert result.boxes[0].tolist() == [0, 0, x2, y2]
    single = engine.predict(np.array([[5.0, 5.0]], np.float32), np.array([1]), None, result.low_res_logits[:1], False)
    assert len(single) == 1 and single.scores.tolist() == [0.0]
    feeds = engine._decoder.calls[-1]
    assert feeds["has_mask_input"].tolist() == [1.0] and feeds["mask_input"].shape == (1, 1, 256, 256)
    assert feeds["point_labels"].tolist() == [[1.0, -1.0]]


def test_engine_embedding_round_trip_and_refusals() -> None:
    engine = _engine()
    engine.set_image(_image(120, 80))
    emb = engine.get_image_embedding()
    assert emb.original_size == (120, 80) and emb.input_size == (1024, 683) and emb.model == "mobile_sam"
    other = _engine()
    other.set_image_embedding(emb)
    assert len(other.predict(np.array([[5.0, 5.0]], np.float32), np.array([1]), None, None, True)) == 3
    assert other._encoder.calls == []  # restored without encoding
    assert len(other._decoder_image.calls) == 1  # the decoder's image side, recomputed from the embedding
    with pytest.raises(ValueError, match="made by 'mobile_sam'; this predictor runs 'sam_vit_b'"):
        _engine(name="sam_vit_b").set_image_embedding(emb)
    with pytest.raises(ValueError, match=r"must be float32 \(1, 256, 64, 64\), got float64"):
        other.set_image_embedding(
            rt.ImageEmbedding(emb.embedding.astype(np.float64), (120, 80), (1024, 683), "mobile_sam")
        )
    with pytest.raises(
        ValueError, match=r"input_size \(1024, 1024\), but an image of 120x80 is resized to \(1024, 683\)"
    ):
        other.set_image_embedding(rt.ImageEmbedding(emb.embedding, (120, 80), (1024, 1024), "mobile_sam"))
    with pytest.raises(ValueError, match="expected a fastseg.sam.ImageEmbedding, got ndarray"):
        other.set_image_embedding(emb.embedding)


def test_engine_refuses_wrong_sessions_and_outputs() -> None:
    spec = get_spec("mobile_sam")
    folder = SimpleNamespace(spec=spec, name="mobile_sam", manifest={})
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
    fastsam = SimpleNamespace(spec=get_spec("fastsam_s"), name="fastsam_s", manifest={})
    with pytest.raises(ValueError, match="needs a SAM-family model, got 'fastsam_s'"):
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
        engine.predict(np.array([[5.0, 5.0]], np.float32), np.array([1]), None, None, True)
    with pytest.raises(RuntimeError, match=r"^decoder returned low_res_masks \(1, 2, 256, 256\)"):  # with a mask input
        engine.predict(np.array([[5.0, 5.0]], np.float32), np.array([1]), None, np.zeros((1, 256, 256), np.float32),
                       True)
    engine = _engine()
    engine.set_image(_image(30, 40))
    with pytest.raises(
        ValueError, match=r"mask_input must be \(1 or 2, 256, 256\) for 2 prompt set\(s\), got \(3, 256, 256\)"
    ):
        engine.predict(
            None, None, np.array([[0, 0, 5, 5], [1, 1, 4, 4]], np.float32), np.zeros((3, 256, 256), np.float32), True
        )


def test_engine_raw_decode_for_batched_callers() -> None:
    engine = _engine()
    engine.set_image(_image(50, 60))
    coords = np.zeros((5, 2, 2), np.float32)
    labels = np.tile(np.array([[1.0, -1.0]], np.float32), (5, 1))
    low_res, iou = engine.decode(coords, labels)
    assert low_res.shape == (5, 4, 256, 256) and iou.shape == (5, 4)
    feeds = engine._decoder_points.calls[-1]
    assert feeds["point_coords"].shape == (5, 2, 2) and set(feeds) == set(rt.POINT_DECODER_INPUTS)
    with pytest.raises(ValueError, match=r"point_coords must be \(B, N, 2\) with point_labels \(B, N\), got \(5, 2\)"):
        engine.decode(coords[:, 0], labels)
