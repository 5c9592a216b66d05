"""Image embeddings on disk: encode an image once, prompt it in another process or on another day.

``Predictor.get_image_embedding()`` returns what ``set_image`` computed (``fastseg.sam.ImageEmbedding``
for SAM / MobileSAM, ``fastseg.fastsam.FastSamImageEmbedding`` for FastSAM). :func:`save_embedding`
writes either kind to one ``.npz`` file and :func:`load_embedding` reads it back, so a labeling tool can
encode a folder of images in a batch job and answer clicks later without the encoder::

    predictor.set_image("photo.jpg")
    fastseg.save_embedding("photo.emb.npz", predictor.get_image_embedding())
    ...
    predictor.set_image_embedding(fastseg.load_embedding("photo.emb.npz"))

The file is a plain NumPy ``.npz`` (no pickled objects: it is read with ``allow_pickle=False``, so a
file from elsewhere cannot run code), written atomically (a temporary file renamed into place). The
model that made the embedding is recorded; ``set_image_embedding`` refuses an embedding of another
model and checks shapes and dtypes.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from fastseg.engine import ImageEmbeddingLike
from fastseg.fastsam import FastSamImageEmbedding
from fastseg.sam import ImageEmbedding

__all__ = ["FORMAT", "load_embedding", "save_embedding"]

#: Written into every file; :func:`load_embedding` refuses files of another format or version.
FORMAT = "fastseg-image-embedding/1"

# family -> the embedding class and the arrays it stores, besides the common metadata.
_KINDS: dict[str, type[ImageEmbedding] | type[FastSamImageEmbedding]] = {
    "sam": ImageEmbedding,
    "fastsam": FastSamImageEmbedding,
}
_ARRAYS = {"sam": ("embedding",), "fastsam": ("detections", "protos")}
_METADATA = ("format", "family", "model", "original_size", "input_size")


def save_embedding(path: str | os.PathLike[str], embedding: ImageEmbeddingLike) -> Path:
    """Write ``embedding`` (from ``Predictor.get_image_embedding()``) to ``path`` as ``.npz``; returns the path.

    A name without the ``.npz`` suffix gets it appended; the returned path is the file actually written.
    """
    family = next((f for f, cls in _KINDS.items() if isinstance(embedding, cls)), None)
    if family is None:
        raise TypeError(
            "expected an image embedding from Predictor.get_image_embedding() "
            f"(fastseg.sam.ImageEmbedding or fastseg.fastsam.FastSamImageEmbedding), got {type(embedding).__name__}"
        )
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    # dict[str, Any]: numpy's stub checks **arrays against np.savez's `allow_pickle: bool` keyword too.
    arrays: dict[str, Any] = {name: np.asarray(getattr(embedding, name)) for name in _ARRAYS[family]}
    for name, array in arrays.items():
        if array.dtype != np.float32:
            raise ValueError(f"embedding.{name} must be float32, got {array.dtype}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                format=np.array(FORMAT),
                family=np.array(family),
                model=np.array(str(embedding.model)),
                original_size=np.array(embedding.original_size, dtype=np.int64),
                input_size=np.array(embedding.input_size, dtype=np.int64),
                **arrays,
            )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_embedding(path: str | os.PathLike[str]) -> ImageEmbeddingLike:
    """Read a file written by :func:`save_embedding`; hand the result to ``Predictor.set_image_embedding``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image embedding file at {path}")
    try:
        data = np.load(path, allow_pickle=False)
        contents = None
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                contents = {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"{path} is not a fastseg image embedding file (not a readable .npz: {exc})") from exc
    except ValueError as exc:  # pickled objects (NumPy refuses them without allow_pickle) or not NumPy at all
        raise ValueError(f"{path} is not a fastseg image embedding file ({exc})") from exc
    if contents is None:
        raise ValueError(f"{path} is not a fastseg image embedding file (a single .npy array, not an .npz)")
    missing = [key for key in _METADATA if key not in contents]
    if missing:
        raise ValueError(f"{path} is not a fastseg image embedding file: it lacks {missing}")
    fmt = str(contents["format"])
    if fmt != FORMAT:
        raise ValueError(f"{path}: embedding file format {fmt!r}, this fastseg reads {FORMAT!r}")
    family = str(contents["family"])
    if family not in _KINDS:
        raise ValueError(f"{path}: unknown model family {family!r}, expected one of {sorted(_KINDS)}")
    missing = [key for key in _ARRAYS[family] if key not in contents]
    if missing:
        raise ValueError(f"{path}: a {family} embedding file needs arrays {list(_ARRAYS[family])}; missing {missing}")
    for key in _ARRAYS[family]:
        if contents[key].dtype != np.float32:
            raise ValueError(f"{path}: array {key!r} must be float32, got {contents[key].dtype}")
    sizes = {}
    for key in ("original_size", "input_size"):
        value = contents[key]
        if value.shape != (2,) or value.dtype.kind not in "iu" or (value <= 0).any():
            raise ValueError(f"{path}: {key} must be two positive integers (height, width), got {value!r}")
        sizes[key] = (int(value[0]), int(value[1]))
    arrays = {key: contents[key] for key in _ARRAYS[family]}
    return _KINDS[family](
        model=str(contents["model"]),
        original_size=sizes["original_size"],
        input_size=sizes["input_size"],
        **arrays,
    )
