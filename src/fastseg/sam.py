"""SAM and MobileSAM at run time: pre- and post-processing in numpy, the exported graphs behind sessions.

Conventions (as ``segment_anything``):

- images are RGB uint8 ``(H, W, 3)``; sizes are ``(H, W)``;
- the *original* frame is the user's image in pixels; the *input* frame is the image resized so its
  longest side is ``spec.input_size`` (1024), ``input_size = (h, w)`` before padding;
- points are ``(N, 2)`` XY, boxes ``(B, 4)`` XYXY, both float32;
- low-resolution mask logits are ``(M, 256, 256)`` and cover the padded 1024 x 1024 input.

Every function here reproduces the corresponding step of ``segment_anything`` (``ResizeLongestSide``,
``Sam.preprocess``, ``PromptEncoder``'s point/box layout, ``Sam.postprocess_masks``); the tests in
``tests/test_sam_processing.py`` compare them with the originals. This module never imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from fastseg.image import check_image_size
from fastseg.manifest import GRAPHS_BY_FAMILY, ModelFolder, ModelFolderError
from fastseg.ops import bilinear_taps, masks_to_boxes
from fastseg.registry import Family, ModelSpec
from fastseg.results import SegmentationResult

if TYPE_CHECKING:
    from fastseg.amg import SamEverythingParams
    from fastseg.backends import Session
    from fastseg.engine import ProgressCallback
    from fastseg.prompts import Prompts
    from fastseg.records import MaskRecords

#: Point labels as the decoder graph takes them (``PromptEncoder`` semantics).
LABEL_PADDING, LABEL_BACKGROUND, LABEL_FOREGROUND, LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT = -1, 0, 1, 2, 3

DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")
DECODER_OUTPUTS = ("low_res_masks", "iou_predictions")
#: ``decoder_image`` (once per image) -> ``decoder_points`` (per prompt without a mask input).
DECODER_IMAGE_OUTPUTS = ("image_keys", "token_keys", "token_values", "image_queries")
POINT_DECODER_INPUTS = (*DECODER_IMAGE_OUTPUTS, "point_coords", "point_labels")

#: At most this many prompt sets per decoder run, in ``predict`` (many boxes) and in everything mode
#: (:mod:`fastseg.amg`). Batching never changes results; past 16-32 prompt sets the time per set is
#: flat while the decoder's memory keeps growing with the batch (~46 MB per prompt set;
#: docs/PERFORMANCE.md), so memory stays bounded whatever the number of prompts.
MAX_DECODER_BATCH = 32


# --------------------------------------------------------------------------------------------------
# Image and prompt transforms


def preprocess_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """``(h, w)`` of an ``(height, width)`` image resized so its longest side is ``long_side``.

    ``ResizeLongestSide.get_preprocess_shape``: scale ``long_side / max(height, width)``, each side
    rounded half up (``int(x + 0.5)``), in Python floats as the original.

    Raises ``ValueError`` for an aspect ratio beyond ``2 * long_side : 1`` (2048:1 for SAM), whose
    short side would round to 0 pixels (``segment_anything`` fails there too, inside PIL).
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be at least 1x1, got {height}x{width}")
    scale = long_side * 1.0 / max(height, width)
    new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)
    if new_h < 1 or new_w < 1:
        side = "high" if new_h < 1 else "wide"
        raise ValueError(
            f"SAM resizes the longest side to {long_side}: a {height}x{width} image would be 0 pixels {side}; "
            f"aspect ratios up to {2 * long_side}:1 are supported"
        )
    return new_h, new_w


def resize_longest_side(image: npt.NDArray[np.uint8], long_side: int) -> npt.NDArray[np.uint8]:
    """Resize an RGB uint8 ``(H, W, 3)`` image so its longest side is ``long_side``.

    Bit-for-bit ``ResizeLongestSide.apply_image``: torchvision's ``resize(to_pil_image(image), size)``
    amounts to ``PIL.Image.fromarray(image).resize((w, h), Image.BILINEAR)`` (Pillow's bilinear filter,
    which antialiases when shrinking), and returns the image untouched when the size already matches.
    """
    from PIL import Image

    h, w = preprocess_shape(image.shape[0], image.shape[1], long_side)
    if (h, w) == image.shape[:2]:
        return image
    pil = Image.fromarray(np.ascontiguousarray(image))
    return np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR))


def preprocess(image: npt.NDArray[np.uint8], spec: ModelSpec) -> tuple[npt.NDArray[np.float32], tuple[int, int]]:
    """The encoder input for an RGB uint8 ``(H, W, 3)`` image.

    Resize the longest side to ``spec.input_size``, normalise with ``spec.pixel_mean`` / ``pixel_std``
    in float32 (as ``Sam.preprocess`` does with its float32 buffers), zero-pad bottom and right.

    Returns:
        ``(1, 3, S, S)`` float32 with ``S = spec.input_size``, and the resized size ``(h, w)``.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
    size = spec.input_size
    resized = resize_longest_side(image, size)
    h, w = resized.shape[:2]
    mean = np.asarray(spec.pixel_mean, dtype=np.float32)
    std = np.asarray(spec.pixel_std, dtype=np.float32)
    out = np.empty((1, 3, size, size), dtype=np.float32)
    # channel by channel straight into the padded input: no HWC -> CHW float copy (~3x faster)
    for c in range(3):
        plane = out[0, c]
        np.subtract(resized[:, :, c], mean[c], out=plane[:h, :w], dtype=np.float32)
        np.divide(plane[:h, :w], std[c], out=plane[:h, :w])
        plane[h:] = 0.0
        plane[:h, w:] = 0.0
    return out, (h, w)


def transform_coords(
    coords: npt.NDArray[np.floating], original_size: tuple[int, int], long_side: int
) -> npt.NDArray[np.float32]:
    """Map XY coordinates ``(..., 2)`` from the original frame to the input frame.

    ``ResizeLongestSide.apply_coords``: ``x * new_w / old_w``, ``y * new_h / old_h`` in float64, then
    float32 as the original hands them to the model.
    """
    old_h, old_w = original_size
    new_h, new_w = preprocess_shape(old_h, old_w, long_side)
    out = np.array(coords, dtype=np.float64)  # a copy
    if out.shape[-1:] != (2,):
        raise ValueError(f"coordinates must have shape (..., 2), got {out.shape}")
    out[..., 0] = out[..., 0] * (new_w / old_w)
    out[..., 1] = out[..., 1] * (new_h / old_h)
    return out.astype(np.float32)


def transform_boxes(
    boxes: npt.NDArray[np.floating], original_size: tuple[int, int], long_side: int
) -> npt.NDArray[np.float32]:
    """Map XYXY boxes ``(B, 4)`` from the original frame to the input frame (``apply_boxes``)."""
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (B, 4), got {boxes.shape}")
    return transform_coords(boxes.reshape(-1, 2, 2), original_size, long_side).reshape(-1, 4)


def build_prompt_arrays(
    points: npt.NDArray[np.floating] | None,
    labels: npt.NDArray[np.integer] | None,
    boxes: npt.NDArray[np.floating] | None,
    original_size: tuple[int, int],
    long_side: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The decoder's ``point_coords`` ``(B, N, 2)`` and ``point_labels`` ``(B, N)``, in the input frame.

    Laid out as ``PromptEncoder`` orders its sparse embeddings: the points, then a padding point
    ``(0, 0)`` with label -1 **only when there is no box** (``_embed_points(pad=boxes is None)``),
    then the box's two corners with labels 2 and 3. The inputs are trusted (validated by
    :func:`fastseg.prompts.validate_prompts`, or built by a caller such as :mod:`fastseg.amg`).

    Args:
        points: ``(N, 2)`` XY in original pixels, shared by every box; or ``(B, N, 2)``, one row
            per prompt set (everything mode's grid: one point per set); or None.
        labels: ``(N,)`` or ``(B, N)`` of 1 (foreground) / 0 (background), with points.
        boxes: ``(B, 4)`` XYXY in original pixels, or None.

    ``B`` is the number of boxes, or of point rows, or 1.
    """
    parts_xy: list[npt.NDArray[np.float32]] = []
    parts_label: list[npt.NDArray[np.float32]] = []
    if boxes is not None:
        n_sets = int(np.shape(boxes)[0])
    elif points is not None and np.ndim(points) == 3:
        n_sets = int(np.shape(points)[0])
    else:
        n_sets = 1
    if points is not None:
        xy = transform_coords(points, original_size, long_side)
        parts_xy.append(np.broadcast_to(xy, (n_sets, *xy.shape[-2:])))
        lab = np.ones(xy.shape[:-1], np.float32) if labels is None else np.asarray(labels, dtype=np.float32)
        parts_label.append(np.broadcast_to(lab, (n_sets, lab.shape[-1])))
    if boxes is None:
        parts_xy.append(np.zeros((n_sets, 1, 2), np.float32))
        parts_label.append(np.full((n_sets, 1), LABEL_PADDING, np.float32))
    else:
        corners = transform_boxes(boxes, original_size, long_side).reshape(-1, 2, 2)
        parts_xy.append(corners)
        parts_label.append(
            np.broadcast_to(np.array([LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT], np.float32), (n_sets, 2))
        )
    coords = np.ascontiguousarray(np.concatenate(parts_xy, axis=1), dtype=np.float32)
    labels_out = np.ascontiguousarray(np.concatenate(parts_label, axis=1), dtype=np.float32)
    return coords, labels_out


# --------------------------------------------------------------------------------------------------
# Mask upscaling


def interpolation_matrix(n_in: int, n_out: int) -> npt.NDArray[np.float64]:
    """``(n_out, n_in)`` matrix of :func:`fastseg.ops.bilinear_taps` in float64 (bilinear,
    ``align_corners=False``, one axis)."""
    taps = bilinear_taps(n_in, n_out, dtype=np.float64)
    rows = np.arange(n_out)
    matrix = np.zeros((n_out, n_in), dtype=np.float64)
    matrix[rows, taps.i0] = taps.w0
    matrix[rows, taps.i1] += taps.w1  # i1 == i0 at the last sample: the weights add up to 1
    return matrix


def upscale_matrix(low_res: int, padded: int, input_len: int, original_len: int) -> npt.NDArray[np.float64]:
    """``(original_len, low_res)``: ``Sam.postprocess_masks`` along one axis, as one linear map.

    Resample ``low_res -> padded``, keep the first ``input_len`` samples (drop the padding), resample
    ``input_len -> original_len``. Both resamplings are linear, so their composition is one matrix
    with at most three non-zeros per row (adjacent), exact in real arithmetic.
    """
    first = interpolation_matrix(low_res, padded)[:input_len]  # (input_len, low_res)
    taps = bilinear_taps(input_len, original_len, dtype=np.float64)
    return taps.w0[:, None] * first[taps.i0] + taps.w1[:, None] * first[taps.i1]


def _banded(matrix: npt.NDArray[np.float64], block: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Cut a banded ``(n_out, n_in)`` matrix into row blocks of ``block`` rows.

    Returns ``index`` ``(J, K)``: the ``K`` consecutive source samples block ``j`` reads, and
    ``weights`` ``(J, block, K)`` float32 (rows past ``n_out`` are zero), so that
    ``matrix[j*block:(j+1)*block] @ x == weights[j] @ x[index[j]]``.
    """
    n_out, n_in = matrix.shape
    n_blocks = -(-n_out // block)
    nz = matrix != 0
    first = np.where(nz.any(axis=1), nz.argmax(axis=1), n_in - 1)
    last = np.where(nz.any(axis=1), n_in - 1 - nz[:, ::-1].argmax(axis=1), 0)
    pad = n_blocks * block - n_out
    lo = np.pad(first, (0, pad), constant_values=n_in - 1).reshape(n_blocks, block).min(axis=1)
    hi = np.pad(last, (0, pad), constant_values=0).reshape(n_blocks, block).max(axis=1)
    k = int((hi - lo).max()) + 1
    lo = np.minimum(lo, n_in - k)
    index = lo[:, None] + np.arange(k)
    padded = np.zeros((n_blocks * block, n_in), dtype=np.float64)
    padded[:n_out] = matrix
    weights = np.take_along_axis(padded.reshape(n_blocks, block, n_in), index[:, None, :], axis=2)
    return index, weights.astype(np.float32)


class UpscalePlan:
    """``Sam.postprocess_masks`` for one ``(input_size, original_size)``, as two banded matrix products.

    The original upsamples the 256 x 256 logits to 1024 x 1024 (bilinear), crops the padding to
    ``input_size`` and resamples to ``original_size`` (bilinear). Per axis that is one linear map
    (:func:`upscale_matrix`), so the mask is ``Wy @ logits @ Wx.T``. Both products are done in row
    blocks that read only the handful of source rows they need: the column pass makes a small
    ``(rows used, W)`` array, the row pass writes the output in cache-sized chunks and thresholds
    each chunk while it is hot, so the full-resolution float image is never stored.

    Upscaling runs here rather than in a graph because OpenVINO's Interpolate was measured more than
    10x slower than this plan, and would need a session of its own held at f32 whatever the decoder's
    precision (docs/PERFORMANCE.md). The plan agrees with ``postprocess_masks`` + ``> 0`` on >= 99.9999%
    of pixels: only logits within float32 rounding of the threshold can differ.
    """

    def __init__(
        self,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
        low_res: int = 256,
        padded: int = 1024,
        row_block: int = 8,
        col_block: int = 64,
    ) -> None:
        in_h, in_w = (int(v) for v in input_size)
        out_h, out_w = (int(v) for v in original_size)
        if not (1 <= in_h <= padded and 1 <= in_w <= padded):
            raise ValueError(f"input_size must lie within {padded}x{padded}, got {input_size}")
        if out_h < 1 or out_w < 1:
            raise ValueError(f"original_size must be at least 1x1, got {original_size}")
        self.input_size = (in_h, in_w)
        self.original_size = (out_h, out_w)
        self.low_res = low_res
        wy = upscale_matrix(low_res, padded, in_h, out_h)  # (H, 256)
        wx = upscale_matrix(low_res, padded, in_w, out_w)  # (W, 256)
        # Only the low-res rows / columns that reach the crop matter.
        self._rows_used = int(np.flatnonzero((wy != 0).any(axis=0)).max()) + 1
        self._cols_used = int(np.flatnonzero((wx != 0).any(axis=0)).max()) + 1
        self.row_block = row_block
        self._row_index, self._row_weights = _banded(wy[:, : self._rows_used], row_block)
        col_index, col_weights = _banded(wx[:, : self._cols_used], col_block)
        self._col_index = col_index
        self._col_weights_t = np.ascontiguousarray(col_weights.transpose(0, 2, 1))  # (Jc, K, col_block)
        # Row-pass chunk: a few hundred KB of float32 output, so it stays in cache until thresholded.
        self._chunk_blocks = max(1, (1 << 19) // (4 * out_w * row_block))

    def _column_pass(self, logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """``logits[:, :rows_used] @ Wx.T`` -> ``(M, rows_used, W)``."""
        m = logits.shape[0]
        rows = logits[:, : self._rows_used]
        gathered = rows[:, :, self._col_index].transpose(0, 2, 1, 3)  # (M, Jc, rows, K)
        out = np.matmul(gathered, self._col_weights_t)  # (M, Jc, rows, col_block)
        out = out.transpose(0, 2, 1, 3).reshape(m, self._rows_used, -1)
        columns: npt.NDArray[np.float32] = out[:, :, : self.original_size[1]]
        return columns

    def _run(self, logits: npt.NDArray[np.float32], threshold: float | None) -> npt.NDArray[Any]:
        logits = np.asarray(logits, dtype=np.float32)
        if logits.ndim != 3 or logits.shape[1:] != (self.low_res, self.low_res):
            raise ValueError(f"logits must have shape (M, {self.low_res}, {self.low_res}), got {logits.shape}")
        m = logits.shape[0]
        h, w = self.original_size
        out: npt.NDArray[Any] = np.empty((m, h, w), dtype=np.float32 if threshold is None else np.bool_)
        if m == 0:
            return out
        columns = self._column_pass(logits)
        block = self.row_block
        n_blocks = self._row_index.shape[0]
        step = self._chunk_blocks
        buf = np.empty((step, block, w), dtype=np.float32)
        for i in range(m):
            src = columns[i]
            for j in range(0, n_blocks, step):
                n = min(step, n_blocks - j)
                np.matmul(self._row_weights[j : j + n], src[self._row_index[j : j + n]], out=buf[:n])
                r0, r1 = j * block, min((j + n) * block, h)
                chunk = buf[:n].reshape(n * block, w)[: r1 - r0]
                if threshold is None:
                    out[i, r0:r1] = chunk
                else:
                    np.greater(chunk, threshold, out=out[i, r0:r1])
        return out

    def logits(self, low_res_logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Upscaled logits ``(M, H, W)`` float32: ``postprocess_masks`` without the threshold."""
        return self._run(low_res_logits, None)

    def masks(self, low_res_logits: npt.NDArray[np.float32], threshold: float = 0.0) -> npt.NDArray[np.bool_]:
        """Binary masks ``(M, H, W)``: ``postprocess_masks(logits) > threshold``."""
        return self._run(low_res_logits, float(threshold))


def upscale_masks(
    low_res_logits: npt.NDArray[np.float32],
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    threshold: float = 0.0,
) -> npt.NDArray[np.bool_]:
    """``(M, 256, 256)`` logits -> ``(M, H, W)`` bool masks of the original image.

    One-off convenience around :class:`UpscalePlan`; :class:`SamEngine` keeps the plan per image.
    """
    return UpscalePlan(input_size, original_size).masks(low_res_logits, threshold)


# --------------------------------------------------------------------------------------------------
# The engine


@dataclass(frozen=True)
class ImageEmbedding:
    """What :meth:`SamEngine.set_image` computes, to keep and restore without encoding again.

    Attributes:
        embedding: ``(1, 256, 64, 64)`` float32, the image encoder's output.
        original_size: ``(H, W)`` of the image.
        input_size: ``(h, w)`` of the resized image inside the padded encoder input.
        model: the registry name of the model that made it (embeddings of different models do not mix).
    """

    embedding: npt.NDArray[np.float32]
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    model: str


class SamEngine:
    """SAM / MobileSAM behind four sessions, one per graph of the model folder (an :class:`~fastseg.engine.Engine`).

    ``encoder`` and ``decoder_image`` run once per image (the latter computes the image-only start of
    the mask decoder); each prompt without a mask input runs ``decoder_points``, a prompt with a mask
    input the general ``decoder``. Both decoders compute the same function (the export checks each
    against PyTorch). The sizes of the embedding and of the low-resolution masks come from the folder.

    Args:
        folder: a :class:`fastseg.manifest.ModelFolder` of the SAM family.
        sessions: ``{"encoder", "decoder", "decoder_image", "decoder_points"}`` -> Session (see
            :mod:`fastseg.backends`).
    """

    GRAPHS = GRAPHS_BY_FAMILY["sam"]
    family: Family = "sam"

    def __init__(self, folder: ModelFolder, sessions: Mapping[str, Session]) -> None:
        self.spec: ModelSpec = folder.spec
        self.model_name = folder.name
        if self.spec.family != "sam" or self.spec.resize != "longest_side":
            raise ModelFolderError(
                f"SamEngine needs a SAM-family model resized by its longest side, got {self.spec.name!r} "
                f"(family {self.spec.family!r}, resize {self.spec.resize!r})"
            )
        missing = [g for g in self.GRAPHS if g not in sessions]
        if missing:
            raise ValueError(f"SamEngine needs sessions for graphs {list(self.GRAPHS)}; missing {missing}")
        self._encoder = sessions["encoder"]
        self._decoder = sessions["decoder"]
        self._decoder_image = sessions["decoder_image"]
        self._decoder_points = sessions["decoder_points"]
        _require_names(self._encoder.input_names, ("image",), "encoder inputs")
        _require_names(self._encoder.output_names, ("image_embeddings",), "encoder outputs")
        _require_names(self._decoder.input_names, DECODER_INPUTS, "decoder inputs")
        _require_names(self._decoder.output_names, DECODER_OUTPUTS, "decoder outputs")
        _require_names(self._decoder_image.input_names, ("image_embeddings",), "decoder_image inputs")
        _require_names(self._decoder_image.output_names, DECODER_IMAGE_OUTPUTS, "decoder_image outputs")
        _require_names(self._decoder_points.input_names, POINT_DECODER_INPUTS, "decoder_points inputs")
        _require_names(self._decoder_points.output_names, DECODER_OUTPUTS, "decoder_points outputs")
        extra = folder.manifest.get("extra", {})
        try:
            self.low_res_size: int = int(extra["low_res_size"])
            self.num_mask_outputs = int(extra["num_mask_outputs"])
            self.embedding_shape = (1, *(int(v) for v in extra["embedding_shape"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFolderError(
                f"{folder.path}: the manifest's 'extra' entry needs low_res_size, num_mask_outputs and "
                f"embedding_shape for a SAM model ({type(exc).__name__}: {exc})"
            ) from None
        self._embedding: ImageEmbedding | None = None
        self._image_side: dict[str, npt.NDArray[np.float32]] = {}
        self._plans: dict[tuple[tuple[int, int], tuple[int, int]], UpscalePlan] = {}

    # image state ----------------------------------------------------------------------------------

    def set_image(self, image: npt.NDArray[np.uint8]) -> None:
        """Encode an RGB uint8 ``(H, W, 3)`` image; the next :meth:`predict` calls prompt it."""
        self._embedding = None
        tensor, input_size = preprocess(image, self.spec)
        out = self._encoder.run({"image": tensor})["image_embeddings"]
        self.set_image_embedding(
            ImageEmbedding(
                embedding=np.ascontiguousarray(out, dtype=np.float32),
                original_size=(int(image.shape[0]), int(image.shape[1])),
                input_size=input_size,
                model=self.model_name,
            )
        )

    def get_image_embedding(self) -> ImageEmbedding:
        if self._embedding is None:
            raise RuntimeError("no image is set: call set_image(image) or set_image_embedding(...) first")
        return self._embedding

    def set_image_embedding(self, embedding: Any) -> None:
        """Restore the state of an image encoded earlier by the same model (runs ``decoder_image`` only)."""
        self._check_embedding(embedding)
        self._embedding = None
        out = self._decoder_image.run({"image_embeddings": embedding.embedding})
        self._image_side = {name: np.asarray(out[name], dtype=np.float32) for name in DECODER_IMAGE_OUTPUTS}
        self._embedding = embedding
        self._plan(embedding)  # the upscaling plan depends only on the sizes: build it now, not per click

    def _check_embedding(self, embedding: Any) -> None:
        """Refuse an embedding of another model, of the wrong shape or dtype, with NaN or infinite
        values, or whose sizes are beyond fastseg's limits or do not agree with each other."""
        if not isinstance(embedding, ImageEmbedding):
            raise ValueError(f"expected a fastseg.sam.ImageEmbedding, got {type(embedding).__name__}")
        if embedding.model != self.model_name:
            raise ValueError(
                f"this image embedding was made by {embedding.model!r}; this predictor runs {self.model_name!r}"
            )
        array = embedding.embedding
        if not isinstance(array, np.ndarray) or array.shape != self.embedding_shape or array.dtype != np.float32:
            got = f"{getattr(array, 'dtype', type(array).__name__)} {getattr(array, 'shape', '')}"
            raise ValueError(f"image embedding must be float32 {self.embedding_shape}, got {got}")
        bad = array.size - int(np.count_nonzero(np.isfinite(array)))
        if bad:
            raise ValueError(
                f"image embedding holds {bad} NaN or infinite value{'s' if bad > 1 else ''}; an encoder output is "
                "finite (a damaged file, or a model whose weights are damaged)"
            )
        h, w = (int(v) for v in embedding.original_size)
        check_image_size(h, w, "the embedding's original_size")
        expected = preprocess_shape(h, w, self.spec.input_size)
        if tuple(embedding.input_size) != expected:
            raise ValueError(
                f"image embedding has input_size {tuple(embedding.input_size)}, but an image of {h}x{w} "
                f"is resized to {expected}"
            )

    def _plan(self, embedding: ImageEmbedding) -> UpscalePlan:
        # tuple(): hashable even if a hand-made embedding holds lists; _check_embedding made both pairs.
        key = cast(
            "tuple[tuple[int, int], tuple[int, int]]", (tuple(embedding.input_size), tuple(embedding.original_size))
        )
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= 4:
                self._plans.pop(next(iter(self._plans)))
            plan = UpscalePlan(key[0], key[1], low_res=self.low_res_size, padded=self.spec.input_size)
            self._plans[key] = plan
        return plan

    # prompting ------------------------------------------------------------------------------------

    def predict(self, prompts: Prompts, multimask: bool) -> SegmentationResult:
        """Masks for validated prompts (:func:`fastseg.prompts.validate_prompts`).

        Several boxes give one prompt set per box (points, if any, are shared by every box), like
        ``SamPredictor.predict_torch`` with a batch of boxes; the decoder runs them
        :data:`MAX_DECODER_BATCH` at a time, so its memory is bounded whatever the number of boxes.

        Returns:
            ``multimask``: 3 masks per prompt set (the decoder's masks 1..3), else 1 (mask 0), in
            prompt order; ``prompt_index`` tells which prompt set each mask answers.
        """
        emb = self.get_image_embedding()
        coords, point_labels = build_prompt_arrays(
            prompts.points, prompts.labels, prompts.boxes, emb.original_size, self.spec.input_size
        )
        n_sets = coords.shape[0]
        size = self.low_res_size
        runs = []
        for start in range(0, n_sets, MAX_DECODER_BATCH):
            part = slice(start, start + MAX_DECODER_BATCH)
            if prompts.mask_input is None:
                runs.append(self._run_points(coords[part], point_labels[part]))
                continue
            mask_input = prompts.mask_input if len(prompts.mask_input) == 1 else prompts.mask_input[part]
            feeds = {
                "image_embeddings": emb.embedding,
                "point_coords": coords[part],
                "point_labels": point_labels[part],
                "mask_input": np.ascontiguousarray(mask_input[:, None]),
                "has_mask_input": np.ones(1, dtype=np.float32),
            }
            runs.append(self._checked(self._decoder.run(feeds), len(feeds["point_coords"]), "decoder"))
        if len(runs) == 1:
            low_res, iou = runs[0]
        else:
            low_res, iou = np.concatenate([r[0] for r in runs]), np.concatenate([r[1] for r in runs])
        del runs
        chosen = slice(1, None) if multimask else slice(0, 1)
        low_res = low_res[:, chosen]
        per_set = low_res.shape[1]
        logits = np.ascontiguousarray(low_res.reshape(n_sets * per_set, size, size), dtype=np.float32)
        scores = np.ascontiguousarray(iou[:, chosen].reshape(-1), dtype=np.float32)
        masks = self._plan(emb).masks(logits, self.spec.mask_threshold)
        return SegmentationResult(
            masks=masks,
            scores=scores,
            boxes=masks_to_boxes(masks),
            low_res_logits=logits,
            prompt_index=np.repeat(np.arange(n_sets, dtype=np.int64), per_set),
        )

    def decode(
        self, point_coords: npt.NDArray[np.float32], point_labels: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """One raw decoder run on the image set, without mask input and without upscaling.

        For callers that batch many prompt sets and upscale only some masks (:mod:`fastseg.amg`).

        Args:
            point_coords: ``(B, N, 2)`` float32 in the input frame, from :func:`build_prompt_arrays`.
            point_labels: ``(B, N)`` float32.

        Returns:
            ``low_res_masks`` ``(B, K, S, S)`` logits and ``iou_predictions`` ``(B, K)`` (``K`` masks
            per prompt set, ``S`` the low-resolution size).
        """
        self.get_image_embedding()
        return self._run_points(point_coords, point_labels)

    def _run_points(
        self, coords: npt.NDArray[np.float32], labels: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        feeds = {**self._image_side, "point_coords": coords, "point_labels": labels}
        return self._checked(self._decoder_points.run(feeds), coords.shape[0], "decoder_points")

    def _checked(
        self, out: Mapping[str, npt.NDArray[Any]], n_sets: int, graph: str
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        low_res, iou = out["low_res_masks"], out["iou_predictions"]
        size, k = self.low_res_size, self.num_mask_outputs
        if low_res.shape != (n_sets, k, size, size) or iou.shape != (n_sets, k):
            raise RuntimeError(
                f"{graph} returned low_res_masks {low_res.shape} and iou_predictions {iou.shape}; expected "
                f"({n_sets}, {k}, {size}, {size}) and ({n_sets}, {k})"
            )
        return np.asarray(low_res, dtype=np.float32), np.asarray(iou, dtype=np.float32)

    # everything mode ------------------------------------------------------------------------------

    def everything_params(self, options: Mapping[str, Any]) -> SamEverythingParams:
        from fastseg.amg import params_from_options

        return params_from_options(options)

    def everything(
        self,
        params: SamEverythingParams,
        image: npt.NDArray[np.uint8] | None,
        progress: ProgressCallback | None,
    ) -> MaskRecords:
        """``SamAutomaticMaskGenerator(model, **params).generate(image)`` (:func:`fastseg.amg.generate`)."""
        from fastseg.amg import generate

        return generate(self, params, image, progress)


def _require_names(have: Any, needed: tuple[str, ...], what: str) -> None:
    missing = [n for n in needed if n not in tuple(have)]
    if missing:
        raise ValueError(f"{what} must include {list(needed)}; missing {missing} (got {list(have)})")
