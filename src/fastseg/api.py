"""``fastseg.segment``: one call from an image and prompts to masks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy.typing as npt

from fastseg.backends import Backend, Precision
from fastseg.image import ImageLike
from fastseg.results import SegmentationResult


def segment(
    image: ImageLike,
    model: str | Path,
    points: npt.ArrayLike | None = None,
    labels: npt.ArrayLike | None = None,
    boxes: npt.ArrayLike | None = None,
    mask_input: npt.ArrayLike | None = None,
    multimask: bool = True,
    backend: Backend = "openvino",
    precision: Precision = "f32",
    everything: bool = False,
    everything_options: dict[str, Any] | None = None,
    texts: Sequence[str] | None = None,
    **predictor_options: Any,
) -> SegmentationResult:
    """Segment ``image`` with the model folder ``model`` from point and/or box prompts.

    This builds a :class:`~fastseg.predictor.Predictor` for the one call; to prompt the same image
    several times, keep a Predictor instead (the image is encoded once).

    With ``everything=True`` (and no prompts) it segments the whole image instead
    (:meth:`~fastseg.predictor.Predictor.everything`, with ``everything_options`` as its parameters,
    e.g. ``{"points_per_side": 16}``). ``texts`` (FastSAM, with ``clip="models/clip_vit_b32"`` among the
    Predictor options) adds the detection CLIP finds most similar to each text. Either way the answer
    is a :class:`SegmentationResult`; in everything mode its ``records`` hold the generator's records.

    Example:
        >>> result = fastseg.segment("photo.jpg", model="models/mobile_sam", points=[[320, 240]])
        >>> whole = fastseg.segment("photo.jpg", model="models/mobile_sam", everything=True)
        >>> whole.masks.shape, len(whole.records)
    """
    from fastseg.predictor import Predictor

    if everything and any(v is not None for v in (points, labels, boxes, mask_input, texts)):
        raise ValueError(
            "everything=True segments the whole image without prompts; got points/labels/boxes/mask_input/texts"
        )
    if everything_options and not everything:
        raise ValueError("everything_options apply to everything=True only")
    predictor = Predictor(model, backend=backend, precision=precision, **predictor_options)
    if everything:
        return predictor.everything(image, **(everything_options or {})).result()
    predictor.set_image(image)
    return predictor.predict(
        points=points, labels=labels, boxes=boxes, mask_input=mask_input, multimask=multimask, texts=texts
    )
