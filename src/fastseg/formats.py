"""Label formats: box prompts in (COCO, YOLO), masks out (COCO instances, YOLO-seg, labelme).

Pure functions over JSON-able dicts and text; no model. Conventions:

- Pixel coordinates are XY in COCO's continuous frame (pixel ``(r, c)`` covers ``[c, c + 1] x [r, r + 1]``),
  boxes are XYXY in pixels unless a name says XYWH (COCO's ``bbox``), sizes are ``(H, W)``.
- Polygons come from :mod:`fastseg.polygons` (holes joined into their part as keyholes). YOLO-seg
  coordinates are these divided by the image's width and height, as ultralytics' own COCO converter writes them.
- Readers check what they read and raise ``ValueError`` naming the file, the entry and the problem. They
  refuse files larger than :data:`MAX_INPUT_BYTES` before parsing, since a parsed JSON document takes
  several times its size in memory.
- Writers write atomically (:func:`fastseg.paths.atomic_write`), creating the parent folder.
"""

from __future__ import annotations

import json
import math
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
import numpy.typing as npt

from fastseg.paths import atomic_write
from fastseg.polygons import join_parts

__all__ = [
    "LABELME_VERSION",
    "MAX_INPUT_BYTES",
    "CocoPrompts",
    "Prompt",
    "coco_annotation",
    "labelme_document",
    "labelme_shapes",
    "read_coco_prompts",
    "read_labelme",
    "read_yolo_prompts",
    "read_yolo_seg",
    "write_coco",
    "write_labelme",
    "write_yolo_seg",
    "yolo_seg_lines",
]

FloatArray = npt.NDArray[np.float64]
#: Input files larger than this (bytes) are refused unread.
MAX_INPUT_BYTES = 1 << 30
#: The labelme file format version written (labelme 5 reads it).
LABELME_VERSION = "5.5.0"


@dataclass(frozen=True)
class Prompt:
    """The prompts of one object to segment.

    Attributes:
        box_xyxy: box in pixels ``(x0, y0, x1, y1)``, or None.
        points: positive point prompts, XY in pixels (may be empty).
        category_id: COCO category id, or the YOLO class index.
        source_id: the input annotation's ``id`` (COCO), or the line number (YOLO, from 1).
        score: the input's ``score`` (COCO) or confidence (YOLO), if given.
    """

    box_xyxy: tuple[float, float, float, float] | None
    points: tuple[tuple[float, float], ...]
    category_id: int
    source_id: int | str | None = None
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ``box`` (XYXY list or None), ``points`` ``[[x, y], ...]``, ``labels`` (1 per point:
        all positive), ``category_id``, ``source_id``, ``score``."""
        return {
            "box": None if self.box_xyxy is None else list(self.box_xyxy),
            "points": [list(p) for p in self.points],
            "labels": [1] * len(self.points),
            "category_id": self.category_id,
            "source_id": self.source_id,
            "score": self.score,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Prompt:
        """The inverse of :meth:`to_dict`."""
        box = d.get("box")
        return cls(
            box_xyxy=None if box is None else (float(box[0]), float(box[1]), float(box[2]), float(box[3])),
            points=tuple((float(x), float(y)) for x, y in d.get("points") or ()),
            category_id=int(d["category_id"]),
            source_id=d.get("source_id"),
            score=None if d.get("score") is None else float(d["score"]),
        )


@dataclass(frozen=True)
class CocoPrompts:
    """A COCO dataset read as prompts: its ``images`` and ``categories`` entries as given, and the
    prompts of each image keyed by ``file_name`` (every image is a key, those without annotations too)."""

    images: list[dict[str, Any]]
    categories: list[dict[str, Any]]
    by_file: dict[str, list[Prompt]]


# ----------------------------------------------------------------------------------------------
# Reading helpers
# ----------------------------------------------------------------------------------------------


def _read_text(path: Path, max_bytes: int) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{path}: {size} bytes, more than the {max_bytes} bytes read at most (max_bytes)")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from None


def _read_json(path: Path, max_bytes: int) -> Any:
    text = _read_text(path, max_bytes)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def _is_number(v: object) -> TypeGuard[float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _numbers(v: object, n: int | None = None) -> list[float] | None:
    """``v`` as a list of finite numbers (of length ``n`` if given), else None."""
    if not isinstance(v, list) or (n is not None and len(v) != n) or not all(_is_number(x) for x in v):
        return None
    return [float(x) for x in v]


def _entries(path: Path, doc: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    value = doc.get(key)
    if not isinstance(value, list):
        raise ValueError(f"{path}: '{key}' must be a list, got {type(value).__name__}")
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: {key}[{i}] must be an object, got {type(entry).__name__}")
    return value


def _unique_ids(path: Path, entries: list[dict[str, Any]], key: str) -> dict[int, dict[str, Any]]:
    by_id: dict[int, dict[str, Any]] = {}
    for i, entry in enumerate(entries):
        ident = entry.get("id")
        if not _is_int(ident):
            raise ValueError(f"{path}: {key}[{i}]: 'id' must be an integer, got {ident!r}")
        if ident in by_id:
            raise ValueError(f"{path}: {key}[{i}]: id {ident} is used twice")
        by_id[ident] = entry
    return by_id


# ----------------------------------------------------------------------------------------------
# Prompts in: COCO
# ----------------------------------------------------------------------------------------------


def read_coco_prompts(path: str | Path, max_bytes: int = MAX_INPUT_BYTES) -> CocoPrompts:
    """Box (and keypoint) prompts of a COCO dataset JSON.

    Every annotation becomes one :class:`Prompt`: its ``bbox`` ``[x, y, w, h]`` (pixels, ``w, h > 0``)
    as an XYXY box, and the ``keypoints`` ``[x, y, v, ...]`` with ``v > 0`` as positive points; it needs
    at least one of the two. ``image_id`` and ``category_id`` must name an image and a category of the
    file; ``score`` is kept if present.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is larger than ``max_bytes``, not JSON, or not a COCO dataset as above
            (the message names the file, the entry and the field).
    """
    path = Path(path)
    doc = _read_json(path, max_bytes)
    if not isinstance(doc, dict):
        raise ValueError(
            f"{path}: expected a COCO dataset object with 'images', 'annotations' and 'categories', "
            f"got a JSON {type(doc).__name__}"
        )
    images = _entries(path, doc, "images")
    categories = _entries(path, doc, "categories")
    annotations = _entries(path, doc, "annotations")
    image_by_id = _unique_ids(path, images, "images")
    category_ids = set(_unique_ids(path, categories, "categories"))
    by_file: dict[str, list[Prompt]] = {}
    file_of: dict[int, str] = {}
    for i, image in enumerate(images):
        name = image.get("file_name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{path}: images[{i}]: 'file_name' must be a non-empty string, got {name!r}")
        if name in by_file:
            raise ValueError(f"{path}: images[{i}]: file_name {name!r} is listed twice")
        by_file[name] = []
        file_of[image["id"]] = name
    for i, ann in enumerate(annotations):
        where = f"{path}: annotations[{i}]" + (f" (id {ann['id']!r})" if "id" in ann else "")
        prompt = _coco_prompt(ann, where, image_by_id, category_ids)
        by_file[file_of[ann["image_id"]]].append(prompt)
    return CocoPrompts(images=images, categories=categories, by_file=by_file)


def _coco_prompt(ann: dict[str, Any], where: str, images: Mapping[int, Any], categories: set[int]) -> Prompt:
    image_id, category_id = ann.get("image_id"), ann.get("category_id")
    if not _is_int(image_id) or image_id not in images:
        raise ValueError(f"{where}: 'image_id' {image_id!r} is not the id of an image in the file")
    if not _is_int(category_id) or category_id not in categories:
        raise ValueError(f"{where}: 'category_id' {category_id!r} is not the id of a category in the file")
    box = None
    if "bbox" in ann:
        xywh = _numbers(ann["bbox"], 4)
        if xywh is None:
            raise ValueError(f"{where}: 'bbox' must be 4 finite numbers [x, y, w, h], got {ann['bbox']!r}")
        x, y, w, h = xywh
        if w <= 0 or h <= 0:
            raise ValueError(f"{where}: 'bbox' width and height must be > 0, got {ann['bbox']!r}")
        box = (x, y, x + w, y + h)
    points: list[tuple[float, float]] = []
    if "keypoints" in ann:
        kp = _numbers(ann["keypoints"])
        if kp is None or len(kp) % 3:
            raise ValueError(f"{where}: 'keypoints' must be finite numbers [x, y, v, ...], got {ann['keypoints']!r}")
        points = [(kp[j], kp[j + 1]) for j in range(0, len(kp), 3) if kp[j + 2] > 0]
    if box is None and not points:
        raise ValueError(f"{where}: needs a 'bbox' or labelled 'keypoints' to prompt with")
    score = ann.get("score")
    if score is not None and not _is_number(score):
        raise ValueError(f"{where}: 'score' must be a finite number, got {score!r}")
    source = ann.get("id")
    return Prompt(
        box_xyxy=box,
        points=tuple(points),
        category_id=category_id,
        source_id=source if isinstance(source, (int, str)) and not isinstance(source, bool) else None,
        score=None if score is None else float(score),
    )


# ----------------------------------------------------------------------------------------------
# Prompts in: YOLO boxes
# ----------------------------------------------------------------------------------------------


def _yolo_values(line: str, where: str) -> tuple[int, list[float]]:
    """Class index and the finite numbers of a YOLO line."""
    tokens = line.split()
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        raise ValueError(f"{where}: expected numbers, got {line.strip()!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{where}: non-finite number in {line.strip()!r}")
    cls = values[0]
    if cls < 0 or cls != int(cls):
        raise ValueError(f"{where}: the class must be an integer >= 0, got {tokens[0]!r}")
    return int(cls), values[1:]


def _check_class(cls: int, names: Sequence[str] | None, where: str) -> None:
    if names is not None and cls >= len(names):
        raise ValueError(f"{where}: class {cls} is not one of the {len(names)} names")


def _check_unit(values: Sequence[float], where: str) -> None:
    if any(v < 0 or v > 1 for v in values):
        raise ValueError(f"{where}: coordinates must be normalised to [0, 1], got {[float(v) for v in values]}")


def _label_files(folder: Path) -> Iterator[tuple[str, Path]]:
    for file in sorted(folder.rglob("*.txt")):
        key = file.relative_to(folder).with_suffix("").as_posix()
        if key != "classes":  # labelImg's list of names beside the labels
            yield key, file


def read_yolo_prompts(
    folder: str | Path,
    image_sizes: Mapping[str, tuple[int, int]] | Callable[[str], tuple[int, int]],
    names: Sequence[str] | None = None,
    max_bytes: int = MAX_INPUT_BYTES,
) -> dict[str, list[Prompt]]:
    """Box prompts of a folder of YOLO detection labels.

    One ``<key>.txt`` per image (``key``: the path relative to ``folder`` without the suffix; sub-folders
    are searched; a ``classes.txt`` at the top is skipped), one object per line:
    ``class cx cy w h [conf]``, the box normalised to ``[0, 1]`` by the image's width and height.

    Args:
        folder: the labels folder.
        image_sizes: ``(H, W)`` of each image, as a mapping from key or a function of the key (called only
            for files with at least one line).
        names: the class names; class indices must be below ``len(names)`` if given.
        max_bytes: larger label files are refused unread.

    Returns:
        key -> prompts (boxes in pixels, clipped to the image; ``category_id`` the class index,
        ``source_id`` the line number from 1, ``score`` the confidence), in sorted key order.

    Raises:
        ValueError: a line is not a box (a segmentation polygon, too few numbers, a value outside
            ``[0, 1]``...), or an image size is missing or not positive; the message names file and line.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (YOLO labels)")
    out: dict[str, list[Prompt]] = {}
    for key, file in _label_files(folder):
        lines = [(n, line) for n, line in enumerate(_read_text(file, max_bytes).splitlines(), 1) if line.strip()]
        prompts: list[Prompt] = []
        if lines:
            h, w = _image_size(image_sizes, key, file)
            for n, line in lines:
                where = f"{file}:{n}"
                cls, values = _yolo_values(line, where)
                if len(values) >= 6:
                    raise ValueError(
                        f"{where}: {len(values) + 1} values look like a segmentation polygon; "
                        "box prompts are 'class cx cy w h [conf]'"
                    )
                if len(values) not in (4, 5):
                    raise ValueError(
                        f"{where}: expected 'class cx cy w h [conf]' (5 or 6 values), got {len(values) + 1}"
                    )
                _check_class(cls, names, where)
                cx, cy, bw, bh = values[:4]
                _check_unit(values[:4], where)
                if bw <= 0 or bh <= 0:
                    raise ValueError(f"{where}: box width and height must be > 0, got {bw}, {bh}")
                box = (
                    max(0.0, (cx - bw / 2) * w),
                    max(0.0, (cy - bh / 2) * h),
                    min(float(w), (cx + bw / 2) * w),
                    min(float(h), (cy + bh / 2) * h),
                )
                score = values[4] if len(values) == 5 else None
                prompts.append(Prompt(box_xyxy=box, points=(), category_id=cls, source_id=n, score=score))
        out[key] = prompts
    return out


def _image_size(
    image_sizes: Mapping[str, tuple[int, int]] | Callable[[str], tuple[int, int]], key: str, file: Path
) -> tuple[int, int]:
    if callable(image_sizes):
        size = image_sizes(key)
    elif key in image_sizes:
        size = image_sizes[key]
    else:
        raise ValueError(f"{file}: no image size for {key!r} (image_sizes has no such key)")
    if len(size) != 2 or not all(_is_int(v) or isinstance(v, np.integer) for v in size) or min(size) <= 0:
        raise ValueError(f"{file}: image size must be (H, W) positive integers, got {size!r}")
    return int(size[0]), int(size[1])


# ----------------------------------------------------------------------------------------------
# Masks out: COCO instances
# ----------------------------------------------------------------------------------------------


def _mask_api() -> Any:
    try:
        from pycocotools import mask as mask_api
    except ImportError as exc:  # optional dependency
        raise ImportError("COCO output needs pycocotools: pip install 'fastseg[rle]'") from exc
    return mask_api


def _flat(polygons: Sequence[npt.ArrayLike]) -> list[list[float]]:
    out = []
    for i, p in enumerate(polygons):
        xy = np.asarray(p, dtype=np.float64)
        xy = xy.reshape(-1, 2) if xy.ndim == 1 and xy.size % 2 == 0 else xy
        if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) < 3 or not np.isfinite(xy).all():
            raise ValueError(
                f"polygon {i} must be (K, 2) XY or flat [x1, y1, ...], finite, K >= 3; got shape {np.shape(p)}"
            )
        out.append(np.round(xy, 3).ravel().tolist())
    return out


def coco_annotation(
    ann_id: int,
    image_id: int,
    category_id: int,
    mask: npt.NDArray[np.bool_] | None = None,
    rle: Mapping[str, Any] | None = None,
    polygons: Sequence[npt.ArrayLike] | None = None,
    score: float | None = None,
    extra: Mapping[str, Any] | None = None,
    *,
    area: int | None = None,
    bbox: Sequence[float] | None = None,
) -> dict[str, Any]:
    """One COCO instance annotation (``iscrowd`` 0).

    Args:
        ann_id, image_id, category_id: the annotation's ids.
        mask: the ``(H, W)`` bool mask, or
        rle: its COCO RLE ``{"size": [H, W], "counts": str}`` (used as given when both are passed).
        polygons: if given, ``segmentation`` is these polygons (``(K, 2)`` XY arrays or flat ``[x1, y1,
            x2, y2, ...]`` lists; at least one, each of at least 3 vertices, as COCO readers need),
            else the RLE.
        score: added as ``score`` if given.
        extra: more keys; they may not replace a standard key.
        area, bbox: the mask's pixel count and its XYWH box, if already known; otherwise computed from
            ``mask`` / ``rle`` with pycocotools.

    Returns:
        a JSON-able dict with ``id``, ``image_id``, ``category_id``, ``iscrowd``, ``area``, ``bbox``,
        ``segmentation`` (and ``score``, ``extra``'s keys).
    """
    if rle is None and mask is not None:
        if mask.ndim != 2 or mask.dtype != np.bool_:
            raise ValueError(f"mask must be (H, W) bool, got {mask.shape} {mask.dtype}")
        encoded = _mask_api().encode(np.asfortranarray(mask.astype(np.uint8)))
        rle = {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}
    if rle is not None and (not isinstance(rle.get("counts"), str) or len(rle.get("size", ())) != 2):
        raise ValueError(f"rle must be COCO RLE {{'size': [H, W], 'counts': str}}, got {dict(rle)!r:.200}")
    if area is None or bbox is None:
        if rle is None:
            raise ValueError("coco_annotation needs the mask for area and bbox: pass mask or rle (or area and bbox)")
        mask_api = _mask_api()
        c_rle = {"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")}
        area = int(mask_api.area(c_rle)) if area is None else area
        bbox = [float(v) for v in mask_api.toBbox(c_rle)] if bbox is None else bbox
    if len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise ValueError(f"bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
    ann: dict[str, Any] = {
        "id": int(ann_id),
        "image_id": int(image_id),
        "category_id": int(category_id),
        "iscrowd": 0,
        "area": int(area),
        "bbox": [float(v) for v in bbox],
    }
    if polygons is not None:
        if len(polygons) == 0:
            raise ValueError("polygons is empty: COCO readers need at least one polygon (write the RLE instead)")
        ann["segmentation"] = _flat(polygons)
    elif rle is not None:
        ann["segmentation"] = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"]}
    else:
        raise ValueError("coco_annotation needs a segmentation: pass mask, rle or polygons")
    if score is not None:
        ann["score"] = float(score)
    for key, value in (extra or {}).items():
        if key in ann:
            raise ValueError(f"extra may not replace the annotation's {key!r}")
        ann[key] = value
    return ann


def write_coco(
    path: str | Path,
    images: Iterable[Mapping[str, Any]],
    annotations: Iterable[Mapping[str, Any]],
    categories: Sequence[Mapping[str, Any]],
    errors: Iterable[Any] = (),
    info: Mapping[str, Any] | None = None,
) -> int:
    """Write a COCO instances JSON (``pycocotools.coco.COCO`` reads it), streaming the annotations.

    The annotations are written one by one as they come (a generator is fine: the whole list is never
    held). ``images`` and ``errors`` are read after them, so lists the generator fills as it goes are
    complete. The file holds ``info``, ``categories``, ``annotations``, ``images`` and ``errors`` (what
    went wrong, JSON-able entries, ``[]`` if nothing). Annotation, image and category ids must be unique
    integers and the annotations must name listed images and categories; otherwise ``ValueError`` is
    raised and nothing is written.

    Returns:
        the number of annotations written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    category_ids = _ids(categories, "categories")
    ann_ids = array("q")  # 8 bytes per annotation, checked for repeats at the end
    used_images: set[int] = set()
    with atomic_write(path, binary=False) as f:
        f.write('{"info":' + _dumps(dict(info or {})))
        f.write(',\n"categories":' + _dumps([dict(c) for c in categories]))
        f.write(',\n"annotations":[')
        for n, ann in enumerate(annotations):
            ident, image_id, category_id = ann.get("id"), ann.get("image_id"), ann.get("category_id")
            if not (_is_int(ident) and _is_int(image_id) and _is_int(category_id)):
                raise ValueError(f"annotation {n}: id, image_id and category_id must be integers, got {ann!r:.200}")
            if not -(2**63) <= ident < 2**63:
                raise ValueError(f"annotation {n}: id {ident} is out of the 64-bit range")
            if category_id not in category_ids:
                raise ValueError(f"annotation {n}: category_id {category_id} is not in categories")
            ann_ids.append(ident)
            used_images.add(image_id)
            f.write(("\n" if n == 0 else ",\n") + _dumps(dict(ann)))
        ids = np.sort(np.frombuffer(ann_ids, dtype=np.int64))
        repeated = ids[1:][ids[1:] == ids[:-1]]
        if repeated.size:
            raise ValueError(f"annotation id {int(repeated[0])} is used twice")
        image_list = [dict(image) for image in images]
        missing = used_images - _ids(image_list, "images")
        if missing:
            raise ValueError(f"annotations name images that are not in images: {sorted(missing)[:10]}")
        f.write('],\n"images":' + _dumps(image_list))
        f.write(',\n"errors":' + _dumps(list(errors)) + "}\n")
    return len(ids)


def _dumps(value: Any) -> str:
    """Compact JSON; NaN and infinity are refused (they are not JSON)."""
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def _ids(entries: Iterable[Mapping[str, Any]], key: str) -> set[int]:
    seen: set[int] = set()
    for i, entry in enumerate(entries):
        ident = entry.get("id")
        if not _is_int(ident):
            raise ValueError(f"{key}[{i}]: 'id' must be an integer, got {ident!r}")
        if ident in seen:
            raise ValueError(f"{key}[{i}]: id {ident} is used twice")
        seen.add(ident)
    return seen


# ----------------------------------------------------------------------------------------------
# Masks out: YOLO-seg
# ----------------------------------------------------------------------------------------------


def yolo_seg_lines(
    instances: Iterable[tuple[int, Sequence[npt.ArrayLike]]], size: tuple[int, int], parts: str = "join"
) -> str:
    """YOLO segmentation label text: one line ``class x1 y1 x2 y2 ...`` per instance.

    Args:
        instances: ``(class_index, polygons)`` per object, polygons XY in pixels (COCO frame). An object
            without polygons writes no line.
        size: the image's ``(H, W)``; coordinates are divided by ``W`` and ``H`` (and clipped to
            ``[0, 1]``).
        parts: an object of several parts becomes one polygon: ``"join"`` links the parts with
            zero-width bridges (:func:`fastseg.polygons.join_parts`, what ultralytics' converters do),
            ``"largest"`` keeps the first polygon (:func:`~fastseg.polygons.mask_to_polygons` puts the
            largest first).

    Returns:
        the text, one line per object, each ending in a newline.
    """
    if parts not in ("join", "largest"):
        raise ValueError(f"parts must be 'join' or 'largest', got {parts!r}")
    h, w = (int(v) for v in size)
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be (H, W) with positive sides, got {size}")
    scale = np.array([w, h], dtype=np.float64)
    lines = []
    for cls, polygons in instances:
        if not (_is_int(cls) or isinstance(cls, np.integer)) or int(cls) < 0:
            raise ValueError(f"class index must be an integer >= 0, got {cls!r}")
        if len(polygons) == 0:
            continue
        xy = join_parts(polygons) if parts == "join" else join_parts(polygons[:1])
        coords = np.clip(xy / scale, 0.0, 1.0).ravel()
        lines.append(" ".join([str(int(cls)), *(f"{v:.6g}" for v in coords)]) + "\n")
    return "".join(lines)


def write_yolo_seg(path: str | Path, text: str) -> None:
    """Write YOLO label text (from :func:`yolo_seg_lines`) atomically."""
    _write_text(Path(path), text)


def read_yolo_seg(
    path: str | Path, names: Sequence[str] | None = None, max_bytes: int = MAX_INPUT_BYTES
) -> list[tuple[int, FloatArray]]:
    """Read a YOLO segmentation label file.

    Returns:
        ``(class_index, (K, 2) float64 XY normalised to [0, 1])`` per line, ``K >= 3``.

    Raises:
        ValueError: a line is not ``class x1 y1 x2 y2 x3 y3 ...`` (a class index and at least 3 points),
            has a coordinate outside ``[0, 1]`` or a class not in ``names``; the message names file and line.
    """
    path = Path(path)
    out = []
    for n, line in enumerate(_read_text(path, max_bytes).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        cls, values = _yolo_values(line, where)
        if len(values) < 6 or len(values) % 2:
            raise ValueError(
                f"{where}: expected 'class x1 y1 x2 y2 x3 y3 ...' (a class and at least 3 points), "
                f"got {len(values) + 1} values"
            )
        _check_class(cls, names, where)
        _check_unit(values, where)
        out.append((cls, np.array(values, dtype=np.float64).reshape(-1, 2)))
    return out


# ----------------------------------------------------------------------------------------------
# Masks out: labelme
# ----------------------------------------------------------------------------------------------


def labelme_shapes(
    label: str, polygons: Sequence[npt.ArrayLike], group_id: int | None = None, description: str = ""
) -> list[dict[str, Any]]:
    """labelme ``polygon`` shapes of one object, one per part (``(K, 2)`` XY in pixels).

    labelme ties the parts of one object by a shared ``group_id``: pass a distinct one per object when
    it may have several parts.
    """
    return [_shape({"label": label, "points": p, "group_id": group_id, "description": description}) for p in polygons]


def _shape(given: Mapping[str, Any]) -> dict[str, Any]:
    """A labelme shape with every key labelme writes (defaults: a polygon, no flags, no description)."""
    label = given.get("label")
    if not isinstance(label, str) or not label:
        raise ValueError(f"a shape's label must be a non-empty string, got {label!r}")
    points = np.asarray(given.get("points", ()), dtype=np.float64)
    return {
        **given,
        "label": label,
        "points": np.round(points, 3).tolist(),
        "group_id": given.get("group_id"),
        "description": given.get("description", ""),
        "shape_type": given.get("shape_type", "polygon"),
        "flags": given.get("flags", {}),
        "mask": given.get("mask"),
    }


def labelme_document(image_path: str, size: tuple[int, int], shapes: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A labelme JSON document (``imageData`` None: labelme loads the image from ``imagePath``).

    Args:
        image_path: the image's path relative to the JSON file's folder.
        size: the image's ``(H, W)``.
        shapes: from :func:`labelme_shapes`, or dicts with at least ``label`` and ``points`` (the other
            keys get labelme's defaults: ``shape_type`` "polygon", ``group_id`` None, ``flags`` {},
            ``description`` ""). Points must lie within the image (``[0, W] x [0, H]``).
    """
    h, w = (int(v) for v in size)
    doc: dict[str, Any] = {
        "version": LABELME_VERSION,
        "flags": {},
        "shapes": [_shape(s) for s in shapes],
        "imagePath": str(image_path),
        "imageData": None,
        "imageHeight": h,
        "imageWidth": w,
    }
    _check_labelme(doc, "labelme document")
    return doc


def write_labelme(path: str | Path, doc: Mapping[str, Any]) -> None:
    """Write a labelme document (from :func:`labelme_document`) atomically."""
    _check_labelme(doc, str(path))
    _write_text(Path(path), json.dumps(dict(doc), indent=2, allow_nan=False) + "\n")


def read_labelme(path: str | Path, max_bytes: int = MAX_INPUT_BYTES) -> dict[str, Any]:
    """Read and check a labelme JSON file: image size and path, and every shape's label and points
    (finite, within the image; a polygon has at least 3)."""
    path = Path(path)
    doc = _read_json(path, max_bytes)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a labelme JSON object, got a JSON {type(doc).__name__}")
    _check_labelme(doc, str(path))
    return doc


def _check_labelme(doc: Mapping[str, Any], where: str) -> None:
    h, w = doc.get("imageHeight"), doc.get("imageWidth")
    if not (_is_int(h) and _is_int(w) and h > 0 and w > 0):
        raise ValueError(f"{where}: imageHeight and imageWidth must be positive integers, got {h!r}, {w!r}")
    if not isinstance(doc.get("imagePath"), str):
        raise ValueError(f"{where}: imagePath must be a string, got {doc.get('imagePath')!r}")
    shapes = doc.get("shapes")
    if not isinstance(shapes, list):
        raise ValueError(f"{where}: shapes must be a list, got {type(shapes).__name__}")
    for i, shape in enumerate(shapes):
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str):
            raise ValueError(f"{where}: shapes[{i}] must be an object with a string 'label'")
        points = shape.get("points")
        pairs = [_numbers(p, 2) for p in points] if isinstance(points, list) else [None]
        if any(p is None for p in pairs):
            raise ValueError(f"{where}: shapes[{i}]: points must be [[x, y], ...] of finite numbers")
        if shape.get("shape_type", "polygon") == "polygon" and len(pairs) < 3:
            raise ValueError(f"{where}: shapes[{i}]: a polygon needs at least 3 points, got {len(pairs)}")
        for p in pairs:
            assert p is not None
            if not (0 <= p[0] <= w and 0 <= p[1] <= h):
                raise ValueError(f"{where}: shapes[{i}]: point {p} is outside the {w}x{h} image")


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, binary=False) as f:
        f.write(text)
