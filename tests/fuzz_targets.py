"""Fuzz targets for the three loaders of untrusted files: ``load_image``, ``load_embedding`` and
``load_model_folder``, driven by hypothesis (no atheris needed).

Each target takes raw bytes, writes them where the loader reads them and calls it. The contract: the
loader returns a value or raises one of fastseg's documented exceptions (:data:`ALLOWED`), never
another type, and it never allocates more than :data:`MEMORY_LIMIT` (a small file must not make it
decompress or allocate gigabytes; see :func:`run_bounded`). Inputs are random bytes or valid files with random edits
(:func:`mutated`), so the loaders' deep paths are reached, not only their first check.

``tests/test_properties.py`` runs every target for a bounded number of examples in the fast tier.
To fuzz longer by hand::

    python tests/fuzz_targets.py --examples 20000          # every target
    python tests/fuzz_targets.py load_embedding --examples 100000
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st

#: What the loaders may raise (``ModelFolderError`` is a ``ValueError``).
ALLOWED = (ValueError, TypeError, FileNotFoundError)
#: Memory one loader call may add at its peak.
MEMORY_LIMIT = 64 << 20


def _status_bytes(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _can_reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # resets the peak resident set size (VmHWM) to the current one (Linux >= 4.0)
        _status_bytes("VmHWM")
    except (OSError, KeyError):
        return False
    return True


RESET_PEAK_RSS = _can_reset_peak_rss()


def run_bounded(call: Callable[[], Any]) -> Any:
    """``call()`` with the contract checked: an allowed exception is returned, any other propagates,
    and the memory added at the peak stays under :data:`MEMORY_LIMIT`.

    Memory is the resident set's peak (``VmHWM``, reset before the call) where Linux lets a process
    reset it: what a user sees. Elsewhere it is tracemalloc's peak, which also counts address space
    never touched (Pillow asks ``read(n)`` of a chunk's declared length, e.g. 2 GB, and gets a short
    read: harmless, yet traced), so it may fail where the resident peak would not.
    """
    if RESET_PEAK_RSS:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        before = _status_bytes("VmRSS")
    else:
        tracemalloc.start()
    try:
        try:
            result = call()
        except ALLOWED as exc:
            result = exc
        peak = _status_bytes("VmHWM") - before if RESET_PEAK_RSS else tracemalloc.get_traced_memory()[1]
    finally:
        if not RESET_PEAK_RSS:
            tracemalloc.stop()
    assert peak < MEMORY_LIMIT, f"peak memory {peak / 2**20:.0f} MiB"
    return result


# --------------------------------------------------------------------------------------------------
# Seeds: valid files to mutate


def image_seeds() -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    seeds = []
    for fmt, mode in (
        ("PNG", "RGB"),
        ("PNG", "P"),
        ("JPEG", "RGB"),
        ("GIF", "P"),
        ("BMP", "RGB"),
        ("TIFF", "RGB"),
        ("WEBP", "RGB"),
        ("PNG", "LA"),
        ("TIFF", "I;16"),
    ):
        image = (
            Image.fromarray(rgb).convert(mode) if mode != "I;16" else Image.fromarray(rgb[:, :, 0].astype(np.uint16))
        )
        exif = Image.Exif()
        exif[0x0112] = 6
        buf = io.BytesIO()
        image.save(buf, format=fmt, **({"exif": exif} if fmt in ("PNG", "JPEG", "WEBP", "TIFF") else {}))
        seeds.append(buf.getvalue())
    return seeds


def embedding_seeds() -> list[bytes]:
    import tempfile

    from fastseg.embeddings import save_embedding
    from fastseg.fastsam import FastSamImageEmbedding
    from fastseg.sam import ImageEmbedding

    rng = np.random.default_rng(0)
    embeddings = [
        ImageEmbedding(rng.standard_normal((1, 4, 2, 2), dtype=np.float32), (451, 300), (1024, 681), "mobile_sam"),
        FastSamImageEmbedding(
            "fastsam_s",
            (30, 40),
            (32, 32),
            rng.standard_normal((1, 6, 21), dtype=np.float32),
            rng.standard_normal((1, 1, 8, 8), dtype=np.float32),
        ),
    ]
    seeds = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, embedding in enumerate(embeddings):
            seeds.append(save_embedding(Path(tmp) / f"{i}.npz", embedding).read_bytes())
    return seeds


def mutated(seeds: list[bytes], max_edits: int = 8) -> st.SearchStrategy[bytes]:
    """Random bytes, or a seed with a few bytes overwritten, inserted or deleted, possibly truncated."""

    @st.composite
    def edit(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(0, max_edits))):
            if not data:
                break
            at = draw(st.integers(0, len(data) - 1))
            kind = draw(st.sampled_from(("overwrite", "insert", "delete", "ff", "zero")))
            if kind == "overwrite":
                data[at] = draw(st.integers(0, 255))
            elif kind == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=16))
            elif kind == "delete":
                del data[at : at + draw(st.integers(1, 16))]
            else:  # large values in size and count fields
                data[at : at + 4] = b"\xff\xff\xff\x7f" if kind == "ff" else b"\0\0\0\0"
        if draw(st.booleans()):
            data = data[: draw(st.integers(0, len(data)))]
        return bytes(data)

    return st.one_of(st.binary(max_size=2048), edit())


# --------------------------------------------------------------------------------------------------
# Targets


#: Pillow's decompression-bomb limit while fuzzing ``load_image``: a file of a few bytes may declare
#: any size, and every image up to the limit is decoded. With 2**20 pixels, decoding stays far under
#: :data:`MEMORY_LIMIT`, so the bound checks that the limit is applied before decoding.
FUZZ_MAX_IMAGE_PIXELS = 1 << 20


def fuzz_load_image(data: bytes, workdir: Path) -> Any:
    from PIL import Image

    from fastseg.image import load_image

    path = workdir / "image"
    path.write_bytes(data)
    default, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, FUZZ_MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Pillow's notes on corrupt EXIF and TIFF tags
            result = run_bounded(lambda: load_image(path))
    finally:
        Image.MAX_IMAGE_PIXELS = default
    if not isinstance(result, Exception):
        assert result.dtype == np.uint8 and result.ndim == 3 and result.shape[2] == 3 and result.flags.c_contiguous
    return result


def fuzz_load_embedding(data: bytes, workdir: Path) -> Any:
    from fastseg.embeddings import load_embedding
    from fastseg.fastsam import FastSamImageEmbedding
    from fastseg.sam import ImageEmbedding

    path = workdir / "embedding.npz"
    path.write_bytes(data)
    result = run_bounded(lambda: load_embedding(path))
    if not isinstance(result, Exception):
        assert isinstance(result, (ImageEmbedding, FastSamImageEmbedding))
        arrays = [result.embedding] if isinstance(result, ImageEmbedding) else [result.detections, result.protos]
        assert all(a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable for a in arrays)
    return result


def model_folder_workdir(tiny_folder: Path, workdir: Path) -> Path:
    """A copy of a tiny model folder whose manifest the target overwrites."""
    folder = workdir / tiny_folder.name
    if not folder.exists():
        shutil.copytree(tiny_folder, folder)
    return folder


def fuzz_load_model_folder(data: bytes, folder: Path) -> Any:
    from fastseg.manifest import MANIFEST_NAME, ModelFolder, load_model_folder

    (folder / MANIFEST_NAME).write_bytes(data)
    result = run_bounded(lambda: load_model_folder(folder))
    if not isinstance(result, Exception):
        assert isinstance(result, ModelFolder) and result.family in ("sam", "fastsam")
    return result


def manifest_seeds(folder: Path) -> list[bytes]:
    from fastseg.manifest import MANIFEST_NAME

    text = (folder / MANIFEST_NAME).read_bytes()
    return [text, json.dumps(json.loads(text)).encode()]  # pretty and compact


# --------------------------------------------------------------------------------------------------
# Running by hand


def fuzz(options: Any, strategy: st.SearchStrategy[bytes], target: Callable[[bytes, Path], Any], where: Path) -> None:
    """Run ``target(data, where)`` on the examples ``strategy`` draws, under hypothesis ``options``."""
    from hypothesis import given

    @options
    @given(strategy)
    def run(data: bytes) -> None:
        target(data, where)

    run()


def main() -> None:
    import sys
    import tempfile

    from hypothesis import HealthCheck, settings

    sys.path.insert(0, str(Path(__file__).parent))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", default=["load_image", "load_embedding", "load_model_folder"])
    parser.add_argument("--examples", type=int, default=5000)
    args = parser.parse_args()
    options = settings(
        max_examples=args.examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("FASTSEG_CACHE", str(work / "cache"))  # model folders may keep digests there
        for target in args.targets:
            if target == "load_image":
                fuzz(options, mutated(image_seeds()), fuzz_load_image, work)
            elif target == "load_embedding":
                fuzz(options, mutated(embedding_seeds()), fuzz_load_embedding, work)
            elif target == "load_model_folder":
                from tiny_models import build_tiny_sam

                folder = model_folder_workdir(build_tiny_sam(work / "tiny" / "mobile_sam"), work / "fuzz")
                fuzz(options, mutated(manifest_seeds(folder)), fuzz_load_model_folder, folder)
            else:
                parser.error(f"unknown target {target!r}")
            print(f"{target}: {args.examples} examples, no contract broken")


if __name__ == "__main__":
    main()
