"""The stateful predictor: encode an image once, prompt it many times."""

from __future__ import annotations

import itertools
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from fastseg.backends import Backend, Precision, _outside_fastseg, open_session
from fastseg.clip import ClipModel, check_texts
from fastseg.engine import Engine, ImageEmbeddingLike, ProgressCallback, SessionWrapper
from fastseg.fastsam import DEFAULT_CONF, DEFAULT_IOU, FastSamImageEmbedding, check_text_inputs
from fastseg.image import ImageLike, load_image
from fastseg.manifest import GRAPHS_BY_FAMILY, ModelFolder, ModelFolderError, load_model_folder
from fastseg.prompts import check_flag, validate_prompts
from fastseg.records import MaskRecords
from fastseg.registry import SEGMENTATION_FAMILIES
from fastseg.results import SegmentationResult
from fastseg.sam import ImageEmbedding
from fastseg.sam2 import Sam2ImageEmbedding
from fastseg.store import EmbeddingStore, StoreWarning, image_key, model_key

_handle_ids = itertools.count(1)


@dataclass(frozen=True, eq=False)
class ImageHandle:
    """One encoded image: what :meth:`Predictor.set_image`, :meth:`Predictor.encode` and
    :meth:`Predictor.set_image_embedding` return, and ``predict(..., image=handle)`` /
    ``everything(image=handle)`` take, to answer on that image whatever another thread set meanwhile.

    Made by the Predictor, not by hand. Immutable (frozen; ``pixels`` is a read-only copy) and
    light: it holds the embedding, not the decoder's per-image state, which the Predictor rebuilds
    from the embedding when it needs to. A handle works on every Predictor of the same model;
    handles are equal only to themselves.

    Attributes:
        embedding: the image's embedding, as :meth:`Predictor.get_image_embedding` returns it
            (:class:`fastseg.sam.ImageEmbedding` or :class:`fastseg.fastsam.FastSamImageEmbedding`;
            :func:`fastseg.save_embedding` stores it).
        pixels: the RGB uint8 ``(H, W, 3)`` image (read-only), or None for a handle made from an
            embedding (SAM-family everything mode with ``crop_n_layers > 0`` needs the pixels).
        id: unique in the process.
        original_size: ``(H, W)`` of the image (the embedding's).
        model: registry name of the model that encoded it (the embedding's).
    """

    embedding: ImageEmbeddingLike
    pixels: npt.NDArray[np.uint8] | None = None
    id: int = field(init=False, default_factory=lambda: next(_handle_ids))

    @property
    def original_size(self) -> tuple[int, int]:
        h, w = self.embedding.original_size
        return int(h), int(w)

    @property
    def model(self) -> str:
        return self.embedding.model

    def __repr__(self) -> str:
        return f"ImageHandle(original_size={self.original_size}, model={self.model!r}, id={self.id})"


class Predictor:
    """Segment images with an exported model folder.

    ``set_image`` runs the image encoder (SAM, MobileSAM) or the whole network and NMS (FastSAM) once;
    ``predict`` then answers prompts on that image. Prompts are explicit arguments, never state.

    Thread safety: one lock serialises the calls (their graph runs take turns), and every encoded
    image has an immutable :class:`ImageHandle`: ``set_image`` and ``encode`` return one, and
    ``predict(..., image=handle)`` / ``everything(image=handle)`` answer on that image whatever other
    threads set meanwhile. So one Predictor may serve several images to several threads at once
    (e.g. a labeling server: one handle per image). Without ``image=``, a call answers on the image
    set last, by any thread: one image at a time, which is right for one thread and wrong for threads
    that each set their own image. The Predictor keeps the decoder-side state of the
    ``cached_images`` most recently used handles; prompting another handle rebuilds it from the
    handle's embedding (SAM family: one ``decoder_image`` run; FastSAM: NMS and the masks'
    set-up), never the encoder. For parallel throughput use several Predictors (calls on one
    take turns); a handle works on every Predictor of the same model.

    Args:
        model_dir: a folder written by ``fastseg export``.
        backend: ``"openvino"`` (default) or ``"onnxruntime"``.
        precision: ``"f32"`` (default; identical masks to PyTorch) or ``"bf16"`` (faster on CPUs with
            AVX-512 BF16 / AMX; OpenVINO only). On a CPU without native bf16, OpenVINO runs f32 when
            asked for bf16: the Predictor then warns once (``UserWarning``) and :attr:`precision` says
            ``"f32"``. ``"int8"``: the image graph (SAM and SAM 2.1 encoder, FastSAM network) quantized at export
            (``fastseg export NAME --int8``), everything else at bf16 where the CPU has it, else f32;
            faster where the CPU has VNNI or AMX (elsewhere it runs, with a ``UserWarning``). Its
            masks are measured against f32's in the README's precision section.
        num_threads: inference threads (default: all cores).
        cache_dir: OpenVINO compiled-model cache; ``None`` = ``~/.cache/fastseg/compiled``, ``False`` = off.
        conf, iou: FastSAM detection confidence and NMS IoU thresholds (ultralytics' defaults,
            :data:`fastseg.fastsam.DEFAULT_CONF` / ``DEFAULT_IOU``).
        session_wrapper: ``wrap(graph_name, session) -> session``, applied to every backend session
            the Predictor opens (to time or trace graph runs; the benchmark times each graph with it).
        cached_images: how many images' decoder-side state to keep ready (default 4; each is a few
            MB for the SAM family, up to tens of MB for FastSAM). States of images whose handles are
            all gone are reused at once, so one-image-at-a-time use keeps one.
        store: an :class:`~fastseg.store.EmbeddingStore` (or its folder, opened or created as one):
            :meth:`set_image`, :meth:`encode` and :meth:`everything` given an image look its
            embedding up there first (keyed by the pixels and by this model, backend and precision);
            a hit skips the encoder, a miss encodes and stores. Embeddings passed in are not stored.
            :attr:`store_hits` and :attr:`store_misses` count the lookups. A store entry that
            cannot be used, or an embedding that cannot be stored, costs a
            :class:`~fastseg.store.StoreWarning` and an encoder run, never an error.
        clip: FastSAM only: a CLIP model folder (``fastseg export clip_vit_b32``) or an opened
            :class:`~fastseg.clip.ClipModel`, for ``predict(texts=...)``; a folder is opened on this
            Predictor's backend and precision.

    Example:
        >>> p = Predictor("models/mobile_sam")
        >>> photo = p.set_image("photo.jpg")
        >>> result = p.predict(points=[[500, 375]], labels=[1], image=photo)
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
        cached_images: int = 4,
        store: EmbeddingStore | str | Path | None = None,
        clip: ClipModel | str | Path | None = None,
    ) -> None:
        if isinstance(cached_images, bool) or not isinstance(cached_images, int) or cached_images < 1:
            raise ValueError(f"cached_images must be a positive int, got {cached_images!r}")
        self.folder: ModelFolder = load_model_folder(model_dir)
        if self.folder.family not in SEGMENTATION_FAMILIES:
            raise ModelFolderError(
                f"{self.folder.path} holds {self.folder.name}, FastSAM's text model, not a segmentation model: "
                f"give it with a FastSAM model, as clip={str(self.folder.path)!r} (Python) or --clip (command line)"
            )
        self.backend = backend
        #: The precision asked for; :attr:`precision` is the one the backend runs at.
        self.requested_precision = precision
        cache = cache_dir if cache_dir is None or cache_dir is False else Path(cache_dir)
        sessions = {}
        for graph in GRAPHS_BY_FAMILY[self.folder.family]:
            session = open_session(self.folder, graph, backend, precision, num_threads=num_threads, cache_dir=cache)
            sessions[graph] = session if session_wrapper is None else session_wrapper(graph, session)
        #: Each graph's precision (read back from OpenVINO; ``"int8"`` for a quantized graph).
        self.graph_precisions = {g: str(getattr(s, "precision", precision)) for g, s in sessions.items()}
        ran = sorted(set(self.graph_precisions.values()))
        #: The inference precision the backend compiled the graphs at (read back from OpenVINO); with
        #: ``"int8"``, ``"int8"`` when the image graph is quantized (:attr:`graph_precisions` has the rest).
        self.precision = ran[0] if len(ran) == 1 else "/".join(ran)
        if precision == "int8":
            self.precision = "int8"
            _warn_int8()
        elif self.precision != precision:
            from fastseg.backends import openvino_cpu_capabilities

            warnings.warn(
                f"precision={precision!r} was asked for, but OpenVINO runs {self.precision} on this CPU "
                f"(its capabilities: {', '.join(openvino_cpu_capabilities())}; bf16 needs AVX-512 BF16 or AMX)",
                UserWarning,
                stacklevel=2,
            )
        #: How many images' decoder-side state the Predictor keeps ready for their handles.
        self.cached_images = cached_images
        #: The embedding store images are looked up in (None: no store).
        self.store: EmbeddingStore | None = (
            store if store is None or isinstance(store, EmbeddingStore) else EmbeddingStore(store)
        )
        #: This model's key in the store (:func:`fastseg.store.model_key`), or None without a store.
        self.store_model_key: str | None = (
            None if self.store is None else model_key(self.folder, backend, self.precision)
        )
        #: Images found in the store (the encoder did not run), and images encoded with a store set.
        self.store_hits = 0
        self.store_misses = 0
        #: The CLIP model text prompts use (FastSAM only), or None.
        self.clip: ClipModel | None = None
        if clip is not None:
            if self.folder.family != "fastsam":
                raise ValueError(
                    f"clip= is for FastSAM models (text prompts); {self.folder.name} is a {self.folder.family!r} model"
                )
            self.clip = (
                clip
                if isinstance(clip, ClipModel)
                else ClipModel(clip, backend, precision, num_threads=num_threads, cache_dir=cache)
            )
        self._new_engine: Callable[[], Engine]
        if self.folder.family == "sam":
            from fastseg.sam import SamEngine

            self._new_engine = lambda: SamEngine(self.folder, sessions)
        elif self.folder.family == "sam2":
            from fastseg.sam2 import Sam2Engine

            self._new_engine = lambda: Sam2Engine(self.folder, sessions)
        else:
            from fastseg.fastsam import FastSamEngine

            self._new_engine = lambda: FastSamEngine(self.folder, sessions, conf=conf, iou=iou, clip=self.clip)
        # Each engine holds one image's state; they share the sessions, and the lock serialises them.
        self._lock = threading.Lock()
        self._template: Engine = self._new_engine()  # for what needs no image (parameters, sizes)
        self._spare: Engine | None = self._template  # an engine whose state nobody needs
        #: handle id -> (the handle, weakly; the engine holding its state), least recently used first
        self._ready: OrderedDict[int, tuple[weakref.ReferenceType[ImageHandle], Engine]] = OrderedDict()
        self._current: ImageHandle | None = None

    @property
    def model_name(self) -> str:
        return self.folder.name

    @property
    def image_size(self) -> tuple[int, int] | None:
        """``(H, W)`` of the image set, or None."""
        current = self._current
        return None if current is None else current.original_size

    # images -------------------------------------------------------------------------------------

    def set_image(self, image: ImageLike) -> ImageHandle:
        """Encode ``image`` (path, PIL image, or RGB uint8 array; see :func:`fastseg.image.load_image`)
        and make it the image set, which calls without ``image=`` answer on.

        Returns:
            The image's :class:`ImageHandle`: pass it as ``image=`` to answer on this image whatever
            another thread sets meanwhile. If loading or encoding fails, no image is set.
        """
        array = self._load_or_clear(image)
        trip = _StoreTrip(self, array)
        with self._lock:
            handle = self._set_current(trip.fill, array)
        trip.finish()
        return handle

    def encode(self, image: ImageLike | ImageEmbeddingLike) -> ImageHandle:
        """A handle for ``image`` (as :meth:`set_image` loads it, or an embedding of this model, e.g.
        from :func:`fastseg.load_embedding`), without changing the image set."""
        if isinstance(image, (ImageEmbedding, FastSamImageEmbedding, Sam2ImageEmbedding)):
            embedding = image
            with self._lock:
                return self._new_handle(lambda engine: engine.set_image_embedding(embedding), None)
        array = self._load(image)
        trip = _StoreTrip(self, array)
        with self._lock:
            handle = self._new_handle(trip.fill, array)
        trip.finish()
        return handle

    def get_image_embedding(self) -> ImageEmbeddingLike:
        """What ``set_image`` computed, to store and restore later with :meth:`set_image_embedding`
        (a handle's is ``handle.embedding``)."""
        return self._require_image().embedding

    def set_image_embedding(self, embedding: ImageEmbeddingLike) -> ImageHandle:
        """Restore an image state taken with :meth:`get_image_embedding` (same model), without
        encoding, as the image set; returns its handle (without pixels). If it is refused, no image
        is set."""
        with self._lock:
            return self._set_current(lambda engine: engine.set_image_embedding(embedding), None)

    # prompts ------------------------------------------------------------------------------------

    def predict(
        self,
        points: npt.ArrayLike | None = None,
        labels: npt.ArrayLike | None = None,
        boxes: npt.ArrayLike | None = None,
        mask_input: npt.ArrayLike | None = None,
        multimask: bool = True,
        image: ImageHandle | None = None,
        texts: Sequence[str] | None = None,
    ) -> SegmentationResult:
        """Masks for the prompts on the image of ``image`` (a handle), or on the image set.

        Args:
            points: ``(N, 2)`` XY in image pixels.
            labels: ``(N,)`` 1 foreground / 0 background (default: all foreground).
            boxes: ``(4,)`` or ``(B, 4)`` XYXY; several boxes give one prompt set each, run in one batch
                (``result.by_prompt()`` splits them). Points, if given too, apply to every box.
            mask_input: a previous result's ``low_res_logits`` (SAM family; FastSAM refuses it).
            multimask: SAM family: 3 masks per prompt set if True, else 1 (as ``SamPredictor.predict``).
                ``True`` or ``False`` (a numpy bool too).
            image: an :class:`ImageHandle` of this model (from :meth:`set_image`, :meth:`encode` or
                :meth:`set_image_embedding`); None answers on the image set last (one image at a time).
            texts: FastSAM with ``clip=``: a list of strings; for each, the detection whose crop CLIP
                finds most similar, as ultralytics' ``FastSAMPredictor.prompt(texts=...)`` (added to
                what points and boxes select). The crops are encoded once per image, each text once
                per Predictor's CLIP model (cached).

        Returns:
            A :class:`~fastseg.results.SegmentationResult` at the original resolution.
        """
        multimask = check_flag("multimask", multimask)
        handle = self._require_image() if image is None else self._check_handle(image)
        if texts is not None:
            texts = check_texts(texts)  # what came first, then whether this model takes texts
            self._check_text_prompts(handle)
        prompts = validate_prompts(
            handle.original_size, points, labels, boxes, mask_input, self._template.low_res_size, texts=texts
        )
        if prompts.texts is not None:
            prompts = replace(prompts, image=handle.pixels)
        with self._lock:
            result = self._engine_for(handle).predict(prompts, multimask)
        result.info.update(self._info())
        if prompts.texts is not None and self.clip is not None:
            result.info["clip"] = f"{self.clip.name} ({self.clip.folder.weights})"
        return result

    def everything(
        self,
        image: ImageLike | ImageHandle | None = None,
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
        :class:`fastseg.amg.SamEverythingParams`. SAM 2.1: ``SAM2AutomaticMaskGenerator``'s, whose
        defaults differ (``pred_iou_thresh=0.8``) and which adds ``mask_threshold=0.0``,
        ``use_m2m=False`` and ``multimask_output=True`` (:class:`fastseg.amg.Sam2EverythingParams`).
        FastSAM: every detection with its mask
        (ultralytics without prompts, at this Predictor's ``conf`` / ``iou``); only ``output_mode``.

        Args:
            image: segment this image (it becomes the image set, as :meth:`set_image`); an
                :class:`ImageHandle` segments its image (the image set stays); None uses the image
                already set (its encoding is reused).
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
        options = self._template.everything_params(params)  # bad parameters fail before any work
        handle: ImageHandle | None = None
        array: npt.NDArray[np.uint8] | None = None
        if isinstance(image, ImageHandle):
            handle = self._check_handle(image)
        elif image is not None:
            array = self._load_or_clear(image)
        if progress is True:
            from fastseg.amg import StderrProgress

            callback: ProgressCallback | None = StderrProgress()
        else:
            callback = progress or None
        trip = None if array is None else _StoreTrip(self, array)
        try:
            with self._lock:
                if trip is not None:
                    handle = self._set_current(trip.fill, array)
                elif handle is None:
                    handle = self._require_image()
                engine = self._engine_for(handle)
                try:
                    records = engine.everything(options, handle.pixels, callback)
                except BaseException:
                    self._forget(handle)  # SAM crops re-set the engine's image: do not trust its state
                    raise
        finally:
            if trip is not None:
                trip.finish()  # the encoding is good even if the everything run failed
        records.info.update(self._info())
        return records

    # handles and engines --------------------------------------------------------------------------

    def _load(self, image: ImageLike) -> npt.NDArray[np.uint8]:
        """``load_image``, as a read-only array that the caller's array does not share."""
        array = load_image(image)
        if isinstance(image, np.ndarray) and np.may_share_memory(array, image):
            array = array.copy()
        array.flags.writeable = False
        return array

    def _load_or_clear(self, image: ImageLike) -> npt.NDArray[np.uint8]:
        """:meth:`_load` for an image that is to become the image set: if it fails, none is set."""
        try:
            return self._load(image)
        except BaseException:
            with self._lock:
                self._current = None
            raise

    def _check_text_prompts(self, handle: ImageHandle) -> None:
        if self.folder.family != "fastsam":
            raise ValueError(
                f"text prompts are for FastSAM models; {self.folder.name} is a {self.folder.family!r} model "
                "(prompt it with points and boxes)"
            )
        check_text_inputs(self.clip, handle.pixels)

    def _require_image(self) -> ImageHandle:
        current = self._current
        if current is None:
            raise RuntimeError("no image is set: call set_image(image) (or set_image_embedding) before predict")
        return current

    def _check_handle(self, image: object) -> ImageHandle:
        if not isinstance(image, ImageHandle):
            raise TypeError(
                f"image must be an ImageHandle (from set_image, encode or set_image_embedding), got "
                f"{type(image).__name__}; to segment an array or a file, use handle = predictor.encode(image)"
            )
        if image.model != self.model_name:
            raise ValueError(f"this image handle was made by {image.model!r}; this predictor runs {self.model_name!r}")
        return image

    def _set_current(self, fill: Callable[[Engine], None], pixels: npt.NDArray[np.uint8] | None) -> ImageHandle:
        """:meth:`_new_handle`, made the image set; the caller holds the lock. The image set is
        cleared first, so a handle nobody holds any more frees its state, and a failure leaves none."""
        self._current = None
        self._current = self._new_handle(fill, pixels)
        return self._current

    def _new_handle(self, fill: Callable[[Engine], None], pixels: npt.NDArray[np.uint8] | None) -> ImageHandle:
        """A handle for the image state ``fill(engine)`` gives an engine; the caller holds the lock."""
        engine = self._filled_engine(fill)
        handle = ImageHandle(engine.get_image_embedding(), pixels)
        self._ready[handle.id] = (weakref.ref(handle), engine)
        return handle

    def _engine_for(self, handle: ImageHandle) -> Engine:
        """The engine holding ``handle``'s image state, restored from its embedding if it was not
        kept; the caller holds the lock."""
        entry = self._ready.get(handle.id)
        if entry is not None and entry[0]() is handle:
            self._ready.move_to_end(handle.id)
            return entry[1]
        engine = self._filled_engine(lambda e: e.set_image_embedding(handle.embedding))
        self._ready[handle.id] = (weakref.ref(handle), engine)
        return engine

    def _filled_engine(self, fill: Callable[[Engine], None]) -> Engine:
        """An engine given an image state by ``fill``; if that fails, the engine is spare again."""
        engine = self._take_engine()
        try:
            fill(engine)
        except BaseException:
            self._spare = engine  # engines clear their image first: nothing of it remains
            raise
        return engine

    def _take_engine(self) -> Engine:
        """An engine for a new image state; the caller holds the lock.

        One whose image no handle names any more (the others of those are dropped, with their
        memory), else a new one while fewer than ``cached_images`` are kept, else the least recently
        used one. Engines are reused rather than made anew: SAM's keeps its upscaling plans.
        """
        for key in [k for k, (ref, _) in self._ready.items() if ref() is None]:
            self._spare = self._ready.pop(key)[1]
        if self._spare is not None:
            engine, self._spare = self._spare, None
            return engine
        if len(self._ready) < self.cached_images:
            return self._new_engine()
        return self._ready.popitem(last=False)[1][1]

    def _forget(self, handle: ImageHandle) -> None:
        entry = self._ready.pop(handle.id, None)
        if entry is not None:
            self._spare = entry[1]

    @property
    def _engine(self) -> Engine:
        """The engine holding the image set (for tests that time an engine's steps)."""
        with self._lock:
            return self._template if self._current is None else self._engine_for(self._current)

    def _info(self) -> dict[str, str]:
        return {
            "model": self.folder.name,
            "weights": self.folder.weights,
            "backend": self.backend,
            "precision": self.precision,
        }


class _StoreTrip:
    """One image's way through the Predictor's store. Made without the Predictor's lock, it hashes
    the pixels and reads the entry; :meth:`fill` gives an engine the image's state under the lock
    (the stored embedding, else the encoder's); :meth:`finish` stores what was encoded, without the
    lock. Without a store, :meth:`fill` encodes and :meth:`finish` does nothing."""

    def __init__(self, predictor: Predictor, array: npt.NDArray[np.uint8]) -> None:
        self.predictor = predictor
        self.array = array
        self.store, self.model_key = predictor.store, predictor.store_model_key
        self.image_key: str | None = None
        self.stored: ImageEmbeddingLike | None = None
        self.encoded: ImageEmbeddingLike | None = None
        if self.store is not None and self.model_key is not None:
            self.image_key = image_key(array)
            size = (int(array.shape[0]), int(array.shape[1]))
            self.stored = self.store.get(self.image_key, self.model_key, model=predictor.model_name, original_size=size)

    def fill(self, engine: Engine) -> None:
        """Give ``engine`` the image's state; the caller holds the Predictor's lock."""
        if self.image_key is None:
            engine.set_image(self.array)
            return
        if self.stored is not None:
            try:
                engine.set_image_embedding(self.stored)
            except ValueError as exc:  # e.g. NaNs: a damaged entry that records the right keys
                warnings.warn(
                    f"the stored embedding of this image is refused ({exc}); it is encoded again and replaced",
                    StoreWarning,
                    stacklevel=_outside_fastseg(),
                )
            else:
                self.predictor.store_hits += 1
                return
        engine.set_image(self.array)
        self.predictor.store_misses += 1
        self.encoded = engine.get_image_embedding()

    def finish(self) -> None:
        """Store the embedding :meth:`fill` encoded, if any; a failure to store only warns."""
        encoded, self.encoded = self.encoded, None
        if self.store is None or self.model_key is None or self.image_key is None or encoded is None:
            return
        p = self.predictor
        about = {
            "backend": p.backend,
            "precision": p.precision,
            "weights": p.folder.weights,
            "folder": str(p.folder.path),
        }
        try:
            self.store.put(self.image_key, self.model_key, encoded, about)
        except OSError as exc:
            warnings.warn(
                f"could not store the embedding in {self.store.root} ({exc}); it is kept in memory only",
                StoreWarning,
                stacklevel=_outside_fastseg(),
            )


def _warn_int8() -> None:
    """Warn when INT8 is not expected to be faster here: a CPU without VNNI or AMX (INT8 then runs, but
    as slowly as f32 or slower), or one whose instruction sets cannot be read."""
    from fastseg.backends import INT8_CPU_FLAGS, cpu_int8_flags, openvino_cpu_capabilities

    flags = cpu_int8_flags()
    if flags:
        return
    have = "could not be read" if flags is None else "has none of them"
    warnings.warn(
        f"precision='int8' runs, but is not expected to be faster than f32 here: INT8 speed needs VNNI or AMX "
        f"({', '.join(INT8_CPU_FLAGS)}) and this CPU {have} (OpenVINO capabilities: "
        f"{', '.join(openvino_cpu_capabilities())})",
        UserWarning,
        stacklevel=_outside_fastseg(),
    )
