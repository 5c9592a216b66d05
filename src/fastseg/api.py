"""``fastseg.segment``: one call from an image and prompts to masks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fastseg.image import ImageLike
from fastseg.results import SegmentationResult


def segment(
    image: ImageLike,
    model: str | Path,
    points: Any = None,
    labels: Any = None,
    boxes: Any = None,
    mask_input: Any = None,
    multimask: bool = True,
    backend: Literal["openvino", "onnxruntime"] = "openvino",
    precision: Literal["f32", "bf16"] = "f32",
    **predictor_options: Any,
) -> SegmentationResult:
    """Segment ``image`` with the model folder ``model`` from point and/or box prompts.

    This builds a :class:`~fastseg.predictor.Predictor` for the one call; to prompt the same image
    several times, keep a Predictor instead (the image is encoded once).

    Example:
        >>> result = fastseg.segment("photo.jpg", model="models/mobile_sam", points=[[320, 240]])
    """
    from fastseg.predictor import Predictor

    predictor = Predictor(model, backend=backend, precision=precision, **predictor_options)
    predictor.set_image(image)
    return predictor.predict(points=points, labels=labels, boxes=boxes, mask_input=mask_input, multimask=multimask)
