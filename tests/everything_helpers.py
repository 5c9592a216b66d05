"""Shared by the everything-mode tests (``test_amg.py``, ``test_everything.py``).

- A *synthetic* SAM decoder: localized discs, discs with a small hole, discs with a small island,
  whose radius, edge sharpness and predicted IoU vary with the prompt point. It drives a real
  :class:`fastseg.sam.SamEngine` through stand-in sessions (numpy only: fast tier) and, wrapped in a
  ``segment_anything.Sam``, the official generator (slow tier). Random-weight networks give masks that
  all span the whole image; these differ, so NMS, crops, the crop-edge filter and
  ``min_mask_region_area`` all have something to do.
- The parity criteria against an official generator (issue 5): counts within 2%, >= 98% of the
  official masks matched one-to-one with IoU >= 0.98, matched masks from the same point and crop.

Nothing here imports torch or a reference package at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fastseg.manifest import ModelFolder
from fastseg.registry import get_spec
from fastseg.rle import coco_encode_rle, masks_to_rle

LOW_RES = 256
MIN_IOU = 0.98
MIN_MATCHED = 0.98
COUNT_TOLERANCE = 0.02

Records = list[dict[str, Any]]


# ----------------------------------------------------------------------------------------------
# the synthetic decoder
# ----------------------------------------------------------------------------------------------


def synthetic_decoder(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Four masks and IoU predictions per point ``(B, 2)`` (input frame, float64): a small disc, a
    disc, a larger disc with a small hole, a disc with a small island next to it; radius, edge
    sharpness and predicted IoU vary with the point."""
    centres = (np.arange(LOW_RES) + 0.5) * 4.0  # low-res cells in input pixels
    dx = centres[None, None, :] - xy[:, 0, None, None]
    dy = centres[None, :, None] - xy[:, 1, None, None]
    d = np.sqrt(dx**2 + dy**2)
    phase = 0.013 * xy[:, 0] + 0.021 * xy[:, 1]
    r = (45 + 30 * (1 + np.sin(phase)))[:, None, None]
    s = (0.6 + 0.5 * (1 + np.cos(1.7 * phase)))[:, None, None]
    hole = np.sqrt((dx - r / 2) ** 2 + dy**2)
    island = np.sqrt((dx - (r + 40)) ** 2 + dy**2)
    low = np.stack(
        [s * (30 - d), s * (r - d), s * np.minimum(1.3 * r - d, hole - 14), s * np.maximum(0.8 * r - d, 14 - island)],
        axis=1,
    )
    k = np.arange(4)[None, :]
    iou = 0.55 + 0.4 * np.sin(phase[:, None] * (1 + k) + k)
    return low.astype(np.float32), iou.astype(np.float32)


class StubSession:
    """A backend session (``input_names``, ``output_names``, ``run``) computed by a Python function."""

    def __init__(self, inputs: tuple[str, ...], outputs: tuple[str, ...], fn: Any) -> None:
        self.input_names, self.output_names, self._fn = inputs, outputs, fn
        self.calls = 0

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        return self._fn(feeds)


def synthetic_folder() -> ModelFolder:
    """A SAM-family model folder as the export describes one (no graph files: the sessions are stubs)."""
    extra = {"low_res_size": LOW_RES, "num_mask_outputs": 4, "embedding_shape": [256, 64, 64]}
    manifest = {"model": "synthetic", "family": "sam", "extra": extra}
    return ModelFolder(path=Path("synthetic"), manifest=manifest, spec=get_spec("mobile_sam"))


def synthetic_sessions() -> dict[str, StubSession]:
    """The four SAM sessions: the encoder gives zeros, ``decoder_points`` is :func:`synthetic_decoder`,
    the general decoder (for mask inputs) must not run in everything mode."""
    from fastseg.sam import DECODER_IMAGE_OUTPUTS, DECODER_INPUTS, DECODER_OUTPUTS, POINT_DECODER_INPUTS

    def encode(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert feeds["image"].shape == (1, 3, 1024, 1024)
        return {"image_embeddings": np.zeros((1, 256, 64, 64), np.float32)}

    def decode(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(DECODER_OUTPUTS, synthetic_decoder(feeds["point_coords"][:, 0].astype(np.float64))))

    def refuse(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise AssertionError("everything mode has no mask input: it must not run the general decoder")

    return {
        "encoder": StubSession(("image",), ("image_embeddings",), encode),
        "decoder": StubSession(DECODER_INPUTS, DECODER_OUTPUTS, refuse),
        "decoder_image": StubSession(
            ("image_embeddings",),
            DECODER_IMAGE_OUTPUTS,
            lambda f: {n: np.zeros((1, 4096, 128), np.float32) for n in DECODER_IMAGE_OUTPUTS},
        ),
        "decoder_points": StubSession(POINT_DECODER_INPUTS, DECODER_OUTPUTS, decode),
    }


def synthetic_engine(sessions: dict[str, StubSession] | None = None) -> Any:
    """A real :class:`fastseg.sam.SamEngine` on :func:`synthetic_sessions` (or the ``sessions`` given)."""
    from fastseg.sam import SamEngine

    return SamEngine(synthetic_folder(), synthetic_sessions() if sessions is None else sessions)


def synthetic_official_sam(torch: Any) -> Any:
    """A ``segment_anything.Sam`` with the same synthetic decoder: the official predictor,
    preprocessing, upscaling and generator run unchanged around it (``torch``: the module)."""
    from segment_anything.modeling import Sam

    class Encoder(torch.nn.Module):
        img_size = 1024

        def forward(self, x: Any) -> Any:
            return torch.zeros(1, 256, 64, 64)

    class Prompts(torch.nn.Module):
        def forward(self, points: Any, boxes: Any, masks: Any) -> tuple[Any, Any]:
            return points[0], torch.zeros(1)  # hand the point coordinates (input frame) to the decoder

        def get_dense_pe(self) -> Any:
            return torch.zeros(1)

    class Decoder(torch.nn.Module):
        def forward(
            self,
            image_embeddings: Any,
            image_pe: Any,
            sparse_prompt_embeddings: Any,
            dense_prompt_embeddings: Any,
            multimask_output: bool,
        ) -> tuple[Any, Any]:
            low, iou = synthetic_decoder(sparse_prompt_embeddings[:, 0].double().numpy())
            chosen = slice(1, None) if multimask_output else slice(0, 1)
            return torch.from_numpy(low[:, chosen]), torch.from_numpy(iou[:, chosen])

    return Sam(image_encoder=Encoder(), prompt_encoder=Prompts(), mask_decoder=Decoder()).eval()


def gap_threshold(values: np.ndarray, q: float) -> float:
    """A threshold near quantile ``q`` of ``values``, half-way across the widest gap between
    neighbouring observed values close to it (so no value sits within float noise of it)."""
    v = np.unique(np.asarray(values, dtype=np.float64))
    assert len(v) >= 8, f"need a score distribution, got {len(v)} distinct values"
    i = int(q * (len(v) - 1))
    lo, hi = max(i - 3, 0), min(i + 4, len(v) - 1)
    k = lo + int(np.argmax(np.diff(v[lo : hi + 1])))
    return float((v[k] + v[k + 1]) / 2)


# ----------------------------------------------------------------------------------------------
# parity with an official generator
# ----------------------------------------------------------------------------------------------


def match(reference: Records, ours: Records, size: tuple[int, int]) -> list[tuple[int, int, float]]:
    """One-to-one matching by decreasing mask IoU (greedy): ``(reference index, our index, IoU)``."""
    from pycocotools import mask as mask_api

    from fastseg.records import iter_masks

    if not reference or not ours:
        return []
    a = [coco_encode_rle(masks_to_rle(m[None])[0], size) for m in iter_masks(reference)]
    b = [coco_encode_rle(masks_to_rle(m[None])[0], size) for m in iter_masks(ours)]
    iou = np.asarray(mask_api.iou(a, b, [0] * len(b))).reshape(len(a), len(b))
    pairs, used_a, used_b = [], set(), set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        i, j = divmod(int(flat), iou.shape[1])
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        pairs.append((i, j, float(iou[i, j])))
        if len(used_a) == len(reference) or len(used_b) == len(ours):
            break
    return pairs


def assert_parity(reference: Records, ours: Records, size: tuple[int, int]) -> float:
    """The issue's criteria plus: matched masks come from the same prompt point and crop, with
    the same predicted IoU and stability score. Returns the matched fraction."""
    n_ref, n_ours = len(reference), len(ours)
    assert abs(n_ours - n_ref) <= COUNT_TOLERANCE * n_ref, f"{n_ours} masks, the official generator {n_ref}"
    pairs = [(i, j, v) for i, j, v in match(reference, ours, size) if v >= MIN_IOU]
    fraction = len(pairs) / n_ref if n_ref else 1.0
    low = min((v for _, _, v in pairs), default=float("nan"))
    print(
        f"\n[everything parity] official {n_ref} masks, ours {n_ours}; {len(pairs)} matched with IoU >= "
        f"{MIN_IOU} ({fraction:.1%}), lowest matched IoU {low:.5f}"
    )
    assert fraction >= MIN_MATCHED, f"only {len(pairs)} of {n_ref} official masks matched with IoU >= {MIN_IOU}"
    for i, j, _ in pairs:
        ref, our = reference[i], ours[j]
        np.testing.assert_allclose(our["point_coords"], ref["point_coords"], atol=1e-6)
        assert our["crop_box"] == ref["crop_box"]
        assert abs(our["predicted_iou"] - ref["predicted_iou"]) < 1e-3
        assert abs(our["stability_score"] - ref["stability_score"]) < 1e-2
        assert abs(our["area"] - ref["area"]) <= 0.02 * ref["area"] + 1
    return fraction
