"""`fastseg bench`: statistics, ratios, rendering from a made-up result set, options and their errors,
and one real quick run of MobileSAM whose outputs are checked for content."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fastseg.backends import openvino_supports_bf16
from fastseg.rle import encode
from fastseg_bench import run as bench_run
from fastseg_bench.machine import busy_note, machine_line, parse_cpuinfo, parse_meminfo, sample_cpu
from fastseg_bench.report import (
    EVERYTHING_MEASURES,
    PATH_LABELS,
    compute_speedups,
    fastseg_vs_ultralytics,
    fmt_ms,
    fmt_pct,
    fmt_ratio,
    render_chart,
    render_markdown,
    to_json,
)
from fastseg_bench.stats import everything_agreement, mask_agreement, speedup, summarize
from fastseg_bench.worker import PATHS, TimedSession

# ------------------------------------------------------------------------------------------ statistics


@pytest.mark.parametrize(
    ("samples", "median", "minimum"),
    [
        ([5.0], 5.0, 5.0),
        ([3.0, 1.0, 2.0], 2.0, 1.0),
        ([4.0, 1.0, 3.0, 2.0], 2.5, 1.0),
        ([0.0, 10.0], 5.0, 0.0),
    ],
)
def test_summarize(samples: list[float], median: float, minimum: float) -> None:
    s = summarize(samples)
    assert (s["n"], s["median"], s["min"], s["max"]) == (len(samples), median, minimum, max(samples))
    assert s["samples"] == samples


@pytest.mark.parametrize(
    ("samples", "message"),
    [([], "at least one sample, got none"), ([1.0, -2.0], "got [-2.0]"), ([math.nan], "finite numbers >= 0")],
)
def test_summarize_refuses(samples: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        summarize(samples)


@pytest.mark.parametrize(
    ("baseline", "value", "expected"),
    [(1000.0, 250.0, 4.0), (100.0, 200.0, 0.5), (0.0, 0.0, 1.0), (None, 5.0, None), (5.0, None, None)],
)
def test_speedup(baseline: float | None, value: float | None, expected: float | None) -> None:
    assert speedup(baseline, value) == expected


def test_speedup_refuses_impossible_figures() -> None:
    with pytest.raises(ValueError, match="infinite"):
        speedup(10.0, 0.0)
    with pytest.raises(ValueError, match="figures >= 0, got baseline=-1.0"):
        speedup(-1.0, 2.0)


def test_mask_agreement() -> None:
    a = np.zeros((3, 10, 20), dtype=bool)
    a[:, 2:6, 3:9] = True
    same = mask_agreement(a, a.copy())
    assert same["pixels_pct"] == 100.0 and same["iou_pct"] == 100.0 and same["compared"] == "masks"
    b = a.copy()
    b[0, 0, 0] = True  # one pixel of 600 differs
    one = mask_agreement(a, b)
    assert one["pixels_pct"] == pytest.approx(100 * 599 / 600)
    assert one["iou_pct"] == pytest.approx(100 * 24 / 25)
    # FastSAM-like: different numbers of masks -> the unions are compared
    union = mask_agreement(a[:1], np.concatenate([a, a[:1]]))
    assert union["compared"] == "union" and union["count"] == (1, 4) and union["pixels_pct"] == 100.0
    same_count = mask_agreement(a, a[::-1].copy(), per_mask=False)  # FastSAM: order does not matter
    assert same_count["compared"] == "union" and same_count["pixels_pct"] == 100.0
    empty = mask_agreement(np.zeros((0, 10, 20), bool), np.zeros((10, 20), bool))
    assert empty["pixels_pct"] == 100.0 and empty["iou_pct"] == 100.0
    with pytest.raises(ValueError, match=r"different image sizes: \(10, 20\) and \(10, 21\)"):
        mask_agreement(a, np.zeros((3, 10, 21), bool))


# ------------------------------------------------------------------------------------- fake result set


def _summary(median: float, minimum: float) -> dict[str, Any]:
    return {"n": 3, "median": median, "min": minimum, "max": median * 1.1, "samples": [minimum, median, median * 1.1]}


def _path(e2e: float, net: float, click: float, cold: float, rss: float, precision: str = "f32") -> dict[str, Any]:
    return {
        "status": "ok", "api": "x", "precision": precision, "info": {}, "load_s": 1.0,
        "end_to_end_ms": _summary(e2e, e2e * 0.9), "network_ms": _summary(net, net * 0.9),
        "click_ms": _summary(click, click * 0.9), "cold_start_s": _summary(cold, cold), "cold_start_runs": [],
        "peak_rss_mib": rss, "mask": {"shape": [3, 1080, 1620], "pixels": 1000},
    }


def _everything(ms: float, masks: int, rss: float, precision: str = "f32", matched: int | None = None,
                of: int | None = None) -> dict[str, Any]:
    result = {"status": "ok", "api": "x", "precision": precision, "everything_ms": _summary(ms, ms), "masks": masks,
              "peak_rss_mib": rss}
    if matched is not None:
        result["masks_vs_pytorch"] = {"count": [masks, of], "matched": matched, "matched_pct": 100.0 * matched / of,
                                      "iou_threshold": 0.98}
    return result


def fake_results() -> dict[str, Any]:
    sam = {
        "status": "ok", "family": "sam", "weights": "random weights (seed 0)",
        "checkpoint": {"path": "/c/mobile_sam.pt", "sha256": "ab" * 32}, "model_dir": "/m", "ultralytics_dir": None,
        "paths": {
            "pytorch": _path(1200.0, 780.0, 55.0, 6.0, 1200.0),
            "fastseg-onnxruntime": _path(600.0, 500.0, 30.0, 2.0, 600.0),
            "fastseg-openvino-f32": _path(400.0, 300.0, 20.0, 1.5, 500.0),
            "fastseg-openvino-bf16": _path(300.0, 200.0, 12.0, 1.2, 400.0, "bf16"),
        },
        "bf16_vs_f32": {"pixels_pct": 99.5, "iou_pct": 99.0, "compared": "masks", "count": [3, 3]},
    }
    fastsam = {
        "status": "ok", "family": "fastsam", "weights": "random weights (seed 0)",
        "checkpoint": {"path": "/c/FastSAM-s.pt", "sha256": "cd" * 32}, "model_dir": "/m2", "ultralytics_dir": "/u",
        "paths": {
            "pytorch": _path(800.0, 500.0, 40.0, 5.0, 900.0),
            "ultralytics-openvino": _path(260.0, 200.0, 35.0, 3.0, 800.0, "bf16")
            | {"precision_note": "ultralytics' OpenVINO path ran at bf16 (read back)"},
            "fastseg-onnxruntime": {"status": "failed", "error": "RuntimeError: boom in ORT"},
            "fastseg-openvino-f32": _path(300.0, 250.0, 5.0, 1.0, 300.0),
            "fastseg-openvino-bf16": _path(200.0, 150.0, 4.0, 0.9, 250.0, "bf16"),
        },
        "bf16_vs_f32": {"pixels_pct": 99.9, "iou_pct": 99.5, "compared": "union", "count": [2, 3]},
    }
    broken = {"status": "failed", "family": "sam", "error": "FileNotFoundError: no recipe", "paths": {}}
    results = {
        "schema": "fastseg-bench/1",
        "config": {"warmup": 1, "repeats": 3, "click_repeats": 10, "cold_starts": 1, "everything_repeats": 1,
                   "quick": False},
        "machine": {
            "cpu_model": "Test CPU 9000", "logical_cores": 2, "physical_cores": 2, "usable_cores": 2,
            "ram_bytes": 24 * 2**30, "flags": {"AVX-512": True, "AVX-512 BF16": True, "AVX-512 VNNI": True,
                                                "AMX BF16": False},
            "versions": {"openvino": "2026.4.1", "torch": "2.14.1"}, "date": "2026-01-01T00:00:00+00:00",
            "load_average_at_start": [0.1, 0.2, 0.3],
        },
        "image": {"description": "skimage.data.coffee() resized with PIL bicubic to 1620x1080", "size": [1080, 1620]},
        "prompt": {"point": [810.0, 540.0], "label": 1},
        "models": {"mobile_sam": sam, "fastsam_s": fastsam, "sam_vit_b": broken},
    }
    sam["everything"] = {"params": {"points_per_side": 32}, "paths": {
        "pytorch": _everything(110_000.0, 40, 2000.0),
        "fastseg-openvino-bf16": _everything(20_000.0, 40, 800.0, "bf16", 39, 40),
    }}
    fastsam["everything"] = {"params": {}, "paths": {
        "pytorch": _everything(900.0, 120, 1500.0),
        "ultralytics-openvino": _everything(400.0, 120, 1000.0, "bf16", 120, 120),
        "fastseg-openvino-bf16": _everything(250.0, 119, 500.0, "bf16", 119, 120),
        "fastseg-openvino-f32": {"status": "failed", "error": "MemoryError: everything"},
    }}
    for model in (sam, fastsam):
        compute_speedups(model)
        compute_speedups(model["everything"], measures=EVERYTHING_MEASURES)
    fastsam["fastseg_vs_ultralytics"] = fastseg_vs_ultralytics(fastsam)
    fastsam["everything"]["fastseg_vs_ultralytics"] = fastseg_vs_ultralytics(fastsam["everything"], "everything_ms")
    sam["fastseg_vs_ultralytics"] = sam["everything"]["fastseg_vs_ultralytics"] = None
    return results


def test_compute_speedups() -> None:
    results = fake_results()
    bf16 = results["models"]["mobile_sam"]["paths"]["fastseg-openvino-bf16"]["speedup"]
    assert bf16["end_to_end"] == pytest.approx(4.0)
    assert bf16["end_to_end_min"] == pytest.approx(4.0)
    assert bf16["network"] == pytest.approx(3.9)
    assert bf16["click"] == pytest.approx(55 / 12)
    assert bf16["cold_start"] == pytest.approx(5.0)
    assert bf16["peak_rss"] == pytest.approx(3.0)
    assert results["models"]["mobile_sam"]["paths"]["pytorch"]["speedup"]["end_to_end"] == 1.0
    assert "speedup" not in results["models"]["fastsam_s"]["paths"]["fastseg-onnxruntime"]  # failed path
    everything = results["models"]["mobile_sam"]["everything"]["paths"]["fastseg-openvino-bf16"]["speedup"]
    assert everything == {"everything": pytest.approx(5.5), "peak_rss": pytest.approx(2.5)}
    versus = results["models"]["fastsam_s"]["everything"]["fastseg_vs_ultralytics"]
    assert versus["fastseg_path"] == "fastseg-openvino-bf16" and versus["speedup"] == pytest.approx(1.6)


def test_speedups_without_a_baseline_are_none() -> None:
    model = copy.deepcopy(fake_results()["models"]["mobile_sam"])
    model["paths"]["pytorch"] = {"status": "failed", "error": "x"}
    compute_speedups(model)
    assert set(model["paths"]["fastseg-openvino-bf16"]["speedup"].values()) == {None}


def test_fastseg_vs_ultralytics_compares_the_same_precision() -> None:
    versus = fake_results()["models"]["fastsam_s"]["fastseg_vs_ultralytics"]
    assert versus["precision"] == "bf16" and versus["fastseg_path"] == "fastseg-openvino-bf16"
    assert versus["speedup"] == pytest.approx(1.3)
    model = fake_results()["models"]["fastsam_s"]
    model["paths"]["ultralytics-openvino"]["precision"] = "f32"
    assert fastseg_vs_ultralytics(model)["fastseg_path"] == "fastseg-openvino-f32"
    model["paths"]["ultralytics-openvino"]["precision"] = "f16"  # no fastseg path at f16
    assert fastseg_vs_ultralytics(model) is None


@pytest.mark.parametrize(
    ("fmt", "value", "text"),
    [(fmt_ms, 12345.6, "12,346"), (fmt_ms, 123.4, "123"), (fmt_ms, 45.67, "45.7"), (fmt_ms, 4.567, "4.57"),
     (fmt_ms, None, "—"), (fmt_ratio, 3.456, "3.46×"), (fmt_ratio, 33.04, "33.0×"), (fmt_pct, 99.999, ">99.99%"),
     (fmt_pct, 100.0, "100.00%"), (fmt_pct, 97.123, "97.12%")],
)
def test_formats(fmt: Any, value: float | None, text: str) -> None:
    assert fmt(value) == text


def test_int8_rows_and_masks() -> None:
    """The int8 path gets its row after bf16's and its own masks-vs-f32 table."""
    results = fake_results()
    sam = results["models"]["mobile_sam"]
    sam["paths"]["fastseg-openvino-int8"] = _path(250.0, 150.0, 12.5, 1.1, 380.0, "int8")
    sam["int8_vs_f32"] = {"pixels_pct": 98.7, "iou_pct": 97.9, "compared": "masks", "count": [3, 3]}
    compute_speedups(sam)
    assert sam["paths"]["fastseg-openvino-int8"]["speedup"]["end_to_end"] == pytest.approx(1200 / 250)
    md = render_markdown(results)
    main_table = md.split("### bf16 vs f32")[0].splitlines()
    rows = [line.split(" | ") for line in main_table if line.startswith("| mobile_sam |")]
    assert [r[1] for r in rows][-2:] == ["fastseg OpenVINO bf16", "fastseg OpenVINO int8"]
    assert rows[-1][2:5] == ["int8", "250 (225)", "4.80×"]
    int8 = md.split("### int8 vs f32 masks")[1].split("###")[0]
    assert "| mobile_sam | 98.70% | 97.90% | masks (3 vs 3) |" in int8 and "fastsam_s" not in int8


def test_markdown_table() -> None:
    md = render_markdown(fake_results())
    assert "Test CPU 9000, 2 logical cores (2 physical), 24.0 GiB RAM; AVX-512 yes, AVX-512 BF16 yes" in md
    assert "openvino 2026.4.1, torch 2.14.1" in md
    assert "Timings on random weights equal timings on real weights" in md
    assert "skimage.data.coffee() resized with PIL bicubic to 1620x1080" in md
    main_table = md.split("### bf16 vs f32")[0].splitlines()
    rows = [line for line in main_table if line.startswith("| mobile_sam |")]
    assert [r.split(" | ")[1] for r in rows] == [PATH_LABELS[p] for p in
                                                  ("pytorch", "fastseg-onnxruntime", "fastseg-openvino-f32",
                                                   "fastseg-openvino-bf16")]
    bf16 = rows[-1].split(" | ")
    # model, path, precision, e2e, x, network, x, click, x, cold, x, rss, x, masks
    assert bf16[2:5] == ["bf16", "300 (270)", "4.00×"]
    assert bf16[7:9] == ["12.0 (10.8)", "4.58×"]
    assert bf16[11:13] == ["400", "3.00×"]
    assert rows[0].split(" | ")[13].startswith("reference")
    fast_rows = [line for line in main_table if line.startswith("| fastsam_s |")]
    assert len(fast_rows) == 5 and "ultralytics OpenVINO export | bf16 | 260 (234) | 3.08×" in fast_rows[1]
    assert "failed (see below)" in fast_rows[2]
    assert "| sam_vit_b | (all) | | failed: FileNotFoundError: no recipe |" in md
    assert "- fastsam_s / fastseg-onnxruntime: RuntimeError: boom in ORT" in md
    assert "| mobile_sam | 99.50% | 99.00% | masks (3 vs 3) |" in md
    assert "| fastsam_s | one point, end to end | bf16 | 260 | 200 | 1.30× |" in md
    assert "| fastsam_s | everything | bf16 | 400 | 250 | 1.60× |" in md
    everything = md.split("### Everything mode")[1].split("###")[0]
    assert "points_per_side 32" in everything and "1 everything-mode run after a one-point warm-up" in md
    assert ("| mobile_sam | fastseg OpenVINO bf16 | bf16 | 20.0 (20.0) | 5.50× | 40 | 39 / 40 (97.50%) | 800 | "
            "2.50× |") in everything
    assert "| mobile_sam | PyTorch original | f32 | 110.0 (110.0) | 1.00× | 40 | reference | 2,000 | 1.00× |" in (
        everything)
    assert "| fastsam_s | fastseg OpenVINO f32 | | failed (see below) |" in everything
    assert "- fastsam_s / fastseg-openvino-f32 everything: MemoryError: everything" in md
    rows = [line for line in everything.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert len(rows) == 6 and all(line.count(" |") == 9 for line in rows), rows
    assert "ultralytics' OpenVINO path ran at bf16 (read back)" in md
    # every row of the main table has the header's number of cells
    header = next(line for line in main_table if line.startswith("| model | path |"))
    for line in main_table:
        if line.startswith("| ") and not line.startswith("| model"):
            assert line.count(" |") == header.count(" |"), line


def test_everything_agreement() -> None:
    masks = np.zeros((3, 20, 30), dtype=bool)
    masks[0, :5] = masks[1, 5:12, 3:20] = masks[2, 10:, 10:] = True
    ref = np.stack([masks[2], masks[0]])
    ref[1, 0, 0] = False  # IoU 149/150 with masks[0]
    found = everything_agreement(encode(masks), encode(ref))
    assert found == {"count": (3, 2), "matched": 2, "matched_pct": 100.0, "iou_threshold": 0.98}
    strict = everything_agreement(encode(masks), encode(ref), iou_threshold=0.999)
    assert (strict["matched"], strict["matched_pct"]) == (1, 50.0)
    twice = everything_agreement(encode(masks[:1]), encode(np.stack([masks[0], masks[0]])))
    assert twice["matched"] == 1  # one-to-one: a mask of ours counts once
    assert everything_agreement([], [])["matched_pct"] == 100.0
    assert everything_agreement(encode(masks), [])["matched_pct"] == 0.0
    assert everything_agreement([], encode(ref))["matched_pct"] == 0.0


def test_json_round_trip_and_refuses_nan() -> None:
    results = fake_results()
    again = json.loads(to_json(results))
    assert again["models"]["mobile_sam"]["paths"]["pytorch"]["end_to_end_ms"]["median"] == 1200.0
    assert again["models"]["fastsam_s"]["fastseg_vs_ultralytics"]["speedup"] == pytest.approx(1.3)
    results["models"]["mobile_sam"]["paths"]["pytorch"]["peak_rss_mib"] = math.nan
    with pytest.raises(ValueError):
        to_json(results)


def test_chart_is_a_png(tmp_path: Path) -> None:
    path = render_chart(fake_results(), tmp_path / "bench.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= 1000 and image.height >= 600
        pixels = np.asarray(image.convert("RGB"))
    # the bf16 bars' colour is drawn (the chart is not blank)
    assert (np.abs(pixels.astype(int) - [8, 81, 156]).sum(axis=2) < 10).sum() > 500


def test_bf16_path_is_skipped_where_openvino_has_no_bf16() -> None:
    paths = list(PATHS)
    without = {"openvino_cpu": {"optimization_capabilities": ["FP32", "INT8", "BIN", "EXPORT_IMPORT"]}}
    with_bf16 = {"openvino_cpu": {"optimization_capabilities": ["FP32", "BF16", "INT8"]}}
    skipped = bench_run.skipped_paths(paths, without)
    assert list(skipped) == ["fastseg-openvino-bf16"]
    assert "no bf16 in OpenVINO (capabilities FP32, INT8, BIN, EXPORT_IMPORT" in skipped["fastseg-openvino-bf16"]
    assert bench_run.skipped_paths(paths, with_bf16) == {}
    assert bench_run.skipped_paths(["pytorch", "fastseg-openvino-f32"], without) == {}
    assert bench_run.skipped_paths(paths, {"openvino_cpu": {"error": "no openvino"}}) == {}  # unknown: run it
    results = fake_results()
    assert "**not run:**" not in render_markdown(results)
    results["skipped_paths"] = skipped
    assert "- **not run:** fastseg OpenVINO bf16: this CPU has no bf16 in OpenVINO" in render_markdown(results)


def test_machine_parsing() -> None:
    cpu = parse_cpuinfo("processor : 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
                        "processor : 1\nmodel name\t: Some CPU\nflags : fpu\n")
    assert cpu["model"] == "Some CPU"
    assert cpu["flags"]["AVX-512"] and cpu["flags"]["AVX-512 BF16"] and not cpu["flags"]["AVX-512 VNNI"]
    assert parse_meminfo("MemTotal:       24576000 kB\nMemFree: 1 kB\n") == 24576000 * 1024
    assert parse_meminfo("nothing") is None
    line = machine_line({"cpu_model": "X", "logical_cores": 4, "physical_cores": 2, "usable_cores": 3,
                         "ram_bytes": 2**30, "flags": cpu["flags"]})
    assert line.startswith("X, 4 logical cores (2 physical, 3 usable), 1.0 GiB RAM; AVX2 yes, AVX-512 yes")


def test_timed_session_records_each_run() -> None:
    class Inner:
        input_names = ("image",)
        output_names = ("out",)
        backend = "onnxruntime"
        precision = "f32"

        def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
            time.sleep(0.01)
            return {"out": feeds["image"] * 2}

    times: dict[str, list[float]] = {}
    session = TimedSession(Inner(), "encoder", times)
    assert session.run({"image": np.ones(2)})["out"].tolist() == [2.0, 2.0]
    session.run({"image": np.ones(2)})
    assert len(times["encoder"]) == 2 and all(t >= 0.009 for t in times["encoder"])
    assert session.input_names == ("image",) and session.precision == "f32"
    assert session.inference_precision() is None  # not an OpenVINO session


# -------------------------------------------------------------------------------------------- options


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FASTSEG_CACHE", str(tmp_path))
    config = bench_run.parse_args([])
    assert config.models == ["sam_vit_b", "mobile_sam", "fastsam_s", "fastsam_x"]
    assert config.paths == list(PATHS)
    assert (config.warmup, config.repeats, config.click_repeats, config.cold_starts,
            config.everything_repeats, config.text_repeats) == bench_run.FULL_RUNS
    assert config.text_detections == 50
    assert config.everything_points == 32
    assert config.cache == tmp_path / "bench" and config.out == Path("bench-results")
    assert config.image is None and config.point is None
    quick = bench_run.parse_args(["--quick", "--models", "mobile_sam,fastsam_s,mobile_sam", "--repeats", "4",
                                  "--point", "10,20.5"])
    assert quick.models == ["mobile_sam", "fastsam_s"]  # duplicates dropped, order kept
    assert (quick.warmup, quick.repeats, quick.click_repeats, quick.cold_starts) == (
        bench_run.QUICK_RUNS[0], 4, bench_run.QUICK_RUNS[2], bench_run.QUICK_RUNS[3])
    assert quick.point == (10.0, 20.5)
    assert quick.text_repeats == bench_run.QUICK_RUNS[5]
    # CLIP's weights may be given whenever a FastSAM model runs (its text prompts), not otherwise.
    ckpt = tmp_path / "ViT-B-32.pt"
    ckpt.write_bytes(b"x")
    with_clip = bench_run.parse_args(["--models", "fastsam_s", "--checkpoint", f"clip_vit_b32={ckpt}"])
    assert with_clip.checkpoints == {"clip_vit_b32": ckpt}
    with pytest.raises(SystemExit):
        bench_run.parse_args(["--models", "mobile_sam", "--checkpoint", f"clip_vit_b32={ckpt}"])


def test_checkpoint_and_model_dir_options(tmp_path: Path) -> None:
    ckpt = tmp_path / "mobile_sam.pt"
    ckpt.write_bytes(b"x")
    config = bench_run.parse_args(["--models", "mobile_sam", "--checkpoint", f"mobile_sam={ckpt}",
                                   "--model-dir", f"mobile_sam={tmp_path}"])
    assert config.checkpoints == {"mobile_sam": ckpt} and config.model_dirs == {"mobile_sam": tmp_path}
    assert config.to_dict()["checkpoints"] == {"mobile_sam": str(ckpt)}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--models", "mobile_sam,sam_vit_z"], "unknown models 'sam_vit_z'; expected some of: sam_vit_b"),
        (["--models", ","], "expected a comma-separated list of models, got ','"),
        (["--paths", "pytorch,tensorrt"], "unknown paths 'tensorrt'; expected some of: pytorch"),
        (["--point", "1,2,3"], "expected X,Y (two numbers, image pixels), got '1,2,3'"),
        (["--point", "nan,2"], "expected finite X,Y"),
        (["--repeats", "0"], "expected an integer >= 1, got 0"),
        (["--cold-starts", "two"], "expected an integer >= 0, got 'two'"),
        (["--timeout", "-5"], "expected a number of seconds > 0"),
        (["--checkpoint", "mobile_sam"],
         "expected NAME=PATH (e.g. mobile_sam=weights/mobile_sam.pt), got 'mobile_sam'"),
        (["--checkpoint", "vit_q=/x.pt"], "unknown model 'vit_q' in 'vit_q=/x.pt'; expected one of"),
        (["--models", "mobile_sam", "--checkpoint", "fastsam_s=/x.pt"],
         "--checkpoint fastsam_s=... names a model that is not benchmarked (--models mobile_sam)"),
        (["--models", "mobile_sam", "--checkpoint", "mobile_sam=/no/such.pt"],
         "--checkpoint mobile_sam=/no/such.pt: expected a checkpoint file, no such file"),
        (["--models", "mobile_sam", "--model-dir", "mobile_sam=/no/such"],
         "--model-dir mobile_sam=/no/such: expected a folder written by `fastseg export`, no such folder"),
        (["--image", "/no/such.jpg"], "--image /no/such.jpg: no such file"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_option_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_run.main(argv) == 2
    err = capsys.readouterr().err
    assert "usage: fastseg bench" in err and message in err


def test_duplicate_assignment_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"x")
    b.write_bytes(b"x")
    assert bench_run.main(["--models", "mobile_sam", "--checkpoint", f"mobile_sam={a}",
                           "--checkpoint", f"mobile_sam={b}"]) == 2
    assert f"--checkpoint given twice for mobile_sam: {a} and {b}" in capsys.readouterr().err


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_run.main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--models", "--quick", "--checkpoint NAME=PATH", "--model-dir NAME=DIR", "--image", "--point",
                   "--out"):
        assert option in out


def test_fastseg_cli_passes_leading_options_to_bench(capsys: pytest.CaptureFixture[str]) -> None:
    from fastseg.cli import main

    assert main(["bench", "--quick", "--models", "nope"]) == 2
    assert "fastseg bench: error: argument --models: unknown models 'nope'" in capsys.readouterr().err


def test_point_outside_the_image() -> None:
    bench_run.check_point((0.0, 1079.0), (1080, 1620))
    with pytest.raises(ValueError, match=r"--point 1620,5 lies outside the 1620x1080 image; expected 0 <= X < 1620"):
        bench_run.check_point((1620.0, 5.0), (1080, 1620))


def test_default_image_is_coffee_at_1080p() -> None:
    image, description = bench_run.default_image()
    assert image.shape == (1080, 1620, 3) and image.dtype == np.uint8
    assert "skimage.data.coffee() (600x400" in description and "PIL bicubic to 1620x1080" in description


def test_lock_refuses_a_second_benchmark(tmp_path: Path) -> None:
    with bench_run.bench_lock(tmp_path):
        script = (
            "import sys; from pathlib import Path; from fastseg_bench.run import bench_lock\n"
            "try:\n    bench_lock(Path(sys.argv[1])).__enter__()\n"
            "except RuntimeError as e:\n    print(e); sys.exit(3)\n"
        )
        other = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True)
        assert other.returncode == 3, other.stderr
        assert f"another `fastseg bench` is running (lock {tmp_path / 'bench.lock'} held by pid {os.getpid()})" in (
            other.stdout)
    with bench_run.bench_lock(tmp_path):  # released: can be taken again
        pass


# ---------------------------------------------------------------------------------------------- a real run


@pytest.mark.slow
def test_quick_mobile_sam_run(tmp_path: Path, exported_model, random_checkpoint) -> None:
    """A real `fastseg bench --quick --models mobile_sam`, on the session's exported random-weight model."""
    out = tmp_path / "results"
    env = dict(os.environ, FASTSEG_CACHE=str(tmp_path / "cache"))  # compiled-model and bench caches of its own
    argv = [sys.executable, "-m", "fastseg.cli", "bench", "--quick", "--models", "mobile_sam",
            "--checkpoint", f"mobile_sam={random_checkpoint('mobile_sam')}",
            "--model-dir", f"mobile_sam={exported_model('mobile_sam')}", "--out", str(out),
            "--everything-points", "4",  # a 4x4 grid keeps the everything-mode runs short
            # ONNX Runtime's path is the OpenVINO paths' runner with another backend: left out for time
            "--paths", "pytorch,fastseg-openvino-f32,fastseg-openvino-bf16"]
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    elapsed = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[bench] mobile_sam / pytorch: end-to-end 1/2:" in proc.stderr  # progress on stderr
    print(f"quick mobile_sam bench: {elapsed:.0f} s")

    md = (out / "bench.md").read_text()
    assert proc.stdout.strip() == md.strip()  # the table is printed too
    assert "random weights (seed 0)" in md and "Timings on random weights equal timings on real weights" in md
    main_table = md.split("### bf16 vs f32")[0].splitlines()
    rows = {line.split(" | ")[1]: line.split(" | ") for line in main_table if line.startswith("| mobile_sam |")}
    bf16 = openvino_supports_bf16()
    run_paths = ["pytorch", "fastseg-openvino-f32"] + (["fastseg-openvino-bf16"] if bf16 else [])
    assert set(rows) == {PATH_LABELS[p] for p in run_paths}
    for cells in rows.values():
        assert all(cell.strip() not in ("", "—") for cell in cells[3:13]), cells  # every figure present
    assert rows["fastseg OpenVINO f32"][2] == "f32"
    if bf16:
        assert rows["fastseg OpenVINO bf16"][2] == "bf16"
        assert "| mobile_sam | " in md.split("### bf16 vs f32 masks")[1]
    else:  # OpenVINO would run the bf16 path at f32: it is left out, and the report says why
        assert "- **not run:** fastseg OpenVINO bf16: this CPU has no bf16 in OpenVINO (capabilities FP32" in md
        assert "### bf16 vs f32 masks" not in md

    results = json.loads((out / "bench.json").read_text())
    assert results["schema"] == "fastseg-bench/1"
    assert {"config", "machine", "image", "prompt", "models", "elapsed_s"} <= set(results)
    assert results["image"]["size"] == [1080, 1620] and results["prompt"]["point"] == [810.0, 540.0]
    model = results["models"]["mobile_sam"]
    assert model["weights"] == "random weights (seed 0)" and model["model_dir"] == str(exported_model("mobile_sam"))
    assert set(model["paths"]) == set(run_paths)
    assert ("fastseg-openvino-bf16" in results.get("skipped_paths", {})) is not bf16
    for name, path in model["paths"].items():
        assert path["status"] == "ok", (name, path)
        assert path["end_to_end_ms"]["n"] == 2 and path["click_ms"]["n"] == 5 and path["cold_start_s"]["n"] == 1
        assert path["network_ms"]["n"] == 2 and path["network_ms"]["median"] < path["end_to_end_ms"]["median"]
        assert path["click_ms"]["median"] < path["end_to_end_ms"]["median"]
        run = path["cold_start_runs"][0]
        assert run["wall_s"] > run["load_s"] + run["first_mask_s"] > 0  # wall time counts the interpreter start
        assert 50 < path["peak_rss_mib"] < 20000
        assert path["mask"]["shape"] == [3, 1080, 1620]
        assert set(path["speedup"]) == {"end_to_end", "end_to_end_min", "network", "click", "cold_start", "peak_rss"}
        if name != "pytorch":
            assert path["info"]["torch_imported"] is False  # fastseg paths never load torch
            assert path["mask_vs_pytorch"]["pixels_pct"] > 90
    for path, precision in (("fastseg-openvino-f32", "f32"), ("fastseg-openvino-bf16", "bf16")):
        if path in model["paths"]:
            per_graph = model["paths"][path]["info"]["precision_per_graph"]
            assert per_graph == dict.fromkeys(("encoder", "decoder", "decoder_image", "decoder_points"), precision)
    if bf16:
        assert 0 < model["bf16_vs_f32"]["pixels_pct"] <= 100
    assert model["paths"]["pytorch"]["speedup"]["end_to_end"] == 1.0

    everything = model["everything"]
    assert everything["params"] == {"points_per_side": 4} and "### Everything mode" in md
    assert set(everything["paths"]) == set(model["paths"])
    reference_masks = everything["paths"]["pytorch"]["masks"]
    for name, path in everything["paths"].items():
        assert path["status"] == "ok", (name, path)
        assert path["everything_ms"]["n"] == 1 and 50 < path["peak_rss_mib"] < 20000
        assert set(path["speedup"]) == {"everything", "peak_rss"}
        if name != "pytorch":
            assert path["masks_vs_pytorch"]["count"] == [path["masks"], reference_masks]

    with Image.open(out / "bench.png") as image:
        assert image.format == "PNG" and image.width > 800 and image.height > 400
        assert len(np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)) > 20  # not a blank image


@pytest.mark.slow
def test_quick_sam2_run(tmp_path: Path, exported_model, random_checkpoint) -> None:
    """`fastseg bench --quick` on a SAM 2.1 export: SAM2ImagePredictor and SAM2AutomaticMaskGenerator as
    the PyTorch rows, fastseg's rows beside them. (The session's export has no INT8 graph; SAM 2.1's
    INT8 export and its masks are tests/test_int8.py's.)"""
    name = "sam2.1_hiera_tiny"
    out = tmp_path / "results"
    env = dict(os.environ, FASTSEG_CACHE=str(tmp_path / "cache"))
    argv = [sys.executable, "-m", "fastseg.cli", "bench", "--quick", "--models", name,
            "--checkpoint", f"{name}={random_checkpoint(name)}", "--model-dir", f"{name}={exported_model(name)}",
            "--out", str(out), "--everything-points", "3",
            "--paths", "pytorch,fastseg-openvino-f32"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "bench.json").read_text())
    model = results["models"][name]
    assert model["family"] == "sam2" and set(model["paths"]) == {"pytorch", "fastseg-openvino-f32"}
    torch_path, ours = model["paths"]["pytorch"], model["paths"]["fastseg-openvino-f32"]
    assert torch_path["info"]["api"] == "sam2.SAM2ImagePredictor" and torch_path["status"] == "ok"
    assert ours["status"] == "ok" and ours["info"]["torch_imported"] is False
    graphs = ("encoder", "decoder", "decoder_image", "decoder_points")
    assert ours["info"]["precision_per_graph"] == dict.fromkeys(graphs, "f32")
    assert ours["mask"]["shape"] == [3, 1080, 1620] and ours["mask_vs_pytorch"]["pixels_pct"] > 99
    assert ours["network_ms"]["median"] < ours["end_to_end_ms"]["median"]
    everything = model["everything"]
    assert everything["params"] == {"points_per_side": 3}
    assert everything["paths"]["fastseg-openvino-f32"]["masks_vs_pytorch"]["count"] == [
        everything["paths"]["fastseg-openvino-f32"]["masks"], everything["paths"]["pytorch"]["masks"]]
    md = (out / "bench.md").read_text()
    assert f"| {name} | PyTorch original | f32 |" in md and "SAM2AutomaticMaskGenerator" in md


@pytest.mark.slow
def test_quick_fastsam_text_run(tmp_path: Path, exported_model, random_checkpoint) -> None:
    """`fastseg bench` times FastSAM text queries: ultralytics with the same random CLIP, fastseg's
    first query and its query again on the same image, the confidence set for ~N detections."""
    name, clip = "fastsam_s", "clip_vit_b32"
    out = tmp_path / "results"
    env = dict(os.environ, FASTSEG_CACHE=str(tmp_path / "cache"))
    argv = [sys.executable, "-m", "fastseg.cli", "bench", "--quick", "--models", name,
            "--checkpoint", f"{name}={random_checkpoint(name)}", "--model-dir", f"{name}={exported_model(name)}",
            "--checkpoint", f"{clip}={random_checkpoint(clip)}", "--model-dir", f"{clip}={exported_model(clip)}",
            "--out", str(out), "--cold-starts", "0", "--everything-repeats", "0", "--repeats", "1",
            "--click-repeats", "1", "--text-repeats", "2", "--text-detections", "20",
            "--paths", "pytorch,fastseg-openvino-f32"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = json.loads((out / "bench.json").read_text())["models"][name]["text"]
    assert text["status"] == "ok" and text["clip_weights"] == "random weights (seed 0)" and 0 < text["conf"] < 1
    torch_path, ours = text["paths"]["pytorch"], text["paths"]["fastseg-openvino-f32"]
    assert torch_path["status"] == ours["status"] == "ok"
    assert 5 <= ours["detections"] <= 25 and ours["detections"] == torch_path["detections"]
    assert torch_path["text_first_ms"]["n"] == ours["text_first_ms"]["n"] == ours["text_again_ms"]["n"] == 2
    assert torch_path["text_again_ms"] is None
    assert ours["text_again_ms"]["median"] < ours["text_first_ms"]["median"]  # the crops are kept
    assert set(ours["speedup"]) == {"text_first", "text_again", "peak_rss"}
    assert "### FastSAM text prompts (CLIP ViT-B/32)" in (out / "bench.md").read_text()


def test_text_prompt_table() -> None:
    """FastSAM's text section: ultralytics' per-query time is the baseline of both columns."""
    results = fake_results()

    def text_path(first: float, again: float | None, precision: str) -> dict[str, Any]:
        return {"status": "ok", "precision": precision, "detections": 48, "peak_rss_mib": 900.0,
                "text_first_ms": summarize([first, first * 1.1]),
                "text_again_ms": summarize([again]) if again is not None else None}

    section = {"status": "ok", "conf": 0.31416, "clip_weights": "random weights (seed 0)", "paths": {
        "pytorch": text_path(1200.0, None, "f32"),
        "fastseg-openvino-bf16": text_path(300.0, 12.0, "bf16"),
        "fastseg-onnxruntime": {"status": "failed", "error": "RuntimeError: no CLIP"},
    }}
    compute_speedups(section, measures={"text_first_ms": "text_first", "text_again_ms": "text_again"})
    section["paths"]["fastseg-openvino-bf16"]["speedup"]["text_again"] = 1260.0 / 12.0
    results["models"]["fastsam_s"]["text"] = section
    md = render_markdown(results)
    text = md.split("### FastSAM text prompts")[1].split("###")[0]
    assert "- fastsam_s: conf 0.3142, CLIP random weights (seed 0)" in text
    rows = [line for line in text.splitlines() if line.startswith("| fastsam_s |")]
    assert rows[0].split(" | ")[2:8] == ["f32", "48", "1,260 (1,200)", "1.00×", "—", "—"]
    assert rows[1].split(" | ")[2:8] == ["bf16", "48", "315 (300)", "4.00×", "12.0 (12.0)", "105.0×"]
    assert "failed (see below)" in rows[2] and all(r.count(" |") == 10 for r in rows)
    assert "- fastsam_s / fastseg-onnxruntime text: RuntimeError: no CLIP" in md


def test_busy_note_trusts_the_measured_cpu_over_the_load_average() -> None:
    """On a VM whose load average stays high while the CPU is idle, the report warns of nothing; a CPU
    measured busy, or a hypervisor taking time, is named; without a sample the load average decides."""
    idle_vm = {"usable_cores": 2, "load_average_at_start": [1.7, 1.8, 1.7], "cpu_at_start": {"busy": 1.0, "steal": 0.0}}
    assert busy_note(idle_vm) is None
    busy = dict(idle_vm, cpu_at_start={"busy": 62.4, "steal": 0.5})
    assert busy_note(busy).startswith("the CPU was 62% busy (2 cores) in the second before the run began")
    stolen = dict(idle_vm, cpu_at_start={"busy": 9.0, "steal": 8.0})
    assert busy_note(stolen).startswith("the hypervisor took 8% of the CPU")
    unsampled = {"usable_cores": 2, "load_average_at_start": [1.7, 1.8, 1.7], "cpu_at_start": None}
    assert busy_note(unsampled).startswith("the 1-minute load average was 1.70 on 2 cores")
    assert busy_note(dict(unsampled, load_average_at_start=[0.2, 0.3, 0.3])) is None


def test_machine_sample_and_header() -> None:
    """describe_machine samples the CPU's use, and the report's date line shows it."""
    cpu = sample_cpu(0.2)
    assert cpu is not None and 0.0 <= cpu["busy"] <= 100.0 and 0.0 <= cpu["steal"] <= 100.0
    results = fake_results()
    results["machine"]["cpu_at_start"] = {"busy": 3.2, "steal": 0.0}
    md = render_markdown(results)
    assert "0.30 (1 / 5 / 15 min); CPU 3% busy, 0% stolen in the second before" in md
