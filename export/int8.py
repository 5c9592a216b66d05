"""INT8 image graphs (``fastseg export NAME --int8``): NNCF post-training quantization of the OpenVINO IR.

Only the image graph is quantized (SAM family and SAM 2.1: ``encoder``, SAM 2.1's with its FPN neck;
FastSAM: ``network``): it is nearly all of an image's time, while the decoders are small and run per
click (docs/PERFORMANCE.md). The quantized IR is written beside the f32 one (``encoder.int8.xml``)
and named in the graph's manifest entry under ``openvino_int8``; the manifest's ``int8`` entry says
how it was made and what the check measured.

Calibration runs on scikit-image photos that no fidelity test uses (:data:`CALIBRATION_PHOTOS`),
preprocessed by the runtime's own code. The check compares the INT8 graph with the f32 graph on the
export's check photo (``chelsea``, not among them): every output's cosine similarity must reach
:data:`MIN_COSINE`, else the export fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fastseg.registry import ModelSpec
from fastseg_export.errors import ExportError

#: The image graph quantized per family.
INT8_GRAPHS = {"sam": "encoder", "sam2": "encoder", "fastsam": "network"}
#: scikit-image photos the quantization is calibrated on (the tests' photos are astronaut, chelsea, coffee).
CALIBRATION_PHOTOS = ("rocket", "stereo_motorcycle", "hubble_deep_field", "retina", "immunohistochemistry")
#: The least cosine similarity between an INT8 output and the f32 one on the check photo, per family: a
#: guard against a broken quantization, not the fidelity figure (that is the masks', measured by
#: ``fastseg_bench.precision``). FastSAM's floor is lower: with random weights its prototypes came out at
#: 0.82 (fastsam_s) and 0.91 (fastsam_x), with the prototype branch kept in float or not, while the
#: detections stayed at 0.99999 (docs/PERFORMANCE.md).
MIN_COSINE = {"sam": 0.98, "sam2": 0.98, "fastsam": 0.8}
#: The families whose image graph NNCF quantizes as a transformer (its attention-aware scheme).
TRANSFORMER_FAMILIES = ("sam", "sam2")


def photo(name: str) -> np.ndarray:
    """A bundled scikit-image photo as RGB uint8 ``(H, W, 3)`` (of a stereo pair, the left view)."""
    from skimage import data

    loaded = getattr(data, name)()
    image = np.asarray(loaded[0] if isinstance(loaded, tuple) else loaded)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3], dtype=np.uint8)


def preprocess(spec: ModelSpec, image: np.ndarray) -> np.ndarray:
    """The image graph's input for ``image``, by the runtime's preprocessing."""
    if spec.family == "sam":
        from fastseg.sam import preprocess as sam_preprocess

        return sam_preprocess(image, spec)[0]
    if spec.family == "sam2":
        from fastseg.sam2 import preprocess as sam2_preprocess

        return sam2_preprocess(image, spec)
    from fastseg.fastsam import preprocess as fastsam_preprocess

    return fastsam_preprocess(image, spec)[0]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays taken as flat vectors (1.0 for two all-zero arrays)."""
    x, y = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    norm = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y / norm) if norm > 0 else float(np.array_equal(x, y))


def ignored_scope(spec: ModelSpec) -> tuple[Any, list[str]]:
    """What stays in float: for FastSAM, the mask prototypes (``model.22/proto``: with it in INT8 the
    prototypes' cosine to f32 fell to 0.81 on the check photo), the detection head's box decoding (DFL,
    the anchor arithmetic) and its sigmoid, whose outputs are coordinates and scores rather than
    features; nothing for SAM."""
    import nncf

    if spec.family != "fastsam":
        return None, []
    patterns = [r".*/dfl/.*", r".*/model\.22/proto/.*"]
    patterns += [rf".*/model\.22/{op}.*" for op in ("Add", "Sub", "Mul", "Div")]
    return nncf.IgnoredScope(patterns=patterns, types=["Sigmoid"], validate=False), patterns + ["type Sigmoid"]


def quantize_image_graph(
    folder: Path, spec: ModelSpec, check_image: np.ndarray, log: Callable[[str], None]
) -> dict[str, Any]:
    """Quantize the family's image graph of the model folder ``folder`` (f32 IR already there).

    Returns the manifest's ``int8`` entry: graph, file, method, calibration photos, check figures.
    Raises ExportError when the check fails.
    """
    import logging

    import nncf
    import openvino as ov
    import openvino.properties.hint as hints

    logging.getLogger("nncf").setLevel(logging.WARNING)  # its per-node INFO lines; progress bars stay
    graph = INT8_GRAPHS[spec.family]
    core = ov.Core()
    model = core.read_model(str(folder / f"{graph}.xml"))
    name = model.inputs[0].get_any_name()
    calibration = [preprocess(spec, photo(p)) for p in CALIBRATION_PHOTOS]
    scope, scope_text = ignored_scope(spec)
    options: dict[str, Any] = {
        "subset_size": len(calibration),
        "preset": nncf.QuantizationPreset.MIXED,
    }
    if spec.family in TRANSFORMER_FAMILIES:
        options["model_type"] = nncf.ModelType.TRANSFORMER
    if scope is not None:
        options["ignored_scope"] = scope
    photos = ", ".join(CALIBRATION_PHOTOS)
    log(f"  INT8: NNCF post-training quantization of {graph} on {len(calibration)} photos ({photos})")
    start = time.monotonic()
    quantized = nncf.quantize(model, nncf.Dataset(calibration, lambda x: {name: x}), **options)
    seconds = time.monotonic() - start
    out = folder / f"{graph}.int8.xml"
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    del quantized, model

    feeds = {name: preprocess(spec, check_image)}
    config = {hints.inference_precision: ov.Type.f32}
    outputs = {}
    for label, xml in (("f32", folder / f"{graph}.xml"), ("int8", out)):
        compiled = core.compile_model(str(xml), "CPU", config)
        result = compiled(feeds)
        outputs[label] = {port.get_any_name(): np.array(result[port]) for port in compiled.outputs}
        del compiled
    check: dict[str, float] = {}
    failures = []
    for output, ref in outputs["f32"].items():
        value = cosine(outputs["int8"][output], ref)
        check[output] = value
        ok = value >= MIN_COSINE[spec.family]
        log(f"  INT8 check {graph:14s} {output:18s} cosine to f32 {value:.5f}  {'ok' if ok else 'FAIL'}")
        if not ok:
            failures.append(f"{output}: cosine {value:.4f} < {MIN_COSINE[spec.family]}")
    if failures:
        raise ExportError(f"the INT8 {graph} is too far from the f32 one on the check photo: " + "; ".join(failures))
    return {
        "graph": graph,
        "file": out.name,
        "method": "NNCF post-training quantization",
        "nncf": nncf.__version__,
        "preset": "mixed",
        "model_type": "transformer" if spec.family in TRANSFORMER_FAMILIES else None,
        "ignored_scope": scope_text,
        "calibration_photos": list(CALIBRATION_PHOTOS),
        "seconds": round(seconds, 1),
        "check": {"photo": "the export's check photo", "min_cosine": MIN_COSINE[spec.family], "cosine": check},
    }
