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
    everything: bool = False,
    everything_options: dict[str, Any] | None = None,
    **predictor_options: Any,
) -> SegmentationResult | list[dict[str, Any]]:
    """Segment ``image`` with the model folder ``model`` from point and/or box prompts.

    This builds a :class:`~fastseg.predictor.Predictor` for the one call; to prompt the same image
    several times, keep a Predictor instead (the image is encoded once).

    With ``everything=True`` (and no prompts) it segments the whole image instead and returns the
    records of :meth:`~fastseg.predictor.Predictor.everything`; ``everything_options`` are its
    parameters (e.g. ``{"points_per_side": 16}``).

    Example:
        >>> result = fastseg.segment("photo.jpg", model="models/mobile_sam", points=[[320, 240]])
        >>> records = fastseg.segment("photo.jpg", model="models/mobile_sam", everything=True)
    """
    from fastseg.predictor import Predictor

    if everything and any(v is not None for v in (points, labels, boxes, mask_input)):
        raise ValueError("everything=True segments the whole image without prompts; got points/labels/boxes/mask_input")
    if everything_options and not everything:
        raise ValueError("everything_options apply to everything=True only")
    predictor = Predictor(model, backend=backend, precision=precision, **predictor_options)
    if everything:
        return predictor.everything(image, **(everything_options or {}))
    predictor.set_image(image)
    return predictor.predict(points=points, labels=labels, boxes=boxes, mask_input=mask_input, multimask=multimask)
