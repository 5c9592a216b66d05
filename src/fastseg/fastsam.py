"""FastSAM in numpy: ultralytics' letterbox, NMS, retina masks and prompt rules, and the engine.

FastSAM is a one-class YOLOv8-seg network. The network graph (``network``) maps a letterboxed RGB
image ``images`` ``(1, 3, H, W)`` float32 in 0..1 to

- ``detections`` ``(1, 4 + 1 + 32, A)``: per anchor a box (centre x, centre y, width, height in input
  pixels), the confidence, and 32 mask coefficients;
- ``protos`` ``(1, 32, H / 4, W / 4)``: the mask prototypes.

Everything around the graph is reproduced here from ultralytics (``FastSAMPredictor`` and the YOLO
segmentation predictor it extends) so that fastseg returns the masks ultralytics returns:

1. :func:`letterbox`: resize with OpenCV's ``INTER_LINEAR`` arithmetic (fixed point, no antialias;
   bit-exact with ``cv2.resize``), pad with 114 to the smallest multiple of the stride (a rectangle,
   as ultralytics' PyTorch predictor does).
2. :func:`non_max_suppression`: confidence filter, centre-to-corner boxes, greedy NMS with
   ``torchvision.ops.nms`` semantics, at most 300 detections.
3. :func:`scale_boxes`: boxes back to original-image pixels, clipped.
4. Retina masks (``process_mask_native``): coefficients @ prototypes, crop the letterbox padding,
   bilinear to the original size, crop to the box, ``> 0``; detections whose mask is empty are
   dropped.
5. FastSAM's border rule (:func:`snap_boxes_to_image`) and prompt rules (:func:`select_by_points`,
   :func:`select_by_boxes`).

The expensive step in ultralytics is (4): it builds every detection's mask at full resolution. Here
a mask's logits are computed only where they can matter (:class:`MaskAssembler`): inside the
detection's box (everything outside is zero by the crop), at the prompt points, and for the prompt
box only for detections whose box overlaps it. Every computed pixel uses the same arithmetic as the
full computation, so the selection is the same; full masks are assembled only for the answer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import numpy.typing as npt

from fastseg.image import check_image_size
from fastseg.manifest import ModelFolder, ModelFolderError
from fastseg.ops import Taps, bilinear_taps, box_iou, cxcywh_to_xyxy, nms
from fastseg.records import MaskRecords, check_output_mode, encode_segmentation
from fastseg.registry import Family, ModelSpec
from fastseg.results import SegmentationResult

if TYPE_CHECKING:
    from fastseg.backends import Session
    from fastseg.clip import ClipModel
    from fastseg.engine import ProgressCallback
    from fastseg.prompts import Prompts

#: ultralytics ``LetterBox`` padding value.
PAD_VALUE = 114
#: ultralytics ``non_max_suppression`` defaults used by its predictor.
MAX_DET = 300
MAX_NMS = 30000
#: FastSAM: box edges within this many pixels of the image border are snapped to it ...
BORDER_SNAP_PX = 20
#: ... and a box whose IoU with the whole image exceeds this becomes the whole image.
FULL_BOX_IOU = 0.9
#: Text prompts score only detections whose mask has more pixels than this (ultralytics' filter).
TEXT_MIN_MASK_PIXELS = 100
#: FastSAM's ultralytics defaults.
DEFAULT_CONF = 0.4
DEFAULT_IOU = 0.9

_COEF_BITS = 11  # OpenCV INTER_RESIZE_COEF_BITS
_COEF_SCALE = 1 << _COEF_BITS

FloatArray = npt.NDArray[np.float32]
_Clip = TypeVar("_Clip")


def check_text_inputs(clip: _Clip | None, image: npt.NDArray[np.uint8] | None) -> tuple[_Clip, npt.NDArray[np.uint8]]:
    """``(clip, image)`` when text prompts can run; else the error: no CLIP model, or an image
    restored from an embedding without its pixels (the crops are cut from them). Shared by the
    Predictor, which checks before validating prompts, and the engine, which can be driven directly."""
    if clip is None:
        raise ValueError(
            "texts need a CLIP model: Predictor(model_dir, clip='models/clip_vit_b32'), exported with "
            "`fastseg export clip_vit_b32 --checkpoint ViT-B-32.pt --out models/clip_vit_b32`"
        )
    if image is None:
        raise ValueError(
            "text prompts crop the image's pixels, and this image was restored from an embedding without "
            "them: set the image itself (set_image / encode) to prompt it with texts"
        )
    return clip, image


# ----------------------------------------------------------------------------------------------
# Letterbox
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Letterbox:
    """Where an image sits inside the network input (ultralytics ``LetterBox(auto=True)``).

    Attributes:
        image_size: ``(h, w)`` of the original image.
        resized_size: ``(h, w)`` the image is resized to.
        input_size: ``(H, W)`` of the network input, multiples of the stride.
        top, left: padding above and left of the resized image, in input pixels.
    """

    image_size: tuple[int, int]
    resized_size: tuple[int, int]
    input_size: tuple[int, int]
    top: int
    left: int


def letterbox_geometry(image_size: tuple[int, int], size: int = 1024, stride: int = 32) -> Letterbox:
    """The letterbox ultralytics' PyTorch predictor uses: longest side to ``size``, minimum rectangle.

    Reproduces ``LetterBox.get_params`` with ``auto=True`` (Python ``round``, i.e. half to even, and
    its ``round(d - 0.1)`` / ``round(d + 0.1)`` split of odd padding).
    """
    h, w = int(image_size[0]), int(image_size[1])
    if h < 1 or w < 1:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    r = min(size / h, size / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = (size - new_w) % stride / 2, (size - new_h) % stride / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    return Letterbox(
        image_size=(h, w),
        resized_size=(new_h, new_w),
        input_size=(new_h + top + bottom, new_w + left + right),
        top=top,
        left=left,
    )


def _linear_taps(src: int, dst: int) -> tuple[npt.NDArray[np.intp], FloatArray]:
    """OpenCV's source index and fraction per destination pixel (``resize.cpp``, INTER_LINEAR)."""
    scale = 1.0 / (dst / src)  # OpenCV computes inv_scale = dst/src first, then scale = 1/inv_scale
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f)
    return s.astype(np.intp), (f - s).astype(np.float32)


def _fixed_point(weight: FloatArray) -> npt.NDArray[np.int32]:
    """``saturate_cast<short>(w * INTER_RESIZE_COEF_SCALE)``: float32 product, round half to even."""
    fixed: npt.NDArray[np.int32] = np.rint(weight.astype(np.float32) * np.float32(_COEF_SCALE)).astype(np.int32)
    return fixed


def resize_linear(image: npt.NDArray[np.uint8], out_h: int, out_w: int) -> npt.NDArray[np.uint8]:
    """``cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_LINEAR)`` for uint8 ``(H, W, C)``.

    OpenCV's bilinear resize is not PIL's: no antialiasing when shrinking, 11-bit fixed-point weights,
    and a SIMD vertical pass that rounds in two steps. This reproduces that arithmetic (and the exact
    2x shrink, which OpenCV routes to its area filter), bit-exact with the x86-64 OpenCV build
    ultralytics uses (checked in ``tests/test_fastsam_processing.py``).
    """
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"image must be uint8 (H, W, C), got {image.dtype} {image.shape}")
    in_h, in_w, channels = image.shape
    if out_h < 1 or out_w < 1:
        raise ValueError(f"output size must be positive, got {out_h}x{out_w}")
    if (out_h, out_w) == (in_h, in_w):
        same: npt.NDArray[np.uint8] = image.copy()
        return same
    scale_x, scale_y = 1.0 / (out_w / in_w), 1.0 / (out_h / in_h)
    eps = np.finfo(np.float64).eps
    if abs(scale_x - 2) < eps and abs(scale_y - 2) < eps:  # OpenCV: exact 2x shrink -> INTER_AREA
        x = image[: 2 * out_h, : 2 * out_w].astype(np.uint16)
        total = x[0::2, 0::2] + x[0::2, 1::2] + x[1::2, 0::2] + x[1::2, 1::2]
        return ((total + 2) >> 2).astype(np.uint8)

    # Horizontal pass: int32 sums of two 11-bit weighted taps. Past the right edge OpenCV uses the
    # last pixel with weight 1; before the left edge the first pixel.
    sx, fx = _linear_taps(in_w, out_w)
    right = sx >= in_w - 1
    left = sx < 0
    fx[left | right] = 0
    sx = np.clip(sx, 0, in_w - 1)
    sx1 = np.minimum(sx + 1, in_w - 1)
    ax0, ax1 = _fixed_point(np.float32(1) - fx), _fixed_point(fx)

    # Vertical taps: rows are clamped but their weights are kept as computed.
    sy, fy = _linear_taps(in_h, out_h)
    row0, row1 = np.clip(sy, 0, in_h - 1), np.clip(sy + 1, 0, in_h - 1)
    by0, by1 = _fixed_point(np.float32(1) - fy), _fixed_point(fy)

    rows, inverse = np.unique(np.concatenate([row0, row1]), return_inverse=True)
    src = image[rows].astype(np.int32)  # only the source rows some output row reads
    horizontal = src[:, sx, :] * ax0[None, :, None]
    horizontal += src[:, sx1, :] * ax1[None, :, None]
    horizontal >>= 4  # the SIMD vertical pass works on (sum >> 4) packed to int16
    top = horizontal[inverse[:out_h]]
    bottom = horizontal[inverse[out_h:]]
    # VResizeLinearVec_32s8u: ((a*b0) >> 16) + ((b*b1) >> 16), then (+2) >> 2, saturated to uint8.
    top *= by0[:, None, None]
    top >>= 16
    bottom *= by1[:, None, None]
    bottom >>= 16
    top += bottom
    top += 2
    top >>= 2
    np.clip(top, 0, 255, out=top)
    resized: npt.NDArray[np.uint8] = top.astype(np.uint8).reshape(out_h, out_w, channels)
    return resized


def letterbox(
    image: npt.NDArray[np.uint8], size: int = 1024, stride: int = 32
) -> tuple[npt.NDArray[np.uint8], Letterbox]:
    """Resize and pad an RGB uint8 ``(h, w, 3)`` image as ultralytics does; returns ``(H, W, 3)`` uint8."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
    geo = letterbox_geometry(image.shape[:2], size, stride)
    new_h, new_w = geo.resized_size
    resized = resize_linear(image, new_h, new_w) if (new_h, new_w) != geo.image_size else image
    canvas = np.full((*geo.input_size, 3), PAD_VALUE, dtype=np.uint8)
    canvas[geo.top : geo.top + new_h, geo.left : geo.left + new_w] = resized
    return canvas, geo


def preprocess(image: npt.NDArray[np.uint8], spec: ModelSpec) -> tuple[FloatArray, Letterbox]:
    """The network input ``(1, 3, H, W)`` float32 (RGB) for an RGB uint8 image, and its geometry.

    Letterbox to ``spec.input_size`` (multiples of ``spec.stride``), then ``(x - pixel_mean) /
    pixel_std`` in float32; FastSAM's spec has mean 0 and std 255, ultralytics' ``im.float() / 255``
    bit for bit.
    """
    canvas, geo = letterbox(image, spec.input_size, spec.stride)
    tensor = canvas.transpose(2, 0, 1)[None].astype(np.float32)
    tensor -= np.asarray(spec.pixel_mean, dtype=np.float32)[None, :, None, None]
    tensor /= np.asarray(spec.pixel_std, dtype=np.float32)[None, :, None, None]
    return np.ascontiguousarray(tensor), geo


# ----------------------------------------------------------------------------------------------
# Detections
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detections:
    """Detections after NMS, in NMS order (decreasing confidence).

    Attributes:
        boxes: ``(N, 4)`` float32 XYXY in network-input pixels.
        scores: ``(N,)`` float32 confidences.
        coefficients: ``(N, M)`` float32 mask coefficients.
    """

    boxes: FloatArray
    scores: FloatArray
    coefficients: FloatArray

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def non_max_suppression(
    detections: FloatArray, conf: float = DEFAULT_CONF, iou: float = DEFAULT_IOU, max_det: int = MAX_DET
) -> Detections:
    """ultralytics ``non_max_suppression`` for one image of a one-class segmentation model.

    Args:
        detections: ``(1, 5 + M, A)`` or ``(5 + M, A)`` network output: xywh, confidence, M coefficients.
        conf: keep anchors with confidence ``> conf`` (compared in float32, as torch does).
        iou: NMS IoU threshold.
        max_det: at most this many detections.
    """
    pred = np.asarray(detections, dtype=np.float32)
    if pred.ndim == 3:
        if pred.shape[0] != 1:
            raise ValueError(f"detections must hold one image, got batch {pred.shape[0]}")
        pred = pred[0]
    if pred.ndim != 2 or pred.shape[0] < 5:
        raise ValueError(f"detections must have shape (1, 5 + M, A), got {np.shape(detections)}")
    scores_all = pred[4]
    candidates = np.flatnonzero(scores_all > np.float32(conf))
    x = pred[:, candidates].T  # (n, 5 + M)
    if len(x) > MAX_NMS:  # ultralytics keeps the MAX_NMS most confident
        x = x[np.argsort(-x[:, 4], kind="stable")[:MAX_NMS]]
    boxes = cxcywh_to_xyxy(x[:, :4])
    scores = np.ascontiguousarray(x[:, 4])
    keep = nms(boxes, scores, iou)[:max_det]
    return Detections(
        boxes=boxes[keep],
        scores=scores[keep],
        coefficients=np.ascontiguousarray(x[keep, 5:]),
    )


def scale_boxes(boxes: FloatArray, input_size: tuple[int, int], image_size: tuple[int, int]) -> FloatArray:
    """ultralytics ``scale_boxes``: input-pixel XYXY to original-image pixels, clipped to the image."""
    in_h, in_w = input_size
    h, w = image_size
    gain = min(in_h / h, in_w / w)
    new_h, new_w = max(round(h * gain), 1), max(round(w * gain), 1)
    gain_y, gain_x = new_h / h, new_w / w
    pad_x = round((in_w - new_w) / 2 - 0.1)
    pad_y = round((in_h - new_h) / 2 - 0.1)
    out = np.array(boxes, dtype=np.float32, copy=True).reshape(-1, 4)
    out[:, [0, 2]] -= np.float32(pad_x)
    out[:, [1, 3]] -= np.float32(pad_y)
    out[:, [0, 2]] /= np.float32(gain_x)  # torch divides a float32 tensor by a float32 scalar
    out[:, [1, 3]] /= np.float32(gain_y)
    out[:, 0] = np.clip(out[:, 0], 0, w)
    out[:, 2] = np.clip(out[:, 2], 0, w)
    out[:, 1] = np.clip(out[:, 1], 0, h)
    out[:, 3] = np.clip(out[:, 3], 0, h)
    return out


def snap_boxes_to_image(boxes: FloatArray, image_size: tuple[int, int]) -> FloatArray:
    """FastSAM's border rule on XYXY boxes in original pixels (returns a new array).

    Edges within 20 px of the border move onto it (``adjust_bboxes_to_image_border``; ultralytics
    applies this to every returned box, as it works on a view of the result's boxes), then boxes with
    IoU > 0.9 against the whole image become the whole image.
    """
    h, w = image_size
    out = np.array(boxes, dtype=np.float32, copy=True).reshape(-1, 4)
    out[out[:, 0] < BORDER_SNAP_PX, 0] = 0
    out[out[:, 1] < BORDER_SNAP_PX, 1] = 0
    out[out[:, 2] > w - BORDER_SNAP_PX, 2] = w
    out[out[:, 3] > h - BORDER_SNAP_PX, 3] = h
    full = np.array([[0, 0, w, h]], dtype=np.float32)
    if len(out):
        out[box_iou(full, out)[0] > np.float32(FULL_BOX_IOU)] = full[0]
    return out


# ----------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------


def _interpolate(values: FloatArray, rows: Taps, cols: Taps) -> FloatArray:
    """``(t(r0) * wr0 + t(r1) * wr1)`` with ``t(r) = v[r, c0] * wc0 + v[r, c1] * wc1``, torch's order.

    ``values`` is ``(n, R, C)``; the taps index its last two axes; returns ``(n, len(rows), len(cols))``.
    """
    # In place, on np.take gathers: the same products and sums as the expression above, with fewer
    # temporaries (docs/PERFORMANCE.md).
    across = np.take(values, cols.i0, axis=2)
    across *= cols.w0
    other = np.take(values, cols.i1, axis=2)
    other *= cols.w1
    across += other
    out = np.take(across, rows.i0, axis=1)
    out *= rows.w0[:, None]
    other = np.take(across, rows.i1, axis=1)
    other *= rows.w1[:, None]
    out += other
    return out


def _restrict(taps: Taps, index: npt.NDArray[np.intp]) -> tuple[Taps, npt.NDArray[np.intp]]:
    """Taps of the given destination indices, re-pointed at the compact set of sources they read."""
    i0, i1 = taps.i0[index], taps.i1[index]
    sources, inverse = np.unique(np.concatenate([i0, i1]), return_inverse=True)
    n = len(index)
    return Taps(i0=inverse[:n], i1=inverse[n:], w0=taps.w0[index], w1=taps.w1[index]), sources


def _restrict_range(taps: Taps, start: int, stop: int) -> tuple[Taps, int, int]:
    """Taps of destinations ``[start, stop)``, re-pointed at the source span ``[lo, hi)`` they read.

    Sources are monotone in the destination, so the span is contiguous (it may include sources no
    destination reads, e.g. when shrinking; computing those is wasted but harmless).
    """
    i0, i1 = taps.i0[start:stop], taps.i1[start:stop]
    lo, hi = int(i0[0]), int(i1[-1]) + 1
    return Taps(i0=i0 - lo, i1=i1 - lo, w0=taps.w0[start:stop], w1=taps.w1[start:stop]), lo, hi


def _interpolate_2d(values: FloatArray, rows: Taps, cols: Taps) -> FloatArray:
    """:func:`_interpolate` for one ``(R, C)`` array."""
    plane: FloatArray = _interpolate(values[None], rows, cols)[0]
    return plane


class MaskAssembler:
    """ultralytics ``process_mask_native`` (retina masks), evaluated only where needed.

    ultralytics computes ``logits = coefficients @ prototypes`` (``(N, mh, mw)``), upsamples them by
    ``f`` in {1, 2, 4} (the smallest factor that puts the letterbox padding on whole pixels), crops
    the padding, resizes bilinearly to the original ``(h, w)``, thresholds ``> 0`` and zeroes
    everything outside each detection's box. A pixel's value depends only on its own row and column
    taps, so this class evaluates any set of rows x columns of any detections with the same
    arithmetic, without building the full-resolution stack.

    Args:
        protos: ``(M, mh, mw)`` float32 prototypes.
        coefficients: ``(N, M)`` float32 mask coefficients.
        boxes: ``(N, 4)`` float32 XYXY boxes in original pixels (after :func:`scale_boxes`).
        image_size: ``(h, w)`` of the original image.
    """

    def __init__(
        self, protos: FloatArray, coefficients: FloatArray, boxes: FloatArray, image_size: tuple[int, int]
    ) -> None:
        m, mh, mw = protos.shape
        if coefficients.ndim != 2 or coefficients.shape[1] != m:
            raise ValueError(f"coefficients must be (N, {m}), got {coefficients.shape}")
        h, w = int(image_size[0]), int(image_size[1])
        self.image_size = (h, w)
        self.boxes = np.asarray(boxes, dtype=np.float32)
        n = coefficients.shape[0]
        # torch: masks_in @ protos.view(c, -1); one product for all detections, cached.
        self._logits = (coefficients.astype(np.float32) @ protos.reshape(m, -1).astype(np.float32)).reshape(n, mh, mw)
        # ultralytics process_mask_native: choose the pre-upsampling factor f.
        gain = min(4 * mh / h, 4 * mw / w)
        pad = (4 * mh - max(round(h * gain), 1)) | (4 * mw - max(round(w * gain), 1))
        self.factor = 4 // math.gcd(4, pad | pad // 2)
        f = self.factor
        if f > 1:
            self._up_rows: Taps | None = bilinear_taps(mh, mh * f, scale_factor=f)
            self._up_cols: Taps | None = bilinear_taps(mw, mw * f, scale_factor=f)
        else:
            self._up_rows = self._up_cols = None
        # ultralytics scale_masks: crop the padding of the (f*mh, f*mw) grid, resize to (h, w).
        gh, gw = mh * f, mw * f
        g = min(gh / h, gw / w)
        pad_w, pad_h = (gw - max(round(w * g), 1)) / 2, (gh - max(round(h * g), 1)) / 2
        top, left = round(pad_h - 0.1), round(pad_w - 0.1)
        bottom, right = top + max(round(h * g), 1), left + max(round(w * g), 1)
        self._identity = (gh, gw) == (h, w)  # scale_masks returns its input unchanged
        rows = bilinear_taps(bottom - top, h)
        cols = bilinear_taps(right - left, w)
        self._rows = Taps(rows.i0 + top, rows.i1 + top, rows.w0, rows.w1)
        # For each output row / column, the prototype row / column it mostly reads (emptiness probes).
        out_rows = np.arange(h) if self._identity else self._rows.i0
        self._low_row_of = out_rows if self._up_rows is None else self._up_rows.i0[out_rows]
        self._cols = Taps(cols.i0 + left, cols.i1 + left, cols.w0, cols.w1)
        out_cols = np.arange(w) if self._identity else self._cols.i0
        self._low_col_of = out_cols if self._up_cols is None else self._up_cols.i0[out_cols]
        # crop_mask: pixel columns c with x1 <= c < x2 (and rows likewise), compared in float32.
        grid_x = np.arange(w, dtype=np.float32)
        grid_y = np.arange(h, dtype=np.float32)
        self.col_start = np.searchsorted(grid_x, self.boxes[:, 0], side="left")
        self.col_stop = np.maximum(np.searchsorted(grid_x, self.boxes[:, 2], side="left"), self.col_start)
        self.row_start = np.searchsorted(grid_y, self.boxes[:, 1], side="left")
        self.row_stop = np.maximum(np.searchsorted(grid_y, self.boxes[:, 3], side="left"), self.row_start)
        self._nonempty: npt.NDArray[np.int8] = np.full(n, -1, dtype=np.int8)  # -1 unknown, 0/1 known

    def __len__(self) -> int:
        return int(self._logits.shape[0])

    # -- evaluation -------------------------------------------------------------------------------

    def logits_at(
        self, detections: npt.NDArray[np.intp], rows: npt.NDArray[np.intp], cols: npt.NDArray[np.intp]
    ) -> FloatArray:
        """Full-resolution mask logits ``(n, len(rows), len(cols))`` before the box crop."""
        detections = np.asarray(detections, dtype=np.intp)
        rows = np.asarray(rows, dtype=np.intp)
        cols = np.asarray(cols, dtype=np.intp)
        if self._identity:
            return self._grid_values(detections, rows, cols)
        row_taps, grid_rows = _restrict(self._rows, rows)
        col_taps, grid_cols = _restrict(self._cols, cols)
        grid = self._grid_values(detections, grid_rows, grid_cols)
        return _interpolate(grid, row_taps, col_taps)

    def crop_logits(self, i: int, rows: tuple[int, int], cols: tuple[int, int]) -> FloatArray:
        """Logits of detection ``i`` over output rows x cols ``[start, stop)`` (non-empty ranges).

        The same arithmetic as :meth:`logits_at`, on contiguous blocks (slices instead of gathers).
        """
        if self._identity:
            return self._grid_block(i, rows, cols)
        row_taps, r_lo, r_hi = _restrict_range(self._rows, *rows)
        col_taps, c_lo, c_hi = _restrict_range(self._cols, *cols)
        return _interpolate_2d(self._grid_block(i, (r_lo, r_hi), (c_lo, c_hi)), row_taps, col_taps)

    def _grid_block(self, i: int, rows: tuple[int, int], cols: tuple[int, int]) -> FloatArray:
        """The ``f``-times upsampled logits grid of detection ``i`` over rows x cols ``[start, stop)``."""
        if self.factor == 1:
            return self._logits[i, rows[0] : rows[1], cols[0] : cols[1]]
        assert self._up_rows is not None and self._up_cols is not None
        row_taps, r_lo, r_hi = _restrict_range(self._up_rows, *rows)
        col_taps, c_lo, c_hi = _restrict_range(self._up_cols, *cols)
        return _interpolate_2d(self._logits[i, r_lo:r_hi, c_lo:c_hi], row_taps, col_taps)

    def _grid_values(
        self, detections: npt.NDArray[np.intp], rows: npt.NDArray[np.intp], cols: npt.NDArray[np.intp]
    ) -> FloatArray:
        """Values of the ``f``-times upsampled logits grid at rows x cols."""
        if self.factor == 1:
            return self._logits[detections[:, None, None], rows[None, :, None], cols[None, None, :]]
        assert self._up_rows is not None and self._up_cols is not None
        row_taps, low_rows = _restrict(self._up_rows, rows)
        col_taps, low_cols = _restrict(self._up_cols, cols)
        low = self._logits[detections[:, None, None], low_rows[None, :, None], low_cols[None, None, :]]
        return _interpolate(low, row_taps, col_taps)

    def _low_res_span(self, rows: tuple[int, int], cols: tuple[int, int]) -> tuple[slice, slice]:
        """The prototype-grid rows and columns that output rows/cols ``[start, stop)`` read from."""

        def span(taps: Taps | None, up: Taps | None, start: int, stop: int) -> slice:
            lo, hi = (start, stop - 1)
            if taps is not None:
                lo, hi = int(taps.i0[lo]), int(taps.i1[hi])
            if up is not None:
                lo, hi = int(up.i0[lo]), int(up.i1[hi])
            return slice(lo, hi + 1)

        out_rows = None if self._identity else self._rows
        out_cols = None if self._identity else self._cols
        return span(out_rows, self._up_rows, *rows), span(out_cols, self._up_cols, *cols)

    def region(self, i: int) -> tuple[int, int, int, int]:
        """``(row_start, row_stop, col_start, col_stop)`` of detection ``i``'s box crop."""
        return (int(self.row_start[i]), int(self.row_stop[i]), int(self.col_start[i]), int(self.col_stop[i]))

    def box_mask(self, i: int) -> npt.NDArray[np.bool_]:
        """Detection ``i``'s binary mask inside its box crop, ``(rows, cols)`` bool."""
        r0, r1, c0, c1 = self.region(i)
        if r1 <= r0 or c1 <= c0:
            return np.zeros((max(r1 - r0, 0), max(c1 - c0, 0)), dtype=bool)
        return self.crop_logits(i, (r0, r1), (c0, c1)) > 0

    def full_mask(self, i: int, out: npt.NDArray[np.bool_] | None = None) -> npt.NDArray[np.bool_]:
        """Detection ``i``'s binary mask at the original resolution ``(h, w)``."""
        if out is None:
            out = np.zeros(self.image_size, dtype=bool)
        r0, r1, c0, c1 = self.region(i)
        out[r0:r1, c0:c1] = self.box_mask(i)
        return out

    def values_at_points(self, detections: npt.NDArray[np.intp], xy: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Binary mask values ``(n, P)`` at integer pixels ``xy`` ``(P, 2)`` (after the box crop)."""
        detections = np.asarray(detections, dtype=np.intp)
        out = np.zeros((len(detections), len(xy)), dtype=bool)
        if len(detections) == 0:
            return out
        for p, (x, y) in enumerate(xy):
            inside = (
                (self.col_start[detections] <= x)
                & (x < self.col_stop[detections])
                & (self.row_start[detections] <= y)
                & (y < self.row_stop[detections])
            )
            if inside.any():
                dets = detections[inside]
                out[inside, p] = self.logits_at(dets, np.array([y]), np.array([x]))[:, 0, 0] > 0
        return out

    # -- emptiness (ultralytics keeps only detections whose mask has a pixel) --------------------------

    def nonempty(self, detections: npt.NDArray[np.intp] | None = None) -> npt.NDArray[np.bool_]:
        """Whether each detection's cropped mask has at least one pixel (cached per detection).

        Decided exactly, cheaply where possible: an empty crop, or prototype-grid logits all ``<= 0``
        over the crop's footprint, mean empty (bilinear weights are non-negative); a positive pixel
        in a small window around where the footprint's largest logit lands means non-empty; only the
        rest are evaluated over their whole crop.
        """
        idx = np.arange(len(self)) if detections is None else np.asarray(detections, dtype=np.intp)
        for i in idx[self._nonempty[idx] < 0]:
            self._nonempty[i] = self._decide_nonempty(int(i))
        return self._nonempty[idx].astype(bool)

    def _decide_nonempty(self, i: int) -> bool:
        r0, r1, c0, c1 = self.region(i)
        if r1 <= r0 or c1 <= c0:
            return False
        low_rows, low_cols = self._low_res_span((r0, r1), (c0, c1))
        footprint = self._logits[i, low_rows, low_cols]
        if not (footprint > 0).any():
            return False
        a, b = np.unravel_index(int(np.argmax(footprint)), footprint.shape)
        y = r0 + int(np.searchsorted(self._low_row_of[r0:r1], low_rows.start + a))
        x = c0 + int(np.searchsorted(self._low_col_of[c0:c1], low_cols.start + b))
        rows = np.arange(max(r0, y - 2), min(r1, y + 3))
        cols = np.arange(max(c0, x - 2), min(c1, x + 3))
        if len(rows) and len(cols) and (self.logits_at(np.array([i]), rows, cols) > 0).any():
            return True
        return bool(self.box_mask(i).any())


# ----------------------------------------------------------------------------------------------
# Prompt rules (ultralytics FastSAMPredictor.prompt)
# ----------------------------------------------------------------------------------------------


def point_pixels(points: npt.NDArray[np.floating[Any]], image_size: tuple[int, int]) -> npt.NDArray[np.int64]:
    """Prompt points as ultralytics indexes masks with them: int64 (truncated from the given values),
    clipped to the image."""
    h, w = image_size
    xy = np.asarray(points, dtype=np.float64).reshape(-1, 2).astype(np.int64)
    xy[:, 0] = np.clip(xy[:, 0], 0, w - 1)
    xy[:, 1] = np.clip(xy[:, 1], 0, h - 1)
    return xy


def box_pixels(boxes: npt.NDArray[np.floating[Any]], image_size: tuple[int, int]) -> npt.NDArray[np.int32]:
    """Prompt boxes as ultralytics slices masks with them: int32 (truncated from the given values),
    clipped to the image."""
    h, w = image_size
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).astype(np.int32)
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, w)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, h)
    return b


def select_by_points(
    point_values: npt.NDArray[np.bool_], labels: npt.NDArray[np.integer[Any]]
) -> npt.NDArray[np.bool_]:
    """ultralytics' point rule on ``point_values`` ``(N, P)`` (mask value of detection n at point p).

    A detection is selected if it contains a positive point and no negative point; if the labels sum
    to 0 (all negative), every detection not containing a negative point is selected.
    """
    labels = np.asarray(labels).astype(np.int32)
    if point_values.shape[1:] != labels.shape:
        raise ValueError(f"{point_values.shape[1]} point values per detection but {labels.shape[0]} labels")
    chosen: npt.NDArray[np.bool_]
    if labels.sum() == 0:
        chosen = np.ones(point_values.shape[0], dtype=bool)
    else:
        chosen = cast("npt.NDArray[np.bool_]", point_values[:, labels == 1].any(axis=1))  # (N, P) -> (N,)
    chosen &= ~point_values[:, labels == 0].any(axis=1)
    return chosen


def select_by_boxes(
    inside_areas: npt.NDArray[np.int64], mask_areas: npt.NDArray[np.int64], boxes: npt.NDArray[np.int32]
) -> npt.NDArray[np.intp]:
    """ultralytics' box rule: per prompt box, the detection with the highest mask-vs-box IoU.

    Args:
        inside_areas: ``(B, N)`` mask pixels of detection n inside box b.
        mask_areas: ``(N,)`` mask pixels of detection n.
        boxes: ``(B, 4)`` int32 prompt boxes from :func:`box_pixels`.

    Returns:
        ``(B,)`` the chosen detection per box (first one on ties, as ``torch.argmax``).
    """
    box_areas = (boxes[:, 3] - boxes[:, 1]).astype(np.int64) * (boxes[:, 2] - boxes[:, 0]).astype(np.int64)
    union = box_areas[:, None] + mask_areas[None, :] - inside_areas
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inside_areas.astype(np.float32) / union.astype(np.float32)  # torch int/int -> float32
    best: npt.NDArray[np.intp] = np.argmax(iou, axis=1)
    return best


# ----------------------------------------------------------------------------------------------
# Engine
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FastSamImageEmbedding:
    """What :meth:`FastSamEngine.set_image` computed for one image: the raw network outputs.

    Attributes:
        model: registry name of the model that made it.
        original_size: ``(h, w)`` of the image.
        input_size: ``(H, W)`` of the letterboxed network input.
        detections: ``(1, 5 + M, A)`` float32 network output.
        protos: ``(1, M, H / 4, W / 4)`` float32 network output.
    """

    model: str
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    detections: FloatArray
    protos: FloatArray


@dataclass
class _ImageState:
    embedding: FastSamImageEmbedding
    masks: MaskAssembler
    scores: FloatArray
    boxes: FloatArray  # original pixels, after the FastSAM border rule (what results report)
    #: For text prompts, once per image: the detections scored (masks of more than
    #: TEXT_MIN_MASK_PIXELS pixels) and their crops' unit-norm CLIP features.
    crop_features: tuple[npt.NDArray[np.intp], FloatArray] | None = None


@dataclass(frozen=True)
class FastSamEverythingParams:
    """FastSAM everything mode takes only the output form; conf and iou are set on the Predictor."""

    output_mode: str = "binary_mask"

    def __post_init__(self) -> None:
        check_output_mode(self.output_mode)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FastSamEngine:
    """FastSAM prompts on one image at a time, as ultralytics ``FastSAM(...).predict`` answers them
    (an :class:`~fastseg.engine.Engine`).

    Args:
        folder: the model folder (``fastseg.manifest.ModelFolder``) of a ``fastsam`` model.
        sessions: ``{"network": Session}``.
        conf: detection confidence threshold, in [0, 1] (ultralytics' FastSAM default).
        iou: NMS IoU threshold, in [0, 1] (ultralytics' FastSAM default).
        clip: a :class:`fastseg.clip.ClipModel` for text prompts, or None.
    """

    graph = "network"
    family: Family = "fastsam"
    low_res_size: int | None = None  # FastSAM takes no mask input

    def __init__(
        self,
        folder: ModelFolder,
        sessions: Mapping[str, Session],
        conf: float = DEFAULT_CONF,
        iou: float = DEFAULT_IOU,
        clip: ClipModel | None = None,
    ) -> None:
        if folder.spec.family != "fastsam" or folder.spec.resize != "letterbox":
            raise ModelFolderError(
                f"FastSamEngine needs a fastsam model folder with letterbox resizing, got family "
                f"{folder.spec.family!r}, resize {folder.spec.resize!r}"
            )
        if self.graph not in sessions:
            raise ValueError(f"FastSamEngine needs a session for graph {self.graph!r}, got {sorted(sessions)}")
        for name, value in (("conf", conf), ("iou", iou)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        self.model_name = folder.name
        self.spec = folder.spec
        try:
            self.num_mask_coefficients = int(folder.manifest.get("extra", {})["num_mask_coefficients"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFolderError(
                f"{folder.path}: the manifest's 'extra' entry needs num_mask_coefficients for a FastSAM model "
                f"({type(exc).__name__}: {exc})"
            ) from None
        self.session = sessions[self.graph]
        self.conf = float(conf)
        self.iou = float(iou)
        self.clip = clip
        self._state: _ImageState | None = None

    # -- image ----------------------------------------------------------------------------------

    def set_image(self, image: npt.NDArray[np.uint8]) -> None:
        """Run the network and NMS on an RGB uint8 ``(h, w, 3)`` image."""
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"image must be an RGB uint8 array (H, W, 3), got {got}")
        self._state = None
        tensor, geo = preprocess(image, self.spec)
        outputs = self.session.run({"images": tensor})
        missing = {"detections", "protos"} - set(outputs)
        if missing:
            raise ValueError(f"network outputs must include 'detections' and 'protos', got {sorted(outputs)}")
        embedding = FastSamImageEmbedding(
            model=self.model_name,
            original_size=geo.image_size,
            input_size=geo.input_size,
            detections=np.asarray(outputs["detections"], dtype=np.float32),
            protos=np.asarray(outputs["protos"], dtype=np.float32),
        )
        self._state = self._build_state(embedding)

    def get_image_embedding(self) -> FastSamImageEmbedding:
        return self._require_state().embedding

    def set_image_embedding(self, embedding: Any) -> None:
        """Restore a state from :meth:`get_image_embedding` (same model); NMS runs again.

        Refuses an embedding of another model, sizes beyond fastseg's limits, an ``input_size`` that
        is not the letterbox of ``original_size``, arrays of the wrong shape or with NaN or infinite
        values.
        """
        if not isinstance(embedding, FastSamImageEmbedding):
            raise ValueError(f"expected a FastSamImageEmbedding, got {type(embedding).__name__}")
        if embedding.model != self.model_name:
            raise ValueError(f"embedding was made by {embedding.model!r}, this engine runs {self.model_name!r}")
        self._state = None
        h, w = (int(v) for v in embedding.original_size)
        check_image_size(h, w, "the embedding's original_size")
        expected = letterbox_geometry((h, w), self.spec.input_size, self.spec.stride).input_size
        if tuple(embedding.input_size) != expected:
            raise ValueError(
                f"embedding has input_size {tuple(embedding.input_size)}, but an image of {h}x{w} is letterboxed "
                f"to {expected}"
            )
        self._state = self._build_state(embedding)

    def _build_state(self, embedding: FastSamImageEmbedding) -> _ImageState:
        det, protos = embedding.detections, embedding.protos
        for name, array in (("detections", det), ("protos", protos)):
            if not isinstance(array, np.ndarray) or array.dtype != np.float32:
                got = f"{array.dtype} array" if isinstance(array, np.ndarray) else type(array).__name__
                raise ValueError(f"{name} must be a float32 array, got {got}")
        in_h, in_w = embedding.input_size
        m = self.num_mask_coefficients
        if det.ndim != 3 or det.shape[0] != 1 or det.shape[1] != 5 + m:
            raise ValueError(f"detections must be (1, {5 + m}, A) (5 + {m} mask coefficients), got {det.shape}")
        if protos.shape != (1, m, in_h // 4, in_w // 4):
            raise ValueError(
                f"protos must be (1, {m}, {in_h // 4}, {in_w // 4}) for a {in_h}x{in_w} input, got {protos.shape}"
            )
        for name, array in (("detections", det), ("protos", protos)):
            bad = array.size - int(np.count_nonzero(np.isfinite(array)))
            if bad:
                raise ValueError(
                    f"{name} holds {bad} NaN or infinite value{'s' if bad > 1 else ''}; the network's outputs are "
                    "finite (a damaged embedding file, or a model whose weights are damaged)"
                )
        found = non_max_suppression(det, self.conf, self.iou, MAX_DET)
        image_size = embedding.original_size
        boxes = scale_boxes(found.boxes, embedding.input_size, image_size)
        masks = MaskAssembler(protos[0], found.coefficients, boxes, image_size)
        return _ImageState(
            embedding=embedding,
            masks=masks,
            scores=found.scores,
            boxes=snap_boxes_to_image(boxes, image_size),
        )

    def _require_state(self) -> _ImageState:
        if self._state is None:
            raise RuntimeError("no image is set: call set_image(image) before predict")
        return self._state

    # -- prompts --------------------------------------------------------------------------------

    def predict(self, prompts: Prompts, multimask: bool = True) -> SegmentationResult:
        """The detections ultralytics' FastSAM selects for validated prompts (``multimask`` is ignored).

        Returns:
            Masks ``(N, h, w)`` bool, scores = detection confidences, boxes after FastSAM's border
            rule; in detection order (by confidence), each selected detection once, as ultralytics;
            ``prompt_index`` is all zeros and ``low_res_logits`` is None.
        """
        state = self._require_state()
        return self._result(state, self._select(state, prompts))

    def everything_params(self, options: Mapping[str, Any]) -> FastSamEverythingParams:
        from fastseg.amg import check_parameter_names

        check_parameter_names(options)
        sam_only = sorted(set(options) - {"output_mode"})
        if sam_only:
            raise ValueError(
                f"FastSAM everything mode takes only output_mode (conf and iou are Predictor options); "
                f"got SAM generator parameter(s) {sam_only}"
            )
        return FastSamEverythingParams(**options)

    def everything(
        self,
        params: FastSamEverythingParams,
        image: npt.NDArray[np.uint8] | None = None,
        progress: ProgressCallback | None = None,
    ) -> MaskRecords:
        """Every detection with a non-empty mask, as ultralytics' FastSAM returns them without prompts.

        Records in NMS order (by confidence): ``segmentation`` (per ``params.output_mode``), ``area``
        (mask pixels), ``bbox`` (the detection box, XYWH float, after FastSAM's border rule, as
        ``results.boxes``), ``score`` (confidence). ``image`` and ``progress`` are not needed.
        """
        state = self._require_state()
        result = self._result(state, np.flatnonzero(state.masks.nonempty()))
        records = []
        for i in range(len(result)):
            mask = result.masks[i]
            x0, y0, x1, y1 = (float(v) for v in result.boxes[i])
            records.append(
                {
                    "segmentation": encode_segmentation(mask, params.output_mode),
                    "area": int(np.count_nonzero(mask)),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(result.scores[i]),
                }
            )
        return MaskRecords(records, image_size=state.masks.image_size, score_key="score")

    def _select(self, state: _ImageState, prompts: Prompts) -> npt.NDArray[np.intp]:
        masks = state.masks
        h, w = masks.image_size
        n = len(masks)
        if n == 0:
            return np.zeros(0, dtype=np.intp)
        chosen = np.zeros(n, dtype=bool)
        if prompts.boxes is not None:
            winners = self._select_boxes(masks, box_pixels(prompts.boxes, (h, w)))
            if (winners < 0).any():  # no detection has a mask: ultralytics returns nothing
                return np.zeros(0, dtype=np.intp)
            chosen[winners] = True
        if prompts.points is not None and prompts.labels is not None:
            xy = point_pixels(prompts.points, (h, w))
            lab = prompts.labels.astype(np.int32)
            if lab.sum() == 0:
                # All negative: every non-empty detection without a negative point.
                candidates = np.flatnonzero(masks.nonempty())
            else:
                # A detection containing a positive point has a pixel, so it is non-empty.
                candidates = np.arange(n)
            values = masks.values_at_points(candidates, xy)
            chosen[candidates[select_by_points(values, lab)]] = True
        if prompts.texts is not None:
            scored, image_features = self._crop_features(state, prompts.image)
            if len(scored):  # the size filter can leave nothing to score, as in ultralytics
                clip = cast("ClipModel", self.clip)
                similarity = clip.text_features(prompts.texts) @ image_features.T  # (texts, crops)
                chosen[scored[np.argmax(similarity, axis=1)]] = True  # the best crop per text
        return np.flatnonzero(chosen)

    def text_similarity(
        self, texts: tuple[str, ...], image: npt.NDArray[np.uint8]
    ) -> tuple[npt.NDArray[np.intp], FloatArray]:
        """The detections text prompts score and their ``(len(texts), K)`` similarities (tests, tools)."""
        state = self._require_state()
        scored, image_features = self._crop_features(state, image)
        clip = cast("ClipModel", self.clip)
        return scored, clip.text_features(texts) @ image_features.T

    def _crop_features(
        self, state: _ImageState, image: npt.NDArray[np.uint8] | None
    ) -> tuple[npt.NDArray[np.intp], FloatArray]:
        """ultralytics' crops for text prompts, encoded once per image: each detection whose mask
        has more than :data:`TEXT_MIN_MASK_PIXELS` pixels, its box (truncated to whole pixels) cut
        from the image with the pixels outside the mask zeroed, through CLIP's preprocessing."""
        if state.crop_features is not None:
            return state.crop_features
        clip, image = check_text_inputs(self.clip, image)
        from PIL import Image

        from fastseg.clip import preprocess

        masks = state.masks
        if image.shape[:2] != masks.image_size:
            raise ValueError(f"image is {image.shape[:2]}, the embedding's image {masks.image_size}")
        scored, crops = [], []
        for i in range(len(masks)):
            region_mask = masks.box_mask(i)
            if int(np.count_nonzero(region_mask)) <= TEXT_MIN_MASK_PIXELS:
                continue
            r0, r1, c0, c1 = masks.region(i)
            x1, y1, x2, y2 = (int(v) for v in state.boxes[i].tolist())  # torch: int() of the float
            pixels = image[y1:y2, x1:x2]
            keep = np.zeros(pixels.shape[:2], dtype=bool)
            top, bottom = max(y1, r0), min(y1 + pixels.shape[0], r1)
            left, right = max(x1, c0), min(x1 + pixels.shape[1], c1)
            if top < bottom and left < right:
                keep[top - y1 : bottom - y1, left - x1 : right - x1] = region_mask[
                    top - r0 : bottom - r0, left - c0 : right - c0
                ]
            scored.append(i)
            # pixels * keep[:, :, None], ~3x faster: a contiguous AND with the mask spread over the channels
            spread = np.repeat(keep.view(np.uint8) * np.uint8(255), pixels.shape[2], axis=1).reshape(pixels.shape)
            crops.append(preprocess(Image.fromarray(pixels & spread)))
        features = clip.image_features(np.stack(crops)) if crops else np.zeros((0, 0), dtype=np.float32)
        state.crop_features = (np.asarray(scored, dtype=np.intp), features)
        return state.crop_features

    @staticmethod
    def _select_boxes(masks: MaskAssembler, prompt_boxes: npt.NDArray[np.int32]) -> npt.NDArray[np.intp]:
        """Per prompt box, ultralytics' argmax detection (an index into all detections; -1 if none).

        ultralytics takes, among the detections with a non-empty mask, the first one with the highest
        ``inside / (box_area + mask_area - inside)`` (float32). A detection whose crop does not overlap
        the box has ``inside = 0`` and so IoU 0 (its union is > 0 when its mask is non-empty), so
        masks are evaluated only for detections overlapping some box, once for all boxes; if no
        detection has IoU > 0 for a box, the answer is the first non-empty detection, found by
        deciding emptiness in order until one is.
        """
        n = len(masks)
        x1, y1, x2, y2 = (prompt_boxes[:, k].astype(np.int64) for k in range(4))
        overlap = (
            (masks.col_start[None] < x2[:, None])
            & (masks.col_stop[None] > x1[:, None])
            & (masks.row_start[None] < y2[:, None])
            & (masks.row_stop[None] > y1[:, None])
        )  # (B, N)
        inside = np.zeros(overlap.shape, dtype=np.int64)
        full = np.zeros(n, dtype=np.int64)
        evaluated = cast("npt.NDArray[np.bool_]", overlap.any(axis=0))  # (N,)
        for i in np.flatnonzero(evaluated).tolist():
            crop = masks.box_mask(i)
            r0, _, c0, _ = masks.region(i)
            full[i] = int(np.count_nonzero(crop))
            if full[i] == 0:
                continue
            for b in np.flatnonzero(overlap[:, i]).tolist():
                rows = slice(max(int(y1[b]) - r0, 0), max(int(y2[b]) - r0, 0))
                cols = slice(max(int(x1[b]) - c0, 0), max(int(x2[b]) - c0, 0))
                inside[b, i] = int(np.count_nonzero(crop[rows, cols]))
        box_area = (y2 - y1) * (x2 - x1)
        winners = np.full(len(prompt_boxes), -1, dtype=np.intp)
        first_nonempty = -1
        for b in range(len(prompt_boxes)):
            candidates = np.flatnonzero(overlap[b] & (full > 0))
            if len(candidates):
                union = box_area[b] + full[candidates] - inside[b, candidates]
                iou = inside[b, candidates].astype(np.float32) / union.astype(np.float32)  # torch: float32
                k = int(np.argmax(iou))  # first maximum, as torch.argmax
                if iou[k] > 0:
                    winners[b] = candidates[k]
                    continue
            if first_nonempty < 0:  # every non-empty detection has IoU 0: the first non-empty one
                for i in range(n):
                    if (full[i] > 0) if evaluated[i] else bool(masks.nonempty(np.array([i]))[0]):
                        first_nonempty = i
                        break
            winners[b] = first_nonempty
        return winners

    def _result(self, state: _ImageState, chosen: npt.NDArray[np.intp]) -> SegmentationResult:
        h, w = state.masks.image_size
        chosen = np.asarray(chosen, dtype=np.intp)
        masks = np.zeros((len(chosen), h, w), dtype=bool)
        for k, i in enumerate(chosen.tolist()):
            state.masks.full_mask(i, out=masks[k])
        return SegmentationResult(
            masks=masks,
            scores=state.scores[chosen].astype(np.float32),
            boxes=state.boxes[chosen].astype(np.float32),
            low_res_logits=None,
            prompt_index=np.zeros(len(chosen), dtype=np.int64),
        )
