"""Image embeddings on disk: encode an image once, prompt it in another process or on another day.

``Predictor.get_image_embedding()`` returns what ``set_image`` computed (``fastseg.sam.ImageEmbedding``
for SAM / MobileSAM, ``fastseg.fastsam.FastSamImageEmbedding`` for FastSAM). :func:`save_embedding`
writes either kind to one ``.npz`` file and :func:`load_embedding` reads it back, so a labeling tool can
encode a folder of images in a batch job and answer clicks later without the encoder::

    predictor.set_image("photo.jpg")
    fastseg.save_embedding("photo.emb.npz", predictor.get_image_embedding())
    ...
    predictor.set_image_embedding(fastseg.load_embedding("photo.emb.npz"))

The file is a plain NumPy ``.npz``, written atomically (a temporary file renamed into place). A file
from elsewhere is read defensively: only the members fastseg writes are read (others are ignored
unread), each member's ``.npy`` header is checked (dtype, shape, size) before its data is
decompressed, arrays of Python objects are refused (unpickling could run code), and every size is
bounded (:data:`MAX_ARRAY_ELEMENTS`, :data:`fastseg.image.MAX_IMAGE_SIDE` and ``MAX_IMAGE_PIXELS``),
so a small hostile file cannot make fastseg allocate gigabytes. The model that made the embedding is
recorded; ``set_image_embedding`` refuses an embedding of another model and checks shapes, dtypes,
values (finite) and sizes. :func:`save_tagged_embedding` / :func:`load_tagged_embedding` add and read
extra string members (the embedding store, :mod:`fastseg.store`, records its keys in them).
"""

from __future__ import annotations

import math
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from fastseg.engine import ImageEmbeddingLike
from fastseg.fastsam import FastSamImageEmbedding
from fastseg.image import check_image_size
from fastseg.paths import atomic_write
from fastseg.registry import REGISTRY
from fastseg.sam import ImageEmbedding
from fastseg.sam2 import ENCODER_OUTPUTS, Sam2ImageEmbedding

__all__ = ["FORMAT", "load_embedding", "save_embedding"]

#: Written into every file; :func:`load_embedding` refuses files of another format or version.
FORMAT = "fastseg-image-embedding/1"

# family -> the embedding class and the arrays it stores, besides the common metadata.
_KINDS: dict[str, type[ImageEmbedding] | type[FastSamImageEmbedding] | type[Sam2ImageEmbedding]] = {
    "sam": ImageEmbedding,
    "fastsam": FastSamImageEmbedding,
    "sam2": Sam2ImageEmbedding,
}
_ARRAYS = {"sam": ("embedding",), "fastsam": ("detections", "protos"), "sam2": ENCODER_OUTPUTS}
_METADATA = ("format", "family", "model", "original_size", "input_size")
#: Dimensions of each array (the leading one is 1): SAM ``(1, C, H, W)``; FastSAM detections
#: ``(1, 5 + M, A)`` and protos ``(1, M, H / 4, W / 4)``.
_NDIM = {"embedding": 4, "detections": 3, "protos": 4, **{name: 4 for name in ENCODER_OUTPUTS}}
#: Names of the extra string members of :func:`save_tagged_embedding`.
_TAG_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_RESERVED = frozenset(_METADATA) | frozenset(_NDIM)

#: At most this many elements per array: 8x a SAM embedding (1, 256, 64, 64), 2.6x FastSAM's protos
#: at 1024 x 1024 (1, 32, 256, 256). Checked from the ``.npy`` header, before reading.
MAX_ARRAY_ELEMENTS = 1 << 23
#: ``input_size`` is at most the largest model input of the registry, per side.
MAX_INPUT_SIDE = max(spec.input_size for spec in REGISTRY.values())
#: Strings (format, family, model name) are at most this many characters.
MAX_STRING_LENGTH = 256
#: An embedding file has 6 or 7 members (a few more with tags, :func:`save_tagged_embedding`); a zip
#: directory of more is refused before it is parsed.
MAX_MEMBERS = 64


def save_embedding(path: str | os.PathLike[str], embedding: ImageEmbeddingLike) -> Path:
    """Write ``embedding`` (from ``Predictor.get_image_embedding()``) to ``path`` as ``.npz``; returns the path.

    A name without the ``.npz`` suffix gets it appended; the returned path is the file actually written.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    return save_tagged_embedding(path, embedding, {})


def save_tagged_embedding(path: Path, embedding: ImageEmbeddingLike, tags: Mapping[str, str]) -> Path:
    """:func:`save_embedding` to exactly ``path``, with ``tags`` as extra string members (for
    :mod:`fastseg.store`: the entry's image and model keys). :func:`load_embedding` ignores them
    unread; :func:`load_tagged_embedding` reads them back.

    Args:
        tags: member name (lowercase letters, digits, ``_``; not one of the embedding's own) -> a
            string of at most :data:`MAX_STRING_LENGTH` characters.
    """
    family = embedding_family(embedding)
    for key, value in tags.items():
        _check_tag_name(key)
        if not isinstance(value, str) or len(value) > MAX_STRING_LENGTH:
            raise ValueError(f"tag {key!r} must be a string of at most {MAX_STRING_LENGTH} characters, got {value!r}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    # dict[str, Any]: numpy's stub checks **arrays against np.savez's `allow_pickle: bool` keyword too.
    arrays: dict[str, Any] = {name: np.asarray(getattr(embedding, name)) for name in _ARRAYS[family]}
    for name, array in arrays.items():
        if array.dtype != np.float32:
            raise ValueError(f"embedding.{name} must be float32, got {array.dtype}")
    arrays.update({key: np.array(value) for key, value in tags.items()})
    with atomic_write(path) as f:
        np.savez(
            f,
            format=np.array(FORMAT),
            family=np.array(family),
            model=np.array(str(embedding.model)),
            original_size=np.array(embedding.original_size, dtype=np.int64),
            input_size=np.array(embedding.input_size, dtype=np.int64),
            **arrays,
        )
    return path


def embedding_family(embedding: object) -> str:
    """The model family of an image embedding (``TypeError`` if it is not one)."""
    family = next((f for f, cls in _KINDS.items() if isinstance(embedding, cls)), None)
    if family is None:
        raise TypeError(
            "expected an image embedding from Predictor.get_image_embedding() (fastseg.sam.ImageEmbedding, "
            f"fastseg.fastsam.FastSamImageEmbedding or fastseg.sam2.Sam2ImageEmbedding), got {type(embedding).__name__}"
        )
    return family


def load_embedding(path: str | os.PathLike[str]) -> ImageEmbeddingLike:
    """Read a file written by :func:`save_embedding`; hand the result to ``Predictor.set_image_embedding``.

    Only the members fastseg writes are read; each ``.npy`` header is checked before its data, so
    the memory used is bounded by :data:`MAX_ARRAY_ELEMENTS` whatever the file claims.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not an embedding file, or one with a member of the wrong kind, shape or size
            (the message names the member, what it holds and what was expected).
    """
    return load_tagged_embedding(path, ())[0]


def load_tagged_embedding(
    path: str | os.PathLike[str], tags: tuple[str, ...]
) -> tuple[ImageEmbeddingLike, dict[str, str]]:
    """:func:`load_embedding`, and the string members ``tags`` written by :func:`save_tagged_embedding`
    (read as defensively as the rest); a missing tag is a ``ValueError``."""
    for key in tags:
        _check_tag_name(key)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image embedding file at {path}")
    not_ours = f"{path} is not a fastseg image embedding file"
    try:
        with path.open("rb") as f:
            magic = f.read(6)
            if magic == b"\x93NUMPY":
                raise ValueError(f"{not_ours} (a single .npy array, not an .npz)")
            _check_zip_directory(f, not_ours)
        with zipfile.ZipFile(path) as archive:
            embedding = _read_embedding(archive, path, not_ours)
            missing = [key for key in tags if key + ".npy" not in archive.namelist()]
            if missing:
                raise ValueError(f"{path}: it lacks the tags {missing}")
            return embedding, {key: _read_string(archive, key, path) for key in tags}
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError, RuntimeError) as exc:
        # NotImplementedError: an unsupported compression method; RuntimeError: an encrypted member.
        raise ValueError(f"{not_ours} (not a readable .npz: {exc})") from exc


def _check_tag_name(key: str) -> None:
    if not isinstance(key, str) or not _TAG_NAME.fullmatch(key) or key in _RESERVED:
        raise ValueError(
            f"a tag name is lowercase letters, digits and '_' (not one of {sorted(_RESERVED)}), got {key!r}"
        )


def _check_zip_directory(f: IO[bytes], not_ours: str) -> None:
    """Refuse a zip whose directory lists more than :data:`MAX_MEMBERS` entries before ``zipfile``
    parses it (it builds an object per entry: ~6 bytes of memory per byte of directory)."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - (22 + 0xFFFF)))  # the end record (22 bytes) and at most a 64 KiB comment
    tail = f.read()
    end = tail.rfind(b"PK\x05\x06")
    if end < 0 or len(tail) - end < 22:
        raise ValueError(f"{not_ours} (not a .npz: no zip directory)")
    (entries,) = struct.unpack("<H", tail[end + 10 : end + 12])
    zip64 = end >= 20 and tail[end - 20 : end - 16] == b"PK\x06\x07"
    if entries > MAX_MEMBERS or zip64:
        listed = "a zip64 directory" if zip64 else f"{entries:,} members"
        raise ValueError(f"{not_ours}: its zip directory lists {listed}; an embedding file has at most {MAX_MEMBERS}")


def _read_embedding(archive: zipfile.ZipFile, path: Path, not_ours: str) -> ImageEmbeddingLike:
    names = set(archive.namelist())
    missing = [key for key in _METADATA if key + ".npy" not in names]
    if missing:
        raise ValueError(f"{not_ours}: it lacks {missing}")
    fmt = _read_string(archive, "format", path)
    if fmt != FORMAT:
        raise ValueError(f"{path}: embedding file format {fmt!r}, this fastseg reads {FORMAT!r}")
    family = _read_string(archive, "family", path)
    if family not in _KINDS:
        raise ValueError(f"{path}: unknown model family {family!r}, expected one of {sorted(_KINDS)}")
    missing = [key for key in _ARRAYS[family] if key + ".npy" not in names]
    if missing:
        raise ValueError(f"{path}: a {family} embedding file needs arrays {list(_ARRAYS[family])}; missing {missing}")
    model = _read_string(archive, "model", path)
    sizes = {}
    for key in ("original_size", "input_size"):
        value = _read_member(archive, key, path, _check_size_header)
        sizes[key] = (int(value[0]), int(value[1]))
        if (value <= 0).any():
            raise ValueError(f"{path}: {key} must be two positive integers (height, width), got {value!r}")
    check_image_size(*sizes["original_size"], what=f"{path}: original_size")
    if max(sizes["input_size"]) > MAX_INPUT_SIDE:
        raise ValueError(
            f"{path}: input_size {sizes['input_size']} exceeds {MAX_INPUT_SIDE} per side, the largest model input"
        )
    # Every header first, then the data: a bad member is refused before anything large is read.
    for key in _ARRAYS[family]:
        _member_header(archive, key, path, _check_array_header)
    arrays = {key: _read_member(archive, key, path, _check_array_header) for key in _ARRAYS[family]}
    return _KINDS[family](model=model, original_size=sizes["original_size"], input_size=sizes["input_size"], **arrays)


# header checks: (path, key, shape, dtype) -> None, raising ValueError
def _check_string_header(path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
    if shape != () or dtype.kind != "U" or not 0 < dtype.itemsize <= 4 * MAX_STRING_LENGTH:
        raise ValueError(
            f"{path}: {key!r} must be a string of at most {MAX_STRING_LENGTH} characters, got {dtype.str} {shape}"
        )


def _check_size_header(path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
    if shape != (2,) or dtype.kind not in "iu":
        raise ValueError(f"{path}: {key} must be two positive integers (height, width), got {dtype.str} {shape}")


def _check_array_header(path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
    ndim = _NDIM[key]
    if len(shape) != ndim or shape[0] != 1:
        layout = "(1, C, H, W)" if ndim == 4 else "(1, C, N)"
        raise ValueError(f"{path}: array {key!r} must have shape {layout}, got {shape}")
    if min(shape) < 1:
        raise ValueError(f"{path}: array {key!r} is empty: shape {shape}")
    if math.prod(shape) > MAX_ARRAY_ELEMENTS:
        raise ValueError(
            f"{path}: array {key!r} has shape {shape}: {math.prod(shape):,} elements, more than the "
            f"{MAX_ARRAY_ELEMENTS:,} an image embedding may have"
        )
    if dtype != np.float32:
        raise ValueError(f"{path}: array {key!r} must be float32, got {dtype}")


def _member_header(
    archive: zipfile.ZipFile, key: str, path: Path, check: Any
) -> tuple[IO[bytes], tuple[int, ...], bool, np.dtype[Any]]:
    """Open member ``key``, read and check its ``.npy`` header; the stream is left at the data."""
    fp = archive.open(key + ".npy")
    try:
        try:
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
            else:
                raise ValueError(f".npy format version {version}, expected 1.0 or 2.0")
        except (ValueError, SyntaxError, TypeError) as exc:  # a malformed header (numpy parses it as a literal)
            raise ValueError(f"{path}: member {key!r} is not a readable .npy array ({exc})") from None
        if dtype.hasobject:
            raise ValueError(
                f"{path}: member {key!r} holds Python objects (dtype {dtype}); fastseg refuses them, "
                "as reading them would unpickle data from the file, which can run code"
            )
        check(path, key, tuple(shape), dtype)
        return fp, tuple(shape), bool(fortran), dtype
    except BaseException:
        fp.close()
        raise


def _read_member(archive: zipfile.ZipFile, key: str, path: Path, check: Any) -> npt.NDArray[Any]:
    """Member ``key`` as an array, its header checked by ``check`` before any data is read."""
    fp, shape, fortran, dtype = _member_header(archive, key, path, check)
    with fp:
        count = math.prod(shape)
        data = fp.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        raise ValueError(
            f"{path}: member {key!r} is truncated: {len(data)} bytes of data, its header declares "
            f"{dtype.str} {shape} ({count * dtype.itemsize} bytes)"
        )
    array = np.frombuffer(data, dtype=dtype, count=count).reshape(shape, order="F" if fortran else "C")
    out: npt.NDArray[Any] = array.copy(order="C")  # writable, C-contiguous, no longer tied to the bytes read
    return out


def _read_string(archive: zipfile.ZipFile, key: str, path: Path) -> str:
    return str(_read_member(archive, key, path, _check_string_header)[()])
