"""The stateful predictor: encode an image once, prompt it many times."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from fastseg.backends import Backend, Precision, open_session
from fastseg.engine import Engine, ImageEmbeddingLike, ProgressCallback, SessionWrapper
from fastseg.fastsam import DEFAULT_CONF, DEFAULT_IOU
from fastseg.image import ImageLike, load_image
from fastseg.manifest import GRAPHS_BY_FAMILY, ModelFolder, load_model_folder
from fastseg.prompts import validate_prompts
from fastseg.records import MaskRecords
from fastseg.results import SegmentationResult


class Predictor:
    """Segment images with an exported model folder.

    ``set_image`` runs the image encoder (SAM, MobileSAM) or the whole network and NMS (FastSAM) once;
    ``predict`` then answers prompts on that image. Prompts are explicit arguments, never state.

    Thread safety: calls are serialised by an internal lock, so one Predictor may be shared by
    threads and each call sees a consistent image; for parallel throughput use one Predictor per
    thread.

    Args:
        model_dir: a folder written by ``fastseg export``.
        backend: ``"openvino"`` (default) or ``"onnxruntime"``.
        precision: ``"f32"`` (default; identical masks to PyTorch) or ``"bf16"`` (faster on CPUs with
            AVX-512 BF16 / AMX; OpenVINO only). On a CPU without native bf16, OpenVINO runs f32 when
            asked for bf16: the Predictor then warns once (``UserWarning``) and :attr:`precision` says
            ``"f32"``.
        num_threads: inference threads (default: all cores).
        cache_dir: OpenVINO compiled-model cache; ``None`` = ``~/.cache/fastseg/compiled``, ``False`` = off.
        conf, iou: FastSAM detection confidence and NMS IoU thresholds (ultralytics' defaults,
            :data:`fastseg.fastsam.DEFAULT_CONF` / ``DEFAULT_IOU``).
        session_wrapper: ``wrap(graph_name, session) -> session``, applied to every backend session
            the Predictor opens (to time or trace graph runs; the benchmark times each graph with it).

    Example:
        >>> p = Predictor("models/mobile_sam")
        >>> p.set_image("photo.jpg")
        >>> result = p.predict(points=[[500, 375]], labels=[1])
        >>> result.masks.shape  # (3, H, W)
    """

    def __init__(
        self,
        model_dir: str | Path,
        backend: Backend = "openvino",
        precision: Precision = "f32",
        num_threads: int | None = None,
        cache_dir: str | Path | None | Literal[False] = None,
        conf: float = DEFAULT_CONF,
        iou: float = DEFAULT_IOU,
        session_wrapper: SessionWrapper | None = None,
    ) -> None:
        self.folder: ModelFolder = load_model_folder(model_dir)
        self.backend = backend
        #: The precision asked for; :attr:`precision` is the one the backend runs at.
        self.requested_precision = precision
        cache = cache_dir if cache_dir is None or cache_dir is False else Path(cache_dir)
        sessions = {}
        for graph in GRAPHS_BY_FAMILY[self.folder.family]:
            session = open_session(self.folder, graph, backend, precision, num_threads=num_threads, cache_dir=cache)
            sessions[graph] = session if session_wrapper is None else session_wrapper(graph, session)
        ran = sorted({str(getattr(s, "precision", precision)) for s in sessions.values()})
        #: The inference precision the backend compiled the graphs at (read back from OpenVINO).
        self.precision = ran[0] if len(ran) == 1 else "/".join(ran)
        if self.precision != precision:
            from fastseg.backends import openvino_cpu_capabilities

            warnings.warn(
                f"precision={precision!r} was asked for, but OpenVINO runs {self.precision} on this CPU "
                f"(its capabilities: {', '.join(openvino_cpu_capabilities())}; bf16 needs AVX-512 BF16 or AMX)",
                UserWarning,
                stacklevel=2,
            )
        self._lock = threading.Lock()
        self._image_size: tuple[int, int] | None = None
        self._pixels: npt.NDArray[np.uint8] | None = None  # the image set (everything mode's crops need it)
        self._engine: Engine
        if self.folder.family == "sam":
            from fastseg.sam import SamEngine

            self._engine = SamEngine(self.folder, sessions)
        else:
            from fastseg.fastsam import FastSamEngine

            self._engine = FastSamEngine(self.folder, sessions, conf=conf, iou=iou)

    @property
    def model_name(self) -> str:
        return self.folder.name

    @property
    def image_size(self) -> tuple[int, int] | None:
        """``(H, W)`` of the image set, or None."""
        return self._image_size

    def set_image(self, image: ImageLike) -> None:
        """Encode ``image`` (path, PIL image, or RGB uint8 array; see :func:`fastseg.image.load_image`)."""
        array = load_image(image)
        with self._lock:
            self._set_image_locked(array)

    def _set_image_locked(self, array: npt.NDArray[np.uint8]) -> None:
        """Encode ``array`` (RGB uint8) as the image set; the caller holds ``self._lock``."""
        self._image_size = self._pixels = None
        self._engine.set_image(array)
        self._image_size = (int(array.shape[0]), int(array.shape[1]))
        self._pixels = array

    def _require_image(self) -> tuple[int, int]:
        if self._image_size is None:
            raise RuntimeError("no image is set: call set_image(image) (or set_image_embedding) before predict")
        return self._image_size

    def predict(
        self,
        points: npt.ArrayLike | None = None,
        labels: npt.ArrayLike | None = None,
        boxes: npt.ArrayLike | None = None,
        mask_input: npt.ArrayLike | None = None,
        multimask: bool = True,
    ) -> SegmentationResult:
        """Masks for the prompts on the image set.

        Args:
            points: ``(N, 2)`` XY in image pixels.
            labels: ``(N,)`` 1 foreground / 0 background (default: all foreground).
            boxes: ``(4,)`` or ``(B, 4)`` XYXY; several boxes give one prompt set each, run in one batch
                (``result.by_prompt()`` splits them). Points, if given too, apply to every box.
            mask_input: a previous result's ``low_res_logits`` (SAM family; FastSAM refuses it).
            multimask: SAM family: 3 masks per prompt set if True, else 1 (as ``SamPredictor.predict``).

        Returns:
            A :class:`~fastseg.results.SegmentationResult` at the original resolution.
        """
        with self._lock:
            size = self._require_image()
            prompts = validate_prompts(size, points, labels, boxes, mask_input, self._engine.low_res_size)
            result = self._engine.predict(prompts, bool(multimask))
        result.info.update(self._info())
        return result

    def get_image_embedding(self) -> ImageEmbeddingLike:
        """What ``set_image`` computed, to store and restore later with :meth:`set_image_embedding`."""
        with self._lock:
            self._require_image()
            return self._engine.get_image_embedding()

    def set_image_embedding(self, embedding: ImageEmbeddingLike) -> None:
        """Restore an image state taken with :meth:`get_image_embedding` (same model), without encoding."""
        with self._lock:
            self._image_size = self._pixels = None
            self._engine.set_image_embedding(embedding)
            self._image_size = tuple(int(v) for v in embedding.original_size)  # type: ignore[assignment]

    def everything(
        self,
        image: ImageLike | None = None,
        *,
        progress: bool | ProgressCallback = False,
        **params: object,
    ) -> MaskRecords:
        """Segment the whole image without prompts ("everything" / automatic mask generation).

        SAM family: ``SamAutomaticMaskGenerator(...).generate(image)`` with the same parameters and
        defaults (``points_per_side=32, points_per_batch=64, pred_iou_thresh=0.88,
        stability_score_thresh=0.95, stability_score_offset=1.0, box_nms_thresh=0.7, crop_n_layers=0,
        crop_nms_thresh=0.7, crop_overlap_ratio=512/1500, crop_n_points_downscale_factor=1,
        point_grids=None, min_mask_region_area=0, output_mode="binary_mask"``); see
        :class:`fastseg.amg.SamEverythingParams`. FastSAM: every detection with its mask
        (ultralytics without prompts, at this Predictor's ``conf`` / ``iou``); only ``output_mode``.

        Args:
            image: segment this image (it becomes the image set, as :meth:`set_image`); None uses
                the image already set (its encoding is reused).
            progress: True prints progress to stderr; or a callable
                ``(points_done, points_total, crops_done, crops_total, masks_kept)`` (SAM family).

        Returns:
            :class:`~fastseg.records.MaskRecords`: one record (dict) per mask, as the original
            generator's: ``segmentation`` (``(H, W)`` bool, or an RLE dict per ``output_mode``),
            ``area``, ``bbox`` (XYWH), and for the SAM family ``predicted_iou``, ``point_coords``,
            ``stability_score``, ``crop_box``; for FastSAM ``score``. The list also offers the
            :class:`SegmentationResult` view (``.scores``, ``.boxes``, ``.result()``), an overlay and
            JSON output.
        """
        options = self._engine.everything_params(params)  # bad parameters fail before any work
        array = None if image is None else load_image(image)
        if progress is True:
            from fastseg.amg import StderrProgress

            callback: ProgressCallback | None = StderrProgress()
        else:
            callback = progress or None
        with self._lock:
            if array is not None:
                self._set_image_locked(array)
            self._require_image()
            records = self._engine.everything(options, self._pixels, callback)
        records.info.update(self._info())
        return records

    def _info(self) -> dict[str, str]:
        return {
            "model": self.folder.name,
            "weights": self.folder.weights,
            "backend": self.backend,
            "precision": self.precision,
        }
