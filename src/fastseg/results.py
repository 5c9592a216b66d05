"""The one result type every predictor path returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass
class SegmentationResult:
    """Masks for one image.

    Attributes:
        masks: ``(N, H, W)`` bool, at the original image resolution.
        scores: ``(N,)`` float32: SAM's predicted IoU, or FastSAM's detection confidence.
        boxes: ``(N, 4)`` float32 XYXY in original-image pixels.
        low_res_logits: ``(N, 256, 256)`` float32 mask logits (SAM family), which can be passed back as
            ``mask_input``; ``None`` for FastSAM.
        prompt_index: ``(N,)`` int64, which prompt set (e.g. which box) each mask answers.
        info: free-form notes about how the result was made (model name, backend, precision).
        records: everything mode only: the records the masks come from (see
            :class:`fastseg.records.MaskRecords`), else None.
    """

    masks: npt.NDArray[np.bool_]
    scores: npt.NDArray[np.float32]
    boxes: npt.NDArray[np.float32]
    low_res_logits: npt.NDArray[np.float32] | None = None
    prompt_index: npt.NDArray[np.int64] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    records: Sequence[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if self.masks.ndim != 3 or self.masks.dtype != np.bool_:
            raise ValueError(f"masks must be (N, H, W) bool, got {self.masks.shape} {self.masks.dtype}")
        n = self.masks.shape[0]
        if self.scores.shape != (n,):
            raise ValueError(f"scores must have shape ({n},), got {self.scores.shape}")
        if self.boxes.shape != (n, 4):
            raise ValueError(f"boxes must have shape ({n}, 4), got {self.boxes.shape}")
        if self.low_res_logits is not None and (self.low_res_logits.ndim != 3 or self.low_res_logits.shape[0] != n):
            raise ValueError(f"low_res_logits must be ({n}, h, w), got {self.low_res_logits.shape}")
        if self.prompt_index is None:
            self.prompt_index = np.zeros(n, dtype=np.int64)
        elif self.prompt_index.shape != (n,):
            raise ValueError(f"prompt_index must have shape ({n},), got {self.prompt_index.shape}")

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the image the masks belong to."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    def __getitem__(self, index: Any) -> SegmentationResult:
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        assert self.prompt_index is not None
        return SegmentationResult(
            masks=self.masks[index],
            scores=self.scores[index],
            boxes=self.boxes[index],
            low_res_logits=None if self.low_res_logits is None else self.low_res_logits[index],
            prompt_index=self.prompt_index[index],
            info=dict(self.info),
        )

    def by_prompt(self) -> list[SegmentationResult]:
        """One result per prompt set (e.g. per box), in prompt order."""
        assert self.prompt_index is not None
        if len(self) == 0:
            return []
        return [self[self.prompt_index == i] for i in range(int(self.prompt_index.max()) + 1)]

    def best(self) -> SegmentationResult:
        """The highest-scoring mask of each prompt set."""
        assert self.prompt_index is not None
        keep = [
            int(np.flatnonzero(self.prompt_index == i)[np.argmax(self.scores[self.prompt_index == i])])
            for i in np.unique(self.prompt_index)
        ]
        return self[keep]

    def to_rle(self) -> list[dict[str, Any]]:
        """COCO RLE (``{"size": [H, W], "counts": str}``) of every mask, via pycocotools (extra ``rle``)."""
        from fastseg.rle import encode

        return encode(self.masks)

    def overlay(self, image: npt.NDArray[np.uint8], alpha: float = 0.5) -> npt.NDArray[np.uint8]:
        """The image with every mask painted in its own colour; returns a new RGB uint8 array."""
        from fastseg.draw import overlay

        return overlay(image, self.masks, alpha=alpha)
