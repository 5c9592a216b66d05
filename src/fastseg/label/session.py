"""The labeling server's model side: one Predictor for clicks, a second one encoding ahead.

:class:`LabelSession` holds the folder's images and two :class:`~fastseg.predictor.Predictor`\\ s of
the same model, sharing one :class:`~fastseg.store.EmbeddingStore`:

- the *click* Predictor answers ``predict`` (one decoder run per click; its lock serialises them);
- the *background* Predictor (its own backend sessions and lock) encodes the images the person is
  likely to open next, into the store and into memory, and runs everything mode. It never takes the
  click Predictor's lock while it encodes: a click waits for the background encoder at most for
  the one short step that makes a freshly encoded image ready on the click Predictor (the SAM
  family's ``decoder_image`` run, FastSAM's NMS), never for an encoder run.

An image opened by hand that is not encoded yet (nor being encoded) is encoded on the click
Predictor at once, rather than queued behind the background work. Each image's
:class:`~fastseg.predictor.ImageHandle` is kept for the few most recent images; older ones are
dropped and come back from the store (a read, no encoder run) when opened again.

Masks travel to the page as row-major run lengths (:func:`mask_to_runs`): ``[zeros, ones, zeros,
...]`` over the mask's pixels in reading order, starting with a (possibly empty) run of zeros. The
mask of a click travels as the page draws it (:func:`mask_view`): pooled to about one cell per
screen pixel (:func:`view_size`, :func:`pool_mask`), its run lengths as varints
(:func:`encode_varints`) in base64; the full-resolution masks stay here for an accept.
"""

from __future__ import annotations

import base64
import math
import os
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fastseg.registry import SAM_LIKE_FAMILIES

if TYPE_CHECKING:
    from fastseg.backends import Backend, Precision
    from fastseg.predictor import ImageHandle, Predictor
    from fastseg.records import MaskRecords

__all__ = [
    "ImageEntry",
    "LabelSession",
    "NotFound",
    "Prediction",
    "mask_box",
    "mask_to_runs",
    "runs_to_mask",
]

#: Images encoded ahead of the one opened (the next ones in the folder's order).
DEFAULT_PREFETCH = 2
#: Images whose handles (and the click Predictor's decoder state) are kept in memory.
DEFAULT_KEPT_IMAGES = 6
#: Predictions kept for an accept (their full-size masks): the latest few.
DEFAULT_KEPT_PREDICTIONS = 8
#: Low-res logits kept for ``mask_input: "previous"`` (256 x 256 float32 per candidate).
DEFAULT_KEPT_LOGITS = 64


class NotFound(LookupError):
    """An image index, prediction or instance that does not exist (the server answers 404)."""


# --------------------------------------------------------------------------------------------------
# Masks on the wire


def mask_runs(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    """:func:`mask_to_runs` as an int64 array."""
    h, w = mask.shape
    if mask.size == 0:
        return np.zeros(1, dtype=np.int64)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return np.array([h * w], dtype=np.int64)
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    flat = np.ascontiguousarray(mask[y0:y1]).reshape(-1)
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # where a run starts, after the first
    lead = 1 if flat[0] else 0  # a mask starting with a set pixel starts with an empty run of zeros
    tail = 1 if flat[-1] and y1 < h else 0  # the rows below, after a run of ones
    bounds = np.empty(len(edges) + 2, dtype=np.int64)
    bounds[0], bounds[1:-1], bounds[-1] = 0, edges, flat.size
    runs = np.zeros(lead + len(edges) + 1 + tail, dtype=np.int64)
    runs[lead : lead + len(edges) + 1] = np.diff(bounds)
    runs[0] += y0 * w
    runs[-1] += (h - y1) * w
    return runs


def mask_to_runs(mask: npt.NDArray[np.bool_]) -> list[int]:
    """Row-major run lengths of an ``(H, W)`` bool mask: ``[zeros, ones, zeros, ...]`` over the pixels
    in reading order (row by row), the first run counting the leading zeros (0 if the first pixel is
    set). They sum to ``H * W``; an empty mask is ``[H * W]``.

    Only the rows between the mask's first and last set rows are scanned; the rows above and below
    are added to the first and last runs of zeros.
    """
    runs: list[int] = mask_runs(mask).tolist()
    return runs


def view_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """``(h, w)``: the grid an ``(H, W)`` mask is sent on for a page showing it at ``scale`` (screen
    pixels per image pixel): ``ceil(H * scale)`` x ``ceil(W * scale)``, the image's own size for a
    scale of 1 or more.

    Raises:
        ValueError: a scale that is not a positive finite number.
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < float("inf"):
        raise ValueError(f"scale must be a positive number (screen pixels per image pixel), got {scale!r:.40}")
    h, w = size
    s = min(float(scale), 1.0)
    return max(1, min(h, math.ceil(h * s - 1e-9))), max(1, min(w, math.ceil(w * s - 1e-9)))


def pool_mask(mask: npt.NDArray[np.bool_], grid: tuple[int, int]) -> npt.NDArray[np.bool_]:
    """An ``(H, W)`` bool mask on a coarser ``(h, w)`` grid: cell ``(v, u)`` covers the image rows
    ``floor(v * H / h)`` to ``floor((v + 1) * H / h)`` (excluded) and likewise the columns, and is set
    if any pixel it covers is (so thin parts stay visible). The grid is the mask itself when it is
    the image's size.
    """
    return _pool_cells(mask, grid, (0, grid[0]), (0, grid[1]))


def _pool_cells(
    mask: npt.NDArray[np.bool_], grid: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int]
) -> npt.NDArray[np.bool_]:
    """Cells ``rows[0]:rows[1]`` x ``cols[0]:cols[1]`` of :func:`pool_mask` ``(mask, grid)``."""
    h, w = grid
    big_h, big_w = mask.shape
    if not (1 <= h <= big_h and 1 <= w <= big_w):
        raise ValueError(f"grid must lie within the mask's {big_h}x{big_w}, got {h}x{w}")
    out = mask
    for axis, n, size, (first, last) in ((0, h, big_h, rows), (1, w, big_w, cols)):
        cells = np.arange(first, last + 1, dtype=np.int64) * size // n  # bounds of cells first .. last - 1
        offset = int(cells[0])
        out = out[offset : int(cells[-1])] if axis == 0 else out[:, offset : int(cells[-1])]  # a view
        if n == size:
            continue
        starts, ends = cells[:-1] - offset, cells[1:] - offset  # ends excluded
        # a cell covers `span` rows (or columns) or one fewer: OR the first, second, ... of each
        # (repeating a cell's last one where it has fewer); a few gathers, fast where reduceat is not
        span = int((ends - starts).max())
        pooled = np.take(out, starts, axis=axis)
        for k in range(1, span):
            pooled |= np.take(out, np.minimum(starts + k, ends - 1), axis=axis)
        out = pooled
    return out


def encode_varints(values: npt.NDArray[np.int64]) -> bytes:
    """Non-negative integers as unsigned LEB128 varints: 7 bits a byte, low bits first, the high bit
    set on every byte but a number's last (so numbers below 128 take one byte).

    Raises:
        ValueError: a negative number.
    """
    v = np.asarray(values, dtype=np.int64).reshape(-1)
    if v.size == 0:
        return b""
    if int(v.min()) < 0:
        raise ValueError(f"varints are for non-negative integers, got {int(v.min())}")
    nbytes = np.ones(v.size, dtype=np.int64)
    for bits in range(7, 63, 7):
        over = v >= (1 << bits)
        if not over.any():
            break
        nbytes += over
    starts = np.cumsum(nbytes) - nbytes
    out = np.empty(int(starts[-1] + nbytes[-1]), dtype=np.uint8)
    # byte k of every number that has one: all numbers for k = 0, then only the longer ones
    index, rest, k = np.arange(v.size), v, 0
    while index.size:
        last = nbytes[index] == k + 1
        out[starts[index] + k] = (rest & 0x7F).astype(np.uint8) | np.where(last, 0, 0x80).astype(np.uint8)
        more = ~last
        index, rest, k = index[more], rest[more] >> 7, k + 1
    return out.tobytes()


def decode_varints(data: bytes) -> npt.NDArray[np.int64]:
    """The numbers of :func:`encode_varints` (for tests and clients written in Python).

    Raises:
        ValueError: bytes that end inside a number.
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size and raw[-1] & 0x80:
        raise ValueError("the varint stream ends inside a number (its last byte has the high bit set)")
    ends = np.flatnonzero((raw & 0x80) == 0)
    owner = np.zeros(raw.size, dtype=np.int64)
    owner[ends[:-1] + 1] = 1
    owner = np.cumsum(owner)
    first = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    k = np.arange(raw.size, dtype=np.int64) - first[owner]
    parts = (raw & 0x7F).astype(np.uint64) << (7 * k).astype(np.uint64)
    out = np.zeros(ends.size, dtype=np.uint64)
    np.add.at(out, owner, parts)
    return out.astype(np.int64)


def _pool_box(mask: npt.NDArray[np.bool_], grid: tuple[int, int], box: Sequence[float] | None) -> npt.NDArray[np.bool_]:
    """:func:`pool_mask` of ``mask``, pooling only the cells over ``box`` (:func:`mask_box` of the
    mask, or None to find it); the other cells are empty."""
    if box is None:
        box = mask_box(mask)
    if box is None:
        return np.zeros(grid, dtype=bool)
    (big_h, big_w), (h, w) = mask.shape, grid
    x1, y1, x2, y2 = (int(v) for v in box)
    # the cells over rows y1 .. y2 - 1 (cell v covers floor(v * H / h) .. floor((v + 1) * H / h) - 1)
    v0, v1 = _cell(y1, big_h, h), _cell(y2 - 1, big_h, h) + 1
    u0, u1 = _cell(x1, big_w, w), _cell(x2 - 1, big_w, w) + 1
    pooled = _pool_cells(mask, grid, (v0, v1), (u0, u1))
    if pooled.shape == grid:
        return pooled
    out = np.zeros(grid, dtype=bool)
    out[v0:v1, u0:u1] = pooled
    return out


def _cell(pixel: int, size: int, n: int) -> int:
    """The cell of ``n`` cells over ``size`` pixels that covers ``pixel``: the largest ``v`` with
    ``floor(v * size / n) <= pixel``."""
    v = (pixel * n) // size
    while v + 1 < n and (v + 1) * size // n <= pixel:
        v += 1
    while v > 0 and v * size // n > pixel:
        v -= 1
    return v


def mask_view(mask: npt.NDArray[np.bool_], scale: float, box: Sequence[float] | None = None) -> dict[str, Any]:
    """How a mask is sent to the page for display: ``{"size": [h, w], "image": [H, W], "runs": base64}``,
    the ``(H, W)`` mask pooled to the :func:`view_size` grid (:func:`pool_mask`), its row-major run
    lengths (:func:`mask_to_runs`'s convention) as :func:`encode_varints` varints in base64.

    What the page draws from it is approximate (a cell is set if any pixel under it is); the
    Predictor's full-resolution mask is what is accepted and exported. ``box``: the mask's
    :func:`mask_box`, if known (only the cells over it are pooled).
    """
    grid = view_size(mask.shape, scale)
    runs = mask_runs(_pool_box(mask, grid, box))
    return {
        "size": [grid[0], grid[1]],
        "image": [int(mask.shape[0]), int(mask.shape[1])],
        "runs": base64.b64encode(encode_varints(runs)).decode("ascii"),
    }


def runs_to_mask(runs: Sequence[int], size: tuple[int, int]) -> npt.NDArray[np.bool_]:
    """The ``(H, W)`` bool mask of row-major run lengths (:func:`mask_to_runs`).

    Raises:
        ValueError: runs that are not non-negative integers summing to ``H * W``.
    """
    h, w = size
    counts = np.asarray(runs)
    if counts.ndim != 1 or counts.size == 0 or counts.dtype.kind not in "iu":
        raise ValueError(
            f"rle counts must be a non-empty list of integers, got {np.asarray(runs).dtype} {counts.shape}"
        )
    if (counts < 0).any():
        raise ValueError("rle counts must be non-negative")
    total = int(counts.sum(dtype=np.int64))
    if total != h * w:
        raise ValueError(f"rle counts sum to {total}, but a {h}x{w} mask has {h * w} pixels")
    values = (np.arange(counts.size) % 2).astype(bool)
    mask: npt.NDArray[np.bool_] = np.repeat(values, counts).reshape(h, w)
    return mask


def mask_box(mask: npt.NDArray[np.bool_]) -> list[float] | None:
    """``[x1, y1, x2, y2]`` around a mask's pixels, on pixel edges (``x2`` = last column + 1, so
    ``x2 - x1`` is COCO's box width), or None for an empty mask."""
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


# --------------------------------------------------------------------------------------------------
# The session


@dataclass(frozen=True, eq=False)
class ImageEntry:
    """One encoded image, in memory.

    Attributes:
        index: the image's index in the folder's list.
        handle: its handle from the Predictor that encoded it (or read it from the store).
        click: the same image's handle on the click Predictor, whose decoder state is ready.
        seconds: how long encoding it (or reading it from the store) took.
    """

    index: int
    handle: ImageHandle
    click: ImageHandle
    seconds: float

    @property
    def size(self) -> tuple[int, int]:
        return self.handle.original_size


@dataclass(frozen=True, eq=False)
class Prediction:
    """One answered prompt set, kept so the page can accept one of its candidates.

    Attributes:
        id: the ``prompt_id`` sent to the page.
        index: the image's index.
        masks: ``(N, H, W)`` bool, the candidates (the Predictor's masks; FastSAM: their union).
        scores: ``(N,)``.
        areas: ``(N,)`` int64, the candidates' pixel counts.
        boxes: each candidate's :func:`mask_box` (None for an empty one).
        best: the index of the best-scored candidate, or -1 if there is none.
        prompts: the prompts, JSON-able (stored with an accepted instance).
        mask_input: whether the previous logits were fed back.
        seconds: the Predictor call's time.
    """

    id: str
    index: int
    masks: npt.NDArray[np.bool_]
    scores: npt.NDArray[np.float32]
    areas: npt.NDArray[np.int64]
    boxes: list[list[float] | None]
    best: int
    prompts: dict[str, Any]
    mask_input: bool
    seconds: float


@dataclass
class _Logits:
    index: int
    logits: npt.NDArray[np.float32]  # (N, 256, 256)
    best: int


@dataclass
class _Work:
    """What is pending: futures of images being encoded (by anyone), and the background queue."""

    pending: dict[int, Future[ImageEntry]] = field(default_factory=dict)
    queue: deque[int] = field(default_factory=deque)
    stop: bool = False


class LabelSession:
    """A folder's images and the model that segments them, for the labeling server.

    Args:
        folder: the folder of images (subfolders included; see :func:`fastseg.batch.list_images`).
            Files that resolve outside it (symbolic links pointing out) are left out.
        model: an exported model folder.
        store: the embedding store folder (default ``FOLDER/.fastseg/store``).
        backend, precision: as :class:`~fastseg.predictor.Predictor`'s.
        num_threads: the click Predictor's inference threads (default: all cores).
        background: encode the next images ahead on a second Predictor (default True). Without it,
            images are encoded when opened and everything mode runs on the click Predictor.
        background_threads: the background Predictor's threads (default: half the cores, at least
            one, so clicks keep cores of their own while it encodes).
        cache_dir: OpenVINO's compiled-model cache (as the Predictor's).
        prefetch: how many of the next images to encode ahead when one is opened.
        kept_images: how many images' handles to keep in memory.
        everything_params: everything-mode parameters (``Predictor.everything``'s).
    """

    def __init__(
        self,
        folder: str | Path,
        model: str | Path,
        *,
        store: str | Path | None = None,
        backend: Backend = "openvino",
        precision: Precision = "f32",
        num_threads: int | None = None,
        background: bool = True,
        background_threads: int | None = None,
        cache_dir: str | Path | None = None,
        prefetch: int = DEFAULT_PREFETCH,
        kept_images: int = DEFAULT_KEPT_IMAGES,
        everything_params: Mapping[str, Any] | None = None,
    ) -> None:
        from fastseg.batch import list_images
        from fastseg.predictor import Predictor
        from fastseg.store import EmbeddingStore

        self.folder = Path(folder).resolve()
        listed = list_images(self.folder)
        #: The images (paths relative to the folder, ``/``-separated), in order; indices name them.
        self.files: list[str] = []
        #: Files left out because they resolve outside the folder.
        self.outside: list[str] = []
        for file in listed:
            (self.files if _inside(self.folder, self.folder / file) else self.outside).append(file)
        self._index = {file: index for index, file in enumerate(self.files)}
        self.store = EmbeddingStore(self.folder / ".fastseg" / "store" if store is None else Path(store))
        if prefetch < 0 or kept_images < 1:
            raise ValueError(f"prefetch must be >= 0 and kept_images >= 1, got {prefetch} and {kept_images}")
        self.prefetch = prefetch
        self.kept_images = max(kept_images, prefetch + 2)
        options: dict[str, Any] = {"backend": backend, "precision": precision, "store": self.store}
        if cache_dir is not None:
            options["cache_dir"] = cache_dir
        #: The Predictor that answers clicks.
        self.click: Predictor = Predictor(model, num_threads=num_threads, cached_images=self.kept_images + 1, **options)
        if background_threads is None:
            background_threads = max(1, (os.cpu_count() or 2) // 2)
        #: The Predictor that encodes ahead and runs everything mode (None without ``background``).
        self.background: Predictor | None = (
            Predictor(model, num_threads=background_threads, cached_images=2, **options) if background else None
        )
        self.everything_params = dict(everything_params or {})
        self.click._template.everything_params(self.everything_params)  # bad parameters fail now
        self._lock = threading.Lock()
        self._work = _Work()
        self._wake = threading.Condition(self._lock)
        self._entries: OrderedDict[int, ImageEntry] = OrderedDict()
        self._predictions: OrderedDict[str, Prediction] = OrderedDict()
        self._logits: OrderedDict[str, _Logits] = OrderedDict()
        self._last: dict[int, str] = {}  # image index -> the prompt_id of its last prediction
        self._sizes: dict[int, tuple[int, int] | None] = {}
        #: Errors of background encodings, by image index (shown in the image list).
        self.errors: dict[int, str] = {}
        self._thread: threading.Thread | None = None
        if self.background is not None:
            self._thread = threading.Thread(target=self._encode_ahead, name="fastseg-label-encoder", daemon=True)
            self._thread.start()

    # ---------------------------------------------------------------------------------------------
    # the folder

    @property
    def family(self) -> str:
        return self.click.folder.family

    def model_info(self) -> dict[str, str]:
        f = self.click.folder
        return {
            "name": f.name,
            "family": f.family,
            "weights": f.weights,
            "precision": self.click.precision,
            "backend": self.click.backend,
        }

    def index_of(self, file: str | None) -> int | None:
        """The index of an image file (relative path), or None if it is not one of :attr:`files`."""
        return None if file is None else self._index.get(file)

    def check_index(self, index: object) -> int:
        """``index`` as a valid image index; :class:`NotFound` (or ``ValueError`` for a non-integer)."""
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f"index must be an integer image index, got {index!r}")
        if not 0 <= index < len(self.files):
            last = f"0..{len(self.files) - 1}" if self.files else "none"
            raise NotFound(f"no image {index}: the folder has {len(self.files)} images (indices {last})")
        return index

    def path(self, index: int) -> Path:
        """The image file of ``index``, checked to resolve inside the folder now (a symbolic link
        changed since the server started is refused with ``PermissionError``)."""
        path = self.folder / self.files[self.check_index(index)]
        if not _inside(self.folder, path):
            raise PermissionError(f"{self.files[index]} resolves outside the folder {self.folder}; it is not served")
        return path

    def resolve(self, relative: str) -> Path:
        """A file of the folder from its relative path (``/``-separated), refused if it leaves the
        folder.

        Raises:
            PermissionError: an absolute path, ``..``, a hidden part (``.fastseg``), or a path that
                resolves outside the folder (a symbolic link pointing out).
            NotFound: no such file, or not an image.
        """
        from fastseg.batch import IMAGE_SUFFIXES

        if not relative or "\x00" in relative or "\\" in relative:
            raise PermissionError(f"path must be a file's path relative to the folder, got {relative!r:.200}")
        parts = relative.split("/")
        if relative.startswith("/") or any(p in ("", ".", "..") for p in parts) or Path(relative).is_absolute():
            raise PermissionError(f"path must be relative to the folder, without '..' or '.', got {relative!r:.200}")
        if any(p.startswith(".") for p in parts):
            raise PermissionError(f"hidden files and folders are not served, got {relative!r:.200}")
        path = self.folder.joinpath(*parts)
        if not _inside(self.folder, path):
            raise PermissionError(f"{relative!r:.200} resolves outside the folder; it is not served")
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            raise NotFound(f"no image {relative!r:.200} in the folder")
        return path

    def size(self, index: int) -> tuple[int, int] | None:
        """``(H, W)`` of an image as it is loaded (EXIF-rotated), from its header; None if unreadable."""
        with self._lock:
            entry = self._entries.get(index)
            if entry is not None:
                return entry.size
            if index in self._sizes:
                return self._sizes[index]
        from fastseg.batch import _oriented_size

        try:
            found: tuple[int, int] | None = _oriented_size(self.path(index))
        except (ValueError, OSError):
            found = None
        with self._lock:
            self._sizes[index] = found
        return found

    # ---------------------------------------------------------------------------------------------
    # encoding

    def open(self, index: int) -> tuple[ImageEntry, float]:
        """Make sure image ``index`` is encoded, and start encoding the next ones in the background.

        Returns:
            The image's entry and the seconds this call waited for it (0 if it was in memory).
        """
        index = self.check_index(index)
        start = time.perf_counter()
        entry = self._get(index)
        self._ahead(index)
        return entry, (time.perf_counter() - start)

    def entry(self, index: int) -> ImageEntry:
        """Image ``index``'s entry, encoding it now if needed (without starting background work)."""
        return self._get(self.check_index(index))

    def _get(self, index: int) -> ImageEntry:
        with self._lock:
            entry = self._entries.get(index)
            if entry is not None:
                self._entries.move_to_end(index)
                return entry
            future = self._work.pending.get(index)
            mine = future is None
            if future is None:
                future = self._work.pending[index] = Future()
                if index in self._work.queue:
                    self._work.queue.remove(index)  # not started: do it now, here
        if mine:
            self._encode(index, self.click, future)
        return future.result()

    def _ahead(self, index: int) -> None:
        """Queue the next :attr:`prefetch` images for the background encoder (replacing older wishes)."""
        if self.background is None or self.prefetch == 0:
            return
        wanted = [i for i in range(index + 1, min(index + 1 + self.prefetch, len(self.files)))]
        with self._lock:
            self._work.queue.clear()
            self._work.queue.extend(i for i in wanted if i not in self._entries and i not in self._work.pending)
            self._wake.notify()

    def _encode_ahead(self) -> None:
        """The background thread: encode what is queued, one image at a time, on the background Predictor."""
        assert self.background is not None
        while True:
            with self._lock:
                while not self._work.queue and not self._work.stop:
                    self._wake.wait()
                if self._work.stop:
                    return
                index = self._work.queue.popleft()
                if index in self._entries or index in self._work.pending:
                    continue
                future: Future[ImageEntry] = Future()
                self._work.pending[index] = future
            self._encode(index, self.background, future)

    def _encode(self, index: int, predictor: Predictor, future: Future[ImageEntry]) -> None:
        """Encode image ``index`` on ``predictor`` (the store first), make it ready on the click
        Predictor, keep it, and resolve ``future`` (with the error if it fails)."""
        try:
            start = time.perf_counter()
            handle = predictor.encode(self.path(index))
            # The click Predictor builds its decoder state from the embedding: one short step under
            # its lock (never the encoder). A handle of the click Predictor is ready already.
            click = handle if predictor is self.click else self.click.encode(handle.embedding)
            entry = ImageEntry(index, handle, click, time.perf_counter() - start)
        except BaseException as exc:
            with self._lock:
                self._work.pending.pop(index, None)
                if predictor is not self.click:
                    self.errors[index] = str(exc)
            future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        with self._lock:
            self._work.pending.pop(index, None)
            self.errors.pop(index, None)
            self._entries[index] = entry
            self._entries.move_to_end(index)
            while len(self._entries) > self.kept_images:
                self._entries.popitem(last=False)
        future.set_result(entry)

    def encoded(self) -> list[int]:
        """Indices of the images in memory (least recently used first)."""
        with self._lock:
            return list(self._entries)

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until the background encoder has nothing queued or running (for tests); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._work.queue and not self._work.pending:
                    return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        """Stop the background encoder (an encoding under way finishes in its thread)."""
        with self._lock:
            self._work.stop = True
            self._work.queue.clear()
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    # ---------------------------------------------------------------------------------------------
    # prompts

    def predict(
        self,
        index: int,
        points: npt.ArrayLike | None,
        labels: npt.ArrayLike | None,
        box: npt.ArrayLike | None,
        multimask: bool,
        previous: bool = False,
        previous_id: str | None = None,
        candidate: int | None = None,
    ) -> Prediction:
        """Answer a prompt set on image ``index``.

        Args:
            points, labels, box: as ``Predictor.predict``'s (``box`` one XYXY box or None).
            multimask: SAM family: 3 candidates if True, else 1.
            previous: feed back the low-res logits of a previous prediction on this image as
                ``mask_input`` (SAM family; FastSAM ignores it): of ``previous_id`` if given, else of
                the image's last prediction; of its candidate ``candidate`` (default: its best). If
                there is none (nothing predicted on the image since the server started), the
                prompts are answered without mask input (:attr:`Prediction.mask_input` says which).

        Returns:
            The kept :class:`Prediction`: for the SAM family the Predictor's masks; for FastSAM one
            candidate, the union of the masks its rules select (none if none is selected).

        Raises:
            ValueError: bad prompts (the message says what was expected), an unknown candidate.
            NotFound: an unknown image or ``previous_id``.
        """
        entry = self._get(self.check_index(index))
        mask_input = None
        if previous and self.family in SAM_LIKE_FAMILIES:
            mask_input = self._previous_logits(index, previous_id, candidate)
        start = time.perf_counter()
        result = self.click.predict(
            points=points, labels=labels, boxes=box, mask_input=mask_input, multimask=multimask, image=entry.click
        )
        seconds = time.perf_counter() - start
        masks, scores = result.masks, result.scores.astype(np.float32)
        areas = np.array([np.count_nonzero(m) for m in masks], dtype=np.int64)
        # the Predictor's boxes are inclusive (x2, y2 the last pixel's); mask_box's end on pixel edges
        boxes = [
            None if a == 0 else [float(v) + (1.0 if k >= 2 else 0.0) for k, v in enumerate(b)]
            for a, b in zip(areas, result.boxes)
        ]
        if self.family not in SAM_LIKE_FAMILIES:  # FastSAM: the selected detections, as one candidate
            if len(masks):
                masks = np.asarray(masks.any(axis=0, keepdims=True), dtype=bool)
                scores = np.asarray(scores.max(keepdims=True), dtype=np.float32)
                areas = np.array([np.count_nonzero(masks[0])], dtype=np.int64)
                boxes = [mask_box(masks[0])]
        best = int(np.argmax(scores)) if len(scores) else -1
        prompts: dict[str, Any] = {
            "points": None if points is None else np.asarray(points, dtype=np.float64).tolist(),
            "labels": None if labels is None else np.asarray(labels).astype(int).tolist(),
            "box": None if box is None else np.asarray(box, dtype=np.float64).tolist(),
            "multimask": bool(multimask),
            "mask_input": mask_input is not None,
        }
        prediction = Prediction(
            id=secrets.token_hex(8),
            index=index,
            masks=masks,
            scores=scores,
            areas=areas,
            boxes=boxes,
            best=best,
            prompts=prompts,
            mask_input=mask_input is not None,
            seconds=seconds,
        )
        with self._lock:
            self._predictions[prediction.id] = prediction
            while len(self._predictions) > DEFAULT_KEPT_PREDICTIONS:
                self._predictions.popitem(last=False)
            if result.low_res_logits is not None:
                self._logits[prediction.id] = _Logits(index, result.low_res_logits, best)
                while len(self._logits) > DEFAULT_KEPT_LOGITS:
                    self._logits.popitem(last=False)
            self._last[index] = prediction.id
        return prediction

    def _previous_logits(
        self, index: int, previous_id: str | None, candidate: int | None
    ) -> npt.NDArray[np.float32] | None:
        with self._lock:
            key = self._last.get(index) if previous_id is None else previous_id
            kept = None if key is None else self._logits.get(key)
        if kept is None:
            if previous_id is not None:
                raise NotFound(
                    f"prediction {previous_id!r:.40} is not kept (the server keeps the last {DEFAULT_KEPT_LOGITS}); "
                    "predict without mask_input"
                )
            return None
        if kept.index != index:
            raise ValueError(f"prediction {previous_id!r:.40} was made on image {kept.index}, not on image {index}")
        chosen = kept.best if candidate is None else candidate
        if not 0 <= chosen < len(kept.logits):
            raise ValueError(
                f"candidate must be one of the previous prediction's {len(kept.logits)} candidates "
                f"(0..{len(kept.logits) - 1}), got {candidate}"
            )
        return np.asarray(kept.logits[chosen], dtype=np.float32)

    def prediction(self, prompt_id: str, index: int | None) -> Prediction:
        """A kept prediction on image ``index`` (None: on any image); :class:`NotFound` if it is not (or
        no longer) kept."""
        with self._lock:
            found = self._predictions.get(prompt_id)
        if found is None:
            raise NotFound(
                f"prediction {prompt_id!r:.40} is not kept (the server keeps the last {DEFAULT_KEPT_PREDICTIONS}); "
                "predict again, then accept"
            )
        if index is not None and found.index != index:
            raise ValueError(f"prediction {prompt_id!r:.40} was made on image {found.index}, not on image {index}")
        return found

    def everything(self, index: int) -> MaskRecords:
        """Everything-mode records of image ``index`` (``segmentation`` as COCO RLE), run on the
        background Predictor so clicks are not held up."""
        entry = self._get(self.check_index(index))
        predictor = self.background if self.background is not None else self.click
        return predictor.everything(image=entry.handle, output_mode="coco_rle", **self.everything_params)


def _inside(folder: Path, path: Path) -> bool:
    """Whether ``path`` resolves (symbolic links followed) to ``folder`` (resolved) or below it."""
    try:
        resolved = path.resolve(strict=False)
    except (OSError, RuntimeError):  # a symlink loop
        return False
    return resolved == folder or folder in resolved.parents
