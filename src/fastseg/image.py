"""Turning what users pass as an image into one array layout: RGB uint8 ``(H, W, 3)``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

#: What every public entry point accepts as an image: a file path, a PIL image, or a uint8 array.
ImageLike: TypeAlias = "str | os.PathLike[str] | PILImage | npt.NDArray[Any]"


def load_image(image: ImageLike) -> npt.NDArray[np.uint8]:
    """Return ``image`` as a C-contiguous RGB uint8 array ``(H, W, 3)``.

    Accepts a file path, a PIL image, or a uint8 array ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` (RGB)
    or ``(H, W, 4)`` (RGBA). Grayscale is repeated into three channels; the alpha channel is dropped
    (colours are kept as they are, not blended onto a background). Files are decoded with Pillow and
    turned upright from their EXIF orientation, as a photo viewer shows them.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: an unreadable file, an empty image, or an array of the wrong dtype or shape.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(image, (str, os.PathLike)):
        path = Path(os.fspath(image))
        if not path.exists():
            raise FileNotFoundError(f"image not found: {path}")
        try:
            with Image.open(path) as pil:
                return _from_pil(ImageOps.exif_transpose(pil))
        except (UnidentifiedImageError, OSError, SyntaxError, ImportError) as exc:
            # ImportError: a third-party opener patched into Pillow (e.g. ultralytics' HEIF hook) that
            # lacks its own dependency; the file is unreadable all the same.
            raise ValueError(f"cannot read {path} as an image: {exc}") from exc
    if isinstance(image, Image.Image):
        return _from_pil(image)
    if isinstance(image, np.ndarray):
        return _from_array(image)
    raise TypeError(f"image must be a file path, a PIL image or a numpy array, got {type(image).__name__}")


def _from_pil(pil: PILImage) -> npt.NDArray[np.uint8]:
    if pil.width == 0 or pil.height == 0:
        raise ValueError(f"image is empty: {pil.width}x{pil.height}")
    if pil.mode != "RGB":
        if pil.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            raise ValueError(f"image mode {pil.mode!r} (16/32-bit) is not supported; expected 8-bit RGB or grayscale")
        pil = pil.convert("RGB")
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
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        array = array[:, :, :3]
    return np.ascontiguousarray(array)
