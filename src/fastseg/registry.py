"""The models fastseg knows, by registry name.

One frozen :class:`ModelSpec` per variant holds everything that differs between variants: the
family (which runtime pipeline and which export recipe), the preprocessing constants, and where the
official checkpoint comes from. The spec is written into every exported model folder, so the
runtime reads its constants from the folder and never guesses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Family = Literal["sam", "fastsam"]

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class ModelSpec:
    """One model variant.

    Attributes:
        name: registry name, e.g. ``"mobile_sam"``.
        family: ``"sam"`` (image encoder + prompt decoder) or ``"fastsam"`` (one YOLOv8-seg network).
        input_size: longest side (SAM) or letterbox size (FastSAM) of the network input, in pixels.
        pixel_mean, pixel_std: RGB normalisation applied to 0..255 pixels (SAM family).
            FastSAM divides by 255 instead; its mean is 0 and std 255.
        resize: ``"longest_side"`` (SAM: resize so the longest side is ``input_size``, pad bottom/right)
            or ``"letterbox"`` (FastSAM: ultralytics letterbox, centred padding with value 114).
        mask_threshold: logit threshold that turns mask logits into a binary mask.
        checkpoint_format: ``"sam_state_dict"``, ``"mobile_sam_state_dict"`` or ``"ultralytics"``.
        checkpoint_filename: the file name of the official checkpoint.
        checkpoint_url: where the official checkpoint is published.
        checkpoint_sha256: sha256 of the official file, when known; downloads are verified against it.
        checkpoint_md5_prefix: for segment-anything checkpoints, the md5 prefix the file name carries.
        stride: network stride (FastSAM letterbox pads to a multiple of it).
    """

    name: str
    family: Family
    input_size: int
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    resize: Literal["longest_side", "letterbox"]
    mask_threshold: float
    checkpoint_format: Literal["sam_state_dict", "mobile_sam_state_dict", "ultralytics"]
    checkpoint_filename: str
    checkpoint_url: str
    checkpoint_sha256: str | None = None
    checkpoint_md5_prefix: str | None = None
    stride: int = 32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sam(name: str, filename: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        family="sam",
        input_size=1024,
        pixel_mean=SAM_PIXEL_MEAN,
        pixel_std=SAM_PIXEL_STD,
        resize="longest_side",
        mask_threshold=0.0,
        checkpoint_format="sam_state_dict",
        checkpoint_filename=filename,
        checkpoint_url=f"https://dl.fbaipublicfiles.com/segment_anything/{filename}",
        checkpoint_md5_prefix=filename.rsplit("_", 1)[1].split(".")[0],
    )


def _fastsam(name: str, filename: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        family="fastsam",
        input_size=1024,
        pixel_mean=(0.0, 0.0, 0.0),
        pixel_std=(255.0, 255.0, 255.0),
        resize="letterbox",
        mask_threshold=0.0,
        checkpoint_format="ultralytics",
        checkpoint_filename=filename,
        checkpoint_url=f"https://github.com/ultralytics/assets/releases/download/v8.2.0/{filename}",
    )


REGISTRY: dict[str, ModelSpec] = {
    "sam_vit_b": _sam("sam_vit_b", "sam_vit_b_01ec64.pth"),
    "sam_vit_l": _sam("sam_vit_l", "sam_vit_l_0b3195.pth"),
    "sam_vit_h": _sam("sam_vit_h", "sam_vit_h_4b8939.pth"),
    "mobile_sam": ModelSpec(
        name="mobile_sam",
        family="sam",
        input_size=1024,
        pixel_mean=SAM_PIXEL_MEAN,
        pixel_std=SAM_PIXEL_STD,
        resize="longest_side",
        mask_threshold=0.0,
        checkpoint_format="mobile_sam_state_dict",
        checkpoint_filename="mobile_sam.pt",
        checkpoint_url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
    ),
    "fastsam_s": _fastsam("fastsam_s", "FastSAM-s.pt"),
    "fastsam_x": _fastsam("fastsam_x", "FastSAM-x.pt"),
}


def get_spec(name: str) -> ModelSpec:
    """Return the spec of a registered model, or raise a ``ValueError`` listing the valid names."""
    try:
        return REGISTRY[name]
    except KeyError:
        valid = ", ".join(sorted(REGISTRY))
        raise ValueError(f"unknown model {name!r}; expected one of: {valid}") from None


def spec_from_dict(data: dict[str, Any]) -> ModelSpec:
    """Rebuild a spec from a manifest's ``spec`` entry (tuples come back from JSON as lists)."""
    fields = dict(data)
    for key in ("pixel_mean", "pixel_std"):
        fields[key] = tuple(float(v) for v in fields[key])
    return ModelSpec(**fields)
