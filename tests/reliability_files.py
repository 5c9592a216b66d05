"""Hostile files for the reliability tests: huge images that cost almost nothing to write, and ``.npz``
embedding files with crafted members and ``.npy`` headers."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from fastseg.embeddings import FORMAT


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def constant_png(path: Path, width: int, height: int, rows_per_block: int = 64) -> Path:
    """A valid black 8-bit grayscale PNG of ``width`` x ``height``, written without ever holding the
    pixels (a 20000 x 20000 one takes ~0.1 s and ~0.4 MB).

    The deflate stream is one block of ``rows_per_block`` zero rows compressed once with a full flush
    (which resets the compressor, so the same block serves every repetition), repeated, then the
    remaining rows and an empty final block. The zlib header and the Adler-32 of all-zero data are
    written by hand: ``a = 1``, ``b = n mod 65521``.
    """
    row = bytes(width + 1)  # filter type 0, then the pixels
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    raw.compress(row * rows_per_block)  # the first block after a flush is the one that repeats
    raw.flush(zlib.Z_FULL_FLUSH)
    block = raw.compress(row * rows_per_block) + raw.flush(zlib.Z_FULL_FLUSH)
    n_blocks, rest = divmod(height, rows_per_block)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail_bytes = tail.compress(row * rest) + tail.flush(zlib.Z_FINISH)
    n_bytes = height * (width + 1)
    adler = (n_bytes % 65521) << 16 | 1
    idat = b"\x78\xda" + block * n_blocks + tail_bytes + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    )
    return path


def sam_fields(**override: object) -> dict[str, np.ndarray]:
    """The members of a valid SAM embedding file (MobileSAM, a 451 x 300 image); ``None`` drops one."""
    fields: dict[str, object] = {
        "format": np.array(FORMAT),
        "family": np.array("sam"),
        "model": np.array("mobile_sam"),
        "original_size": np.array([451, 300]),
        "input_size": np.array([1024, 681]),
        "embedding": np.zeros((1, 256, 64, 64), np.float32),
    }
    fields.update(override)
    return {k: np.asarray(v) for k, v in fields.items() if v is not None}


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=False)
    return buf.getvalue()


def npy_header_only(shape: tuple[int, ...], descr: str = "<f4", data: bytes = b"\0" * 64) -> bytes:
    """A ``.npy`` member whose header declares ``shape`` but which holds only ``data``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def write_npz(path: Path, members: dict[str, bytes], compress: bool = True) -> Path:
    """A zip of raw members (``name`` -> bytes, ``.npy`` appended to the name as ``np.savez`` does)."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name + ".npy", data)
    return path


def embedding_npz(path: Path, arrays: dict[str, np.ndarray], extra: dict[str, bytes] | None = None) -> Path:
    """``arrays`` written as ``.npy`` members (compressed), plus raw ``extra`` members."""
    return write_npz(path, {**{k: npy_bytes(v) for k, v in arrays.items()}, **(extra or {})})
