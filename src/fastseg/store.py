"""An embedding store: a folder that keeps each image's embedding per model, so no image is encoded twice.

``Predictor(model_dir, store="embeddings/")`` looks every image it is given up in the store first: a
hit skips the encoder, a miss encodes and stores. A batch job over a dataset can be stopped and run
again, or run on several machines at once, and each image is encoded once per model::

    predictor = fastseg.Predictor("models/mobile_sam", store="embeddings/")
    predictor.set_image("photo.jpg")  # encodes, then stores
    predictor.set_image("photo.jpg")  # reads the stored embedding: no encoder run

An entry is found by two keys, both sha256 hex digests:

* :func:`image_key`: of the decoded RGB pixels and their shape, so the same picture in two files (or
  formats) is one entry, and a photo with an EXIF rotation is keyed as it is encoded (upright).
* :func:`model_key`: of the model's name, preprocessing constants and image-graph files (the encoder
  of the SAM family, FastSAM's network), the backend and the precision the backend runs at; an
  embedding from another model, export, backend or precision is never taken for this one's.

Layout (a folder of files, one per entry)::

    root/
      fastseg-store.json                     marker: {"format": "fastseg-embedding-store", "version": 1}
      <model_key[:16]>/
        model.json                           what the model is, for people (name, backend, precision, ...)
        <image_key[:2]>/<image_key>.npz      one embedding (fastseg.save_embedding's format), tagged
                                             with its full image key and model key

Why a folder of files rather than one database (SQLite): entries are large blobs that
are written once and never changed; each is written to a temporary file and renamed into place
(:func:`fastseg.paths.atomic_write`), which readers and writers in several processes, and on several
machines sharing the folder over a network filesystem, see as all or nothing, without locks. SQLite's
locking is unreliable on network filesystems and one database file serialises every writer. An
entry can be copied, deleted (``rm -r root/<model>`` drops one model's) or synced with ordinary
tools. The ``<image_key[:2]>`` level keeps folders small (256 per model).

Trust: :meth:`EmbeddingStore.get` reads entries as defensively as :func:`fastseg.load_embedding`
(bounded sizes, no pickles) and checks the keys recorded in the entry against the ones asked for,
and the embedding's model name and image size when given, so a file copied under another name, or
one that is truncated or garbage, is a miss (with a :class:`StoreWarning`), and the next
:meth:`~EmbeddingStore.put` replaces it. Keys are 64 hex digits, checked, so no path built from them
leaves the store. A writer killed mid-write leaves a hidden ``.<name>.<pid>-<hex>.partial`` file,
which is never read and may be deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fastseg.backends import _outside_fastseg
from fastseg.embeddings import embedding_family, load_tagged_embedding, save_tagged_embedding
from fastseg.engine import ImageEmbeddingLike
from fastseg.manifest import GRAPH_FILE_KEYS, ModelFolder, file_sha256
from fastseg.paths import atomic_write

__all__ = ["MARKER_NAME", "STORE_FORMAT", "STORE_VERSION", "EmbeddingStore", "StoreWarning", "image_key", "model_key"]

STORE_FORMAT = "fastseg-embedding-store"
#: Written into the marker file; a store of a newer version is refused.
STORE_VERSION = 1
#: The marker file at the store's root: a folder without it is not a store.
MARKER_NAME = "fastseg-store.json"
#: The model description file in each model's folder.
MODEL_INFO_NAME = "model.json"
#: The graph whose outputs an embedding holds, per family.
IMAGE_GRAPH = {"sam": "encoder", "fastsam": "network", "sam2": "encoder"}

_KEY = re.compile(r"[0-9a-f]{64}")
_IMAGE_KEY_TAG = "store_image_key"
_MODEL_KEY_TAG = "store_model_key"
#: Bumped when what :func:`model_key` hashes changes, so old entries stop matching.
_MODEL_KEY_SCHEMA = 1


class StoreWarning(UserWarning):
    """A store entry that could not be used (unreadable, or recorded for another image or model), or
    an embedding that could not be stored; the image is encoded instead."""


def image_key(pixels: npt.NDArray[np.uint8]) -> str:
    """The store key of an image: sha256 (hex) of its RGB uint8 pixels and shape.

    Args:
        pixels: ``(H, W, 3)`` uint8 RGB, as :func:`fastseg.image.load_image` returns (which applies the
            EXIF orientation): key a file by its loaded pixels, not by its bytes.
    """
    if not isinstance(pixels, np.ndarray):
        raise TypeError(
            f"pixels must be a numpy array (H, W, 3) uint8 (use fastseg.image.load_image), got {type(pixels).__name__}"
        )
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(
            f"pixels must be RGB uint8 of shape (H, W, 3) (use fastseg.image.load_image), "
            f"got {pixels.dtype} {pixels.shape}"
        )
    h, w = pixels.shape[:2]
    digest = hashlib.sha256(f"fastseg-rgb8 {h}x{w}\n".encode())
    digest.update(np.ascontiguousarray(pixels).data)
    return digest.hexdigest()


def model_key(folder: ModelFolder, backend: str, precision: str) -> str:
    """The store key of a model as it runs: sha256 (hex) of the model's name, family and
    preprocessing constants (the manifest's ``spec``), the sha256 of its image graph's files for
    ``backend`` (OpenVINO: ``.xml`` and ``.bin``; ONNX Runtime: ``.onnx`` and its external data, if
    any), ``backend`` and ``precision``.

    Args:
        backend: ``"openvino"`` or ``"onnxruntime"``.
        precision: the precision the backend actually runs at (``Predictor.precision``, which may
            differ from the one asked for), e.g. ``"f32"`` or ``"bf16"``.

    The backend's own version is not part of the key: upgrading OpenVINO or ONNX Runtime keeps the
    entries. Delete the model's folder in the store to encode its images again.
    """
    if backend not in GRAPH_FILE_KEYS:
        raise ValueError(f"backend must be one of {sorted(GRAPH_FILE_KEYS)}, got {backend!r}")
    if not isinstance(precision, str) or not precision:
        raise ValueError(f"precision must be a non-empty string such as 'f32', got {precision!r}")
    graph = IMAGE_GRAPH[folder.family]
    path = folder.graph_file(graph, backend)
    companion = path.with_suffix(".bin") if backend == "openvino" else path.with_name(path.name + ".data")
    digests = {}
    for file in (path, companion):
        name = file.relative_to(folder.path).as_posix()
        if name in folder.manifest["files"]:
            digests[name] = folder.sha256(name)
        elif file.is_file():
            digests[name] = file_sha256(file)
    description = {
        "schema": _MODEL_KEY_SCHEMA,
        "model": folder.name,
        "family": folder.family,
        "spec": folder.manifest["spec"],
        "graph": graph,
        "files": digests,
        "backend": backend,
        "precision": precision,
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()


class EmbeddingStore:
    """A folder of image embeddings, one file per (image, model); see the module docstring.

    Safe for several threads, processes and machines (on a shared filesystem) reading and writing
    at once: every entry is written whole and renamed into place.

    Args:
        root: the store's folder. A missing folder is created, with the marker file
            ``fastseg-store.json``; an existing one must be a store (have the marker) or be empty.

    Raises:
        ValueError: ``root`` is a file, a non-empty folder that is not a store, or a store of
            another format or a newer version.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"an embedding store is a folder; {self.root} is a file")
        self.root.mkdir(parents=True, exist_ok=True)
        names = {p.name for p in self.root.iterdir()}  # one listing: see _create_marker
        if MARKER_NAME in names:
            self._check_marker()
        else:
            self._create_marker(names)

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.root)!r})"

    # entries ------------------------------------------------------------------------------------

    def path(self, image_key: str, model_key: str) -> Path:
        """Where the entry of ``(image_key, model_key)`` is (whether or not it exists)."""
        _check_key("image_key", image_key)
        _check_key("model_key", model_key)
        return self.root / model_key[:16] / image_key[:2] / f"{image_key}.npz"

    def contains(self, image_key: str, model_key: str) -> bool:
        """Whether an entry file exists for the keys (not read: :meth:`get` may still find it unusable)."""
        return self.path(image_key, model_key).is_file()

    def get(
        self,
        image_key: str,
        model_key: str,
        *,
        model: str | None = None,
        original_size: tuple[int, int] | None = None,
    ) -> ImageEmbeddingLike | None:
        """The stored embedding of the image under the model, or None (a miss).

        An entry that cannot be read, or that records other keys than the ones asked for, or (when
        given) another ``model`` name or ``original_size`` ``(H, W)``, is a miss with a
        :class:`StoreWarning`; the next :meth:`put` replaces it.
        """
        path = self.path(image_key, model_key)
        try:
            if not path.is_file():
                return None
            embedding, tags = load_tagged_embedding(path, (_IMAGE_KEY_TAG, _MODEL_KEY_TAG))
        except FileNotFoundError:  # removed meanwhile
            return None
        except (ValueError, OSError) as exc:
            _warn(f"store entry {path} cannot be read ({exc}); it is treated as missing and will be replaced")
            return None
        problems = []
        if tags[_IMAGE_KEY_TAG] != image_key:
            problems.append(f"image key {tags[_IMAGE_KEY_TAG][:16]}..., not {image_key[:16]}...")
        if tags[_MODEL_KEY_TAG] != model_key:
            problems.append(f"model key {tags[_MODEL_KEY_TAG][:16]}..., not {model_key[:16]}...")
        if model is not None and embedding.model != model:
            problems.append(f"model {embedding.model!r}, not {model!r}")
        size = tuple(int(v) for v in embedding.original_size)
        if original_size is not None and size != tuple(original_size):
            problems.append(f"image size {size}, not {tuple(original_size)}")
        if problems:
            _warn(
                f"store entry {path} records {'; '.join(problems)} (a file copied or renamed by hand?); "
                "it is treated as missing and will be replaced"
            )
            return None
        return embedding

    def put(
        self, image_key: str, model_key: str, embedding: ImageEmbeddingLike, about: Mapping[str, str] | None = None
    ) -> Path:
        """Store ``embedding`` as the entry of the keys (replacing any), atomically; returns its path.

        Args:
            about: a description of the model for people (e.g. backend, precision), written to the
                model folder's ``model.json`` with the embedding's model name and family when that
                file does not exist yet.

        Raises:
            TypeError: ``embedding`` is not an image embedding.
            ValueError: a malformed key, or an embedding array that is not float32.
            OSError: the entry cannot be written (the store is then unchanged).
        """
        path = self.path(image_key, model_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tagged_embedding(path, embedding, {_IMAGE_KEY_TAG: image_key, _MODEL_KEY_TAG: model_key})
        info = path.parent.parent / MODEL_INFO_NAME
        if not info.exists():
            family = embedding_family(embedding)
            described = {"model_key": model_key, "model": embedding.model, "family": family, **(about or {})}
            with atomic_write(info, binary=False) as f:
                f.write(json.dumps(described, indent=2) + "\n")
        return path

    # the marker ---------------------------------------------------------------------------------

    def _check_marker(self) -> None:
        marker = self.root / MARKER_NAME
        try:
            data = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{marker} is not a readable embedding store marker ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != STORE_FORMAT:
            raise ValueError(f"{marker} is not an embedding store marker (expected format {STORE_FORMAT!r})")
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= STORE_VERSION:
            raise ValueError(
                f"{self.root} is an embedding store of version {version!r}; this fastseg reads version {STORE_VERSION}"
            )

    def _create_marker(self, names: set[str]) -> None:
        """Make the folder a store, if it is empty. ``names`` is one listing of it: if another process
        made it a store meanwhile, either its marker is listed, or nothing it wrote after it is."""
        others = sorted(n for n in names if not (n.startswith(f".{MARKER_NAME}.") and n.endswith(".partial")))
        if others:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise ValueError(
                f"{self.root} is not an embedding store: it holds files ({shown}) and no {MARKER_NAME}; "
                "give an empty or new folder, or an existing store"
            )
        with atomic_write(self.root / MARKER_NAME, binary=False) as f:
            f.write(json.dumps({"format": STORE_FORMAT, "version": STORE_VERSION}) + "\n")


def _check_key(name: str, key: object) -> None:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        shown = repr(key) if len(repr(key)) <= 80 else repr(key)[:77] + "..."
        raise ValueError(f"{name} must be 64 lowercase hex digits (a sha256 from fastseg.store.{name}), got {shown}")


def _warn(message: str) -> None:
    warnings.warn(message, StoreWarning, stacklevel=_outside_fastseg())
