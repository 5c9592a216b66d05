"""SAM 2.1 for images at run time: pre- and post-processing in numpy, the exported graphs behind sessions.

What ``SAM2ImagePredictor`` (Meta's ``sam2`` package) does, step by step:

- ``set_image``: ``SAM2Transforms``: the RGB image to float ``x / 255``, resized to 1024 x 1024
  *without* keeping the aspect ratio (torchvision ``Resize``: bilinear with antialiasing), normalised
  with ImageNet's mean and std; the encoder graph gives the lowest-resolution embedding (with
  ``no_mem_embed`` added) and the two high-resolution feature maps the mask decoder reads.
- ``predict``: point XY / box XYXY in pixels -> ``x / W * 1024``, ``y / H * 1024``; box corners come
  first (labels 2, 3), then the points, then one padding point (label -1) *always*, as
  ``PromptEncoder`` is called with ``boxes=None``; the decoder graph gives four masks and their
  scores; ``multimask_output`` picks masks 1..3, else mask 0, or, when mask 0 is unstable, the
  best of 1..3 (``dynamic_multimask_via_stability``, on in ``build_sam2``); the 256 x 256 logits are
  resized straight to the image (bilinear, ``align_corners=False``), thresholded at 0; the logits
  returned (and fed back as ``mask_input``) are clamped to [-32, 32].

This module never imports torch; ``tests/test_sam2.py`` compares every step with the original.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fastseg.image import check_image_size
from fastseg.manifest import GRAPHS_BY_FAMILY, ModelFolder, ModelFolderError
from fastseg.ops import masks_to_boxes
from fastseg.registry import Family, ModelSpec
from fastseg.results import SegmentationResult
from fastseg.sam import (
    LABEL_BOX_BOTTOM_RIGHT,
    LABEL_BOX_TOP_LEFT,
    LABEL_PADDING,
    MAX_DECODER_BATCH,
    UpscalePlan,
    _require_names,
)

if TYPE_CHECKING:
    from fastseg.amg import Sam2EverythingParams
    from fastseg.backends import Session
    from fastseg.engine import ProgressCallback
    from fastseg.prompts import Prompts
    from fastseg.records import MaskRecords

__all__ = [
    "ENCODER_OUTPUTS",
    "Sam2Engine",
    "Sam2ImageEmbedding",
    "build_prompt_arrays",
    "fill_small_regions",
    "preprocess",
    "resample_matrix",
    "select_single_masks",
]

#: The encoder graph's outputs: the embedding the decoder attends to, and the two high-resolution
#: feature maps its mask upscaling adds (``conv_s0`` / ``conv_s1`` already applied, as ``forward_image``).
ENCODER_OUTPUTS = ("image_embed", "high_res_feats_0", "high_res_feats_1")
DECODER_INPUTS = (*ENCODER_OUTPUTS, "point_coords", "point_labels", "mask_input", "has_mask_input")
DECODER_OUTPUTS = ("low_res_masks", "iou_predictions")
#: ``decoder_image`` (once per image, from the encoder's outputs) -> ``decoder_points`` (per prompt
#: without a mask input): SAM's image-side tensors and the two high-resolution maps, channels-last.
DECODER_IMAGE_OUTPUTS = ("image_keys", "token_keys", "token_values", "image_queries", "high_res_s0", "high_res_s1")
POINT_DECODER_INPUTS = (*DECODER_IMAGE_OUTPUTS, "point_coords", "point_labels")
#: ``SAM2ImagePredictor`` clamps the low-resolution logits it returns to this range.
LOW_RES_CLAMP = 32.0


# --------------------------------------------------------------------------------------------------
# Image


def resample_matrix(n_in: int, n_out: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
    """torch's bilinear resampling with antialiasing (``F.interpolate(..., antialias=True)``, what
    torchvision's ``Resize`` runs on a tensor) along one axis, as taps.

    Output sample ``i`` is ``sum_k weights[i, k] * x[index[i, k]]``: a triangle filter widened to the
    scale when shrinking (Pillow's ``BILINEAR``), its weights normalised to sum to 1; plain bilinear
    when enlarging. Taps past a row's support have weight 0 (and a valid index), so every row has
    the same number of taps, summed in torch's order.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be positive, got {n_in} -> {n_out}")
    scale = n_in / n_out
    support = scale if scale >= 1.0 else 1.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    centers = scale * (np.arange(n_out, dtype=np.float64) + 0.5)
    lo = np.maximum((centers - support + 0.5).astype(np.int64), 0)
    hi = np.minimum((centers + support + 0.5).astype(np.int64), n_in)
    k = int((hi - lo).max())
    index = lo[:, None] + np.arange(k)
    weights = np.maximum(0.0, 1.0 - np.abs((index - centers[:, None] + 0.5) * inv))
    weights[index >= hi[:, None]] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    return np.minimum(index, n_in - 1).astype(np.intp), weights.astype(np.float32)


def _resample_axis(
    x: npt.NDArray[np.float32], taps: tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]], axis: int
) -> npt.NDArray[np.float32]:
    """``x`` resampled along ``axis`` (0 or 1) by :func:`resample_matrix`'s taps, summed tap by tap."""
    index, weights = taps
    out: npt.NDArray[np.float32] | None = None
    for k in range(index.shape[1]):
        w = weights[:, k] if axis == 1 else weights[:, k, None]
        term = np.take(x, index[:, k], axis=axis) * w
        out = term if out is None else np.add(out, term, out=out)
    assert out is not None
    return out


def preprocess(image: npt.NDArray[np.uint8], spec: ModelSpec) -> npt.NDArray[np.float32]:
    """The encoder input ``(1, 3, S, S)`` float32 for an RGB uint8 ``(H, W, 3)`` image, as
    ``SAM2Transforms``: ``x / 255``, resized to ``S x S`` (:func:`resample_matrix`, width then
    height), ``(x - mean) / std`` with ``spec``'s mean and std of 0..1 values."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
    size = spec.input_size
    h, w = image.shape[:2]
    rows, cols = resample_matrix(h, size), resample_matrix(w, size)
    mean = np.asarray(spec.pixel_mean, dtype=np.float32)
    std = np.asarray(spec.pixel_std, dtype=np.float32)
    out = np.empty((1, 3, size, size), dtype=np.float32)
    for c in range(3):
        plane = image[:, :, c].astype(np.float32) / np.float32(255.0)
        resized = _resample_axis(_resample_axis(plane, cols, axis=1), rows, axis=0)
        np.subtract(resized, mean[c], out=out[0, c])
        np.divide(out[0, c], std[c], out=out[0, c])
    return out


# --------------------------------------------------------------------------------------------------
# Prompts


def build_prompt_arrays(
    points: npt.NDArray[np.floating] | None,
    labels: npt.NDArray[np.integer] | None,
    boxes: npt.NDArray[np.floating] | None,
    original_size: tuple[int, int],
    input_size: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """``point_coords`` ``(B, N, 2)`` and ``point_labels`` ``(B, N)`` for the decoder graph.

    ``SAM2ImagePredictor._prep_prompts`` + ``_predict`` + ``PromptEncoder._embed_points(pad=True)``:
    coordinates scaled to the square input (``x / W * S``, ``y / H * S``, in float32 as torch); each
    box gives one prompt set, its two corners (labels 2, 3) first, then the points, then one padding
    point (0, 0) with label -1, which SAM 2 always adds.

    Args:
        points: ``(N, 2)`` XY in original pixels, shared by every box; or ``(B, N, 2)``, one row per
            prompt set (everything mode's grid: one point per set); or None.
        labels: ``(N,)`` or ``(B, N)``, with points.
        boxes: ``(B, 4)`` XYXY in original pixels, or None.
    """
    h, w = original_size

    def to_input(xy: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        xy = np.asarray(xy, dtype=np.float32)
        normalised = np.empty_like(xy)
        normalised[..., 0] = xy[..., 0] / np.float32(w)
        normalised[..., 1] = xy[..., 1] / np.float32(h)
        scaled: npt.NDArray[np.float32] = (normalised * np.float32(input_size)).astype(np.float32)
        return scaled

    if boxes is not None:
        n_sets = len(boxes)
    elif points is not None and np.ndim(points) == 3:
        n_sets = int(np.shape(points)[0])
    else:
        n_sets = 1
    parts_xy: list[npt.NDArray[np.float32]] = []
    parts_label: list[npt.NDArray[np.float32]] = []
    if boxes is not None:
        parts_xy.append(to_input(np.asarray(boxes, dtype=np.float32).reshape(-1, 2, 2)))
        corner = np.array([LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT], dtype=np.float32)
        parts_label.append(np.broadcast_to(corner, (n_sets, 2)))
    if points is not None and labels is not None and np.shape(points)[-2]:
        xy = to_input(points)
        parts_xy.append(np.broadcast_to(xy, (n_sets, *xy.shape[-2:])))
        lab = np.asarray(labels, dtype=np.float32)
        parts_label.append(np.broadcast_to(lab, (n_sets, lab.shape[-1])))
    parts_xy.append(np.zeros((n_sets, 1, 2), dtype=np.float32))
    parts_label.append(np.full((n_sets, 1), LABEL_PADDING, dtype=np.float32))
    coords = np.ascontiguousarray(np.concatenate(parts_xy, axis=1), dtype=np.float32)
    point_labels = np.ascontiguousarray(np.concatenate(parts_label, axis=1), dtype=np.float32)
    return coords, point_labels


# --------------------------------------------------------------------------------------------------
# Mask selection


def stability_scores(logits: npt.NDArray[np.float32], delta: float) -> npt.NDArray[np.float32]:
    """``MaskDecoder._get_stability_scores``: ``#(logits > delta) / #(logits > -delta)`` per mask (1 if
    the union is empty), over the last two axes."""
    flat = logits.reshape(*logits.shape[:-2], -1)
    inter = np.count_nonzero(flat > np.float32(delta), axis=-1).astype(np.float32)
    union = np.count_nonzero(flat > np.float32(-delta), axis=-1).astype(np.float32)
    scores: npt.NDArray[np.float32] = np.where(union > 0, inter / np.maximum(union, 1), np.float32(1.0)).astype(
        np.float32
    )
    return scores


def select_single_masks(
    low_res: npt.NDArray[np.float32], iou: npt.NDArray[np.float32], delta: float, threshold: float
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """``multimask_output=False`` with ``dynamic_multimask_via_stability``: per prompt set, mask 0 if its
    stability score is at least ``threshold``, else the mask of 1..3 with the highest predicted IoU.
    ``low_res`` ``(B, 4, S, S)``, ``iou`` ``(B, 4)`` -> ``(B, 1, S, S)``, ``(B, 1)``."""
    best = 1 + np.argmax(iou[:, 1:], axis=1)
    stable = stability_scores(low_res[:, 0], delta) >= np.float32(threshold)
    chosen = np.where(stable, 0, best)
    rows = np.arange(len(chosen))
    return low_res[rows, chosen][:, None], iou[rows, chosen][:, None]


def fill_small_regions(
    logits: npt.NDArray[np.float32], max_hole_area: int, max_sprinkle_area: int, threshold: float = 0.0
) -> npt.NDArray[np.float32]:
    """``SAM2Transforms.postprocess_masks``' clean-up of low-resolution logits ``(N, S, S)`` before upscaling.

    Each 8-connected region of ``logits <= threshold`` of at most ``max_hole_area`` pixels (a hole;
    every background region counts, also one touching the border) is set to ``threshold + 10``; each
    8-connected region of ``logits > threshold`` of at most ``max_sprinkle_area`` pixels (a sprinkle)
    to ``threshold - 10``; both found on the logits as given. An area of 0 turns that step off. The
    original needs ``sam2``'s CUDA extension for the regions (without it, it warns and skips the step);
    here they come from :func:`fastseg.components.connected_components`.
    """
    if max_hole_area <= 0 and max_sprinkle_area <= 0:
        return logits
    from fastseg.components import connected_components, paint_runs

    out: npt.NDArray[np.float32] = np.array(logits, dtype=np.float32, copy=True)
    t = np.float32(threshold)
    for i, plane in enumerate(logits):
        for region, area, value in ((plane <= t, max_hole_area, t + 10), (plane > t, max_sprinkle_area, t - 10)):
            if area <= 0:
                continue
            rows, starts, stops, labels = connected_components(region)
            if not len(labels):
                continue
            small = np.bincount(labels, weights=stops - starts)[labels] <= area
            out[i][paint_runs(plane.shape, rows[small], starts[small], stops[small])] = value
    return out


# --------------------------------------------------------------------------------------------------
# The engine


@dataclass(frozen=True)
class Sam2ImageEmbedding:
    """What :meth:`Sam2Engine.set_image` computes: the encoder's three outputs and the image size.

    Attributes:
        image_embed: ``(1, 256, 64, 64)`` float32 (``no_mem_embed`` added).
        high_res_feats_0: ``(1, 32, 256, 256)`` float32; ``high_res_feats_1``: ``(1, 64, 128, 128)``.
        original_size: ``(H, W)`` of the image.
        input_size: ``(S, S)``, the square encoder input the image was resized to.
        model: the registry name of the model that made it.
    """

    image_embed: npt.NDArray[np.float32]
    high_res_feats_0: npt.NDArray[np.float32]
    high_res_feats_1: npt.NDArray[np.float32]
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    model: str

    def arrays(self) -> dict[str, npt.NDArray[np.float32]]:
        return {name: getattr(self, name) for name in ENCODER_OUTPUTS}


class Sam2Engine:
    """SAM 2.1 (images) behind four sessions (an :class:`~fastseg.engine.Engine`): ``encoder`` and
    ``decoder_image`` once per image, ``decoder_points`` per prompt without a mask input, ``decoder``
    (the whole decoder) for a mask input."""

    GRAPHS = GRAPHS_BY_FAMILY["sam2"]
    family: Family = "sam2"

    def __init__(self, folder: ModelFolder, sessions: Mapping[str, Session]) -> None:
        self.spec: ModelSpec = folder.spec
        self.model_name = folder.name
        if self.spec.family != "sam2" or self.spec.resize != "square":
            raise ModelFolderError(f"Sam2Engine needs a SAM 2.1 model, got {self.spec.name!r}")
        missing = [g for g in self.GRAPHS if g not in sessions]
        if missing:
            raise ValueError(f"Sam2Engine needs sessions for graphs {list(self.GRAPHS)}; missing {missing}")
        self._encoder = sessions["encoder"]
        self._decoder = sessions["decoder"]
        self._decoder_image = sessions["decoder_image"]
        self._decoder_points = sessions["decoder_points"]
        _require_names(self._encoder.output_names, ENCODER_OUTPUTS, "encoder outputs")
        _require_names(self._decoder.input_names, DECODER_INPUTS, "decoder inputs")
        _require_names(self._decoder.output_names, DECODER_OUTPUTS, "decoder outputs")
        _require_names(self._decoder_image.input_names, ENCODER_OUTPUTS, "decoder_image inputs")
        _require_names(self._decoder_image.output_names, DECODER_IMAGE_OUTPUTS, "decoder_image outputs")
        _require_names(self._decoder_points.input_names, POINT_DECODER_INPUTS, "decoder_points inputs")
        _require_names(self._decoder_points.output_names, DECODER_OUTPUTS, "decoder_points outputs")
        extra = folder.manifest.get("extra", {})
        try:
            self.low_res_size: int = int(extra["low_res_size"])
            self.num_mask_outputs = int(extra["num_mask_outputs"])
            self.shapes = {name: (1, *(int(v) for v in extra["feature_shapes"][name])) for name in ENCODER_OUTPUTS}
            self.stability_delta = float(extra["dynamic_multimask"]["stability_delta"])
            self.stability_thresh = float(extra["dynamic_multimask"]["stability_thresh"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFolderError(
                f"{folder.path}: the manifest's 'extra' entry needs low_res_size, num_mask_outputs, feature_shapes "
                f"and dynamic_multimask for a SAM 2.1 model ({type(exc).__name__}: {exc})"
            ) from None
        self._embedding: Sam2ImageEmbedding | None = None
        self._image_side: dict[str, npt.NDArray[np.float32]] = {}
        self._plans: dict[tuple[int, int], UpscalePlan] = {}

    # image state ----------------------------------------------------------------------------------

    def set_image(self, image: npt.NDArray[np.uint8]) -> None:
        self._embedding = None
        out = self._encoder.run({"image": preprocess(image, self.spec)})
        self.set_image_embedding(
            Sam2ImageEmbedding(
                **{name: np.ascontiguousarray(out[name], dtype=np.float32) for name in ENCODER_OUTPUTS},
                original_size=(int(image.shape[0]), int(image.shape[1])),
                input_size=(self.spec.input_size, self.spec.input_size),
                model=self.model_name,
            )
        )

    def get_image_embedding(self) -> Sam2ImageEmbedding:
        if self._embedding is None:
            raise RuntimeError("no image is set: call set_image(image) or set_image_embedding(...) first")
        return self._embedding

    def set_image_embedding(self, embedding: Any) -> None:
        if not isinstance(embedding, Sam2ImageEmbedding):
            raise ValueError(f"expected a fastseg.sam2.Sam2ImageEmbedding, got {type(embedding).__name__}")
        if embedding.model != self.model_name:
            raise ValueError(
                f"this image embedding was made by {embedding.model!r}; this predictor runs {self.model_name!r}"
            )
        for name, array in embedding.arrays().items():
            shape = self.shapes[name]
            if not isinstance(array, np.ndarray) or array.shape != shape or array.dtype != np.float32:
                got = f"{getattr(array, 'dtype', type(array).__name__)} {getattr(array, 'shape', '')}"
                raise ValueError(f"image embedding {name} must be float32 {shape}, got {got}")
            if not np.isfinite(array).all():
                raise ValueError(f"image embedding {name} holds NaN or infinite values")
        h, w = (int(v) for v in embedding.original_size)
        check_image_size(h, w, "the embedding's original_size")
        square = (self.spec.input_size, self.spec.input_size)
        if tuple(int(v) for v in embedding.input_size) != square:
            raise ValueError(f"image embedding has input_size {tuple(embedding.input_size)}; SAM 2.1 encodes {square}")
        self._embedding = None
        out = self._decoder_image.run(embedding.arrays())
        self._image_side = {name: np.asarray(out[name], dtype=np.float32) for name in DECODER_IMAGE_OUTPUTS}
        self._embedding = embedding
        self._plan((h, w))

    def _plan(self, original_size: tuple[int, int]) -> UpscalePlan:
        plan = self._plans.get(original_size)
        if plan is None:
            if len(self._plans) >= 4:
                self._plans.pop(next(iter(self._plans)))
            size = self.low_res_size  # straight from the low-resolution logits to the image
            plan = UpscalePlan((size, size), original_size, low_res=size, padded=size)
            self._plans[original_size] = plan
        return plan

    # prompting ------------------------------------------------------------------------------------

    def predict(self, prompts: Prompts, multimask: bool) -> SegmentationResult:
        emb = self.get_image_embedding()
        coords, point_labels = build_prompt_arrays(
            prompts.points, prompts.labels, prompts.boxes, emb.original_size, self.spec.input_size
        )
        n_sets, size = coords.shape[0], self.low_res_size
        mask_input = None if prompts.mask_input is None else prompts.mask_input[:, None]
        low_res, iou = self.decode(coords, point_labels, mask_input)
        if multimask:
            low_res, iou = low_res[:, 1:], iou[:, 1:]
        else:
            low_res, iou = select_single_masks(low_res, iou, self.stability_delta, self.stability_thresh)
        per_set = low_res.shape[1]
        logits = np.ascontiguousarray(low_res.reshape(n_sets * per_set, size, size), dtype=np.float32)
        masks = self._plan(emb.original_size).masks(logits, self.spec.mask_threshold)
        return SegmentationResult(
            masks=masks,
            scores=np.ascontiguousarray(iou.reshape(-1), dtype=np.float32),
            boxes=masks_to_boxes(masks),
            low_res_logits=np.clip(logits, -LOW_RES_CLAMP, LOW_RES_CLAMP),
            prompt_index=np.repeat(np.arange(n_sets, dtype=np.int64), per_set),
        )

    def decode(
        self,
        point_coords: npt.NDArray[np.float32],
        point_labels: npt.NDArray[np.float32],
        mask_input: npt.NDArray[np.float32] | None = None,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Raw decoder runs on the image set, :data:`~fastseg.sam.MAX_DECODER_BATCH` prompt sets at a time.

        Args:
            point_coords: ``(B, N, 2)`` float32 in the input frame, from :func:`build_prompt_arrays`.
            point_labels: ``(B, N)`` float32.
            mask_input: ``None``, or ``(1, 1, S, S)`` (shared by every prompt set) or ``(B, 1, S, S)``
                low-resolution logits fed back.

        Returns:
            All four masks per prompt set, ``(B, 4, S, S)`` logits (not clamped), and their predicted
            IoU ``(B, 4)``.
        """
        emb = self.get_image_embedding()
        n_sets, size = point_coords.shape[0], self.low_res_size
        lows, ious = [], []
        for start in range(0, n_sets, MAX_DECODER_BATCH):
            part = slice(start, start + MAX_DECODER_BATCH)
            feeds = {"point_coords": point_coords[part], "point_labels": point_labels[part]}
            if mask_input is None:
                out = self._decoder_points.run({**self._image_side, **feeds})
            else:
                masks = mask_input if len(mask_input) == 1 else mask_input[part]
                feeds.update(
                    mask_input=np.ascontiguousarray(masks, dtype=np.float32), has_mask_input=np.ones(1, np.float32)
                )
                out = self._decoder.run({**emb.arrays(), **feeds})
            low, iou = np.asarray(out["low_res_masks"], np.float32), np.asarray(out["iou_predictions"], np.float32)
            expected = (len(feeds["point_coords"]), self.num_mask_outputs)
            if low.shape != (*expected, size, size) or iou.shape != expected:
                raise RuntimeError(f"decoder returned {low.shape} and {iou.shape}; expected {expected} masks")
            lows.append(low)
            ious.append(iou)
        if len(lows) == 1:
            return lows[0], ious[0]
        return np.concatenate(lows), np.concatenate(ious)

    # everything mode ------------------------------------------------------------------------------

    def everything_params(self, options: Mapping[str, Any]) -> Sam2EverythingParams:
        from fastseg.amg import sam2_params_from_options

        return sam2_params_from_options(options)

    def everything(
        self, params: Sam2EverythingParams, image: npt.NDArray[np.uint8] | None, progress: ProgressCallback | None
    ) -> MaskRecords:
        """``SAM2AutomaticMaskGenerator(model, **params).generate(image)`` (:func:`fastseg.amg.generate`)."""
        from fastseg.amg import generate

        return generate(self, params, image, progress)
