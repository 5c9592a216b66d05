"""Export recipe for FastSAM: ``fastsam_s`` (YOLOv8s-seg) and ``fastsam_x`` (YOLOv8x-seg), one class.

One graph, ``network``: ``images`` (1, 3, H, W) float32 RGB in 0..1, letterboxed by
:func:`fastseg.fastsam.preprocess` (H and W are dynamic multiples of 32, so the runtime feeds the
same minimum rectangle ultralytics' PyTorch predictor does, not a padded square)
-> ``detections`` (1, 4 + 1 + 32, A) (centre-size box in input pixels, confidence, mask coefficients)
and ``protos`` (1, 32, H / 4, W / 4).

The head is set up as ultralytics' own exporter sets it (``export=True``, ``dynamic=True`` so the
anchors are rebuilt from the feature-map shapes inside the graph, ``C2f.forward_split``), on the
model fused the way ultralytics' predictor fuses it. NMS and masks stay in numpy
(:mod:`fastseg.fastsam`).

Checkpoints are ultralytics training checkpoints: a pickled dict holding the model object. They are
unpickled with ``torch.load(weights_only=True)`` and an explicit allow-list of the classes such a
file references (:data:`ALLOWED_GLOBALS`), never with unrestricted pickle.
"""

from __future__ import annotations

import copy
import pickle
from pathlib import Path, PosixPath
from typing import Any

import numpy as np
import torch
from torch import nn

from fastseg.fastsam import preprocess
from fastseg.registry import ModelSpec
from fastseg_export.common import Graph, atomic_torch_save, clean_text, load_allowlisted
from fastseg_export.errors import CheckpointError

#: ultralytics model YAML and the structure that tells the two variants apart: output channels of the
#: stem convolution and number of bottlenecks in the first C2f (width and depth multipliers).
_VARIANTS = {
    "fastsam_s": {"yaml": "yolov8s-seg.yaml", "scale": "s", "stem_channels": 32, "first_c2f_depth": 1},
    "fastsam_x": {"yaml": "yolov8x-seg.yaml", "scale": "x", "stem_channels": 80, "first_c2f_depth": 3},
}
NUM_MASKS = 32
CLASS_NAMES = {0: "object"}

#: Added to the class-branch biases of a random-weight model so that, like a trained FastSAM, it finds
#: tens to hundreds of objects at conf 0.4 on a busy photo (shared REFERENCE.md).
RANDOM_CLASS_BIAS = 3.0
#: scikit-image photos the random model's BatchNorm statistics are recalibrated on (not the ones the
#: parity tests use).
CALIBRATION_PHOTOS = ("rocket", "immunohistochemistry", "hubble_deep_field", "retina")
#: A fixed date for random checkpoints, so the file is a function of the seed alone.
_RANDOM_CHECKPOINT_DATE = "2024-01-01T00:00:00+00:00"


def _variant(spec: ModelSpec) -> dict[str, Any]:
    if spec.name not in _VARIANTS:
        raise ValueError(f"{spec.name!r} is not a FastSAM model; expected one of {sorted(_VARIANTS)}")
    return _VARIANTS[spec.name]


# ------------------------------------------------------------------------------------------------
# Safe loading
# ------------------------------------------------------------------------------------------------


def _checkpoint_getattr(obj: Any, name: str) -> Any:
    """``builtins.getattr`` as ultralytics 8.0 checkpoints use it, and nothing more.

    Their segmentation head stored ``self.detect = Detect.forward``, which pickle writes as
    ``getattr(Detect, "forward")``. Only that lookup is allowed.
    """
    from ultralytics.nn.modules.head import Detect

    if isinstance(obj, type) and issubclass(obj, Detect) and name == "forward":
        return obj.forward
    raise pickle.UnpicklingError(
        f"checkpoint asks for getattr({getattr(obj, '__name__', type(obj).__name__)}, {name!r}); only "
        "getattr(<ultralytics Detect head>, 'forward') is allowed"
    )


_checkpoint_getattr.__module__ = "builtins"
_checkpoint_getattr.__qualname__ = _checkpoint_getattr.__name__ = "getattr"


def _allowed_globals() -> list[Any]:
    """Every Python global a FastSAM / YOLOv8-seg ultralytics checkpoint may reference.

    Found with ``torch.serialization.get_unsafe_globals_in_checkpoint`` on checkpoints in the
    format ultralytics' trainer writes (``write_random_checkpoint``), plus what older releases pickle:
    ``getattr(Detect, "forward")`` (8.0 segmentation heads), the ``Detect`` class it names,
    ``IterableSimpleNamespace`` (model args, also under its pre-8.0.44 module path) and ``PosixPath``.
    """
    from ultralytics.nn.modules.block import DFL, SPPF, Bottleneck, C2f, Proto
    from ultralytics.nn.modules.conv import Concat, Conv
    from ultralytics.nn.modules.head import Detect, Segment
    from ultralytics.nn.tasks import SegmentationModel
    from ultralytics.utils import IterableSimpleNamespace

    legacy_namespace = type(
        "IterableSimpleNamespace", (IterableSimpleNamespace,), {"__module__": "ultralytics.yolo.utils"}
    )
    return [
        SegmentationModel,
        Segment,
        Detect,
        Proto,
        DFL,
        C2f,
        Bottleneck,
        SPPF,
        Conv,
        Concat,
        nn.Conv2d,
        nn.ConvTranspose2d,
        nn.BatchNorm2d,
        nn.SiLU,
        nn.MaxPool2d,
        nn.Upsample,
        nn.Sequential,
        nn.ModuleList,
        IterableSimpleNamespace,
        legacy_namespace,
        PosixPath,
        _checkpoint_getattr,
    ]


def _describe(model: nn.Module) -> str:
    try:
        stem = model.model[0].conv.out_channels
        depth = len(model.model[2].m)
        scale = model.yaml.get("scale", "?")
    except (AttributeError, IndexError, KeyError, TypeError):
        return type(model).__name__
    params = sum(p.numel() for p in model.parameters())
    return f"YOLOv8 scale {scale!r} (stem {stem} channels, first C2f depth {depth}, {params / 1e6:.1f} M parameters)"


def load_model(spec: ModelSpec, checkpoint: Path) -> nn.Module:
    """The ultralytics ``SegmentationModel`` of ``checkpoint``: float32, eval, Conv+BN fused.

    Fused exactly as ultralytics' predictor fuses it (``AutoBackend(fuse=True)``), so the exported
    graph computes what ``FastSAM(checkpoint).predict`` computes.

    Raises:
        CheckpointError: not an ultralytics checkpoint, references globals outside the allow-list,
            not a one-class segmentation model, or the other FastSAM variant.
    """
    from ultralytics.nn.modules.head import Segment
    from ultralytics.nn.tasks import SegmentationModel

    variant = _variant(spec)
    path = Path(checkpoint)
    ckpt = load_allowlisted(path, _allowed_globals())
    if not isinstance(ckpt, dict) or not ({"model", "ema"} & set(ckpt)):
        got = f"a dict with keys {sorted(ckpt)[:8]}" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path} is not an ultralytics checkpoint: expected a dict with a 'model' entry, got {got}"
        )
    model = ckpt.get("ema") or ckpt.get("model")
    if not isinstance(model, SegmentationModel):
        raise CheckpointError(
            f"{path} does not hold a segmentation model: expected ultralytics SegmentationModel, "
            f"got {type(model).__name__}"
        )
    head = model.model[-1]
    if not isinstance(head, Segment) or head.nc != 1 or head.nm != NUM_MASKS:
        got = f"{type(head).__name__} with nc={getattr(head, 'nc', '?')}, nm={getattr(head, 'nm', '?')}"
        raise CheckpointError(
            f"{path} is not a FastSAM checkpoint: expected a one-class YOLOv8-seg head (Segment, nc=1, "
            f"nm={NUM_MASKS}), got {got}"
        )
    try:
        stem = model.model[0].conv.out_channels
        depth = len(model.model[2].m)
    except (AttributeError, IndexError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a YOLOv8-seg model: {clean_text(str(exc))}") from exc
    if (stem, depth) != (variant["stem_channels"], variant["first_c2f_depth"]):
        other = [n for n, v in _VARIANTS.items() if (v["stem_channels"], v["first_c2f_depth"]) == (stem, depth)]
        hint = f" (that is {other[0]})" if other else ""
        raise CheckpointError(
            f"{path} is not {spec.name}: expected YOLOv8{variant['scale']}-seg (stem "
            f"{variant['stem_channels']} channels, first C2f depth {variant['first_c2f_depth']}), got "
            f"{_describe(model)}{hint}"
        )
    # ultralytics load_checkpoint's compatibility updates, then the predictor's fuse().
    if not hasattr(model, "stride"):
        model.stride = torch.tensor([32.0])
    model = model.float()
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = True
        elif isinstance(m, nn.Upsample) and not hasattr(m, "recompute_scale_factor"):
            m.recompute_scale_factor = None
    model = model.fuse(verbose=False).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ------------------------------------------------------------------------------------------------
# Random checkpoints
# ------------------------------------------------------------------------------------------------


def _calibration_inputs(spec: ModelSpec) -> list[torch.Tensor]:
    from skimage import data

    return [
        torch.from_numpy(preprocess(np.ascontiguousarray(getattr(data, name)()), spec)[0])
        for name in CALIBRATION_PHOTOS
    ]


def build_random_model(spec: ModelSpec, seed: int) -> nn.Module:
    """A seeded random YOLOv8-seg (one class) that behaves like a trained FastSAM (float32, unfused).

    A fresh network's confidences are nearly constant (max ~0.37 at 1024 input, so nothing passes
    conf 0.4). BatchNorm statistics are recalibrated on a few photos (cumulative average over
    train-mode forward passes), which makes the outputs depend on the image, and the class-branch
    biases are raised by :data:`RANDOM_CLASS_BIAS` (shared REFERENCE.md).
    """
    from ultralytics.nn.tasks import SegmentationModel

    variant = _variant(spec)
    torch.manual_seed(seed)
    model = SegmentationModel(variant["yaml"], nc=1, verbose=False)
    batchnorms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in batchnorms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over the calibration passes
    model.train()
    with torch.no_grad():
        for x in _calibration_inputs(spec):
            model(x)
    model.eval()
    head = model.model[-1]
    with torch.no_grad():
        for branch in head.cv3:
            branch[-1].bias += RANDOM_CLASS_BIAS
    for bn in batchnorms:
        bn.momentum = 0.03  # ultralytics' initialize_weights value, as in a trained checkpoint
    return model


def write_random_checkpoint(spec: ModelSpec, path: Path, seed: int) -> None:
    """Write a seeded random FastSAM in the format of ultralytics' released checkpoints.

    The dict ultralytics' trainer writes after ``strip_optimizer`` (the model in half precision,
    optimizer and EMA stripped, ``train_args``), loadable by ``ultralytics.FastSAM(path)``. The file
    is written atomically (temporary file + ``os.replace``) and depends only on the seed and on
    torch's thread count (the BatchNorm calibration sums over images in parallel, and another split
    of those sums rounds differently; ultralytics itself sets torch to ``os.cpu_count() - 1`` threads
    when it predicts).
    """
    import ultralytics
    from ultralytics.utils import DEFAULT_CFG_DICT

    variant = _variant(spec)
    model = build_random_model(spec, seed)
    train_args = {
        **DEFAULT_CFG_DICT,
        "task": "segment",
        "mode": "train",
        "model": variant["yaml"],
        "imgsz": spec.input_size,
        "single_cls": True,
        "seed": seed,
    }
    model.args = dict(train_args)
    model.names = dict(CLASS_NAMES)
    model = model.half()
    for p in model.parameters():
        p.requires_grad = False
    checkpoint = {
        "date": _RANDOM_CHECKPOINT_DATE,
        "version": ultralytics.__version__,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
        "epoch": -1,
        "best_fitness": None,
        "model": model,
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": train_args,
    }
    atomic_torch_save(checkpoint, path)


# ------------------------------------------------------------------------------------------------
# Graph
# ------------------------------------------------------------------------------------------------


class FastSamNetwork(nn.Module):
    """The whole YOLOv8-seg network with its head in ultralytics' export mode.

    ``images`` (1, 3, H, W) -> ``detections`` (1, 37, A), ``protos`` (1, 32, H / 4, W / 4).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        from ultralytics.nn.modules.block import C2f
        from ultralytics.nn.modules.head import Detect

        self.model = copy.deepcopy(model).float().eval()
        for m in self.model.modules():
            if isinstance(m, Detect):
                m.export = True
                m.dynamic = True  # rebuild anchors from the feature-map shapes (dynamic H, W)
                m.format = "onnx"
                m.shape = None
            elif isinstance(m, C2f):
                m.forward = m.forward_split
        head = self.model.model[-1]
        self.channels = int(head.nc + head.nm)
        self.eval()  # a new Module starts in training mode; exporters restore the mode they found

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        detections, protos = self.model(images)
        # (1, 37, A) with the leading dimensions static in the graph's declared shape
        return detections.reshape(1, 4 + self.channels, -1), protos


def graphs(model: nn.Module, spec: ModelSpec) -> list[Graph]:
    _variant(spec)
    # Trace at a non-square size so no height/width coincidence can be baked into the graph.
    example = torch.rand(1, 3, spec.input_size * 3 // 4, spec.input_size, generator=torch.Generator().manual_seed(0))
    return [
        Graph(
            name="network",
            module=FastSamNetwork(model),
            example_inputs=(example,),
            input_names=["images"],
            output_names=["detections", "protos"],
            dynamic_axes={
                "images": {2: "height", 3: "width"},
                "detections": {2: "anchors"},
                "protos": {2: "proto_height", 3: "proto_width"},
            },
            opset=17,
        )
    ]


def check_inputs(
    model: nn.Module,
    spec: ModelSpec,
    image: np.ndarray,
    known_outputs: dict[str, dict[str, np.ndarray]] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """The network's input for a real photo, letterboxed by the runtime's own preprocessing
    (``known_outputs`` stays untouched: no PyTorch output is computed here)."""
    tensor, _ = preprocess(image, spec)
    return {"network": {"images": tensor}}


def manifest_extra(model: nn.Module, spec: ModelSpec) -> dict[str, Any]:
    """What the runtime reads besides the spec: the number of mask coefficients per detection."""
    return {"num_mask_coefficients": int(model.model[-1].nm)}
