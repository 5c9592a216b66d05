"""SAM's automatic mask generation: ``SamAutomaticMaskGenerator`` of segment-anything in numpy.

:func:`generate` reproduces ``SamAutomaticMaskGenerator.generate`` of ``segment_anything`` /
``mobile_sam`` (``automatic_mask_generator.py`` and ``utils/amg.py``) with the same parameters,
defaults, filters and record fields: a grid of single-point prompts per crop, the three multimask
outputs per point, ``predicted_iou > pred_iou_thresh``, stability score on the upscaled logits
``>= stability_score_thresh``, masks touching a crop edge (not the image edge) dropped, box NMS per
crop, box NMS across crops (smaller crops preferred), optional removal of small islands and holes
(:mod:`fastseg.components`), then records (:mod:`fastseg.records`).

``SAM2AutomaticMaskGenerator`` (Meta's ``sam2``) is the same pipeline with other defaults
(:class:`Sam2EverythingParams`), SAM 2's prompt layout and single-mask choice, an optional
mask-to-mask refinement (``use_m2m``), upscaling straight from the low-resolution logits, and, for
``min_mask_region_area``, the predictor's clean-up of low-resolution holes and sprinkles instead of
SAM's full-resolution one.

What differs is only the order of work, never the result: the decoder runs several prompt sets per
call; masks are filtered by predicted IoU *before* upscaling (the original filters the upscaled batch
on ``iou_preds``, which do not depend on upscaling), only survivors are upscaled, a few at a time;
survivors are kept as run-length encodings (:class:`fastseg.rle.StoredMask`, the original's
``MaskData["rles"]``), never as a stack of full-resolution masks.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import product
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from fastseg.components import remove_small_regions
from fastseg.ops import masks_to_boxes, nms
from fastseg.records import MaskRecords, Record, check_output_mode, encode_segmentation
from fastseg.rle import StoredMask, crop_masks_to_rle, masks_to_rle
from fastseg.sam import LABEL_FOREGROUND, MAX_DECODER_BATCH, UpscalePlan, build_prompt_arrays

if TYPE_CHECKING:
    from fastseg.sam import SamEngine
    from fastseg.sam2 import Sam2Engine

#: ``is_box_near_crop_edge``: box edges within this many pixels of a crop edge (not an image edge)
#: mean the mask was cut by the crop.
CROP_EDGE_ATOL = 20.0

#: Full-resolution float32 logits held at a time while upscaling survivors (bounds memory).
UPSCALE_BYTES = 64 << 20

# MAX_DECODER_BATCH (from fastseg.sam, shared with SamEngine.predict): at most this many prompt sets
# per decoder run; a ``points_per_batch`` group is split further if larger.

#: Bounds on the work one everything-mode call may ask for, checked when the parameters are made
#: (the cost does not depend on the image): a grid of at most 256 x 256 points per crop (65,536
#: prompt sets; the original's default is 32 x 32) ...
MAX_POINTS_PER_SIDE = 256
#: ... at most 341 crops, i.e. encoder runs (``crop_n_layers <= 4``: 1 + 4 + 16 + 64 + 256) ...
MAX_CROP_N_LAYERS = 4
MAX_CROPS = (4 ** (MAX_CROP_N_LAYERS + 1) - 1) // 3
#: ... and at most 2**20 prompt sets over all crops (at ~16 ms per prompt set on a laptop CPU, about
#: 5 hours; the default parameters ask for 1,024).
MAX_PROMPT_SETS = 1 << 20

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def _check_float(name: str, value: Any, low: float, high: float, high_open: bool = False) -> float:
    interval = f"[{low}, {high})" if high_open else f"[{low}, {high}]"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < low or v > high or (high_open and v == high):
        raise ValueError(f"{name} must be a number in {interval}, got {value}")
    return v


@dataclass(frozen=True, eq=False)
class SamEverythingParams:
    """``SamAutomaticMaskGenerator``'s parameters, defaults and meaning; validated on construction.

    Attributes:
        points_per_side: points along each side of the grid (``points_per_side ** 2`` prompts per
            crop of layer 0); ``None`` when ``point_grids`` is given.
        points_per_batch: points processed together (speed/memory only; results do not change); the
            decoder runs at most :data:`MAX_DECODER_BATCH` of them at a time.
        pred_iou_thresh: keep masks whose predicted IoU is ``>`` this (0 disables the filter).
        stability_score_thresh: keep masks whose stability score is ``>=`` this (0 disables it).
        stability_score_offset: the logit offset of the stability score.
        box_nms_thresh: box IoU above which NMS drops a duplicate within a crop (1.0: NMS off).
        crop_n_layers: 0 = the whole image only; n > 0 adds layers of 2**i x 2**i crops.
        crop_nms_thresh: box IoU for NMS between crops.
        crop_overlap_ratio: overlap of neighbouring crops, as a fraction of the image's short side.
        crop_n_points_downscale_factor: layer i uses ``points_per_side / factor**i`` points per side.
        point_grids: explicit grids ``(K, 2)`` in [0, 1] (x, y), one per crop layer; exclusive with
            ``points_per_side``.
        min_mask_region_area: if > 0, islands and holes smaller than this are removed and NMS runs
            again (``postprocess_small_regions``).
        output_mode: ``"binary_mask"`` (``(H, W)`` bool), ``"uncompressed_rle"`` or ``"coco_rle"``
            (needs pycocotools).

    The work asked for is bounded (:meth:`projected_work`): at most :data:`MAX_POINTS_PER_SIDE`
    points per side, :data:`MAX_CROPS` crops (encoder runs) and :data:`MAX_PROMPT_SETS` prompt sets
    in all; beyond them construction raises ``ValueError`` stating the projected cost.
    """

    points_per_side: int | None = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    point_grids: tuple[npt.NDArray[np.float64], ...] | None = None
    min_mask_region_area: int = 0
    output_mode: str = "binary_mask"

    def __post_init__(self) -> None:
        put = object.__setattr__
        if (self.points_per_side is None) == (self.point_grids is None):
            raise ValueError(
                "give exactly one of points_per_side and point_grids, got "
                f"points_per_side={self.points_per_side!r} and "
                f"point_grids={'None' if self.point_grids is None else f'{len(self.point_grids)} grids'}"
            )
        put(self, "points_per_batch", _check_int("points_per_batch", self.points_per_batch, 1))
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh"):
            put(self, name, _check_float(name, getattr(self, name), 0.0, 1.0))
        put(
            self,
            "stability_score_offset",
            _check_float("stability_score_offset", self.stability_score_offset, 0.0, math.inf),
        )
        put(self, "crop_n_layers", _check_int("crop_n_layers", self.crop_n_layers, 0))
        if self.crop_n_layers > MAX_CROP_N_LAYERS:  # before any power of the layer count is computed
            n = self.crop_n_layers
            count = f"{_crop_count(n):,}" if n <= 16 else "more than 10**10"
            raise ValueError(
                f"crop_n_layers={n} runs the encoder on {count} crops; at most {MAX_CROPS} "
                f"(crop_n_layers <= {MAX_CROP_N_LAYERS})"
            )
        put(
            self,
            "crop_overlap_ratio",
            _check_float("crop_overlap_ratio", self.crop_overlap_ratio, 0.0, 1.0, high_open=True),
        )
        put(
            self,
            "crop_n_points_downscale_factor",
            _check_int("crop_n_points_downscale_factor", self.crop_n_points_downscale_factor, 1),
        )
        put(self, "min_mask_region_area", _check_int("min_mask_region_area", self.min_mask_region_area, 0))
        put(self, "output_mode", check_output_mode(self.output_mode))
        if self.points_per_side is not None:
            put(self, "points_per_side", _check_int("points_per_side", self.points_per_side, 1))
            if self.points_per_side > MAX_POINTS_PER_SIDE:
                raise ValueError(
                    f"points_per_side must be at most {MAX_POINTS_PER_SIDE} ({MAX_POINTS_PER_SIDE**2:,} prompt sets "
                    f"per crop), got {self.points_per_side} ({self.points_per_side**2:,} prompt sets per crop)"
                )
            last = int(self.points_per_side / (self.crop_n_points_downscale_factor**self.crop_n_layers))
            if last < 1:
                raise ValueError(
                    f"points_per_side / crop_n_points_downscale_factor**crop_n_layers must be >= 1 (the "
                    f"last crop layer needs a point), got {self.points_per_side} / "
                    f"{self.crop_n_points_downscale_factor}**{self.crop_n_layers}"
                )
        else:
            put(self, "point_grids", _check_grids(self.point_grids, self.crop_n_layers))
        prompt_sets, crops = self.projected_work()
        if prompt_sets > MAX_PROMPT_SETS:
            per_layer = " + ".join(
                f"{4**i:,} crop{'s' if i else ''} x {n:,}" for i, n in enumerate(self._points_per_layer())
            )
            raise ValueError(
                f"these everything-mode parameters ask for {prompt_sets:,} prompt sets ({per_layer}) and "
                f"{crops:,} encoder runs; the limit is {MAX_PROMPT_SETS:,} prompt sets (fewer points_per_side, "
                "crop layers, or a larger crop_n_points_downscale_factor)"
            )

    def _points_per_layer(self) -> list[int]:
        if self.point_grids is not None:
            return [len(g) for g in self.point_grids]
        assert self.points_per_side is not None
        factor = self.crop_n_points_downscale_factor
        return [int(self.points_per_side / (factor**i)) ** 2 for i in range(self.crop_n_layers + 1)]

    def projected_work(self) -> tuple[int, int]:
        """``(prompt sets, encoder runs)`` of one :func:`generate` call with these parameters: layer
        ``i`` has ``4**i`` crops, each prompted with the layer's grid and encoded once."""
        prompt_sets = sum(4**i * n for i, n in enumerate(self._points_per_layer()))
        return prompt_sets, _crop_count(self.crop_n_layers)

    def grids(self) -> list[npt.NDArray[np.float64]]:
        """The point grid of each crop layer, normalised to [0, 1] (``build_all_layer_point_grids``)."""
        if self.point_grids is not None:
            return list(self.point_grids)
        assert self.points_per_side is not None
        return build_all_layer_point_grids(
            self.points_per_side, self.crop_n_layers, self.crop_n_points_downscale_factor
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.point_grids is not None:
            out["point_grids"] = [g.tolist() for g in self.point_grids]
        return out


@dataclass(frozen=True, eq=False)
class Sam2EverythingParams(SamEverythingParams):
    """``SAM2AutomaticMaskGenerator``'s parameters: SAM's, with its own defaults, plus three.

    Attributes (beyond :class:`SamEverythingParams`, whose meaning holds):
        pred_iou_thresh: 0.8 by default (SAM: 0.88).
        mask_threshold: the logit threshold of the masks and of the stability score (SAM uses the
            model's, 0).
        use_m2m: refine each mask once more, with its own low-resolution logits as mask input
            (single-mask output); the predicted-IoU filter then applies to the refined masks.
        multimask_output: three masks per point (the decoder's 1..3); else one, SAM 2's own choice
            (mask 0 if stable, else the best of 1..3).
        min_mask_region_area: if > 0, holes and sprinkles of at most this many *low-resolution*
            pixels are removed before upscaling (the generator's ``SAM2ImagePredictor`` is built with
            ``max_hole_area = max_sprinkle_area = min_mask_region_area``); SAM 2's generator runs no
            clean-up of the full-resolution masks, unlike SAM's.
    """

    pred_iou_thresh: float = 0.8
    mask_threshold: float = 0.0
    use_m2m: bool = False
    multimask_output: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        value = self.mask_threshold
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"mask_threshold must be a finite number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ValueError(f"mask_threshold must be a finite number, got {value}")
        object.__setattr__(self, "mask_threshold", float(value))
        for name in ("use_m2m", "multimask_output"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
            object.__setattr__(self, name, bool(getattr(self, name)))


def _crop_count(crop_n_layers: int) -> int:
    """Crops of :func:`generate_crop_boxes`: the image, then ``4**i`` crops in layer ``i``."""
    return int(4 ** (crop_n_layers + 1) - 1) // 3


def _check_grids(grids: Any, crop_n_layers: int) -> tuple[npt.NDArray[np.float64], ...]:
    if isinstance(grids, np.ndarray) or not isinstance(grids, Sequence):
        raise ValueError(f"point_grids must be a list of (K, 2) arrays, one per crop layer, got {type(grids).__name__}")
    if len(grids) != crop_n_layers + 1:
        raise ValueError(
            f"point_grids must hold one grid per crop layer (crop_n_layers + 1 = {crop_n_layers + 1}), got {len(grids)}"
        )
    out = []
    for i, grid in enumerate(grids):
        try:
            g = np.asarray(grid, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"point_grids[{i}] must be numeric (K, 2), got {type(grid).__name__}") from exc
        if g.ndim != 2 or g.shape[1] != 2 or g.shape[0] == 0:
            raise ValueError(f"point_grids[{i}] must have shape (K, 2) with K >= 1, got {g.shape}")
        if not np.isfinite(g).all() or g.min() < 0 or g.max() > 1:
            raise ValueError(
                f"point_grids[{i}] must lie in [0, 1] (normalised x, y), got values in [{g.min()}, {g.max()}]"
            )
        out.append(g)
    return tuple(out)


#: Every everything-mode parameter name (the SAM generator's; FastSAM takes only ``output_mode``).
PARAMETERS = tuple(SamEverythingParams.__dataclass_fields__)
#: ``SAM2AutomaticMaskGenerator``'s parameter names: SAM's plus three.
SAM2_PARAMETERS = tuple(Sam2EverythingParams.__dataclass_fields__)


def check_parameter_names(options: Mapping[str, object], parameters: tuple[str, ...] = PARAMETERS) -> None:
    """Unknown everything-mode parameter names raise ``TypeError``, as an unexpected keyword argument does."""
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise TypeError(f"unknown everything-mode parameter(s) {unknown}; expected some of {list(parameters)}")


def params_from_options(options: Mapping[str, Any]) -> SamEverythingParams:
    """Validated generator parameters from keyword options (unknown names: ``TypeError``)."""
    check_parameter_names(options)
    return SamEverythingParams(**options)


def sam2_params_from_options(options: Mapping[str, Any]) -> Sam2EverythingParams:
    """Validated ``SAM2AutomaticMaskGenerator`` parameters from keyword options (unknown names: ``TypeError``)."""
    check_parameter_names(options, SAM2_PARAMETERS)
    return Sam2EverythingParams(**options)


# ----------------------------------------------------------------------------------------------
# Grids and crops (segment_anything/utils/amg.py)
# ----------------------------------------------------------------------------------------------


def build_point_grid(n_per_side: int) -> npt.NDArray[np.float64]:
    """``(n**2, 2)`` points evenly spaced in [0, 1] x [0, 1], x fastest (``amg.build_point_grid``)."""
    offset = 1 / (2 * n_per_side)
    points_one_side = np.linspace(offset, 1 - offset, n_per_side)
    points_x = np.tile(points_one_side[None, :], (n_per_side, 1))
    points_y = np.tile(points_one_side[:, None], (1, n_per_side))
    return np.stack([points_x, points_y], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[npt.NDArray[np.float64]]:
    """One grid per crop layer; layer i has ``int(n_per_side / scale_per_layer**i)`` points per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes XYXY (ints) and their layer: the whole image, then ``(2**i)**2`` crops in layer i."""
    crop_boxes, layer_idxs = [], []
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    crop_boxes.append([0, 0, im_w, im_h])
    layer_idxs.append(0)

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i_layer in range(n_layers):
        n_crops_per_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_crops_per_side))
        crop_w = crop_len(im_w, n_crops_per_side, overlap)
        crop_h = crop_len(im_h, n_crops_per_side, overlap)
        crop_box_x0 = [int((crop_w - overlap) * i) for i in range(n_crops_per_side)]
        crop_box_y0 = [int((crop_h - overlap) * i) for i in range(n_crops_per_side)]
        for x0, y0 in product(crop_box_x0, crop_box_y0):
            crop_boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layer_idxs.append(i_layer + 1)
    return crop_boxes, layer_idxs


def is_box_near_crop_edge(
    boxes: IntArray, crop_box: Sequence[int], orig_box: Sequence[int], atol: float = CROP_EDGE_ATOL
) -> npt.NDArray[np.bool_]:
    """Boxes ``(N, 4)`` XYXY in crop pixels whose edge lies within ``atol`` of a crop edge that is not
    an image edge (``amg.is_box_near_crop_edge``, compared in float32 as torch does)."""
    x0, y0 = crop_box[0], crop_box[1]
    uncropped = (boxes + np.array([x0, y0, x0, y0], dtype=np.int64)).astype(np.float32)
    crop = np.asarray(crop_box, dtype=np.float32)[None]
    orig = np.asarray(orig_box, dtype=np.float32)[None]
    tol = np.float32(atol)
    near_crop = np.abs(uncropped - crop) <= tol
    near_image = np.abs(uncropped - orig) <= tol
    near: npt.NDArray[np.bool_] = (near_crop & ~near_image).any(axis=1)
    return near


def stability_scores(logits: FloatArray, mask_threshold: float, offset: float) -> FloatArray:
    """``amg.calculate_stability_score``: ``#(logits > t + offset) / #(logits > t - offset)`` per mask,
    as float32 (``nan`` when no pixel exceeds ``t - offset``, as in torch)."""
    hi = np.float32(mask_threshold + offset)
    lo = np.float32(mask_threshold - offset)
    n = logits.shape[0]
    flat = logits.reshape(n, -1)
    # one mask at a time: count_nonzero without an axis is several times faster than with one
    inter = np.array([np.count_nonzero(row > hi) for row in flat], dtype=np.float32)
    union = np.array([np.count_nonzero(row > lo) for row in flat], dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


# ----------------------------------------------------------------------------------------------
# Progress
# ----------------------------------------------------------------------------------------------


class StderrProgress:
    """Progress of a long everything-mode run on one stderr line, updated at most every 0.5 s."""

    def __init__(self, stream: Any = None, interval: float = 0.5) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self._start = time.perf_counter()
        self._last = -math.inf

    def __call__(self, points_done: int, points_total: int, crops_done: int, crops_total: int, masks: int) -> None:
        now = time.perf_counter()
        final = points_done == points_total and crops_done == crops_total
        if not final and now - self._last < self.interval:
            return
        self._last = now
        self.stream.write(
            f"\reverything: {points_done}/{points_total} points, crop {crops_done}/{crops_total}, "
            f"{masks} masks kept, {now - self._start:.1f} s"
        )
        if final:
            self.stream.write("\n")
        self.stream.flush()


ProgressCallback = Callable[[int, int, int, int, int], None]


# ----------------------------------------------------------------------------------------------
# The generator
# ----------------------------------------------------------------------------------------------


@dataclass
class _MaskData:
    """The original's ``MaskData`` for kept masks: RLEs instead of mask tensors."""

    rles: list[StoredMask] = field(default_factory=list)
    boxes: list[IntArray] = field(default_factory=list)  # (n, 4) XYXY int, per part
    iou_preds: list[FloatArray] = field(default_factory=list)
    stability: list[FloatArray] = field(default_factory=list)
    points: list[npt.NDArray[np.float64]] = field(default_factory=list)
    crop_boxes: list[IntArray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rles)

    def arrays(self) -> tuple[IntArray, FloatArray, FloatArray, npt.NDArray[np.float64], IntArray]:
        def cat(parts: list[Any], shape: tuple[int, ...], dtype: Any) -> Any:
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(shape, dtype)

        return (
            cat(self.boxes, (0, 4), np.int64),
            cat(self.iou_preds, (0,), np.float32),
            cat(self.stability, (0,), np.float32),
            cat(self.points, (0, 2), np.float64),
            cat(self.crop_boxes, (0, 4), np.int64),
        )

    def extend(self, other: _MaskData) -> None:
        for name in ("rles", "boxes", "iou_preds", "stability", "points", "crop_boxes"):
            getattr(self, name).extend(getattr(other, name))

    @classmethod
    def from_arrays(
        cls,
        rles: list[StoredMask],
        boxes: IntArray,
        iou_preds: FloatArray,
        stability: FloatArray,
        points: npt.NDArray[np.float64],
        crop_boxes: IntArray,
    ) -> _MaskData:
        return cls(list(rles), [boxes], [iou_preds], [stability], [points], [crop_boxes])

    def filter(self, keep: npt.NDArray[np.intp]) -> _MaskData:
        boxes, iou, stab, points, crops = self.arrays()
        return _MaskData.from_arrays(
            [self.rles[i] for i in keep], boxes[keep], iou[keep], stab[keep], points[keep], crops[keep]
        )


class _SamBatches:
    """How ``SamAutomaticMaskGenerator._process_batch`` prompts the decoder with a batch of grid points,
    and how its masks are upscaled, for the image (or crop) set in a :class:`~fastseg.sam.SamEngine`."""

    point_dtype: Any = np.float64  # the original keeps the points as float64 numpy

    def __init__(self, engine: SamEngine, params: SamEverythingParams, crop_size: tuple[int, int]) -> None:
        self.engine, self.params, self.crop_size = engine, params, crop_size
        self.mask_threshold = float(engine.spec.mask_threshold)
        # Upscale into the transposed (column-major) layout: masks then come out in RLE order.
        in_h, in_w = engine.get_image_embedding().input_size
        self.plan_t = UpscalePlan(
            (in_w, in_h), crop_size[::-1], low_res=engine.low_res_size, padded=engine.spec.input_size
        )

    def decode(self, points: npt.NDArray[np.float64]) -> tuple[FloatArray, FloatArray, npt.NDArray[np.float64]]:
        """Masks ``(n, S, S)``, predicted IoU ``(n,)`` and the prompt point of each, for points ``(b, 2)``
        in crop pixels: one prompt set per point (with the padding point SAM adds when there is no
        box), the three multimask outputs (masks 1..3) of each."""
        b = len(points)
        foreground = np.full((b, 1), LABEL_FOREGROUND, dtype=np.int64)
        coords, labels = build_prompt_arrays(
            points[:, None, :], foreground, None, self.crop_size, self.engine.spec.input_size
        )
        runs = [
            self.engine.decode(coords[i : i + MAX_DECODER_BATCH], labels[i : i + MAX_DECODER_BATCH])
            for i in range(0, b, MAX_DECODER_BATCH)
        ]
        low_res = runs[0][0] if len(runs) == 1 else np.concatenate([r[0] for r in runs])
        iou = runs[0][1] if len(runs) == 1 else np.concatenate([r[1] for r in runs])
        del runs
        per_point = low_res.shape[1] - 1  # multimask_output=True: masks 1..3
        low_res = low_res[:, 1:].reshape(b * per_point, *low_res.shape[2:])
        iou = np.ascontiguousarray(iou[:, 1:].reshape(-1), dtype=np.float32)
        return low_res, iou, np.repeat(points, per_point, axis=0)

    def before_upscale(self, low_res: FloatArray) -> FloatArray:
        return low_res


class _Sam2Batches:
    """``SAM2AutomaticMaskGenerator._process_batch`` (and ``refine_with_m2m``) for the image or crop set
    in a :class:`~fastseg.sam2.Sam2Engine`: SAM 2's prompt layout, its single-mask choice, the
    optional mask-to-mask refinement, its hole and sprinkle clean-up, upscaling straight to the crop."""

    point_dtype: Any = np.float32  # the original makes the points a float32 tensor

    def __init__(self, engine: Sam2Engine, params: Sam2EverythingParams, crop_size: tuple[int, int]) -> None:
        self.engine, self.params, self.crop_size = engine, params, crop_size
        self.mask_threshold = params.mask_threshold
        size = engine.low_res_size
        self.plan_t = UpscalePlan((size, size), crop_size[::-1], low_res=size, padded=size)

    def _run(
        self, points: npt.NDArray[np.float32], multimask: bool, mask_input: FloatArray | None = None
    ) -> tuple[FloatArray, FloatArray]:
        from fastseg.sam2 import build_prompt_arrays as sam2_prompt_arrays
        from fastseg.sam2 import select_single_masks

        engine, b = self.engine, len(points)
        foreground = np.full((b, 1), LABEL_FOREGROUND, dtype=np.int64)
        size = engine.spec.input_size
        coords, labels = sam2_prompt_arrays(points[:, None, :], foreground, None, self.crop_size, size)
        low_res, iou = engine.decode(coords, labels, mask_input)
        if multimask:
            return low_res[:, 1:], iou[:, 1:]
        return select_single_masks(low_res, iou, engine.stability_delta, engine.stability_thresh)

    def decode(self, points: npt.NDArray[np.float64]) -> tuple[FloatArray, FloatArray, npt.NDArray[np.float32]]:
        from fastseg.sam2 import LOW_RES_CLAMP

        points32 = points.astype(np.float32)
        low_res, iou = self._run(points32, self.params.multimask_output)
        per_point = low_res.shape[1]
        low_res = low_res.reshape(-1, *low_res.shape[2:])
        iou = np.ascontiguousarray(iou.reshape(-1), dtype=np.float32)
        rep_points = np.repeat(points32, per_point, axis=0)
        if self.params.use_m2m:
            # refine_with_m2m: each mask's clamped low-res logits fed back with its point, one mask out.
            fed_back = np.clip(low_res, -LOW_RES_CLAMP, LOW_RES_CLAMP)[:, None]
            low_res, iou = self._run(rep_points, multimask=False, mask_input=fed_back)
            low_res, iou = low_res[:, 0], np.ascontiguousarray(iou[:, 0], dtype=np.float32)
        return low_res, iou, rep_points

    def before_upscale(self, low_res: FloatArray) -> FloatArray:
        from fastseg.sam2 import fill_small_regions

        area = self.params.min_mask_region_area
        return fill_small_regions(low_res, area, area, threshold=0.0)  # the predictor's threshold, not the generator's


def _process_crop(
    engine: SamEngine | Sam2Engine,
    params: SamEverythingParams,
    grid: npt.NDArray[np.float64],
    crop_box: list[int],
    orig_size: tuple[int, int],
    tick: Callable[[int, int], None],
) -> _MaskData:
    """``SamAutomaticMaskGenerator._process_crop`` + ``_process_batch`` (or SAM 2's) on the image set in ``engine``."""
    x0, y0, x1, y1 = crop_box
    crop_size = (y1 - y0, x1 - x0)
    batches: _SamBatches | _Sam2Batches
    if isinstance(params, Sam2EverythingParams):
        batches = _Sam2Batches(cast("Sam2Engine", engine), params, crop_size)
    else:
        batches = _SamBatches(cast("SamEngine", engine), params, crop_size)
    mask_threshold, plan_t = batches.mask_threshold, batches.plan_t
    chunk = max(1, min(64, UPSCALE_BYTES // (4 * crop_size[0] * crop_size[1])))
    points_for_image = grid * np.array(crop_size, dtype=np.float64)[None, ::-1]
    iou_thresh = np.float32(params.pred_iou_thresh)
    stab_thresh = np.float32(params.stability_score_thresh)
    data = _MaskData()
    for start in range(0, len(points_for_image), params.points_per_batch):
        points = points_for_image[start : start + params.points_per_batch]
        b = len(points)
        low_res, iou, rep_points = batches.decode(points)
        # Filter by predicted IoU first: the original does it on the upscaled batch, with the same iou.
        keep = np.flatnonzero(iou > iou_thresh) if params.pred_iou_thresh > 0.0 else np.arange(len(iou))
        for c in range(0, len(keep), chunk):
            idx = keep[c : c + chunk]
            logits_t = plan_t.logits(batches.before_upscale(low_res[idx]).transpose(0, 2, 1))  # (n, crop_w, crop_h)
            stability = stability_scores(logits_t, mask_threshold, params.stability_score_offset)
            ok = stability >= stab_thresh if params.stability_score_thresh > 0.0 else np.ones(len(idx), bool)
            if not ok.any():
                continue
            masks_t = logits_t[ok] > np.float32(mask_threshold)
            del logits_t
            idx, stability = idx[ok], stability[ok]
            rles, boxes = crop_masks_to_rle(masks_t, crop_box, orig_size)
            inside = np.flatnonzero(~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_size[1], orig_size[0]]))
            if not len(inside):
                continue
            data.extend(
                _MaskData.from_arrays(
                    [StoredMask.from_counts(rles[k], orig_size) for k in inside],
                    boxes[inside],
                    iou[idx[inside]],
                    stability[inside],
                    rep_points[idx[inside]],
                    np.zeros((len(inside), 4), np.int64),
                )
            )
        tick(b, len(data))
    if not len(data):
        return data
    boxes, iou, _, _, _ = data.arrays()
    data = data.filter(nms(boxes.astype(np.float32), iou, params.box_nms_thresh))  # within the crop
    # Back to the original frame.
    boxes, iou, stab, points, _ = data.arrays()
    offset = np.array([x0, y0, x0, y0], dtype=np.int64)
    return _MaskData.from_arrays(
        data.rles,
        boxes + offset,
        iou,
        stab,
        (points.astype(batches.point_dtype) + np.array([x0, y0], dtype=batches.point_dtype)).astype(np.float64),
        np.tile(np.array(crop_box, dtype=np.int64), (len(data), 1)),
    )


def _postprocess_small_regions(
    data: _MaskData, min_area: int, nms_thresh: float, orig_size: tuple[int, int]
) -> _MaskData:
    """``SamAutomaticMaskGenerator.postprocess_small_regions``: remove small holes and islands, then NMS
    with unchanged masks preferred; changed masks that survive get new RLEs and boxes."""
    if not len(data):
        return data
    new_rles, new_boxes, scores = [], [], []
    for stored in data.rles:
        mask = stored.mask()
        mask, changed_holes = remove_small_regions(mask, min_area, mode="holes")
        mask, changed_islands = remove_small_regions(mask, min_area, mode="islands")
        unchanged = not (changed_holes or changed_islands)
        scores.append(float(unchanged))
        new_boxes.append(masks_to_boxes(mask[None])[0].astype(np.int64))
        new_rles.append(stored if unchanged else StoredMask.from_counts(masks_to_rle(mask[None])[0], orig_size))
    boxes_all = np.stack(new_boxes)
    keep = nms(boxes_all.astype(np.float32), np.asarray(scores, dtype=np.float32), nms_thresh)
    boxes, iou, stab, points, crops = data.arrays()
    rles = list(data.rles)
    for i in keep:
        if scores[i] == 0.0:
            rles[i] = new_rles[i]
            boxes[i] = boxes_all[i]
    kept = [rles[i] for i in keep]
    return _MaskData.from_arrays(kept, boxes[keep], iou[keep], stab[keep], points[keep], crops[keep])


def generate(
    engine: SamEngine | Sam2Engine,
    params: SamEverythingParams,
    image: npt.NDArray[np.uint8] | None = None,
    progress: ProgressCallback | None = None,
) -> MaskRecords:
    """``SamAutomaticMaskGenerator(model, **params).generate(image)`` for the image set in ``engine``, or
    ``SAM2AutomaticMaskGenerator``'s when ``params`` are :class:`Sam2EverythingParams`.

    Args:
        engine: a :class:`fastseg.sam.SamEngine` (or :class:`fastseg.sam2.Sam2Engine`) with the image
            already set (its embedding is reused for the whole-image crop; the engine is left with
            that image set).
        params: the generator's parameters.
        image: the RGB uint8 pixels of that image; needed only when ``params.crop_n_layers > 0``
            (each crop is encoded on its own).
        progress: called as ``progress(points_done, points_total, crops_done, crops_total, masks_kept)``
            after each decoder batch and crop; the last call has all points and crops done and the
            number of records returned.

    Returns:
        Records as the original's, in its order: ``segmentation`` (per ``params.output_mode``),
        ``area`` (int), ``bbox`` (XYWH, ints), ``predicted_iou``, ``point_coords`` (``[[x, y]]``),
        ``stability_score``, ``crop_box`` (XYWH, ints).
    """
    full = engine.get_image_embedding()
    orig_size = (int(full.original_size[0]), int(full.original_size[1]))
    crop_boxes, layer_idxs = generate_crop_boxes(orig_size, params.crop_n_layers, params.crop_overlap_ratio)
    if len(crop_boxes) > 1:
        if image is None:
            raise ValueError(
                f"crop_n_layers={params.crop_n_layers} encodes crops of the image, so it needs the image's "
                "pixels: pass the image (e.g. Predictor.everything(image, ...)), not only an embedding"
            )
        if tuple(image.shape[:2]) != orig_size:
            raise ValueError(
                f"image is {image.shape[0]}x{image.shape[1]} but the embedding is of {orig_size[0]}x{orig_size[1]}"
            )
        for box in crop_boxes:
            if box[2] <= box[0] or box[3] <= box[1]:
                raise ValueError(
                    f"a {orig_size[0]}x{orig_size[1]} image is too small for crop_n_layers={params.crop_n_layers}: "
                    f"crop {box} is empty"
                )
    grids = params.grids()
    points_total = sum(len(grids[layer]) for layer in layer_idxs)
    done = {"points": 0, "crops": 0, "masks": 0}

    def tick(points: int, masks_in_crop: int) -> None:
        done["points"] += points
        if progress is not None:
            progress(done["points"], points_total, done["crops"], len(crop_boxes), done["masks"] + masks_in_crop)

    data = _MaskData()
    try:
        for crop_box, layer in zip(crop_boxes, layer_idxs):
            if crop_box == [0, 0, orig_size[1], orig_size[0]]:
                engine.set_image_embedding(full)
            else:
                assert image is not None
                x0, y0, x1, y1 = crop_box
                engine.set_image(np.ascontiguousarray(image[y0:y1, x0:x1]))
            crop_data = _process_crop(engine, params, grids[layer], crop_box, orig_size, tick)
            data.extend(crop_data)
            done["crops"] += 1
            done["masks"] = len(data)
            if progress is not None and done["crops"] < len(crop_boxes):
                progress(done["points"], points_total, done["crops"], len(crop_boxes), done["masks"])
    finally:
        engine.set_image_embedding(full)

    if len(crop_boxes) > 1 and len(data):
        boxes, _, _, _, crops = data.arrays()
        areas = ((crops[:, 2] - crops[:, 0]) * (crops[:, 3] - crops[:, 1])).astype(np.float32)
        scores = np.float32(1) / areas  # prefer masks from smaller crops
        data = data.filter(nms(boxes.astype(np.float32), scores, params.crop_nms_thresh))
    if params.min_mask_region_area > 0 and not isinstance(params, Sam2EverythingParams):
        data = _postprocess_small_regions(
            data, params.min_mask_region_area, max(params.box_nms_thresh, params.crop_nms_thresh), orig_size
        )
    records = MaskRecords(_sam_records(data, params.output_mode), image_size=orig_size, score_key="predicted_iou")
    if progress is not None:  # the last call: everything done, the final count
        progress(points_total, points_total, len(crop_boxes), len(crop_boxes), len(records))
    return records


def _xywh(box: Sequence[int]) -> list[int]:
    x0, y0, x1, y1 = (int(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def _sam_records(data: _MaskData, output_mode: str) -> list[Record]:
    boxes, iou, stab, points, crops = data.arrays()
    records = []
    for i, stored in enumerate(data.rles):
        records.append(
            {
                "segmentation": encode_segmentation(stored, output_mode),
                "area": stored.area,
                "bbox": _xywh(boxes[i]),
                "predicted_iou": float(iou[i]),
                "point_coords": [points[i].tolist()],
                "stability_score": float(stab[i]),
                "crop_box": _xywh(crops[i]),
            }
        )
    return records
