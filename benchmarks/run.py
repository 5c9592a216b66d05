"""``fastseg bench``: the PyTorch originals against fastseg, same photo and prompt, in one run.

For each model, each path (PyTorch original, ultralytics' OpenVINO export for FastSAM, fastseg on
ONNX Runtime, OpenVINO f32, bf16 and int8) runs in processes of its own, one after the other:
one process for the timed runs and peak RSS, then fresh processes for the cold starts. The parent
process only orchestrates (it never imports torch or a model), then writes the Markdown table, the
JSON file with every raw figure and the PNG chart.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fastseg.registry import REGISTRY, SEGMENTATION_FAMILIES, get_spec
from fastseg_bench.machine import busy_note, describe_machine
from fastseg_bench.prepare import default_cache_root
from fastseg_bench.report import (
    EVERYTHING_MEASURES,
    SCHEMA,
    compute_speedups,
    fastseg_vs_ultralytics,
    render_chart,
    render_markdown,
    to_json,
)
from fastseg_bench.stats import everything_agreement, mask_agreement, speedup, summarize
from fastseg_bench.worker import GRID_FAMILIES, PATHS

DEFAULT_MODELS = ("sam_vit_b", "mobile_sam", "fastsam_s", "fastsam_x")
#: The models the benchmark has PyTorch runners for: every segmentation model (CLIP is FastSAM's text
#: model, timed with FastSAM's text prompts).
BENCH_MODELS = tuple(name for name, spec in REGISTRY.items() if spec.family in SEGMENTATION_FAMILIES)
#: The CLIP model FastSAM's text prompts use (prepared once per run when a FastSAM model is benchmarked).
TEXT_MODEL = "clip_vit_b32"
#: The paths timed on FastSAM text prompts (ultralytics' OpenVINO export runs CLIP in PyTorch too).
TEXT_PATHS = ("pytorch", "fastseg-onnxruntime", "fastseg-openvino-f32", "fastseg-openvino-bf16")
#: (warm-up, end-to-end runs, clicks, cold starts, everything runs, text queries) for a full and a --quick run.
FULL_RUNS = (1, 5, 20, 3, 1, 3)
QUICK_RUNS = (1, 2, 5, 1, 1, 1)
#: SamAutomaticMaskGenerator's default grid: 32 x 32 points.
DEFAULT_EVERYTHING_POINTS = 32
DEFAULT_IMAGE_SIZE = (1620, 1080)  # (W, H): 1080p height, the 3:2 aspect of skimage's coffee
OUTPUT_FILES = {"markdown": "bench.md", "json": "bench.json", "chart": "bench.png"}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- options


@dataclass
class BenchConfig:
    models: list[str]
    paths: list[str]
    quick: bool
    warmup: int
    repeats: int
    click_repeats: int
    cold_starts: int
    everything_repeats: int
    everything_points: int
    image: Path | None
    point: tuple[float, float] | None
    checkpoints: dict[str, Path] = field(default_factory=dict)
    model_dirs: dict[str, Path] = field(default_factory=dict)
    out: Path = Path("bench-results")
    cache: Path = field(default_factory=default_cache_root)
    timeout: float = 3600.0
    text_repeats: int = 0
    text_detections: int = 50

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("image", "out", "cache"):
            data[key] = None if data[key] is None else str(data[key])
        data["checkpoints"] = {k: str(v) for k, v in self.checkpoints.items()}
        data["model_dirs"] = {k: str(v) for k, v in self.model_dirs.items()}
        return data


def _name_list(valid: Sequence[str], what: str):  # noqa: ANN202 - an argparse type factory
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        if not names:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}, got {text!r}")
        unknown = [n for n in names if n not in valid]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(map(repr, unknown))}; expected some of: {', '.join(valid)}"
            )
        return list(dict.fromkeys(names))

    return parse


def _assignment(text: str) -> tuple[str, Path]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH (e.g. mobile_sam=weights/mobile_sam.pt), got {text!r}")
    if name not in REGISTRY:
        raise argparse.ArgumentTypeError(f"unknown model {name!r} in {text!r}; expected one of: {', '.join(REGISTRY)}")
    return name, Path(value).expanduser()


def _point(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y (two numbers, image pixels), got {text!r}") from None
    if not (np.isfinite(x) and np.isfinite(y)):
        raise argparse.ArgumentTypeError(f"expected finite X,Y, got {text!r}")
    return x, y


def _count(minimum: int):  # noqa: ANN202 - an argparse type factory
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    full, quick = FULL_RUNS, QUICK_RUNS
    parser = argparse.ArgumentParser(
        prog="fastseg bench",
        description=(
            "Time the PyTorch originals against fastseg (ONNX Runtime, OpenVINO f32, bf16, int8) and, for "
            "FastSAM, ultralytics' own OpenVINO export, on the same photo and point prompt. With no options it "
            "builds random-weight checkpoints (same graphs and timings as the real ones), exports them into the "
            "cache once, and writes bench.md, bench.json and bench.png into --out."
        ),
    )
    parser.add_argument("--models", type=_name_list(BENCH_MODELS, "models"), default=list(DEFAULT_MODELS),
                        metavar="A,B", help=f"models to run (default: {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--paths", type=_name_list(tuple(PATHS), "paths"), default=list(PATHS), metavar="P,Q",
                        help=f"paths to run (default: all: {','.join(PATHS)}); ratios need 'pytorch'")
    parser.add_argument("--quick", action="store_true",
                        help=f"short run: {quick[1]} end-to-end runs, {quick[2]} clicks, {quick[3]} cold start per "
                             f"path (default {full[1]}, {full[2]}, {full[3]}); still every path")
    parser.add_argument("--warmup", type=_count(0), help=f"untimed end-to-end runs first (default {full[0]})")
    parser.add_argument("--repeats", type=_count(1), help="timed end-to-end runs per path")
    parser.add_argument("--click-repeats", type=_count(1), help="timed 'one more click' runs per path")
    parser.add_argument("--cold-starts", type=_count(0), help="fresh processes timed to their first mask (0: skip)")
    parser.add_argument("--everything-repeats", type=_count(0),
                        help=f"timed everything-mode runs per path (automatic masks; default {full[4]}; 0: skip)")
    parser.add_argument("--everything-points", type=_count(1), default=DEFAULT_EVERYTHING_POINTS, metavar="N",
                        help="SAM family everything mode: points_per_side of the grid (default "
                             f"{DEFAULT_EVERYTHING_POINTS}, the original generator's; other parameters stay at "
                             "their defaults)")
    parser.add_argument("--text-repeats", type=_count(0), metavar="N",
                        help=f"FastSAM text prompts: timed text queries per path (default {full[5]}, --quick "
                             f"{quick[5]}; 0: skip), CLIP ViT-B/32 ({TEXT_MODEL}) against ultralytics' PyTorch path")
    parser.add_argument("--text-detections", type=_count(1), default=50, metavar="N",
                        help="FastSAM text prompts: the confidence threshold is set so that about N detections "
                             "are scored (default 50)")
    parser.add_argument("--image", type=Path, metavar="PATH",
                        help="photo to use (default: skimage.data.coffee() resized to 1620x1080 with PIL bicubic)")
    parser.add_argument("--point", type=_point, metavar="X,Y", help="the positive point (default: image centre)")
    parser.add_argument("--checkpoint", type=_assignment, action="append", default=[], metavar="NAME=PATH",
                        help="real weights for a model (repeatable); exported into the cache once")
    parser.add_argument("--model-dir", type=_assignment, action="append", default=[], metavar="NAME=DIR",
                        help="an existing `fastseg export` folder for a model (repeatable); needs the checkpoint "
                             "it was exported from (--checkpoint, or the benchmark's random one)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), metavar="DIR",
                        help="where to write bench.md, bench.json, bench.png (default: bench-results/)")
    parser.add_argument("--cache", type=Path, metavar="DIR",
                        help="checkpoints and exports (default: $FASTSEG_CACHE/bench or ~/.cache/fastseg/bench)")
    parser.add_argument("--timeout", type=_seconds, default=3600.0, metavar="SECONDS",
                        help="give up on one process after this long (default 3600)")
    parser.add_argument("--batch", action="store_true",
                        help="run the scale benchmark instead: images/s of `fastseg embed` and `fastseg batch` on "
                             "folders of photos, one process and Ray (its options: fastseg bench --batch --help)")
    return parser


def parse_args(argv: Sequence[str]) -> BenchConfig:
    """Parse ``fastseg bench`` options; errors exit through argparse (status 2) naming what was expected."""
    parser = build_parser()
    args = parser.parse_args(list(argv))
    checkpoints: dict[str, Path] = {}
    model_dirs: dict[str, Path] = {}
    for option, pairs, target in (("--checkpoint", args.checkpoint, checkpoints),
                                  ("--model-dir", args.model_dir, model_dirs)):
        for name, path in pairs:
            if name in target:
                parser.error(f"{option} given twice for {name}: {target[name]} and {path}")
            if name not in args.models and not (name == TEXT_MODEL and any(
                    get_spec(m).family == "fastsam" for m in args.models)):
                parser.error(f"{option} {name}=... names a model that is not benchmarked (--models "
                             f"{','.join(args.models)})")
            target[name] = path
    for name, path in checkpoints.items():
        if not path.is_file():
            parser.error(f"--checkpoint {name}={path}: expected a checkpoint file, "
                         f"{'got a directory' if path.is_dir() else 'no such file'}")
    for name, path in model_dirs.items():
        if not path.is_dir():
            parser.error(f"--model-dir {name}={path}: expected a folder written by `fastseg export`, "
                         f"{'got a file' if path.exists() else 'no such folder'}")
    if args.image is not None and not args.image.is_file():
        parser.error(f"--image {args.image}: no such file")
    runs = QUICK_RUNS if args.quick else FULL_RUNS
    return BenchConfig(
        models=args.models,
        paths=args.paths,
        quick=args.quick,
        warmup=runs[0] if args.warmup is None else args.warmup,
        repeats=runs[1] if args.repeats is None else args.repeats,
        click_repeats=runs[2] if args.click_repeats is None else args.click_repeats,
        cold_starts=runs[3] if args.cold_starts is None else args.cold_starts,
        everything_repeats=runs[4] if args.everything_repeats is None else args.everything_repeats,
        everything_points=args.everything_points,
        image=args.image,
        point=args.point,
        checkpoints=checkpoints,
        model_dirs=model_dirs,
        out=args.out,
        cache=args.cache or default_cache_root(),
        timeout=args.timeout,
        text_repeats=runs[5] if args.text_repeats is None else args.text_repeats,
        text_detections=args.text_detections,
    )


# ---------------------------------------------------------------------------------------------- inputs


def default_image() -> tuple[npt.NDArray[np.uint8], str]:
    """scikit-image's ``coffee`` photo (400x600), resized with PIL bicubic to 1620x1080."""
    from PIL import Image
    from skimage import data

    small = data.coffee()
    w, h = DEFAULT_IMAGE_SIZE
    image = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), dtype=np.uint8)
    description = (f"skimage.data.coffee() ({small.shape[1]}x{small.shape[0]}, a real photo bundled with "
                   f"scikit-image) resized with PIL bicubic to {w}x{h}")
    return np.ascontiguousarray(image), description


def load_bench_image(path: Path | None) -> tuple[npt.NDArray[np.uint8], str]:
    if path is None:
        return default_image()
    from fastseg.image import load_image

    image = load_image(path)
    return image, f"{path} ({image.shape[1]}x{image.shape[0]})"


def check_point(point: tuple[float, float], size: tuple[int, int]) -> None:
    """Raise ValueError unless ``point`` (X, Y) lies inside an image of ``size`` (H, W)."""
    h, w = size
    x, y = point
    if not (0 <= x < w and 0 <= y < h):
        raise ValueError(f"--point {x:g},{y:g} lies outside the {w}x{h} image; expected 0 <= X < {w}, 0 <= Y < {h}")


@contextlib.contextmanager
def bench_lock(cache: Path) -> Iterator[None]:
    """Refuse to run while another ``fastseg bench`` using the same cache runs: they would skew each other."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / "bench.lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RuntimeError(
                f"another `fastseg bench` is running (lock {path} held by pid {holder}); two benchmarks at once "
                "disturb each other's timings: wait for it to finish"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


# -------------------------------------------------------------------------------------------- children


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONWARNINGS", "ignore")  # library deprecation chatter would drown the progress lines
    env.setdefault("YOLO_VERBOSE", "False")
    env.setdefault("YOLO_OFFLINE", "1")  # no DNS probes at ultralytics import (they would only slow it down)
    return env


def run_child(mode: str, job: dict[str, Any], work: Path, tag: str, timeout: float) -> tuple[dict[str, Any], float]:
    """Run ``python -m fastseg_bench.worker MODE`` on ``job``; return its result and the spawn time (``time.time()``).

    The child's stdout and stderr are passed on to our stderr as they come (progress); a child that dies
    without writing its result gives a failed result naming its exit status and last output lines.
    """
    job = dict(job, result=str(work / f"{tag}.result.json"))
    job_path = work / f"{tag}.job.json"
    job_path.write_text(json.dumps(job), encoding="utf-8")
    Path(job["result"]).unlink(missing_ok=True)
    tail: deque[str] = deque(maxlen=15)
    spawned = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastseg_bench.worker", mode, str(job_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env(),
        text=True, errors="replace", bufsize=1,
    )

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip())
            sys.stderr.write(line)
            sys.stderr.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        reader.join(5)
        return {"status": "failed", "error": f"timed out after {timeout:.0f} s ({mode} {tag})"}, spawned
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    reader.join(5)
    result_path = Path(job["result"])
    if result_path.exists():
        return json.loads(result_path.read_text(encoding="utf-8")), spawned
    last = " | ".join(line for line in tail if line)[-600:]
    return {"status": "failed", "error": f"worker process exited with status {code} without a result; last output: "
                                         f"{last or '(none)'}"}, spawned


# ------------------------------------------------------------------------------------------ assembling


def path_result(measured: dict[str, Any], colds: list[dict[str, Any]], cold_error: str | None) -> dict[str, Any]:
    """One path's entry in the result set, from its measure process and its cold-start processes."""
    info = measured.get("info", {})
    network = measured.get("network_s") or []
    result: dict[str, Any] = {
        "status": "ok",
        "api": info.get("api"),
        "precision": info.get("precision"),
        "info": info,
        "load_s": measured["load_s"],
        "end_to_end_ms": summarize([v * 1000 for v in measured["end_to_end_s"]]),
        "network_ms": summarize([v * 1000 for v in network]) if network else None,
        "click_ms": summarize([v * 1000 for v in measured["click_s"]]),
        "cold_start_s": summarize([c["wall_s"] for c in colds]) if colds else None,
        "cold_start_runs": colds,
        "peak_rss_mib": measured["peak_rss_mib"],
        "mask": {"shape": measured["mask_shape"], "pixels": measured["mask_pixels"]},
    }
    if cold_error:
        result["cold_start_error"] = cold_error
    if info.get("precision_source"):
        result["precision_note"] = (
            f"ultralytics' OpenVINO path ran at {info.get('precision')} ({info['precision_source']}): ultralytics "
            "compiles with PERFORMANCE_HINT=LATENCY and no INFERENCE_PRECISION_HINT, so OpenVINO's CPU default applies "
            "(bf16 on CPUs with AVX-512 BF16 or AMX, f32 otherwise). Its export is a static 1x3x1024x1024 graph "
            "with f32 weights, so every photo is padded to a square."
        )
    return result


def model_agreements(model: dict[str, Any], masks: dict[str, Path]) -> None:
    """Fill ``bf16_vs_f32``, ``int8_vs_f32`` and each path's ``mask_vs_pytorch`` from the saved masks."""
    loaded = {p: np.load(f) for p, f in masks.items() if f.exists()}
    per_mask = model["family"] == "sam"  # SAM's 3 masks are positional; FastSAM's sets are compared as unions
    if "fastseg-openvino-f32" in loaded and "fastseg-openvino-bf16" in loaded:
        model["bf16_vs_f32"] = mask_agreement(loaded["fastseg-openvino-bf16"], loaded["fastseg-openvino-f32"],
                                              per_mask)
    else:
        model["bf16_vs_f32"] = None
    if "fastseg-openvino-f32" in loaded and "fastseg-openvino-int8" in loaded:
        model["int8_vs_f32"] = mask_agreement(loaded["fastseg-openvino-int8"], loaded["fastseg-openvino-f32"],
                                              per_mask)
    else:
        model["int8_vs_f32"] = None
    for path, result in model["paths"].items():
        if result.get("status") == "ok" and path != "pytorch" and "pytorch" in loaded and path in loaded:
            result["mask_vs_pytorch"] = mask_agreement(loaded[path], loaded["pytorch"], per_mask)


def bench_everything(name: str, family: str, paths: list[str], config: BenchConfig, work: Path,
                     job_base: dict[str, Any]) -> dict[str, Any]:
    """Everything mode on each of ``paths``, one process each: time, mask count, peak RSS, masks vs PyTorch's."""
    params = {"points_per_side": config.everything_points} if family in GRID_FAMILIES else {}
    section: dict[str, Any] = {"params": params, "paths": {}}
    rles: dict[str, list[dict[str, Any]]] = {}
    for path in paths:
        tag = f"{name}-{path}-everything"
        out = work / f"{tag}.rles.json"
        log(f"{name} / {path}: everything mode ({config.everything_repeats} timed run(s) after a one-point warm-up)")
        job = dict(job_base, path=path, mask=str(out), everything_params=params,
                   everything_repeats=config.everything_repeats)
        measured, _ = run_child("everything", job, work, tag, config.timeout)
        if measured.get("status") != "ok":
            section["paths"][path] = {"status": "failed", "error": measured.get("error")}
            continue
        info = measured.get("info", {})
        section["paths"][path] = {
            "status": "ok",
            "api": info.get("api"),
            "precision": info.get("precision"),
            "everything_ms": summarize([v * 1000 for v in measured["everything_s"]]),
            "masks": measured["masks"],
            "peak_rss_mib": measured["peak_rss_mib"],
        }
        rles[path] = json.loads(out.read_text(encoding="utf-8"))["rles"]
        out.unlink()
    for path, result in section["paths"].items():
        if result.get("status") == "ok" and path != "pytorch" and "pytorch" in rles:
            result["masks_vs_pytorch"] = everything_agreement(rles[path], rles["pytorch"])
    compute_speedups(section, measures=EVERYTHING_MEASURES)
    section["fastseg_vs_ultralytics"] = (
        fastseg_vs_ultralytics(section, key="everything_ms") if family == "fastsam" else None
    )
    return section


def prepare_job(name: str, config: BenchConfig, **extra: Any) -> dict[str, Any]:
    """The ``prepare`` worker's job for model ``name``: the user's checkpoint or folder, if given."""
    return {
        "model": name,
        "cache": str(config.cache),
        "checkpoint": str(config.checkpoints[name]) if name in config.checkpoints else None,
        "model_dir": str(config.model_dirs[name]) if name in config.model_dirs else None,
        **extra,
    }


def bench_text(name: str, paths: list[str], config: BenchConfig, work: Path, job_base: dict[str, Any],
               image_path: Path) -> dict[str, Any]:
    """FastSAM text prompts on each of ``paths``: CLIP ViT-B/32 prepared once (random weights unless
    ``--checkpoint clip_vit_b32=...``), the confidence set for about ``config.text_detections``
    detections (fastseg's network on the bench image, in the prepare process), then one process per path."""
    section: dict[str, Any] = {"paths": {}}
    log(f"{name}: preparing {TEXT_MODEL} and the confidence for ~{config.text_detections} detections")
    conf_for = {"model_dir": job_base["model_dir"], "image": str(image_path), "detections": config.text_detections}
    prep, _ = run_child("prepare", prepare_job(TEXT_MODEL, config, conf_for=conf_for), work,
                        f"{name}-text-prepare", config.timeout)
    if prep.get("status") != "ok" or prep.get("model_dir") is None:
        section["status"] = "failed"
        section["error"] = prep.get("error") or prep.get("model_dir_error")
        return section
    section.update(status="ok", clip_weights=prep["weights"], conf=prep["conf"])
    for path in [p for p in TEXT_PATHS if p in paths]:
        tag = f"{name}-{path}-text"
        log(f"{name} / {path}: text prompts ({config.text_repeats} timed queries, conf {prep['conf']:.4f})")
        job = dict(job_base, path=path, conf=prep["conf"], clip_checkpoint=prep["checkpoint"],
                   clip_dir=prep["model_dir"], text_repeats=config.text_repeats)
        measured, _ = run_child("text", job, work, tag, config.timeout)
        if measured.get("status") != "ok":
            section["paths"][path] = {"status": "failed", "error": measured.get("error")}
            continue
        section["paths"][path] = {
            "status": "ok",
            "precision": measured["info"].get("precision"),
            "detections": measured["detections"],
            "text_first_ms": summarize([v * 1000 for v in measured["first_s"]]),
            "text_again_ms": summarize([v * 1000 for v in measured["again_s"]]) if measured["again_s"] else None,
            "peak_rss_mib": measured["peak_rss_mib"],
        }
    compute_speedups(section, measures={"text_first_ms": "text_first", "text_again_ms": "text_again"})
    # ultralytics encodes the crops on every query: its time is the baseline of both columns.
    base = section["paths"].get("pytorch")
    if base and base.get("status") == "ok":
        for result in section["paths"].values():
            again = result.get("text_again_ms")
            if result.get("status") == "ok" and again:
                result["speedup"]["text_again"] = speedup(base["text_first_ms"]["median"], again["median"])
    return section


def bench_model(name: str, config: BenchConfig, work: Path, image_path: Path,
                point: tuple[float, float]) -> dict[str, Any]:
    spec = get_spec(name)
    paths = [p for p in config.paths if spec.family in PATHS[p]]
    log(f"{name}: preparing checkpoint and exported models")
    prep, _ = run_child("prepare", prepare_job(name, config, ultralytics="ultralytics-openvino" in paths,
                                               int8="fastseg-openvino-int8" in paths),
                        work, f"{name}-prepare", config.timeout)
    if prep.get("status") != "ok":
        return {"status": "failed", "error": prep.get("error"), "family": spec.family, "paths": {}}
    model: dict[str, Any] = {
        "status": "ok",
        "family": spec.family,
        "weights": prep["weights"],
        "checkpoint": {"path": prep["checkpoint"], "sha256": prep["checkpoint_sha256"]},
        "model_dir": prep["model_dir"],
        "ultralytics_dir": prep.get("ultralytics_dir"),
        "paths": {},
    }
    job_base = {
        "model": name, "family": spec.family, "image": str(image_path), "point": list(point),
        "checkpoint": prep["checkpoint"], "model_dir": prep["model_dir"],
        "ultralytics_dir": prep.get("ultralytics_dir"),
        "warmup": config.warmup, "repeats": config.repeats, "click_repeats": config.click_repeats,
    }
    masks: dict[str, Path] = {}
    for path in paths:
        tag = f"{name}-{path}"
        mask_file = work / f"{tag}.mask.npy"
        missing = (prep.get("ultralytics_error") if path == "ultralytics-openvino"
                   else prep.get("model_dir_error") if path.startswith("fastseg-") else None)
        if missing:
            model["paths"][path] = {"status": "failed", "error": missing}
            continue
        log(f"{name} / {path}: timed runs ({config.warmup} warm-up, {config.repeats} end-to-end, "
            f"{config.click_repeats} clicks)")
        measured, _ = run_child("measure", dict(job_base, path=path, mask=str(mask_file)), work, tag, config.timeout)
        if measured.get("status") != "ok":
            model["paths"][path] = {"status": "failed", "error": measured.get("error")}
            continue
        masks[path] = mask_file
        colds: list[dict[str, Any]] = []
        cold_error = None
        for i in range(config.cold_starts):
            log(f"{name} / {path}: cold start {i + 1}/{config.cold_starts} (new process -> first mask)")
            run, spawned = run_child("cold", dict(job_base, path=path), work, f"{tag}-cold{i}", config.timeout)
            if run.get("status") != "ok":
                cold_error = run.get("error")
                break
            run["wall_s"] = run["first_mask_at"] - spawned
            run["startup_s"] = run["process_start"] - spawned  # interpreter start until the worker's first line
            log(f"{name} / {path}: cold start {i + 1}: {run['wall_s']:.2f} s to the first mask "
                f"(load {run['load_s']:.2f} s, first mask {run['first_mask_s']:.2f} s)")
            colds.append(run)
        model["paths"][path] = path_result(measured, colds, cold_error)
    model_agreements(model, masks)
    for f in masks.values():
        f.unlink(missing_ok=True)
    compute_speedups(model)
    model["fastseg_vs_ultralytics"] = fastseg_vs_ultralytics(model) if spec.family == "fastsam" else None
    if config.everything_repeats:
        ready = [p for p in paths if model["paths"].get(p, {}).get("status") == "ok"]
        model["everything"] = bench_everything(name, spec.family, ready, config, work, job_base)
    if config.text_repeats and spec.family == "fastsam":
        ready = [p for p in paths if model["paths"].get(p, {}).get("status") == "ok"]
        model["text"] = bench_text(name, ready, config, work, job_base, image_path)
    return model


def skipped_paths(paths: Sequence[str], machine: dict[str, Any]) -> dict[str, str]:
    """Paths not worth running on this machine, with the reason: the bf16 path where OpenVINO has no bf16.

    On a CPU without AVX-512 BF16 or AMX, OpenVINO compiles a bf16 request at f32, so that path would
    repeat the f32 row under a bf16 label.
    """
    capabilities = (machine.get("openvino_cpu") or {}).get("optimization_capabilities")
    if "fastseg-openvino-bf16" not in paths or capabilities is None or "BF16" in capabilities:
        return {}
    return {"fastseg-openvino-bf16": (
        f"this CPU has no bf16 in OpenVINO (capabilities {', '.join(capabilities)}; bf16 needs AVX-512 BF16 or "
        "AMX), so OpenVINO would run that path at f32 and repeat the f32 row"
    )}


def count_failures(results: dict[str, Any]) -> int:
    failures = 0
    for model in results["models"].values():
        if model.get("status") != "ok":
            failures += 1
            continue
        for result in model["paths"].values():
            failures += result.get("status") != "ok" or bool(result.get("cold_start_error"))
        for result in (model.get("everything") or {}).get("paths", {}).values():
            failures += result.get("status") != "ok"
        text = model.get("text") or {}
        failures += text.get("status") == "failed"
        for result in text.get("paths", {}).values():
            failures += result.get("status") != "ok"
    return failures


def run(config: BenchConfig) -> int:
    with bench_lock(config.cache):
        started = time.perf_counter()
        machine = describe_machine()
        skipped = skipped_paths(config.paths, machine)
        config.paths = [p for p in config.paths if p not in skipped]
        image, description = load_bench_image(config.image)
        h, w = image.shape[:2]
        point = config.point if config.point is not None else (w / 2, h / 2)
        check_point(point, (h, w))
        config.out.mkdir(parents=True, exist_ok=True)
        results: dict[str, Any] = {
            "schema": SCHEMA,
            "config": config.to_dict(),
            "machine": machine,
            "image": {"description": description, "size": [h, w]},
            "prompt": {"point": [float(point[0]), float(point[1])], "label": 1},
            "models": {},
        }
        if skipped:
            results["skipped_paths"] = skipped
            for path, why in skipped.items():
                log(f"not running {path}: {why}")
        with tempfile.TemporaryDirectory(prefix="fastseg-bench-") as tmp:
            work = Path(tmp)
            image_path = work / "image.npy"
            np.save(image_path, image)
            for i, name in enumerate(config.models):
                log(f"model {i + 1}/{len(config.models)}: {name}")
                results["models"][name] = bench_model(name, config, work, image_path, point)
        results["elapsed_s"] = time.perf_counter() - started
        try:
            results["machine"]["load_average_at_end"] = list(os.getloadavg())
        except OSError:
            results["machine"]["load_average_at_end"] = None
        note = busy_note(machine)
        if note:
            results["machine_note"] = note
        markdown = render_markdown(results)
        files = {kind: config.out / name for kind, name in OUTPUT_FILES.items()}
        files["markdown"].write_text(markdown, encoding="utf-8")
        files["json"].write_text(to_json(results), encoding="utf-8")
        render_chart(results, files["chart"])
    print(markdown)
    log(f"wrote {', '.join(str(f) for f in files.values())} in {results['elapsed_s'] / 60:.1f} min")
    failures = count_failures(results)
    if failures:
        log(f"{failures} path(s) failed; see the Failures section")
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fastseg bench``; returns the exit status (0 ok, 1 some path failed, 2 bad options)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--batch" in args:  # the scale benchmark, with options of its own
        from fastseg_bench.scale import main as scale_main

        args.remove("--batch")
        return scale_main(args)
    try:
        config = parse_args(args)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return int(exc.code or 0) if isinstance(exc.code, int) or exc.code is None else 2
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
