"""Tiny model folders for the fast tier, built at test time without torch.

Each folder has the graphs, input and output names and shapes, manifest and ``extra`` entries of a
real export (``export/sam.py``, ``export/fastsam.py``), so :func:`fastseg.manifest.load_model_folder`
accepts it and :class:`fastseg.Predictor` runs it on both backends. The graphs are a few cheap ONNX
operators (``onnx.helper``), converted to OpenVINO IR with ``openvino.convert_model``, and compute
answers a test can predict by hand:

SAM family (:func:`build_tiny_sam`)
    ``encoder``: 16 x 16 average pooling of the normalised input, then a 1 x 1 convolution
    (:data:`SAM_ENCODER_WEIGHT`, :data:`SAM_ENCODER_BIAS`) to 256 channels.
    ``decoder_points`` / ``decoder``: mask ``k`` has logits ``RADII[k]**2 - d**2``, ``d`` the distance
    in input-frame pixels from the low-res cell centre ``((j + 0.5) * 4, (i + 0.5) * 4)`` to the
    *target* point: the first foreground point (label 1) of the prompt set, else its first
    non-padding point (label >= 0: a background point, or a box's top-left corner). So each mask
    is a disc around the target, of radius ``RADII[k] / scale`` in original pixels.
    ``iou_predictions`` are :data:`SAM_IOU`, plus 0.01 per padding point (label -1) of the prompt
    set (:func:`sam_iou`). The general ``decoder`` adds
    ``mask_input * has_mask_input`` to the logits.

With ``int8=True`` the folder also holds the image graph quantized, as ``fastseg export --int8`` adds it
(:func:`_int8_graph`): the same graph with its convolution's input and weights through int8
QuantizeLinear / DequantizeLinear pairs (OpenVINO runs them as INT8), named under ``openvino_int8``.

FastSAM (:func:`build_tiny_fastsam`)
    ``network``: ``protos`` (``(1, 32, H/4, W/4)``) holds, per 4 x 4 cell of the letterboxed input,
    ``1``, the cell centre ``X``, ``Y`` (input pixels) and ``X**2 + Y**2``, then 28 channels from a
    1 x 1 convolution of the 4 x 4 average-pooled image. ``detections`` ``(1, 37, A)`` is the fixed
    table :data:`FASTSAM_DETECTIONS` (boxes in input pixels), whose mask coefficients use the first
    four channels only: a disc, a half plane, a whole box or nothing.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastseg.manifest import FORMAT, FORMAT_VERSION, GRAPHS_BY_FAMILY, write_manifest
from fastseg.registry import get_spec

WEIGHTS_LABEL = "synthetic tiny graphs (test)"
OPSET = 17
_IR_VERSION = 8  # opset 17's IR version: every ONNX Runtime in range reads it

# --------------------------------------------------------------------------------------------------
# SAM family

LOW_RES = 256
EMBED_DIM, EMBED_SIZE = 256, 64
#: Radius of mask k's disc, in input-frame pixels (the 1024 x 1024 padded frame).
RADII = (40.0, 80.0, 120.0, 160.0)
#: ``iou_predictions`` of a prompt set without padding points: with multimask the best mask is
#: decoder mask 2. Each padding point (label -1) adds :data:`PADDING_IOU_STEP`, so the scores show
#: whether the prompt arrays hold the padding point SAM adds exactly when there is no box.
SAM_IOU = (0.5, 0.7, 0.9, 0.8)
PADDING_IOU_STEP = 0.01

_rng = np.random.default_rng(1234)
#: The encoder's 1 x 1 convolution, applied to the 16 x 16 mean of each normalised input channel.
SAM_ENCODER_WEIGHT = _rng.standard_normal((EMBED_DIM, 3)).astype(np.float32)
SAM_ENCODER_BIAS = _rng.standard_normal(EMBED_DIM).astype(np.float32)
_TOKEN_WEIGHTS = {name: _rng.standard_normal((EMBED_DIM, 128)).astype(np.float32) * 0.05 for name in
                  ("token_keys", "token_values", "image_queries")}
#: FastSAM's image-feature prototypes: 1 x 1 convolution of the 4 x 4 mean of each input channel.
FASTSAM_FEATURE_WEIGHT = _rng.standard_normal((28, 3)).astype(np.float32)
del _rng


def sam_target(coords: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The point each prompt set's discs are centred on, ``(B, 2)``, from the decoder's
    ``point_coords`` ``(B, N, 2)`` and ``point_labels`` ``(B, N)`` (numpy twin of the graph)."""
    out = np.zeros((coords.shape[0], 2), np.float32)
    for b in range(coords.shape[0]):
        fg = np.flatnonzero(labels[b] == 1)
        valid = np.flatnonzero(labels[b] >= 0)
        out[b] = coords[b, (fg if len(fg) else valid)[0]]
    return out


def sam_iou(n_padding: int = 0) -> np.ndarray:
    """``(4,)`` float32 ``iou_predictions`` of a prompt set with ``n_padding`` padding points."""
    return np.float32(SAM_IOU) + np.float32(n_padding) * np.float32(PADDING_IOU_STEP)


def sam_low_res_logits(target_xy: tuple[float, float]) -> np.ndarray:
    """``(4, 256, 256)`` logits of the four masks for a target point in input-frame pixels."""
    centres = (np.arange(LOW_RES, dtype=np.float64) + 0.5) * (1024 / LOW_RES)
    d2 = (centres[None, :] - target_xy[0]) ** 2 + (centres[:, None] - target_xy[1]) ** 2
    return np.stack([r * r - d2 for r in RADII]).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# FastSAM

NUM_COEF = 32


@dataclass(frozen=True)
class TinyDetection:
    """One anchor of the fixed ``detections`` table.

    Attributes:
        name: how tests refer to it.
        box: ``(cx, cy, w, h)`` in letterboxed-input pixels.
        conf: confidence.
        mask: ``("disc", cx, cy, r)``: positive inside the disc; ``("left_of", x)``: positive where
            ``X < x``; ``("all",)``: positive everywhere (the mask is the box); ``("none",)``: empty.
    """

    name: str
    box: tuple[float, float, float, float]
    conf: float
    mask: tuple[Any, ...]

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        cx, cy, w, h = self.box
        return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2

    def coefficients(self) -> np.ndarray:
        """32 coefficients over the prototypes ``[1, X, Y, X^2 + Y^2, features...]``."""
        c = np.zeros(NUM_COEF, np.float64)
        kind = self.mask[0]
        if kind == "disc":  # r^2 - (X - cx)^2 - (Y - cy)^2
            _, cx, cy, r = self.mask
            c[:4] = (r * r - cx * cx - cy * cy, 2 * cx, 2 * cy, -1)
        elif kind == "left_of":  # x - X
            c[:2] = (self.mask[1], -1)
        elif kind == "all":
            c[0] = 1
        elif kind == "none":
            c[0] = -1
        else:
            raise ValueError(kind)
        return c

    def logit(self, x_in: np.ndarray, y_in: np.ndarray) -> np.ndarray:
        """The mask logit at input-frame coordinates (numpy twin of ``coefficients @ protos``)."""
        kind = self.mask[0]
        if kind == "disc":
            _, cx, cy, r = self.mask
            return r * r - (x_in - cx) ** 2 - (y_in - cy) ** 2
        if kind == "left_of":
            return self.mask[1] - x_in + 0 * y_in
        return np.full(np.broadcast_shapes(np.shape(x_in), np.shape(y_in)), 1.0 if kind == "all" else -1.0)


#: The fixed detections, in anchor order (not confidence order). With ultralytics' defaults
#: (conf 0.4, iou 0.9): ``b`` overlaps ``a`` with IoU 0.97 and is suppressed, ``e`` is below conf,
#: ``f``'s mask is empty, so the answer is ``a``, ``c``, ``d`` (by confidence). ``d`` lies inside
#: ``a`` (IoU 0.64): gone at iou=0.5. ``c``'s right edge is within 20 px of the right border of
#: the usual photos once scaled back, so FastSAM's border rule snaps it.
FASTSAM_DETECTIONS = (
    TinyDetection("e", (150.0, 560.0, 100.0, 80.0), 0.30, ("all",)),
    TinyDetection("a", (300.0, 300.0, 200.0, 200.0), 0.90, ("disc", 300.0, 300.0, 90.0)),
    TinyDetection("f", (850.0, 150.0, 100.0, 100.0), 0.50, ("none",)),
    TinyDetection("c", (880.0, 400.0, 240.0, 160.0), 0.70, ("left_of", 880.0)),
    TinyDetection("b", (302.0, 301.0, 200.0, 200.0), 0.80, ("all",)),
    TinyDetection("d", (300.0, 300.0, 160.0, 160.0), 0.60, ("disc", 300.0, 300.0, 50.0)),
    TinyDetection("zero", (500.0, 500.0, 50.0, 50.0), 0.0, ("all",)),
)
DETECTION = {d.name: d for d in FASTSAM_DETECTIONS}


def fastsam_detections() -> np.ndarray:
    """The ``detections`` output, ``(1, 37, A)`` float32."""
    rows = [[*d.box, d.conf, *d.coefficients()] for d in FASTSAM_DETECTIONS]
    return np.asarray(rows, dtype=np.float32).T[None].copy()


# --------------------------------------------------------------------------------------------------
# Graph building


class _Graph:
    """A few helpers around ``onnx.helper`` that name every intermediate value."""

    def __init__(self, name: str) -> None:
        import onnx

        self.onnx = onnx
        self.name = name
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self._n = 0

    def input(self, name: str, shape: list[Any]) -> str:
        self.inputs.append(self.onnx.helper.make_tensor_value_info(name, self.onnx.TensorProto.FLOAT, shape))
        return name

    def output(self, value: str, name: str, shape: list[Any]) -> None:
        self.op("Identity", value, out=name)
        self.outputs.append(self.onnx.helper.make_tensor_value_info(name, self.onnx.TensorProto.FLOAT, shape))

    def const(self, array: Any, dtype: Any = np.float32) -> str:
        self._n += 1
        name = f"c{self._n}"
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(array, dtype=dtype), name))
        return name

    def op(self, kind: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        self._n += 1
        name = out or f"v{self._n}"
        self.nodes.append(self.onnx.helper.make_node(kind, list(inputs), [name], **attrs))
        return name

    def save(self, path: Path) -> None:
        onnx = self.onnx
        graph = onnx.helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        model = onnx.helper.make_model(
            graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)], ir_version=_IR_VERSION
        )
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(path))


def _mean_of(g: _Graph, *values: str) -> str:
    """A scalar that is 0 for finite inputs but uses every value (so no input is left unused)."""
    total = None
    for v in values:
        m = g.op("ReduceMean", v, keepdims=0)
        total = m if total is None else g.op("Add", total, m)
    assert total is not None
    return g.op("Mul", total, g.const(0.0))


def _first_where(g: _Graph, condition: str) -> str:
    """``(B, N)`` float one-hot of the first True along axis 1 (all zeros if none)."""
    flag = g.op("Cast", condition, to=g.onnx.TensorProto.FLOAT)
    count = g.op("CumSum", flag, g.const(1, np.int64))
    first = g.op("Cast", g.op("Equal", count, g.const(1.0)), to=g.onnx.TensorProto.FLOAT)
    return g.op("Mul", flag, first)


def _sam_disc_logits(g: _Graph, coords: str, labels: str) -> str:
    """``(B, 4, 256, 256)`` disc logits around each prompt set's target point."""
    fg = _first_where(g, g.op("Equal", labels, g.const(1.0)))
    any_valid = _first_where(g, g.op("GreaterOrEqual", labels, g.const(0.0)))
    has_fg = g.op("ReduceMax", fg, axes=[1], keepdims=1)  # (B, 1)
    no_fg = g.op("Sub", g.const(1.0), has_fg)
    weight = g.op("Add", g.op("Mul", fg, has_fg), g.op("Mul", any_valid, no_fg))  # (B, N) one-hot
    picked = g.op("Mul", coords, g.op("Unsqueeze", weight, g.const([2], np.int64)))  # (B, N, 2)
    target = g.op("ReduceSum", picked, g.const([1], np.int64), keepdims=0)  # (B, 2)
    tx = g.op("Slice", target, g.const([0], np.int64), g.const([1], np.int64), g.const([1], np.int64))
    ty = g.op("Slice", target, g.const([1], np.int64), g.const([2], np.int64), g.const([1], np.int64))
    tx = g.op("Unsqueeze", tx, g.const([2, 3], np.int64))  # (B, 1, 1, 1)
    ty = g.op("Unsqueeze", ty, g.const([2, 3], np.int64))
    centres = (np.arange(LOW_RES, dtype=np.float32) + 0.5) * np.float32(1024 / LOW_RES)
    dx = g.op("Sub", g.const(centres.reshape(1, 1, 1, LOW_RES)), tx)
    dy = g.op("Sub", g.const(centres.reshape(1, 1, LOW_RES, 1)), ty)
    d2 = g.op("Add", g.op("Mul", dx, dx), g.op("Mul", dy, dy))  # (B, 1, 256, 256)
    r2 = g.const(np.square(np.asarray(RADII, np.float32)).reshape(1, 4, 1, 1))
    return g.op("Sub", r2, d2)


def _sam_iou(g: _Graph, labels: str, unused: str) -> str:
    """``(B, 4)``: :func:`sam_iou`."""
    padding = g.op("Cast", g.op("Equal", labels, g.const(-1.0)), to=g.onnx.TensorProto.FLOAT)
    count = g.op("ReduceSum", padding, g.const([1], np.int64), keepdims=1)  # (B, 1)
    iou = g.op("Add", g.op("Mul", count, g.const(PADDING_IOU_STEP)), g.const(np.asarray(SAM_IOU, np.float32)[None]))
    return g.op("Add", iou, unused)


def _fake_quantized(g: _Graph, value: str, scale: float) -> str:
    """``value`` through int8 quantize / dequantize (per tensor, zero point 0)."""
    zero = g.const(0, np.int8)
    return g.op("DequantizeLinear", g.op("QuantizeLinear", value, g.const(scale), zero), g.const(scale), zero)


def _int8_weight(g: _Graph, weight: np.ndarray) -> str:
    """A weight stored as int8 with a per-tensor scale, dequantized in the graph."""
    scale = float(np.abs(weight).max()) / 127
    return g.op("DequantizeLinear", g.const(np.round(weight / scale), np.int8), g.const(scale), g.const(0, np.int8))


#: Per-tensor scales of the tiny image graphs' quantized activations (their inputs' range / 127).
INT8_ACTIVATION_SCALE = 3.0 / 127


def _int8_graph(folder: Path, name: str) -> None:
    """The image graph of the family, with its 1 x 1 convolution on int8 input and weights, as ``<name>.int8.xml``."""
    import openvino as ov

    g = _Graph(name)
    if name == "encoder":
        image = g.input("image", [1, 3, 1024, 1024])
        pooled = _fake_quantized(g, g.op("AveragePool", image, kernel_shape=[16, 16], strides=[16, 16]),
                                 INT8_ACTIVATION_SCALE)
        conv = g.op("Conv", pooled, _int8_weight(g, SAM_ENCODER_WEIGHT[:, :, None, None]), g.const(SAM_ENCODER_BIAS))
        g.output(conv, "image_embeddings", [1, EMBED_DIM, EMBED_SIZE, EMBED_SIZE])
    else:
        raise ValueError(name)
    tmp = folder / f"{name}.int8.onnx"
    g.save(tmp)
    ov.save_model(ov.convert_model(str(tmp)), str(folder / f"{name}.int8.xml"), compress_to_fp16=False)
    tmp.unlink()


def _sam_graphs(folder: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    emb = [1, EMBED_DIM, EMBED_SIZE, EMBED_SIZE]
    n = EMBED_SIZE * EMBED_SIZE
    # the first block's image side split per head as the real decoder_image returns it (8 heads of 16):
    # keys and queries (1, heads, d, N), values (1, heads, N, d)
    token_shapes = {"token_keys": [1, 8, 16, n], "token_values": [1, 8, n, 16], "image_queries": [1, 8, 16, n]}
    coords_shape, labels_shape = ["batch", "points", 2], ["batch", "points"]
    masks_shape, iou_shape = ["batch", 4, LOW_RES, LOW_RES], ["batch", 4]

    g = _Graph("encoder")
    image = g.input("image", [1, 3, 1024, 1024])
    pooled = g.op("AveragePool", image, kernel_shape=[16, 16], strides=[16, 16])
    conv = g.op("Conv", pooled, g.const(SAM_ENCODER_WEIGHT[:, :, None, None]), g.const(SAM_ENCODER_BIAS))
    g.output(conv, "image_embeddings", emb)
    g.save(folder / "encoder.onnx")

    g = _Graph("decoder_image")
    embeddings = g.input("image_embeddings", emb)
    flat = g.op("Reshape", embeddings, g.const([1, EMBED_DIM, -1], np.int64))
    keys = g.op("Transpose", flat, perm=[0, 2, 1])
    g.output(keys, "image_keys", [1, EMBED_SIZE * EMBED_SIZE, EMBED_DIM])
    for name, weight in _TOKEN_WEIGHTS.items():
        split = g.op("Reshape", g.op("MatMul", keys, g.const(weight)), g.const([1, n, 8, 16], np.int64))
        perm = [0, 2, 1, 3] if name == "token_values" else [0, 2, 3, 1]
        g.output(g.op("Transpose", split, perm=perm), name, token_shapes[name])
    g.save(folder / "decoder_image.onnx")

    g = _Graph("decoder_points")
    side = [
        g.input("image_keys", [1, EMBED_SIZE * EMBED_SIZE, EMBED_DIM]),
        *(g.input(name, token_shapes[name]) for name in ("token_keys", "token_values", "image_queries")),
    ]
    coords = g.input("point_coords", coords_shape)
    labels = g.input("point_labels", labels_shape)
    g.output(_sam_disc_logits(g, coords, labels), "low_res_masks", masks_shape)
    g.output(_sam_iou(g, labels, _mean_of(g, *side)), "iou_predictions", iou_shape)
    g.save(folder / "decoder_points.onnx")

    g = _Graph("decoder")
    embeddings = g.input("image_embeddings", emb)
    coords = g.input("point_coords", coords_shape)
    labels = g.input("point_labels", labels_shape)
    mask_input = g.input("mask_input", ["batch", 1, LOW_RES, LOW_RES])
    has_mask = g.input("has_mask_input", [1])
    logits = _sam_disc_logits(g, coords, labels)
    logits = g.op("Add", logits, g.op("Mul", mask_input, has_mask))
    g.output(logits, "low_res_masks", masks_shape)
    g.output(_sam_iou(g, labels, _mean_of(g, embeddings)), "iou_predictions", iou_shape)
    g.save(folder / "decoder.onnx")
    return {name: _io_entries(folder / f"{name}.onnx") for name in GRAPHS_BY_FAMILY["sam"]}


def _fastsam_graphs(folder: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    g = _Graph("network")
    images = g.input("images", [1, 3, "height", "width"])
    pooled = g.op("AveragePool", images, kernel_shape=[4, 4], strides=[4, 4])  # (1, 3, h, w)
    features = g.op("Conv", pooled, g.const(FASTSAM_FEATURE_WEIGHT[:, :, None, None]))
    grid = g.op("Slice", g.op("Shape", pooled), g.const([2], np.int64), g.const([4], np.int64))
    shape = g.op("Concat", g.const([1, 1], np.int64), grid, axis=0)
    ones = g.op("ConstantOfShape", shape, value=g.onnx.numpy_helper.from_array(np.ones(1, np.float32)))
    # Cell centres in input pixels: (index + 0.5) * 4.
    x = g.op("Mul", g.op("Sub", g.op("CumSum", ones, g.const(3, np.int64)), g.const(0.5)), g.const(4.0))
    y = g.op("Mul", g.op("Sub", g.op("CumSum", ones, g.const(2, np.int64)), g.const(0.5)), g.const(4.0))
    squares = g.op("Add", g.op("Mul", x, x), g.op("Mul", y, y))
    detections_shape = [1, 4 + 1 + NUM_COEF, len(FASTSAM_DETECTIONS)]
    g.output(g.op("Identity", g.const(fastsam_detections())), "detections", detections_shape)
    g.output(g.op("Concat", ones, x, y, squares, features, axis=1), "protos", [1, NUM_COEF, "h4", "w4"])
    g.save(folder / "network.onnx")
    return {"network": _io_entries(folder / "network.onnx")}


def _io_entries(path: Path) -> dict[str, Any]:
    """The manifest's graph entry, as the export writes it (dynamic dimensions as None)."""
    import onnx

    model = onnx.load(str(path))

    def entry(value: Any) -> dict[str, Any]:
        dims = value.type.tensor_type.shape.dim
        return {"name": value.name, "shape": [d.dim_value if d.HasField("dim_value") else None for d in dims],
                "dtype": "float32"}

    return {
        "onnx": path.name,
        "openvino": path.with_suffix(".xml").name,
        "inputs": [entry(v) for v in model.graph.input],
        "outputs": [entry(v) for v in model.graph.output],
    }


def _convert_openvino(folder: Path, graphs: dict[str, Any]) -> None:
    import openvino as ov

    for name in graphs:
        model = ov.convert_model(str(folder / f"{name}.onnx"))
        ov.save_model(model, str(folder / f"{name}.xml"), compress_to_fp16=False)


def _write(folder: Path, name: str, graphs: dict[str, Any], extra: dict[str, Any], int8: bool = False) -> Path:
    _convert_openvino(folder, graphs)
    spec = get_spec(name)
    more: dict[str, Any] = {}
    if int8:
        graph = "encoder" if spec.family == "sam" else "network"
        _int8_graph(folder, graph)
        graphs[graph]["openvino_int8"] = f"{graph}.int8.xml"
        more["int8"] = {"graph": graph, "file": f"{graph}.int8.xml", "method": "tiny test graph (QDQ by hand)"}
    write_manifest(
        folder,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "fastseg_version": "test",
            "model": spec.name,
            "family": spec.family,
            "spec": spec.to_dict(),
            "weights": WEIGHTS_LABEL,
            "opset": OPSET,
            "ir_precision": "f32",
            "graphs": graphs,
            "extra": extra,
            **more,
        },
    )
    return folder


def _fresh(folder: Path) -> Path:
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def build_tiny_sam(folder: Path, name: str = "mobile_sam", int8: bool = False) -> Path:
    """Write a tiny SAM-family model folder registered as ``name`` (with ``int8``, its INT8 encoder too)."""
    folder = _fresh(folder)
    extra = {"embedding_shape": [EMBED_DIM, EMBED_SIZE, EMBED_SIZE], "low_res_size": LOW_RES, "num_mask_outputs": 4}
    return _write(folder, name, _sam_graphs(folder), extra, int8)


def build_tiny_fastsam(folder: Path, name: str = "fastsam_s") -> Path:
    """Write a tiny FastSAM model folder registered as ``name``; returns the folder."""
    folder = _fresh(folder)
    extra = {"num_classes": 1, "names": {"0": "object"}, "num_mask_coefficients": NUM_COEF, "strides": [8, 16, 32]}
    return _write(folder, name, _fastsam_graphs(folder), extra)
