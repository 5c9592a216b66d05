"""What bf16 and INT8 change: masks at each precision against f32's, and their speed, in one run.

``python -m fastseg_bench.precision --model models/mobile_sam [--model ...] [--precisions bf16,int8]``

For every model folder and precision, through the whole pipeline (``Predictor``): on held-out photos
(scikit-image ``astronaut``, ``chelsea``, ``coffee``: none is among the INT8 calibration photos) and a
fixed prompt set per photo (16 points on a 4 x 4 grid with ``multimask=True``, 16 boxes around them
with ``multimask=False``):

- SAM family and SAM 2.1: the share of pixels on which each mask equals f32's (mean and min over every mask);
- FastSAM: the IoU of the selected mask (the union of what the prompt selects) with f32's (mean,
  min; 1 where both are empty), and how many prompts select nothing at one precision only;
- speed on a 1920 x 1080 photo: the image step (``encode``) and one click (``predict`` of one point),
  medians, each precision in the same process.

A precision the CPU cannot run natively is measured all the same and flagged (OpenVINO runs f32 when
asked for bf16 without AVX-512 BF16 or AMX; INT8 is slow without VNNI or AMX).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastseg_bench.machine import describe_machine, machine_line, versions_line
from fastseg_bench.stats import mask_agreement
from fastseg_export.int8 import photo

PHOTOS = ("astronaut", "chelsea", "coffee")
GRID = 4
ENCODES = 3
CLICKS = 20
#: Families whose masks are compared pixel for pixel (FastSAM's selected masks by IoU).
PIXEL_FAMILIES = ("sam", "sam2")


def prompts(size: tuple[int, int]) -> list[dict[str, Any]]:
    """16 points on a 4 x 4 grid (multimask) and 16 boxes around them (one mask each)."""
    h, w = size
    out: list[dict[str, Any]] = []
    for i in range(GRID):
        for j in range(GRID):
            x, y = (j + 0.5) * w / GRID, (i + 0.5) * h / GRID
            out.append({"points": [[x, y]], "labels": [1], "multimask": True})
            bw, bh = 0.3 * w, 0.3 * h
            box = [max(0.0, x - bw / 2), max(0.0, y - bh / 2), min(w - 1.0, x + bw / 2), min(h - 1.0, y + bh / 2)]
            out.append({"boxes": box, "multimask": False})
    return out


def predict_all(predictor: Any, images: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Every prompt's masks ``(M, H, W)`` per photo, in order."""
    out: dict[str, list[np.ndarray]] = {}
    for name, image in images.items():
        predictor.set_image(image)
        out[name] = [np.asarray(predictor.predict(**p).masks, dtype=bool) for p in prompts(image.shape[:2])]
    return out


def compare(family: str, ref: dict[str, list[np.ndarray]], other: dict[str, list[np.ndarray]]) -> dict[str, Any]:
    """Pixel agreement (SAM family, SAM 2.1) or selected-mask IoU (FastSAM) of ``other`` against ``ref``."""
    pairs = [(a, b) for name in ref for a, b in zip(ref[name], other[name])]
    if family in PIXEL_FAMILIES:
        agree = [mask_agreement(a[k], b[k])["pixels_pct"] / 100 for a, b in pairs for k in range(len(a))]
        return {"masks": len(agree), "pixel_agreement_mean": float(np.mean(agree)), "pixel_agreement_min": min(agree)}
    ious, one_sided = [], 0
    for a, b in pairs:
        if (len(a) == 0) != (len(b) == 0):  # a mask selected at one precision only
            one_sided += 1
            ious.append(0.0)
        else:
            ious.append(mask_agreement(a, b, per_mask=False)["iou_pct"] / 100)
    return {
        "prompts": len(ious),
        "selected_iou_mean": float(np.mean(ious)),
        "selected_iou_min": min(ious),
        "selected_at_one_precision_only": one_sided,
    }


def speed(predictor: Any) -> dict[str, float]:
    """Median ms of the image step and of one more click on a 1920 x 1080 photo."""
    from PIL import Image

    image = np.asarray(Image.fromarray(photo("astronaut")).resize((1920, 1080), Image.Resampling.BILINEAR))
    encodes = []
    for _ in range(ENCODES):
        start = time.perf_counter()
        handle = predictor.encode(image)
        encodes.append(time.perf_counter() - start)
    clicks = []
    for i in range(CLICKS + 3):
        start = time.perf_counter()
        predictor.predict(points=[[400 + 40 * i, 500]], labels=[1], image=handle)
        clicks.append(time.perf_counter() - start)
    return {"encode_ms": statistics.median(encodes) * 1000, "click_ms": statistics.median(clicks[3:]) * 1000}


def measure(model: Path, precisions: Sequence[str], threads: int | None = None) -> dict[str, Any]:
    from fastseg import Predictor
    from fastseg.manifest import load_model_folder

    folder = load_model_folder(model)
    images = {name: photo(name) for name in PHOTOS}
    rows: dict[str, Any] = {}
    reference: dict[str, list[np.ndarray]] = {}
    for precision in ("f32", *[p for p in precisions if p != "f32"]):
        if precision == "int8" and not folder.int8_graphs:
            rows[precision] = {"skipped": "the folder has no INT8 graph (export with --int8)"}
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            predictor = Predictor(model, precision=precision, num_threads=threads)  # type: ignore[arg-type]
        row: dict[str, Any] = {
            "ran": predictor.precision,
            "graphs": predictor.graph_precisions,
            "warnings": [str(w.message) for w in caught],
        }
        masks = predict_all(predictor, images)
        if precision == "f32":
            reference = masks
        else:
            row.update(compare(folder.family, reference, masks))
        row.update(speed(predictor))
        rows[precision] = row
        del predictor
    return {"model": folder.name, "family": folder.family, "weights": folder.weights, "rows": rows}


def render_markdown(results: Sequence[dict[str, Any]], machine: dict[str, Any]) -> str:
    lines = [
        "### Precision: masks against f32, and speed",
        "",
        f"Host: {machine_line(machine)}. Versions: {versions_line(machine)}.",
        f"Photos {', '.join(PHOTOS)} (not used for INT8 calibration), 16 points (multimask) and 16 boxes each; "
        "SAM family and SAM 2.1: share of pixels equal to f32's mask, mean (min) over every mask; FastSAM: IoU of the "
        "selected mask with f32's, mean (min). Speed: 1920x1080 photo, medians.",
        "",
        "| model | weights | precision (ran) | masks vs f32 | image step ms | one click ms |",
        "|---|---|---|--:|--:|--:|",
    ]
    for result in results:
        for precision, row in result["rows"].items():
            if "skipped" in row:
                lines.append(f"| {result['model']} | {result['weights']} | {precision} | {row['skipped']} | | |")
                continue
            if precision == "f32":
                vs = "reference"
            elif result["family"] in PIXEL_FAMILIES:
                vs = f"{100 * row['pixel_agreement_mean']:.2f}% ({100 * row['pixel_agreement_min']:.2f}%)"
            else:
                vs = f"IoU {row['selected_iou_mean']:.4f} ({row['selected_iou_min']:.4f})"
                if row["selected_at_one_precision_only"]:
                    vs += f", {row['selected_at_one_precision_only']} selected at one precision only"
            graphs = "/".join(sorted(set(row["graphs"].values())))
            lines.append(
                f"| {result['model']} | {result['weights']} | {precision} ({graphs}) | {vs} "
                f"| {row['encode_ms']:,.0f} | {row['click_ms']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastseg_bench.precision", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, type=Path, help="an exported model folder (repeat)")
    p.add_argument("--precisions", default="bf16,int8", help="compared with f32 (default bf16,int8)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("bench-results/precision"))
    args = p.parse_args(argv)
    precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
    bad = [x for x in precisions if x not in ("f32", "bf16", "int8")]
    if bad:
        print(f"--precisions takes f32, bf16, int8; got {', '.join(bad)}", file=sys.stderr)
        return 2
    machine = describe_machine()
    results = []
    for model in args.model:
        if not (model / "manifest.json").is_file():
            print(f"--model must be an exported model folder (with manifest.json), got {model}", file=sys.stderr)
            return 2
        print(f"[precision] {model}", file=sys.stderr, flush=True)
        results.append(measure(model, precisions, args.threads))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "precision.json").write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    text = render_markdown(results, machine)
    (args.out / "precision.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
