"""The contract between the :class:`~fastseg.predictor.Predictor` and a model family's engine.

A family (SAM / MobileSAM in :mod:`fastseg.sam`, FastSAM in :mod:`fastseg.fastsam`, SAM 2.1 in
:mod:`fastseg.sam2`) implements
:class:`Engine`. The Predictor loads the image, validates prompts once (:mod:`fastseg.prompts`),
serialises calls and hands the engine values it can trust. An engine holds one image's state; a
Predictor keeps several engines over the same sessions, one per image whose handle it keeps ready
(:class:`fastseg.predictor.ImageHandle`), and calls one at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

import numpy as np
import numpy.typing as npt

from fastseg.registry import Family

if TYPE_CHECKING:
    from fastseg.backends import Session
    from fastseg.fastsam import FastSamImageEmbedding
    from fastseg.prompts import Prompts
    from fastseg.records import MaskRecords
    from fastseg.results import SegmentationResult
    from fastseg.sam import ImageEmbedding
    from fastseg.sam2 import Sam2ImageEmbedding

#: What ``Predictor.get_image_embedding`` returns and ``set_image_embedding`` takes back (of the model's family).
ImageEmbeddingLike: TypeAlias = "ImageEmbedding | FastSamImageEmbedding | Sam2ImageEmbedding"

#: ``progress(points_done, points_total, crops_done, crops_total, masks_kept)`` of a long everything run.
ProgressCallback = Callable[[int, int, int, int, int], None]

#: ``wrap(graph_name, session) -> session``: given to a Predictor, it sees every backend session the
#: Predictor opens (e.g. the benchmark times each graph's runs with it).
SessionWrapper = Callable[[str, "Session"], "Session"]


@runtime_checkable
class Engine(Protocol):
    """One model family's pipeline around its graphs, for one image at a time.

    Attributes:
        family: ``"sam"``, ``"fastsam"`` or ``"sam2"``.
        model_name: the registry name of the model (embeddings of other models are refused).
        low_res_size: side of the low-resolution mask logits a prompt may pass back as
            ``mask_input`` (from the model folder); None if the family takes no mask input.
    """

    family: Family
    model_name: str

    @property
    def low_res_size(self) -> int | None: ...  # read-only here, so an engine may declare it ``int``

    def set_image(self, image: npt.NDArray[np.uint8]) -> None:
        """Encode an RGB uint8 ``(H, W, 3)`` image; later calls prompt it."""
        ...

    def predict(self, prompts: Prompts, multimask: bool) -> SegmentationResult:
        """Masks for prompts validated against the image set (at its original resolution)."""
        ...

    def get_image_embedding(self) -> ImageEmbeddingLike:
        """What :meth:`set_image` computed (raises ``RuntimeError`` if no image is set)."""
        ...

    def set_image_embedding(self, embedding: ImageEmbeddingLike) -> None:
        """Restore an embedding of this model without encoding (refuses another model's or a malformed one)."""
        ...

    def everything_params(self, options: Mapping[str, Any]) -> Any:
        """Validated everything-mode parameters (``TypeError`` for unknown names, ``ValueError`` for bad values)."""
        ...

    def everything(
        self, params: Any, image: npt.NDArray[np.uint8] | None, progress: ProgressCallback | None
    ) -> MaskRecords:
        """Segment the image set without prompts; ``image`` is its pixels (SAM crops need them)."""
        ...
