"""``fastseg bench --batch`` (benchmarks/scale.py): photo folders, figures, the report, tiny runs (no torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fastseg.image import load_image
from fastseg.store import image_key
from fastseg_bench import run as bench_run
from fastseg_bench import scale

SIDES = (64, 128)


# ---------------------------------------------------------------------------------------------- photos


def test_variant_specs_differ_for_the_first_992_images() -> None:
    specs = [scale.variant_spec(i, 8) for i in range(992)]
    assert len(set(specs)) == 992
    sides = {side for _, _, side in specs}
    assert min(sides) == scale.LONG_SIDES[0] and max(sides) == scale.LONG_SIDES[1]
    assert len(sides) == scale.SIDE_STEPS
    # The first 50 images already mix every photo, flip and most sizes.
    first = specs[:50]
    assert {p for p, _, _ in first} == set(range(8))
    assert {f for _, f, _ in first} == {0, 1, 2, 3}


@pytest.mark.parametrize(
    ("index", "photos", "sides", "message"),
    [(-1, 8, SIDES, "index >= 0"), (0, 0, SIDES, "at least one photo"), (0, 8, (128, 64), "low <= high")],
)
def test_variant_spec_refuses(index: int, photos: int, sides: tuple[int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        scale.variant_spec(index, photos, sides)


def test_build_folder_makes_distinct_photos(tmp_path: Path) -> None:
    folder = scale.build_folder(tmp_path, 6, SIDES)
    files = sorted(folder.iterdir())
    assert [f.suffix for f in files] == [".jpg"] * 6
    pixels = [load_image(f) for f in files]
    assert len({image_key(p) for p in pixels}) == 6  # distinct for the embedding store
    for p in pixels:
        assert p.ndim == 3 and p.shape[2] == 3
        assert SIDES[0] - 1 <= max(p.shape[:2]) <= SIDES[1]
    photos = {f.name.split("_", 1)[1] for f in files}
    assert len(photos) == 6  # six different source photos

    # A smaller folder is the start of the larger one, made from the same pool (no new photo).
    small = scale.build_folder(tmp_path, 3, SIDES)
    assert small != folder
    assert [f.name for f in sorted(small.iterdir())] == [f.name for f in files[:3]]
    for f in sorted(small.iterdir()):
        assert f.read_bytes() == (folder / f.name).read_bytes()

    # Built once: asking again returns the folder as it is.
    stamps = [f.stat().st_mtime_ns for f in files]
    assert scale.build_folder(tmp_path, 6, SIDES) == folder
    assert [f.stat().st_mtime_ns for f in sorted(folder.iterdir())] == stamps


def test_build_folder_refuses_a_bad_count(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="number of images >= 1"):
        scale.build_folder(tmp_path, 0, SIDES)


# --------------------------------------------------------------------------------------------- figures


def test_timing_figures() -> None:
    # Called at 0, records asked for at 2 (model loaded), four records a second apart, output at 7.
    figures = scale.timing_figures(0.0, 2.0, [3.0, 4.0, 5.0, 6.0], [0.9, 0.8, 0.8, 0.7], 7.0)
    assert figures["seconds"] == 7.0
    assert figures["whole_images_per_s"] == pytest.approx(4 / 7)
    assert figures["setup_s"] == 2.0
    assert figures["s_per_image"] == pytest.approx(5 / 4)
    assert figures["images_per_s"] == pytest.approx(4 / 5)
    assert figures["worker_images_per_s"] == pytest.approx(4 / 3.2)
    assert figures["steady_images_per_s"] == pytest.approx(1.0)
    assert figures["first_tenth_s"] == figures["last_tenth_s"] == pytest.approx(1.0)
    assert figures["largest_burst"] == 1
    assert figures["finish_s"] == pytest.approx(1.0)


def test_timing_figures_of_bursts_and_two_workers() -> None:
    # Two actors; records reach the driver three at a time.
    arrived = [10.0, 10.001, 10.002, 13.0, 13.001, 13.002]
    figures = scale.timing_figures(0.0, None, arrived, [1.0] * 6, 14.0, workers=2)
    assert figures["largest_burst"] == 3
    assert figures["setup_s"] == 0.0
    assert figures["worker_images_per_s"] == pytest.approx(2.0)
    assert figures["whole_images_per_s"] == pytest.approx(6 / 14)


def test_timing_figures_with_too_few_records() -> None:
    one = scale.timing_figures(0.0, 1.0, [2.0], [1.0], 3.0)
    assert one["steady_images_per_s"] is None and one["first_tenth_s"] is None
    assert one["s_per_image"] == pytest.approx(2.0)
    none = scale.timing_figures(0.0, 1.0, [], [], 3.0)
    assert none["s_per_image"] is None and none["images_per_s"] is None and none["largest_burst"] is None


def test_estimate_hours() -> None:
    estimate = scale.estimate_hours(2.0, 2)  # 1 image/s per core
    assert estimate["per_core_images_per_s"] == 1.0
    assert estimate["cores"] == [2, 8, 32] and estimate["machines"] == [1, 10, 100]
    hours = np.array(estimate["hours"])
    assert hours.shape == (3, 3)
    assert hours[0, 0] == pytest.approx(10**6 / 2 / 3600)  # 138.9 h on one 2-core machine
    assert hours[2, 2] == pytest.approx(10**6 / 3200 / 3600)  # 100 machines of 32 cores
    assert hours[1, 1] == pytest.approx(hours[0, 0] / 40)  # linear in cores and machines
    assert "linear in cores" in estimate["assumption"]
    custom = scale.estimate_hours(3.0, 1, images=3600, cores=(1,), machines=(1, 2))
    assert custom["hours"] == [[pytest.approx(1 / 3), pytest.approx(1 / 6)]]


@pytest.mark.parametrize(("rate", "cores"), [(0.0, 2), (float("nan"), 2), (-1.0, 2), (1.0, 0)])
def test_estimate_hours_refuses(rate: float, cores: int) -> None:
    with pytest.raises(ValueError, match="expected"):
        scale.estimate_hours(rate, cores)


def _run(
    images: int, s_per_image: float, steady: float, tenths: tuple[float, float], rss: tuple[float, float], **extra: Any
) -> dict[str, Any]:
    return {
        "status": "ok",
        "task": "embed",
        "mode": "one process",
        "images": images,
        "model": "mobile_sam",
        "precision": "f32",
        "cores": 2,
        "actors": None,
        "threads": None,
        "s_per_image": s_per_image,
        "steady_images_per_s": steady,
        "first_tenth_s": tenths[0],
        "last_tenth_s": tenths[1],
        "driver_rss_mib": {"after_first_tenth": rss[0], "at_end": rss[1]},
        "peak_rss_mib": 600.0,
        "whole_images_per_s": 0.9 / s_per_image,
        "worker_images_per_s": 1.1 / s_per_image,
        "largest_burst": 1,
        "stored_bytes_per_image": 4 * 2**20,
        **extra,
    }


def test_linearity() -> None:
    runs = [_run(1000, 1.02, 1.0, (1.0, 1.05), (500, 502)), _run(50, 1.0, 1.0, (1.0, 1.0), (490, 495))]
    result = scale.linearity(runs)
    assert result is not None
    assert result["sizes"] == [50, 1000]
    assert result["size_ratio"] == pytest.approx(1.02)
    assert result["steady_ratio"] == pytest.approx(1.0)
    assert result["tenth_ratio"] == pytest.approx(1.05)
    assert result["rss_growth_mib"] == pytest.approx(2.0)
    assert result["linear"] is True
    growing = scale.linearity([_run(50, 1.0, 1.0, (1.0, 1.0), (0, 0)), _run(1000, 1.6, 0.6, (1.0, 2.0), (0, 0))])
    assert growing is not None and growing["linear"] is False
    assert scale.linearity([_run(50, 1.0, 1.0, (1.0, 1.0), (0, 0))]) is None


def test_choose_precision() -> None:
    assert scale.choose_precision("auto", ["BF16", "FP32"]) == ("bf16", "bf16")
    assert scale.choose_precision("auto", ["FP32", "INT8"]) == ("f32", "f32")
    assert scale.choose_precision("auto", None) == ("f32", "f32")
    assert scale.choose_precision("bf16", ["FP32"]) == ("bf16", "f32")  # OpenVINO falls back to f32
    assert scale.choose_precision("f32", ["BF16"]) == ("f32", "f32")
    with pytest.raises(ValueError, match="auto, f32 or bf16"):
        scale.choose_precision("f16", ["BF16"])


# ---------------------------------------------------------------------------------------------- options


def test_defaults_and_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scale, "_usable_cores", lambda: 2)
    config = scale.parse_args([])
    assert config.models == {"embed": "mobile_sam", "batch": "fastsam_s"}
    assert config.sizes == [50, 200, 1000] and config.ray_images == 200
    assert config.ray_layouts == [(1, 2), (2, 1)]
    assert config.precision == "auto" and not config.skip_ray
    plan = scale.plan_runs(config, 2)
    embed = [(r["images"], r["mode"], r["actors"], r["threads"]) for r in plan if r["task"] == "embed"]
    assert embed == [
        (50, "one process", None, None),
        (200, "one process", None, None),
        (1000, "one process", None, None),
        (200, "ray local", 1, 2),
        (200, "ray local", 2, 1),
    ]
    assert len({r["tag"] for r in plan}) == len(plan) == 10
    quick = scale.parse_args(["--quick", "--skip-ray", "--models", "batch=fastsam_x"])
    assert quick.sizes == list(scale.QUICK_SIZES) and quick.models == {"batch": "fastsam_x"}
    assert [r["images"] for r in scale.plan_runs(quick, 2)] == list(scale.QUICK_SIZES)
    assert scale.default_layouts(8) == [(1, 8), (2, 4)] and scale.default_layouts(1) == [(1, 1)]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--models", "segment=mobile_sam"], "TASK=MODEL"),
        (["--models", "embed=nope"], "unknown model"),
        (["--models", "embed=mobile_sam,embed=sam_vit_b"], "given twice"),
        (["--sizes", "0,5"], ">= 1"),
        (["--sizes", "a"], "numbers of images"),
        (["--ray-layouts", "2y1"], "ACTORSxTHREADS"),
        (["--ray-layouts", "0x1"], "ACTORSxTHREADS"),
        (["--long-sides", "300,200"], "LOW <= HIGH"),
        (["--precision", "f16"], "invalid choice"),
        (["--model-dir", "sam_vit_b=/nowhere"], "is not run"),
        (["--model-dir", "mobile_sam=/nowhere"], "expected a folder"),
    ],
)
def test_option_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert scale.main(argv) == 2
    assert message in capsys.readouterr().err


def test_fastseg_bench_dispatches_batch(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_run.main(["--batch", "--help"]) == 0
    assert "fastseg bench --batch" in capsys.readouterr().out
    assert bench_run.main(["--help"]) == 0
    assert "--batch" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- report


def _results(random: bool = True) -> dict[str, Any]:
    weights = "random weights (seed 0)" if random else "official checkpoint"
    runs = [
        _run(50, 1.0, 1.0, (1.0, 1.0), (490, 495)),
        _run(200, 1.01, 1.0, (1.0, 1.0), (490, 495)),
        _run(
            200,
            0.6,
            1.7,
            (0.5, 0.5),
            (300, 300),
            mode="ray local",
            actors=2,
            threads=1,
            actors_peak_rss_mib=[650.0, 640.0],
            all_processes_peak_rss_mib=2100.0,
            largest_burst=25,
        ),
        _run(1000, 1.02, 1.0, (1.0, 1.02), (500, 501)),
        {
            **_run(200, 1.0, 1.0, (1.0, 1.0), (0, 0)),
            "task": "batch",
            "model": "fastsam_s",
            "status": "failed",
            "error": "RuntimeError: boom",
        },
    ]
    results = {
        "config": {"ray_images": 200, "long_sides": [800, 1280]},
        "machine": {
            "cpu_model": "Test CPU",
            "logical_cores": 2,
            "physical_cores": 2,
            "usable_cores": 2,
            "ram_bytes": 2**34,
            "flags": {"AVX2": True, "AVX-512 BF16": False},
            "versions": {"fastseg": "0.1.0", "openvino": "2026.4.1"},
            "openvino_cpu": {"optimization_capabilities": ["FP32", "INT8"]},
            "date": "2026-12-02",
            "load_average_at_start": [0.1, 0.2, 0.3],
        },
        "precision": {"requested": "auto", "asked": "f32", "runs_at": "f32"},
        "ray_skipped": None,
        "models": {
            "embed": {"name": "mobile_sam", "status": "ok", "weights": weights},
            "batch": {"name": "fastsam_s", "status": "ok", "weights": weights},
        },
        "runs": runs,
        "elapsed_s": 600.0,
    }
    scale.summarize_results(results)
    return results


def test_summarize_results() -> None:
    results = _results()
    assert results["linearity"]["embed"]["sizes"] == [50, 200, 1000]
    assert results["linearity"]["batch"] is None  # its only run failed
    estimate = results["estimate"]["embed"]
    assert estimate["images_per_s"] == 1.0 and estimate["cores_used"] == 2  # one process at 200 images, steady
    assert estimate["output_bytes_per_image"] == 4 * 2**20
    assert results["estimate"]["batch"] is None


def test_markdown_report() -> None:
    text = scale.render_markdown(_results())
    assert text.startswith("# fastseg bench --batch: folders of images (random weights)")
    # Every table carries the host, OpenVINO's capabilities and the precision, and says random weights.
    assert text.count("*Test CPU, 2 logical cores") == 3
    assert text.count("OpenVINO capabilities FP32, INT8; precision f32") == 4
    for heading in (
        "## Throughput, 200 images (random weights)",
        "## Seconds per image as the folder grows (one process) (random weights)",
        "## Estimate: 1,000,000 images on N machines of M cores (random weights)",
    ):
        assert heading in text
    assert "- **random weights:** Timings on random weights equal timings on real weights" in text
    assert "| embed | mobile_sam | f32 | ray local | 2 × 1 | 1.50 | 1.83 | 25 | 650 | 600 | 2,100 | — |" in text
    assert "| embed | mobile_sam | f32 | one process | 1 × 2 |" in text
    assert "| embed | mobile_sam | f32 | 1,000 | 1.02 | 1.00 | 1.00 | 1.02 | 600 | 500 → 501 |" in text
    assert "s / image at 1,000 vs 50 images 1.02×" in text and ": linear (ratios within 1 ± 0.25)" in text
    assert "| embed | mobile_sam | 0.500 | 2 | 278 h | 27.8 h | 2.8 h |" in text
    assert "| embed | mobile_sam | 0.500 | 32 | 17.4 h | 1.7 h | 10 min |" in text
    assert "the embedding store takes 4.0 MiB per image, 3.8 TiB for 1,000,000 images" in text
    assert "## Failures\n\n- batch / 200 images / one process: RuntimeError: boom" in text
    official = scale.render_markdown(_results(random=False))
    assert "random weights" not in official


@pytest.mark.parametrize(
    ("value", "text"), [(None, "—"), (123.4, "123"), (12.34, "12.3"), (1.234, "1.23"), (0.1234, "0.123")]
)
def test_fmt_rate(value: float | None, text: str) -> None:
    assert scale.fmt_rate(value) == text


def test_fmt_hours_and_bytes() -> None:
    assert scale.fmt_hours(138.9) == "139 h" and scale.fmt_hours(13.89) == "13.9 h"
    assert scale.fmt_hours(0.5) == "30 min"
    assert scale.fmt_bytes(512) == "512 B" and scale.fmt_bytes(4 * 2**20) == "4.0 MiB"
    assert scale.fmt_bytes(4 * 2**40 * 1000) == "4,000.0 TiB"


def test_peak_rss_is_this_process_own() -> None:
    peak = scale.peak_rss_bytes()
    import psutil

    assert peak >= psutil.Process().memory_info().rss * 0.9


# ---------------------------------------------------------------------------------------------- runs


def _check_run(run: dict[str, Any], task: str, images: int) -> None:
    assert run["status"] == "ok", run.get("error")
    assert run["task"] == task and run["images"] == images == run["timed_images"]
    for key in ("whole_images_per_s", "images_per_s", "worker_images_per_s", "steady_images_per_s", "s_per_image"):
        assert run[key] > 0, key
    assert run["seconds"] >= run["setup_s"] >= 0
    assert run["peak_rss_mib"] > 50
    rss = run["driver_rss_mib"]
    assert rss["after_first_tenth"] > 0 and rss["at_end"] > 0
    if task == "embed":
        assert run["stored_bytes_per_image"] > 0
    else:
        assert run["masks"] >= 0 and run["output_bytes_per_image"] > 0


def test_tiny_run(
    tmp_path: Path, tiny_sam_folder: Path, tiny_fastsam_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole benchmark on tiny models: one process each, folders of 3 and 5 photos."""
    out = tmp_path / "out"
    code = scale.main(
        [
            "--models",
            "embed=mobile_sam,batch=fastsam_s",
            "--sizes",
            "3,5",
            "--skip-ray",
            "--precision",
            "f32",
            "--long-sides",
            "96,160",
            "--model-dir",
            f"mobile_sam={tiny_sam_folder}",
            "--model-dir",
            f"fastsam_s={tiny_fastsam_folder}",
            "--cache",
            str(tmp_path / "cache"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    results = json.loads((out / "scale.json").read_text(encoding="utf-8"))
    assert results["schema"] == scale.SCHEMA
    assert results["precision"] == {"requested": "f32", "asked": "f32", "runs_at": "f32"}
    assert results["ray_skipped"] == "--skip-ray"
    assert [(r["task"], r["images"], r["mode"]) for r in results["runs"]] == [
        ("embed", 3, "one process"),
        ("embed", 5, "one process"),
        ("batch", 3, "one process"),
        ("batch", 5, "one process"),
    ]
    for run in results["runs"]:
        _check_run(run, run["task"], run["images"])
    assert results["linearity"]["embed"]["sizes"] == [3, 5]
    assert results["estimate"]["batch"]["hours"][0][0] > 0
    markdown = (out / "scale.md").read_text(encoding="utf-8")
    assert markdown == capsys.readouterr().out.rstrip("\n") + "\n"
    assert "synthetic tiny graphs (test)" in markdown and "## Failures" not in markdown
    assert "## Throughput, 5 images" in markdown


def test_a_failed_run_is_reported(tmp_path: Path, tiny_sam_folder: Path) -> None:
    """A run whose process fails comes back as a failed result naming the error; its scratch folder goes."""
    work = tmp_path / "work"
    work.mkdir()
    missing = scale.run_process(
        {
            "task": "embed",
            "model_dir": str(tiny_sam_folder),
            "folder": str(tmp_path / "no"),
            "precision": "f32",
            "threads": 1,
            "ray": None,
            "actors": None,
        },
        work,
        "t",
        600,
    )
    assert missing["status"] == "failed" and "folder not found" in missing["error"]
    assert not (work / "t").exists()


@pytest.mark.slow
def test_tiny_ray_run(tmp_path: Path, tiny_sam_folder: Path) -> None:
    """Ray local with two actors: each actor's peak RSS is found, and the forks of actors are not counted."""
    out = tmp_path / "out"
    code = scale.main(
        [
            "--models",
            "embed=mobile_sam",
            "--sizes",
            "4",
            "--ray-images",
            "4",
            "--ray-layouts",
            "2x1",
            "--precision",
            "f32",
            "--long-sides",
            "96,160",
            "--model-dir",
            f"mobile_sam={tiny_sam_folder}",
            "--cache",
            str(tmp_path / "cache"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    results = json.loads((out / "scale.json").read_text(encoding="utf-8"))
    ray = [r for r in results["runs"] if r["mode"] == "ray local"]
    assert len(ray) == 1
    _check_run(ray[0], "embed", 4)
    assert len(ray[0]["actors_peak_rss_mib"]) == 2
    assert ray[0]["all_processes_peak_rss_mib"] > sum(ray[0]["actors_peak_rss_mib"])


def test_prepare_models_uses_the_bench_export(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[dict[str, Any]] = []

    def fake_run_child(mode: str, job: dict[str, Any], work: Path, tag: str, timeout: float) -> tuple[dict, float]:
        calls.append({"mode": mode, **job})
        if job["model"] == "fastsam_s":
            return {"status": "failed", "error": "export failed"}, 0.0
        return {"status": "ok", "model_dir": "/cache/models/mobile_sam", "weights": "random weights (seed 0)"}, 0.0

    monkeypatch.setattr(bench_run, "run_child", fake_run_child)
    config = scale.parse_args(["--skip-ray"])
    prepared = scale.prepare_models(config, tmp_path / "cache", tmp_path)
    assert [(c["mode"], c["model"], c["checkpoint"], c["ultralytics"]) for c in calls] == [
        ("prepare", "mobile_sam", None, False),
        ("prepare", "fastsam_s", None, False),
    ]
    assert prepared["mobile_sam"] == {
        "status": "ok",
        "model_dir": "/cache/models/mobile_sam",
        "weights": "random weights (seed 0)",
    }
    assert prepared["fastsam_s"] == {"status": "failed", "error": "export failed"}


def test_a_model_folder_of_another_model_fails_its_runs(tmp_path: Path, tiny_fastsam_folder: Path) -> None:
    out = tmp_path / "out"
    code = scale.main(
        ["--models", "embed=mobile_sam", "--sizes", "2", "--skip-ray", "--long-sides", "96,160"]
        + ["--model-dir", f"mobile_sam={tiny_fastsam_folder}", "--cache", str(tmp_path / "cache"), "--out", str(out)]
    )
    assert code == 1
    results = json.loads((out / "scale.json").read_text(encoding="utf-8"))
    assert results["runs"][0]["status"] == "failed"
    assert "holds a 'fastsam_s' model" in results["runs"][0]["error"]
    assert "## Failures" in (out / "scale.md").read_text(encoding="utf-8")
