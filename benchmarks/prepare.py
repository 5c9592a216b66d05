"""Checkpoints and exported model folders for the benchmark, built once and reused while still valid.

Runs inside a ``prepare`` worker process (torch and the exporters never load into the parent). Layout
of the cache (``$FASTSEG_CACHE/bench`` or ``~/.cache/fastseg/bench``)::

    checkpoints/<model>-seed<N>-<code>/<official file name>   random weights (+ .random.json sidecar)
    models/<model>-<sha12>-<code>/                          fastseg model folder (fastseg export)
    ultralytics/<model>-<sha12>-u<version>/                 ultralytics' own OpenVINO export (FastSAM)

``<code>`` hashes the code and library versions that shape the file, ``<sha12>`` is the start of the
checkpoint's sha256: change either and the entry is rebuilt; older entries of the same model are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

from fastseg.paths import cache_dir

SEED = 0
COMPLETE = "bench-complete.json"
ULTRALYTICS_IMGSZ = 1024


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def default_cache_root() -> Path:
    """``$FASTSEG_CACHE/bench`` or ``~/.cache/fastseg/bench``."""
    return cache_dir("bench")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


def code_hash(files: list[Path], packages: tuple[str, ...]) -> str:
    """12 hex digits over the names and bytes of ``files`` and the installed versions of ``packages``."""
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    for package in packages:
        digest.update(f"{package}={_version(package)}".encode())
    return digest.hexdigest()[:12]


def _export_dir() -> Path:
    import fastseg_export

    return Path(fastseg_export.__file__).parent


def _prune(parent: Path, prefix: str, keep: Path) -> None:
    """Remove the other cache entries of the same model (an older code or checkpoint version)."""
    if not parent.exists():
        return
    for entry in parent.iterdir():
        if entry.is_dir() and entry.name.startswith(prefix) and entry != keep:
            log(f"removing outdated cache entry {entry}")
            shutil.rmtree(entry, ignore_errors=True)


def random_checkpoint(name: str, cache: Path) -> Path:
    """The seeded random-weight checkpoint of ``name`` in the cache, built if missing or outdated."""
    from fastseg.registry import get_spec

    spec = get_spec(name)
    family_file = _export_dir() / f"{spec.family}.py"
    if not family_file.exists():
        raise FileNotFoundError(
            f"cannot build random weights for {name}: the export recipe {family_file} is missing"
        )
    key = code_hash([_export_dir() / "random_weights.py", family_file], ("torch", "ultralytics"))
    folder = cache / "checkpoints" / f"{name}-seed{SEED}-{key}"
    path = folder / spec.checkpoint_filename
    marker = folder / COMPLETE
    if marker.exists() and path.exists():
        recorded = json.loads(marker.read_text(encoding="utf-8"))
        if recorded.get("size") == path.stat().st_size:
            log(f"{name}: reusing random-weight checkpoint {path}")
            return path
    from fastseg_export.random_weights import write_random_checkpoint

    shutil.rmtree(folder, ignore_errors=True)
    log(f"{name}: building a random-weight checkpoint (seed {SEED}) in the official format -> {path}")
    start = time.perf_counter()
    write_random_checkpoint(name, path, seed=SEED)
    marker.write_text(json.dumps({"size": path.stat().st_size, "seed": SEED}) + "\n", encoding="utf-8")
    log(f"{name}: checkpoint built in {time.perf_counter() - start:.0f} s")
    _prune(cache / "checkpoints", f"{name}-seed", folder)
    return path


def fastseg_folder(name: str, checkpoint: Path, sha: str, cache: Path, int8: bool = False) -> Path:
    """The fastseg model folder exported from ``checkpoint``, exported if missing or outdated; with
    ``int8``, with its INT8 image graph (``fastseg export --int8``; a cached folder without one is exported again)."""
    import fastseg
    from fastseg.manifest import ModelFolderError, load_model_folder
    from fastseg.registry import get_spec
    from fastseg_export.export import export_model

    family = get_spec(name).family
    runtime = Path(fastseg.__file__).parent
    files = [_export_dir() / f for f in ("export.py", "common.py", "sam.py", f"{family}.py")]  # sam2 uses sam's
    files += [runtime / "registry.py", runtime / "manifest.py"]
    packages: tuple[str, ...] = ("torch", "openvino", "onnx", "onnxruntime")
    if family == "sam2":
        packages += ("sam2",)
    if family == "clip":  # the self-check runs fastseg's tokenizer and preprocessing
        files.append(runtime / "clip.py")
        packages += ("clip-anytorch",)
    if int8:
        files.append(_export_dir() / "int8.py")
        packages += ("nncf",)
    key = code_hash(files, packages) + ("-int8" if int8 else "")
    out = cache / "models" / f"{name}-{sha[:12]}-{key}"
    if out.exists():
        try:
            folder = load_model_folder(out)
            if (
                folder.name == name
                and folder.manifest.get("checkpoint", {}).get("sha256") == sha
                and (folder.int8_graphs or not int8)
            ):
                log(f"{name}: reusing exported model folder {out}")
                return out
            log(f"{name}: cached folder {out} is of another model or checkpoint; exporting again")
        except ModelFolderError as exc:
            log(f"{name}: cached folder unusable ({exc}); exporting again")
    log(f"{name}: exporting {checkpoint.name} with fastseg export -> {out} (one-off; takes a while)")
    start = time.perf_counter()
    export_model(name, checkpoint, out, int8=int8, overwrite=True, log=lambda m: log(f"{name}: export: {m.strip()}"))
    log(f"{name}: exported in {time.perf_counter() - start:.0f} s")
    _prune(cache / "models", f"{name}-", out)
    return out


def ultralytics_openvino(name: str, checkpoint: Path, sha: str, cache: Path) -> Path:
    """``FastSAM(checkpoint).export(format="openvino", imgsz=1024)``, cached; returns the exported folder.

    ultralytics' defaults apart from ``imgsz`` (FastSAM runs at 1024; the export default is 640):
    static 1 x 3 x 1024 x 1024 input, f32 weights (``quantize`` unset), no NMS inside the graph.
    """
    version = _version("ultralytics")
    folder = cache / "ultralytics" / f"{name}-{sha[:12]}-u{version}"
    marker = folder / COMPLETE
    if marker.exists():
        recorded = json.loads(marker.read_text(encoding="utf-8"))
        exported = folder / recorded.get("folder", "")
        if recorded.get("checkpoint_sha256") == sha and recorded.get("folder") and any(exported.glob("*.xml")):
            log(f"{name}: reusing ultralytics' OpenVINO export {exported}")
            return exported
    from ultralytics import FastSAM

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    # ultralytics writes the export next to the .pt it loaded: give it a link inside the cache.
    local = folder / checkpoint.name
    try:
        os.link(checkpoint, local)
    except OSError:
        shutil.copy2(checkpoint, local)
    log(f"{name}: ultralytics' own OpenVINO export (FastSAM(ckpt).export(format='openvino', imgsz=1024))")
    start = time.perf_counter()
    exported = Path(FastSAM(str(local)).export(format="openvino", imgsz=ULTRALYTICS_IMGSZ))
    local.unlink()
    if not exported.is_dir() or not any(exported.glob("*.xml")):
        raise RuntimeError(f"ultralytics' OpenVINO export returned {exported}, expected a folder with an .xml")
    exported = exported.resolve()
    marker.write_text(
        json.dumps({"checkpoint_sha256": sha, "folder": exported.name, "ultralytics": version,
                    "imgsz": ULTRALYTICS_IMGSZ}) + "\n",
        encoding="utf-8",
    )
    log(f"{name}: ultralytics export done in {time.perf_counter() - start:.0f} s")
    _prune(cache / "ultralytics", f"{name}-", folder)
    return exported


def prepare_model(job: dict[str, Any]) -> dict[str, Any]:
    """Everything one model needs for its paths.

    Job keys: ``model``; ``cache`` (folder); ``checkpoint`` (a user file, or None for random weights);
    ``model_dir`` (a user's fastseg model folder, or None to export one); ``ultralytics`` (bool);
    ``int8`` (bool: the exported folder gets its INT8 image graph).

    Returns:
        ``{"status": "ok", "family", "checkpoint", "checkpoint_sha256", "weights", "model_dir",
        "model_dir_error", "ultralytics_dir", "ultralytics_error"}``: a failed export leaves its folder
        None and its error set, so only the paths that need it fail.
    """
    from fastseg.manifest import load_model_folder
    from fastseg.registry import get_spec
    from fastseg_export.common import sha256_file

    name = job["model"]
    spec = get_spec(name)
    cache = Path(job["cache"])
    user_folder = load_model_folder(job["model_dir"]) if job.get("model_dir") else None
    if user_folder is not None and user_folder.name != name:
        raise ValueError(f"--model-dir {name}={user_folder.path} holds a {user_folder.name!r} model, expected {name!r}")
    if job.get("checkpoint"):
        checkpoint = Path(job["checkpoint"])
        if not checkpoint.is_file():
            raise FileNotFoundError(f"--checkpoint {name}={checkpoint}: no such file")
    else:
        checkpoint = random_checkpoint(name, cache)
    log(f"{name}: sha256 of {checkpoint.name}")
    sha = sha256_file(checkpoint)
    model_dir: Path | None = None
    model_dir_error = None
    if user_folder is not None:
        recorded = user_folder.manifest.get("checkpoint", {})
        if recorded.get("sha256") != sha:
            origin = "--checkpoint" if job.get("checkpoint") else "the benchmark's random-weight checkpoint"
            raise ValueError(
                f"--model-dir {name}={user_folder.path} was exported from {recorded.get('file')!r} "
                f"(sha256 {str(recorded.get('sha256'))[:12]}...), but {origin} {checkpoint} has sha256 "
                f"{sha[:12]}...: the PyTorch original must run the same weights; give that checkpoint with "
                f"--checkpoint {name}=PATH"
            )
        model_dir = user_folder.path
    else:
        # A failed export fails the fastseg paths only: the originals still run on the checkpoint.
        try:
            model_dir = fastseg_folder(name, checkpoint, sha, cache, int8=bool(job.get("int8")))
        except Exception as exc:  # noqa: BLE001 - reported per path, with the traceback on stderr
            model_dir_error = f"fastseg export failed: {_one_line(exc)}"
            log(f"{name}: {model_dir_error}\n{traceback.format_exc()}")
    weights = load_model_folder(model_dir).weights if model_dir is not None else _checkpoint_label(checkpoint)
    ultralytics_dir = None
    ultralytics_error = None
    if job.get("ultralytics") and spec.family == "fastsam":
        try:
            ultralytics_dir = ultralytics_openvino(name, checkpoint, sha, cache)
        except Exception as exc:  # noqa: BLE001 - reported on the ultralytics path, with the traceback on stderr
            ultralytics_error = f"ultralytics' OpenVINO export failed: {_one_line(exc)}"
            log(f"{name}: {ultralytics_error}\n{traceback.format_exc()}")
    conf = None
    if job.get("conf_for"):
        conf = conf_for_detections(**job["conf_for"])
    return {
        "status": "ok",
        "conf": conf,
        "family": spec.family,
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": sha,
        "weights": weights,
        "model_dir": str(model_dir) if model_dir is not None else None,
        "model_dir_error": model_dir_error,
        "ultralytics_dir": str(ultralytics_dir) if ultralytics_dir else None,
        "ultralytics_error": ultralytics_error,
    }


def conf_for_detections(model_dir: str, image: str, detections: int) -> float:
    """A FastSAM confidence threshold keeping about ``detections`` anchors on ``image`` (an ``.npy``
    file): the middle of the widest gap among the confidences ranked ``detections`` -5 .. +5 (fastseg,
    OpenVINO f32), so that no anchor sits near it and every path keeps the same ones."""
    import numpy as np

    from fastseg import Predictor

    predictor = Predictor(model_dir)
    predictor.set_image(np.load(image))
    scores = np.sort(predictor.get_image_embedding().detections[0, 4])[::-1]
    band = scores[max(detections - 6, 0) : detections + 5]
    k = int(np.argmax(band[:-1] - band[1:]))
    return float((band[k] + band[k + 1]) / 2)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _checkpoint_label(checkpoint: Path) -> str:
    from fastseg_export.random_weights import random_weights_label

    return random_weights_label(checkpoint) or "official checkpoint"
