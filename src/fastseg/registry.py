"""The models fastseg knows, by registry name.

One frozen :class:`ModelSpec` per variant holds everything that differs between variants: the
family (which runtime pipeline and which export recipe), the preprocessing constants, and where the
official checkpoint comes from. The spec is written into every exported model folder, so the
runtime reads its constants from the folder and never guesses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Family = Literal["sam", "fastsam", "sam2", "clip"]

#: Families prompted as SAM is: three candidates per prompt (``multimask``), low-resolution logits
#: that can be fed back as ``mask_input``.
SAM_LIKE_FAMILIES = frozenset({"sam", "sam2"})

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
#: SAM 2.1's ImageNet normalisation, of 0..1 values (``SAM2Transforms``: ToTensor, Resize, Normalize).
SAM2_PIXEL_MEAN = (0.485, 0.456, 0.406)
SAM2_PIXEL_STD = (0.229, 0.224, 0.225)
#: CLIP's normalisation of 0..1 values (``clip.clip._transform``).
CLIP_PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)
#: Families whose folders segment (``Predictor``); a ``"clip"`` folder is the text model FastSAM takes.
SEGMENTATION_FAMILIES = frozenset({"sam", "fastsam", "sam2"})


@dataclass(frozen=True)
class ModelSpec:
    """One model variant.

    Attributes:
        name: registry name, e.g. ``"mobile_sam"``.
        family: ``"sam"`` (image encoder + prompt decoder), ``"fastsam"`` (one YOLOv8-seg network),
            ``"sam2"`` (SAM 2.1 for images: Hiera encoder with its FPN neck + prompt decoder) or ``"clip"``
            (CLIP's image and text towers, for FastSAM's text prompts).
        input_size: longest side (SAM) or letterbox size (FastSAM) of the network input, in pixels.
        pixel_mean, pixel_std: RGB normalisation ``(x - mean) / std`` of 0..255 pixels (FastSAM: mean 0,
            std 255, ultralytics' ``x / 255``); with ``resize="square"``, of 0..1 values (``x / 255``
            first, as ``SAM2Transforms`` does).
        resize: ``"longest_side"`` (SAM: resize so the longest side is ``input_size``, pad bottom/right),
            ``"letterbox"`` (FastSAM: ultralytics letterbox, centred padding with value 114) or
            ``"square"`` (SAM 2.1: ``x / 255``, resized to ``input_size`` x ``input_size`` without keeping
            the aspect ratio, bilinear with antialiasing, then normalised) or ``"shorter_side_crop"``
            (CLIP: the shorter side to ``input_size``, bicubic, the centre square, ``x / 255``, normalised).
        mask_threshold: logit threshold that turns mask logits into a binary mask.
        checkpoint_format: ``"sam_state_dict"``, ``"mobile_sam_state_dict"``, ``"ultralytics"``,
            ``"sam2_checkpoint"`` (a dict whose ``"model"`` entry is the state dict) or
            ``"clip_torchscript"`` (OpenAI's TorchScript archive; a plain state dict is read too).
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
    resize: Literal["longest_side", "letterbox", "square", "shorter_side_crop"]
    mask_threshold: float
    checkpoint_format: Literal[
        "sam_state_dict", "mobile_sam_state_dict", "ultralytics", "sam2_checkpoint", "clip_torchscript"
    ]
    checkpoint_filename: str
    checkpoint_url: str
    checkpoint_sha256: str | None = None
    checkpoint_md5_prefix: str | None = None
    stride: int = 32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sam(name: str, filename: str, sha256: str) -> ModelSpec:
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
        checkpoint_sha256=sha256,
        # The 6 hex digits in the file name are the start of the file's md5: the full md5s
        # 01ec64d29a2fca3f0661936605ae66f8 (vit_b), 0b3195507c641ddb6910d2bb5adee89c (vit_l) and
        # 4b8939a88964f0f4ff5f5b2642c598a6 (vit_h) are stated in Sanster/IOPaint
        # iopaint/plugins/interactive_seg.py (SEGMENT_ANYTHING_MODELS).
        checkpoint_md5_prefix=filename.rsplit("_", 1)[1].split(".")[0],
    )


def _fastsam(name: str, filename: str, sha256: str) -> ModelSpec:
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
        # v8.4.0 is the release ultralytics 8.4.x itself downloads FastSAM-{s,x}.pt from
        # (ultralytics/utils/downloads.py: attempt_download_asset(release="v8.4.0"), with both names in
        # GITHUB_ASSETS_NAMES). Older docs link v8.2.0; the public hash statements below give the same
        # sha256/size for the v8.2.0, v8.3.0 and v8.4.0 copies.
        checkpoint_url=f"https://github.com/ultralytics/assets/releases/download/v8.4.0/{filename}",
        checkpoint_sha256=sha256,
    )


def _sam2(name: str) -> ModelSpec:
    filename = f"{name}.pt"
    return ModelSpec(
        name=name,
        family="sam2",
        input_size=1024,
        pixel_mean=SAM2_PIXEL_MEAN,
        pixel_std=SAM2_PIXEL_STD,
        resize="square",
        mask_threshold=0.0,
        checkpoint_format="sam2_checkpoint",
        checkpoint_filename=filename,
        # The release of 2024-09-28 that sam2's checkpoints/download_ckpts.sh fetches (SAM2p1_BASE_URL).
        checkpoint_url=f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/{filename}",
        checkpoint_sha256=None,
    )


REGISTRY: dict[str, ModelSpec] = {
    # SAM sha256s: computational-cell-analytics/micro-sam micro_sam/util.py (registry "vit_b", "vit_l",
    # "vit_h", for these dl.fbaipublicfiles.com URLs), and the Git LFS pointers of the same files on the
    # Hugging Face Hub (e.g. huggingface.co/andzhang01/segment_anything: vit_b 375042383 bytes,
    # vit_l 1249524607 bytes, vit_h 2564550879 bytes).
    "sam_vit_b": _sam(
        "sam_vit_b",
        "sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    ),
    "sam_vit_l": _sam(
        "sam_vit_l",
        "sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "sam_vit_h": _sam(
        "sam_vit_h",
        "sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
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
        # The file is committed to the MobileSAM repository (weights/mobile_sam.pt, loaded by its README).
        checkpoint_url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        # sha256 (40728226 bytes): micro-sam micro_sam/util.py registry "vit_t" (MobileSAM), and the Git LFS
        # pointer of mobile_sam.pt in the MobileSAM authors' demo, huggingface.co/spaces/dhkim2810/MobileSAM.
        checkpoint_sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
    ),
    # FastSAM sha256s: ultralytics publishes none; these are stated for the ultralytics/assets files in
    # several independent public download manifests (FastSAM-s: 23851578 bytes, pinned for the v8.2.0,
    # v8.3.0 and v8.4.0 release URLs; FastSAM-x: 144972346 bytes, pinned for the v8.2.0 URL, same size
    # reported for v8.4.0). They are NOT the hashes of the CASIA-IVA-Lab originals (FastSAM-x there is
    # 144943063 bytes, sha256 c0be4e7d...).
    "fastsam_s": _fastsam(
        "fastsam_s", "FastSAM-s.pt", "c9f78716a81c7aff0d608ccc73e1b82ab3aaad86005049f6a92106a0be6d0844"
    ),
    "fastsam_x": _fastsam(
        "fastsam_x", "FastSAM-x.pt", "752cadc2828edb1cd4bc4f9eb587100631af06ea2108f4c9ed56df4755701e76"
    ),
    # SAM 2.1 (Meta's sam2 package). No sha256 of these files is published by Meta; none is pinned yet.
    **{
        name: _sam2(name)
        for name in ("sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large")
    },
    # CLIP ViT-B/32 for FastSAM's text prompts: the file `clip.load("ViT-B/32")` downloads; OpenAI's URL
    # carries the file's sha256, which the clip package checks too (clip/clip.py, _MODELS).
    "clip_vit_b32": ModelSpec(
        name="clip_vit_b32",
        family="clip",
        input_size=224,
        pixel_mean=CLIP_PIXEL_MEAN,
        pixel_std=CLIP_PIXEL_STD,
        resize="shorter_side_crop",
        mask_threshold=0.0,
        checkpoint_format="clip_torchscript",
        checkpoint_filename="ViT-B-32.pt",
        checkpoint_url=(
            "https://openaipublic.azureedge.net/clip/models/"
            "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt"
        ),
        checkpoint_sha256="40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
    ),
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
