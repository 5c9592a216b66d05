"""``fastseg export``: official checkpoint -> ONNX + OpenVINO IR model folder, checked against PyTorch.

Steps, all inside a temporary folder next to the destination, renamed into place only when every
step passed (a failed or interrupted export leaves nothing behind at ``out``; how it lands, the lock
that keeps two exports to one folder apart, and SIGTERM: :mod:`fastseg_export.placement`):

1. load the checkpoint safely and build the official PyTorch model (family module ``load_model``);
2. export each graph to ONNX (legacy TorchScript exporter, fixed opset) and run ``onnx.checker``;
3. convert each ONNX graph to OpenVINO IR (f32 weights, or f16-compressed weights on request);
4. self-check: run PyTorch, ONNX Runtime and OpenVINO (inference precision pinned to f32) on a real
   photo, print the max absolute and relative error of every output, and fail beyond tolerance;
5. write ``manifest.json`` (spec, graphs, sizes and sha256s, checkpoint sha256, self-check figures).

With ``int8`` the image graph is also quantized (NNCF) and checked against the f32 one between steps 4
and 5 (:mod:`fastseg_export.int8`).
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fastseg import __version__
from fastseg.manifest import FORMAT, FORMAT_VERSION, write_manifest
from fastseg.registry import ModelSpec, get_spec
from fastseg_export.common import Graph, sha256_file
from fastseg_export.errors import CheckpointError, ExportError
from fastseg_export.placement import (
    check_destination,
    destination_lock,
    interruptions,
    partial_path,
    place,
    remove_stale,
)
from fastseg_export.random_weights import family_module, random_weights_label

#: Relative max error allowed between PyTorch and a backend: max|out - ref| / max|ref|.
TOLERANCE = {"f32": 1e-3, "f16": 3e-2}


def default_check_image() -> np.ndarray:
    """The photo the self-check runs on: scikit-image's bundled ``chelsea`` (RGB uint8, 300x451)."""
    from skimage import data

    return np.ascontiguousarray(data.chelsea())


def relative_error(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """``(max_abs, max_rel)`` with ``max_rel = max|out - ref| / max|ref|`` (0 for an all-zero pair)."""
    if out.shape != ref.shape:
        raise ExportError(f"output shape {out.shape} differs from PyTorch's {ref.shape}")
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    return max_abs, (max_abs / scale if scale > 0 else max_abs)


def _prepare_destination(out: Path, overwrite: bool) -> Path:
    out = Path(out).absolute()
    check_destination(out, overwrite)
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create the parent folder of {out}: {exc.strerror or exc}") from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"output folder is not writable: {parent} (choose another --out)")
    return out


def _export_onnx(graph: Graph, path: Path) -> None:
    import onnx
    import torch

    with torch.no_grad():
        torch.onnx.export(
            graph.module,
            graph.example_inputs,
            str(path),
            input_names=graph.input_names,
            output_names=graph.output_names,
            dynamic_axes=graph.dynamic_axes or None,
            opset_version=graph.opset,
            do_constant_folding=True,
            dynamo=False,
        )
    gather_external_data(path)
    onnx.checker.check_model(str(path))  # by path: works past 2 GB (external data)


def gather_external_data(path: Path) -> list[str]:
    """Move the weights of an ONNX file stored as external data into one file, ``<name>.onnx.data``.

    Past the 2 GB protobuf limit the exporter writes every weight as a file of its own beside the
    graph (hundreds for SAM ViT-H); a model folder should hold one weights file per graph. Returns the
    names of the files removed (empty when the graph keeps its weights inline, the usual case).
    """
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    proto = onnx.load(str(path), load_external_data=False)
    locations = sorted(
        {ExternalDataInfo(t).location for t in proto.graph.initializer if uses_external_data(t)}
    )
    data_name = f"{path.name}.data"
    if not locations or locations == [data_name]:
        return []
    del proto
    proto = onnx.load(str(path))  # every weight into memory, then written back as one file
    tmp = path.with_name(f"{path.name}.gather")
    (path.parent / data_name).unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(proto, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
    del proto
    for name in locations:
        (path.parent / name).unlink(missing_ok=True)
    os.replace(tmp, path)
    return locations


def _convert_openvino(onnx_path: Path, xml_path: Path, ir_precision: str) -> None:
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(xml_path), compress_to_fp16=(ir_precision == "f16"))


def _io_entries(path: Path) -> dict[str, list[dict[str, Any]]]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dtypes = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32"}

    def entry(value: Any) -> dict[str, Any]:
        t = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        return {"name": value.name, "shape": shape, "dtype": dtypes.get(t.elem_type, str(t.elem_type))}

    inits = {i.name for i in model.graph.initializer}
    return {
        "inputs": [entry(v) for v in model.graph.input if v.name not in inits],
        "outputs": [entry(v) for v in model.graph.output],
    }


def reference_outputs(graph: Graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """PyTorch's outputs of ``graph`` on ``feeds``, by output name."""
    import torch

    with torch.no_grad():
        ref = graph.module(*[torch.from_numpy(feeds[n]) for n in graph.input_names])
    ref = ref if isinstance(ref, (tuple, list)) else (ref,)
    return {n: t.detach().numpy().copy() for n, t in zip(graph.output_names, ref)}


def self_check(
    folder: Path,
    inputs: dict[str, dict[str, np.ndarray]],
    refs: dict[str, dict[str, np.ndarray]],
    ir_precision: str,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Compare ONNX Runtime and OpenVINO (f32 inference) against PyTorch's ``refs``; raise beyond tolerance.

    One backend session is alive at a time, and PyTorch is not needed any more (its outputs are in
    ``refs``), so a ViT-H export peaks at one copy of the weights plus one backend's working memory.
    """
    import onnxruntime as ort
    import openvino as ov
    import openvino.properties.hint as hints

    def run_onnxruntime(graph: str, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        sess = ort.InferenceSession(str(folder / f"{graph}.onnx"), providers=["CPUExecutionProvider"])
        return sess.run(names, feeds)

    def run_openvino(graph: str, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        config = {hints.inference_precision: ov.Type.f32}
        compiled = ov.Core().compile_model(str(folder / f"{graph}.xml"), "CPU", config)
        result = compiled(feeds)
        return [np.array(result[compiled.output(n)]) for n in names]

    tol = TOLERANCE[ir_precision]
    report: dict[str, Any] = {"tolerance_max_rel": tol}
    failures = []
    for graph, graph_refs in refs.items():
        names = list(graph_refs)
        report[graph] = {}
        for backend, run in (("onnxruntime", run_onnxruntime), ("openvino", run_openvino)):
            outs = dict(zip(names, run(graph, inputs[graph], names)))
            gc.collect()  # the session is gone: give its memory back before the next one
            report[graph][backend] = {}
            for name in names:
                max_abs, max_rel = relative_error(np.asarray(outs[name]), graph_refs[name])
                report[graph][backend][name] = {"max_abs": max_abs, "max_rel": max_rel}
                ok = max_rel <= tol
                log(f"  self-check {graph:14s} {backend:11s} {name:18s} max_abs {max_abs:.3e}  "
                    f"max_rel {max_rel:.3e}  {'ok' if ok else 'FAIL'}")
                if not ok:
                    failures.append(f"{graph}/{backend}/{name}: max_rel {max_rel:.3e} > {tol:.0e}")
    if failures:
        raise ExportError("self-check against PyTorch failed: " + "; ".join(failures))
    return report


def _export_into(
    tmp: Path,
    spec: ModelSpec,
    family: Any,
    checkpoint: Path,
    ir_precision: str,
    weights_label: str | None,
    check_image: np.ndarray | None,
    log: Callable[[str], None],
    int8: bool = False,
) -> str:
    """Steps 1-5 into the empty folder ``tmp``; returns how the weights are described in the manifest."""
    log(f"[1/5] loading {spec.name} from {checkpoint}")
    model = family.load_model(spec, checkpoint)
    checksum = sha256_file(checkpoint)
    label = weights_label or random_weights_label(checkpoint) or "official checkpoint"
    graphs = family.graphs(model, spec)
    image = default_check_image() if check_image is None else check_image
    known: dict[str, dict[str, np.ndarray]] = {}  # PyTorch outputs check_inputs computed on the way
    inputs = family.check_inputs(model, spec, image, known_outputs=known)
    refs = {g.name: known[g.name] if g.name in known else reference_outputs(g, inputs[g.name]) for g in graphs}
    entries: dict[str, Any] = {}
    for graph in graphs:
        log(f"[2/5] ONNX export of {graph.name} (opset {graph.opset})")
        _export_onnx(graph, tmp / f"{graph.name}.onnx")
        log(f"[3/5] OpenVINO IR of {graph.name} ({ir_precision} weights)")
        _convert_openvino(tmp / f"{graph.name}.onnx", tmp / f"{graph.name}.xml", ir_precision)
        entries[graph.name] = {"onnx": f"{graph.name}.onnx", "openvino": f"{graph.name}.xml",
                               **_io_entries(tmp / f"{graph.name}.onnx")}
    write_extra_files = getattr(family, "write_extra_files", None)
    if write_extra_files is not None:  # files the runtime reads besides the graphs (CLIP's vocabulary)
        write_extra_files(tmp)
    opset = graphs[0].opset
    extra = family.manifest_extra(model, spec)
    del model, graphs  # the PyTorch weights are not needed past this point (ViT-H: 2.5 GB)
    gc.collect()
    log("[4/5] self-check against PyTorch on a real photo (OpenVINO pinned to f32)")
    report = self_check(tmp, inputs, refs, ir_precision, log)
    quantized: dict[str, Any] | None = None
    if int8:
        from fastseg.manifest import INT8_FILE_KEY
        from fastseg_export.int8 import quantize_image_graph

        log("[4/5] INT8 image graph (NNCF), checked against the f32 graph on the same photo")
        quantized = quantize_image_graph(tmp, spec, image, log)
        entries[quantized["graph"]][INT8_FILE_KEY] = quantized["file"]
    log("[5/5] writing manifest")
    write_manifest(
        tmp,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "fastseg_version": __version__,
            "model": spec.name,
            "family": spec.family,
            "spec": spec.to_dict(),
            "weights": label,
            "checkpoint": {"file": checkpoint.name, "sha256": checksum},
            "opset": opset,
            "ir_precision": ir_precision,
            "graphs": entries,
            "self_check": report,
            "extra": extra,
            **({"int8": quantized} if quantized is not None else {}),
        },
    )
    return label


def export_model(
    name: str,
    checkpoint: str | Path,
    out: str | Path,
    *,
    ir_precision: str = "f32",
    int8: bool = False,
    overwrite: bool = False,
    weights_label: str | None = None,
    check_image: np.ndarray | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Export model ``name`` from ``checkpoint`` into the model folder ``out``; returns ``out``.

    Args:
        name: registry name (``sam_vit_b``, ``sam_vit_l``, ``sam_vit_h``, ``mobile_sam``, ``fastsam_s``,
            ``fastsam_x``, the SAM 2.1 models, ``clip_vit_b32``).
        checkpoint: the official checkpoint file.
        ir_precision: ``"f32"`` or ``"f16"`` (f16-compressed OpenVINO weights; computation precision is
            chosen at run time).
        int8: also write the image graph quantized to INT8 with NNCF (``precision="int8"`` at run time;
            :mod:`fastseg_export.int8`); needs ``nncf``.
        overwrite: replace an existing ``out``, if it is a model folder fastseg wrote (``manifest.json``
            with ``"format": "fastseg-model"``) or an empty folder; anything else is refused, untouched.
            Without it, an ``out`` that exists, or appears while the export runs, is kept and the
            export fails.
        weights_label: how the weights are described in the manifest; by default "official checkpoint",
            or "random weights (seed N)" for a checkpoint made by ``write_random_checkpoint``.
        check_image: the RGB uint8 photo for the self-check (default: scikit-image ``chelsea``).

    Raises:
        ValueError: unknown model name or option.
        CheckpointError: the checkpoint is missing, unreadable or of another model.
        ExportError: the destination is unusable or taken (another export to ``out`` is running, or
            something appeared there), or conversion or the self-check failed.
        fastseg_export.placement.Terminated: SIGTERM arrived (a ``SystemExit``, status 143; raised
            only in the main thread and where SIGTERM had its default action). As on any failure, and
            on ``KeyboardInterrupt``, the temporary folder is removed and ``out`` is left as it was.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    spec: ModelSpec = get_spec(name)
    if ir_precision not in TOLERANCE:
        raise ValueError(f"ir_precision must be one of {sorted(TOLERANCE)}, got {ir_precision!r}")
    if int8:
        from fastseg_export.int8 import INT8_GRAPHS

        if spec.family not in INT8_GRAPHS:
            raise ValueError(
                f"--int8 quantizes the image graphs of SAM, MobileSAM, SAM 2.1 and FastSAM; "
                f"it is not available for {name} (family {spec.family!r})"
            )
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    out = _prepare_destination(Path(out), overwrite)
    family = family_module(spec.family)
    started = time.perf_counter()
    with interruptions() as interrupted, destination_lock(out):
        for stale in remove_stale(out):
            log(f"removed {stale.name}, left beside {out.name} by an export that was killed")
        check_destination(out, overwrite)  # again, now that no other export to out can be running
        tmp = partial_path(out)
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            label = _export_into(tmp, spec, family, checkpoint, ir_precision, weights_label, check_image, log, int8)
            interrupted.hold = True  # placing the folder is not cut short by a signal (seen below)
            if interrupted.fired:  # a library swallowed the exception: stop all the same
                raise interrupted.exception()
            place(tmp, out, overwrite)
        except BaseException as exc:
            interrupted.hold = True  # a second Ctrl-C or SIGTERM must not stop the cleanup
            shutil.rmtree(tmp, ignore_errors=True)
            if not interrupted.fired:
                raise
            what = "SIGTERM" if interrupted.signum == signal.SIGTERM else "Ctrl-C"
            log(f"export of {spec.name} stopped by {what}; its temporary folder was removed")
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise interrupted.exception() from exc  # e.g. OpenVINO reported it as "initialization failed"
    log(f"done: {out} ({spec.name}, {label}) in {time.perf_counter() - started:.0f} s")
    if interrupted.fired:  # arrived while the finished folder was being placed: it is in place; now stop
        raise interrupted.exception()
    return out
