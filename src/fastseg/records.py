"""Everything mode's records: one dict per mask, as the originals return them, and their outputs.

A record holds ``segmentation`` (in one of :data:`OUTPUT_MODES`), ``area``, ``bbox`` (XYWH) and the
family's score fields. :class:`MaskRecords` is the list ``Predictor.everything`` returns; it also
offers the :class:`~fastseg.results.SegmentationResult` view (masks, scores, boxes) of the same masks.
JSON files hold the records with COCO RLE segmentations (``pycocotools.mask.decode`` reads them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from fastseg.paths import atomic_write
from fastseg.results import SegmentationResult
from fastseg.rle import StoredMask, coco_encode_mask, coco_encode_rle, decode, masks_to_rle, rle_to_mask

Record = dict[str, Any]

#: How a record's ``segmentation`` is stored (``SamAutomaticMaskGenerator``'s ``output_mode``).
OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


def check_output_mode(output_mode: object) -> str:
    if output_mode not in OUTPUT_MODES:
        raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
    return str(output_mode)


def encode_segmentation(mask: npt.NDArray[np.bool_] | StoredMask, output_mode: str) -> Any:
    """A record's ``segmentation`` for an ``(H, W)`` bool mask (or a :class:`StoredMask`) in ``output_mode``."""
    if output_mode == "binary_mask":
        return mask.mask() if isinstance(mask, StoredMask) else mask
    if output_mode == "coco_rle":
        return coco_encode_mask(mask.mask() if isinstance(mask, StoredMask) else mask)
    if isinstance(mask, StoredMask):
        return {"size": list(mask.size), "counts": mask.rle().tolist()}
    return {"size": list(mask.shape), "counts": masks_to_rle(mask[None])[0].tolist()}


def segmentation_to_mask(segmentation: Any) -> npt.NDArray[np.bool_]:
    """A record's ``segmentation`` in any output mode -> ``(H, W)`` bool."""
    if isinstance(segmentation, np.ndarray):
        if segmentation.ndim != 2:
            raise ValueError(f"a binary mask segmentation must be (H, W), got {segmentation.shape}")
        return segmentation.astype(bool, copy=False)
    if isinstance(segmentation, dict) and "size" in segmentation and "counts" in segmentation:
        h, w = (int(v) for v in segmentation["size"])
        counts = segmentation["counts"]
        if isinstance(counts, (str, bytes)):
            mask: npt.NDArray[np.bool_] = decode([segmentation])[0]
            return mask
        return rle_to_mask(counts, (h, w))
    raise ValueError(
        "segmentation must be an (H, W) bool array or an RLE dict with 'size' and 'counts', "
        f"got {type(segmentation).__name__}"
    )


def iter_masks(records: Iterable[Record]) -> Iterator[npt.NDArray[np.bool_]]:
    """The records' masks one at a time (no ``(N, H, W)`` stack)."""
    for record in records:
        yield segmentation_to_mask(record["segmentation"])


def records_to_masks(records: Sequence[Record], image_size: tuple[int, int]) -> npt.NDArray[np.bool_]:
    """All masks ``(N, H, W)`` bool (``N`` may be 0)."""
    out = np.zeros((len(records), *image_size), dtype=bool)
    for i, mask in enumerate(iter_masks(records)):
        if mask.shape != tuple(image_size):
            raise ValueError(f"record {i} has a {mask.shape} mask, expected {tuple(image_size)}")
        out[i] = mask
    return out


class _DecodedMasks(Sequence[npt.NDArray[np.bool_]]):
    """The records' masks as a sequence decoded on access (for drawing without a full stack)."""

    def __init__(self, records: Sequence[Record]) -> None:
        self._records = records

    def __len__(self) -> int:
        return len(self._records)

    @overload
    def __getitem__(self, index: int) -> npt.NDArray[np.bool_]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[npt.NDArray[np.bool_]]: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [segmentation_to_mask(r["segmentation"]) for r in self._records[index]]
        return segmentation_to_mask(self._records[index]["segmentation"])


def overlay(image: npt.NDArray[np.uint8], records: Sequence[Record], alpha: float = 0.5) -> npt.NDArray[np.uint8]:
    """:func:`fastseg.draw.overlay` of the records' masks, decoding one mask at a time."""
    from fastseg.draw import overlay as draw_overlay

    areas = []
    for i, record in enumerate(records):
        if "area" not in record:
            raise ValueError(f"record {i} has no 'area'")
        areas.append(int(record["area"]))
    return draw_overlay(image, _DecodedMasks(records), alpha=alpha, areas=areas)


def _coco_segmentation(segmentation: Any) -> dict[str, Any]:
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), str):
        return {"size": [int(v) for v in segmentation["size"]], "counts": segmentation["counts"]}
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), bytes):
        return {"size": [int(v) for v in segmentation["size"]], "counts": segmentation["counts"].decode("ascii")}
    if isinstance(segmentation, dict):
        h, w = (int(v) for v in segmentation["size"])
        return coco_encode_rle(np.asarray(segmentation["counts"], dtype=np.int64), (h, w))
    return coco_encode_mask(segmentation_to_mask(segmentation))


def to_json(records: Iterable[Record], **info: Any) -> dict[str, Any]:
    """A JSON-ready dict: ``info`` entries (e.g. image, model, parameters) and ``annotations``, the
    records with ``segmentation`` as COCO RLE (``pycocotools.mask.decode`` reads it)."""
    annotations = []
    for record in records:
        ann = {k: v for k, v in record.items() if k != "segmentation"}
        ann = json.loads(json.dumps(ann, default=_json_default))
        annotations.append({"segmentation": _coco_segmentation(record["segmentation"]), **ann})
    return {**json.loads(json.dumps(info, default=_json_default)), "annotations": annotations}


def write_json(path: str | os.PathLike[str], records: Iterable[Record], **info: Any) -> Path:
    """Write :func:`to_json` to ``path`` atomically (a temporary file renamed into place)."""
    path = Path(path)
    text = json.dumps(to_json(records, **info))
    with atomic_write(path, binary=False) as f:
        f.write(text)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class MaskRecords(list[Record]):
    """What everything mode returns: a list of records, plus the :class:`SegmentationResult` view.

    Each record is a dict as the original returns it (``segmentation``, ``area``, ``bbox`` XYWH, and
    ``predicted_iou``, ``point_coords``, ``stability_score``, ``crop_box`` for the SAM family or
    ``score`` for FastSAM). :attr:`scores` and :attr:`boxes` are read from the records, :meth:`result`
    decodes every mask into a :class:`SegmentationResult` (masks, scores, boxes), the type
    ``Predictor.predict`` returns.

    Args:
        records: the records.
        image_size: ``(H, W)`` of the image they segment.
        score_key: the record field that is the mask's score (``"predicted_iou"`` or ``"score"``).
        info: how the records were made (model, backend, precision), as ``SegmentationResult.info``.
    """

    def __init__(
        self,
        records: Iterable[Record] = (),
        *,
        image_size: tuple[int, int],
        score_key: str,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(records)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.score_key = score_key
        self.info: dict[str, Any] = dict(info or {})

    @property
    def scores(self) -> npt.NDArray[np.float32]:
        """``(N,)`` float32: each record's ``score_key``."""
        return np.array([float(r[self.score_key]) for r in self], dtype=np.float32).reshape(len(self))

    @property
    def boxes(self) -> npt.NDArray[np.float32]:
        """``(N, 4)`` float32 XYXY from each record's ``bbox`` (XYWH)."""
        from fastseg.ops import xywh_to_xyxy

        return xywh_to_xyxy([r["bbox"] for r in self]).reshape(len(self), 4)

    @property
    def masks(self) -> npt.NDArray[np.bool_]:
        """``(N, H, W)`` bool, decoded from the records on each access (use :meth:`result` to keep them)."""
        return records_to_masks(self, self.image_size)

    def result(self) -> SegmentationResult:
        """The records as a :class:`SegmentationResult` (every mask decoded), with ``records`` set to them."""
        return SegmentationResult(
            masks=self.masks, scores=self.scores, boxes=self.boxes, info=dict(self.info), records=self
        )

    def overlay(self, image: npt.NDArray[np.uint8], alpha: float = 0.5) -> npt.NDArray[np.uint8]:
        """The image with each record's mask in its own colour (as ``SegmentationResult.overlay``)."""
        return overlay(image, self, alpha)

    def to_json(self, **info: Any) -> dict[str, Any]:
        return to_json(self, **info)

    def write_json(self, path: str | os.PathLike[str], **info: Any) -> Path:
        return write_json(path, self, **info)
