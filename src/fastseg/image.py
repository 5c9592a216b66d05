"""Turning what users pass as an image into one array layout: RGB uint8 ``(H, W, 3)``."""

from __future__ import annotations

import os
import re
import struct
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

#: The largest image fastseg takes: at most this many pixels per side ...
MAX_IMAGE_SIDE = 1 << 15
#: ... and at most this many pixels in all. Images and image embeddings beyond them are refused
#: (a mask of the largest image is 256 MiB; an embedding file claiming a larger image would make
#: ``predict`` allocate without bound). Files are also bounded by Pillow's own, lower
#: ``PIL.Image.MAX_IMAGE_PIXELS`` (a guard against decompression bombs).
MAX_IMAGE_PIXELS = 1 << 28

#: What every public entry point accepts as an image: a file path, a PIL image, or a uint8 array.
ImageLike: TypeAlias = "str | os.PathLike[str] | PILImage | npt.NDArray[Any]"

# Pillow warns (DecompressionBombWarning) past MAX_IMAGE_PIXELS and raises past twice that; load_image
# turns both into a ValueError. warnings.catch_warnings changes process-wide state: one opener at a time.
_OPEN_LOCK = threading.Lock()


def check_image_size(height: int, width: int, what: str = "image") -> None:
    """Raise ``ValueError`` unless ``1 <= height, width <= MAX_IMAGE_SIDE`` and
    ``height * width <= MAX_IMAGE_PIXELS``; the message names ``what`` and both limits."""
    h, w = int(height), int(width)
    if h < 1 or w < 1:
        raise ValueError(f"{what} must be at least 1x1 pixels, got {h}x{w}")
    if h > MAX_IMAGE_SIDE or w > MAX_IMAGE_SIDE or h * w > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"{what} is {h}x{w} ({h * w:,} pixels); fastseg takes images of at most {MAX_IMAGE_SIDE:,} pixels "
            f"per side and at most {MAX_IMAGE_PIXELS:,} pixels in all"
        )


def load_image(image: ImageLike) -> npt.NDArray[np.uint8]:
    """Return ``image`` as a C-contiguous RGB uint8 array ``(H, W, 3)``.

    Accepts a file path, a PIL image, or a uint8 array ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` (RGB)
    or ``(H, W, 4)`` (RGBA). Grayscale is repeated into three channels; the alpha channel is dropped
    (colours are kept as they are, not blended onto a background). Files are decoded with Pillow and
    turned upright from their EXIF orientation, as a photo viewer shows them.

    Images are at most :data:`MAX_IMAGE_SIDE` pixels per side and :data:`MAX_IMAGE_PIXELS` pixels;
    files also at most Pillow's ``PIL.Image.MAX_IMAGE_PIXELS`` (refused from the header, before decoding).

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: an unreadable file, an empty or too large image, or an array of the wrong dtype or shape.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(image, (str, os.PathLike)):
        path = Path(os.fspath(image))
        if not path.exists():
            raise FileNotFoundError(f"image not found: {path}")
        try:
            with _open(path) as pil:
                check_image_size(pil.height, pil.width, f"image {path}")  # from the header, before decoding
                return _from_pil(ImageOps.exif_transpose(pil))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ValueError(_bomb_message(path, exc)) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ImportError, EOFError, struct.error) as exc:
            # ImportError: a third-party opener patched into Pillow (e.g. ultralytics' HEIF hook) that
            # lacks its own dependency; the file is unreadable all the same.
            raise ValueError(f"cannot read {path} as an image: {exc}") from exc
    if isinstance(image, Image.Image):
        return _from_pil(image)
    if isinstance(image, np.ndarray):
        return _from_array(image)
    raise TypeError(f"image must be a file path, a PIL image or a numpy array, got {type(image).__name__}")


def _open(path: Path) -> PILImage:
    """``PIL.Image.open`` with Pillow's decompression-bomb warning raised as an error."""
    from PIL import Image

    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(path)


def _bomb_message(path: Path, exc: Exception) -> str:
    from PIL import Image

    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found[1]):,} pixels" if found else "more pixels"
    return (
        f"cannot read {path}: the image has {size}, more than the {Image.MAX_IMAGE_PIXELS:,} Pillow decodes "
        "(PIL.Image.MAX_IMAGE_PIXELS, its guard against decompression bombs)"
    )


def _from_pil(pil: PILImage) -> npt.NDArray[np.uint8]:
    if pil.width == 0 or pil.height == 0:
        raise ValueError(f"image is empty: {pil.width}x{pil.height}")
    check_image_size(pil.height, pil.width)
    if pil.mode != "RGB":
        if pil.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            raise ValueError(f"image mode {pil.mode!r} (16/32-bit) is not supported; expected 8-bit RGB or grayscale")
        try:
            pil = pil.convert("RGB")
        except ValueError as exc:  # a mode Pillow cannot convert to RGB, e.g. premultiplied "La" / "RGBa"
            raise ValueError(f"image mode {pil.mode!r} cannot be converted to RGB: {exc}") from None
    return np.ascontiguousarray(np.asarray(pil, dtype=np.uint8))


def _from_array(array: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    if array.dtype != np.uint8:
        hint = " (scale 0..1 floats with (a * 255).round().astype(np.uint8))" if array.dtype.kind == "f" else ""
        raise ValueError(f"image array must be uint8, got {array.dtype}{hint}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"image array must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image is empty: shape {array.shape}")
    check_image_size(array.shape[0], array.shape[1])
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        array = array[:, :, :3]
    return np.ascontiguousarray(array)
