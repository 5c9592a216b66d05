"""Turning a result set into the Markdown table, the JSON file and the PNG chart.

Everything here is a pure function of the result dict that ``run.py`` assembles (documented in
``benchmarks/README.md``), so it can be tested on a made-up result set.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastseg.fastsam import DEFAULT_CONF, DEFAULT_IOU
from fastseg_bench.machine import machine_line, versions_line
from fastseg_bench.stats import speedup

SCHEMA = "fastseg-bench/1"

#: Display name of each path, in table order.
PATH_LABELS = {
    "pytorch": "PyTorch original",
    "ultralytics-openvino": "ultralytics OpenVINO export",
    "fastseg-onnxruntime": "fastseg ONNX Runtime",
    "fastseg-openvino-f32": "fastseg OpenVINO f32",
    "fastseg-openvino-bf16": "fastseg OpenVINO bf16",
    "fastseg-openvino-int8": "fastseg OpenVINO int8",
}

#: The measures that get a speed-up against the PyTorch original: result key -> speed-up key.
MEASURES = {
    "end_to_end_ms": "end_to_end",
    "network_ms": "network",
    "click_ms": "click",
    "cold_start_s": "cold_start",
}
#: The same for the everything-mode section.
EVERYTHING_MEASURES = {"everything_ms": "everything"}

RANDOM_WEIGHTS_NOTE = (
    "Timings on random weights equal timings on real weights: the graphs, tensor shapes and amount of "
    "computation are identical, only the weight values differ. (FastSAM's prompt step and mask assembly "
    "depend on how many objects are detected, which the calibrated random weights keep in the range of a "
    "trained model's.) The masks themselves are not meaningful."
)


# ---------------------------------------------------------------------------------------------- ratios


def compute_speedups(
    model: dict[str, Any], baseline_path: str = "pytorch", measures: dict[str, str] | None = None
) -> None:
    """Fill ``paths[p]["speedup"]`` for every successful path of ``model``: baseline figure / path figure.

    ``measures`` maps result keys to speed-up keys (default :data:`MEASURES`; the everything-mode
    section passes its own). Times use the medians (``end_to_end_min`` also compares the minima of
    ``end_to_end_ms``); ``peak_rss`` is the baseline's peak RSS divided by the path's. A measure missing
    on either side gives None.
    """
    measures = MEASURES if measures is None else measures
    paths = model.get("paths", {})
    base = paths.get(baseline_path)
    base_ok = base is not None and base.get("status") == "ok"
    for result in paths.values():
        if result.get("status") != "ok":
            continue
        ratios: dict[str, float | None] = {}
        for key, name in measures.items():
            ours = (result.get(key) or {}).get("median")
            theirs = (base.get(key) or {}).get("median") if base_ok else None
            ratios[name] = speedup(theirs, ours)
        if "end_to_end_ms" in measures:
            ours_min = (result.get("end_to_end_ms") or {}).get("min")
            theirs_min = (base.get("end_to_end_ms") or {}).get("min") if base_ok else None
            ratios["end_to_end_min"] = speedup(theirs_min, ours_min)
        ratios["peak_rss"] = speedup(base.get("peak_rss_mib") if base_ok else None, result.get("peak_rss_mib"))
        result["speedup"] = ratios


def fastseg_vs_ultralytics(model: dict[str, Any], key: str = "end_to_end_ms") -> dict[str, Any] | None:
    """FastSAM: fastseg OpenVINO at the precision ultralytics' OpenVINO path ran at, against that path.

    Returns ``{"precision", "ultralytics_ms", "fastseg_path", "fastseg_ms", "speedup"}`` (medians of
    ``key``: end to end, or ``everything_ms`` for the everything-mode section), or None when either
    side is missing or ultralytics ran at a precision fastseg has no path for.
    """
    paths = model.get("paths", {})
    ultra = paths.get("ultralytics-openvino")
    if not ultra or ultra.get("status") != "ok":
        return None
    precision = ultra.get("precision")
    ours_name = {"f32": "fastseg-openvino-f32", "bf16": "fastseg-openvino-bf16"}.get(str(precision))
    ours = paths.get(ours_name) if ours_name else None
    if not ours or ours.get("status") != "ok":
        return None
    theirs_ms = ultra[key]["median"]
    ours_ms = ours[key]["median"]
    return {
        "precision": precision,
        "ultralytics_ms": theirs_ms,
        "fastseg_path": ours_name,
        "fastseg_ms": ours_ms,
        "speedup": speedup(theirs_ms, ours_ms),
    }


# ------------------------------------------------------------------------------------------ formatting


def fmt_ms(value: float | None) -> str:
    """Milliseconds with sensible precision: ``12,345``, ``123``, ``45.6``, ``4.56``; ``—`` for None."""
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_s(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}×" if value < 10 else f"{value:.1f}×"


def fmt_pct(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 99.995 and value < 100:
        return ">99.99%"
    return f"{value:.2f}%"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _summary_cell(summary: dict[str, Any] | None, fmt: Any) -> str:
    if not summary:
        return "—"
    return f"{fmt(summary['median'])} ({fmt(summary['min'])})"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(results: dict[str, Any]) -> str:
    """The human-readable report: run description, the main table, mask agreement, FastSAM comparison."""
    machine = results["machine"]
    config = results["config"]
    lines: list[str] = ["# fastseg bench: PyTorch originals vs fastseg", ""]
    load = machine.get("load_average_at_start")
    load_text = (
        f"; load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min)" if load else ""
    )
    lines.append(f"- **machine:** {machine_line(machine)}")
    lines.append(f"- **software:** {versions_line(machine)}")
    cpu = machine.get("cpu_at_start")
    if cpu is not None:
        load_text += f"; CPU {cpu['busy']:.0f}% busy, {cpu['steal']:.0f}% stolen in the second before"
    lines.append(f"- **date:** {machine.get('date')}{load_text}")
    if results.get("machine_note"):
        lines.append(f"- **note:** {results['machine_note']}")
    for path, why in (results.get("skipped_paths") or {}).items():
        lines.append(f"- **not run:** {PATH_LABELS.get(path, path)}: {why}")
    lines.append(f"- **image:** {results['image']['description']}")
    px, py = results["prompt"]["point"]
    lines.append(f"- **prompt:** one positive point at ({px:g}, {py:g}); SAM family: 3 multimask masks at full "
                 "resolution; FastSAM: every mask containing the point, full resolution (retina masks)")
    weights = {name: m.get("weights") for name, m in results["models"].items() if m.get("weights")}
    if weights:
        groups: dict[str, list[str]] = {}
        for name, label in weights.items():
            groups.setdefault(label, []).append(name)
        lines.append("- **weights:** " + "; ".join(f"{', '.join(names)}: {label}" for label, names in groups.items()))
        if any("random" in label for label in weights.values()):
            lines.append(f"- **random weights:** {RANDOM_WEIGHTS_NOTE}")
    lines.append(
        f"- **runs per path:** {config['warmup']} warm-up, then {config['repeats']} end-to-end runs, "
        f"{config['click_repeats']} clicks, {_plural(config['cold_starts'], 'cold start')}"
        + (f", {_plural(config['everything_repeats'], 'everything-mode run')} after a one-point warm-up"
           if config.get("everything_repeats") else "")
        + (" (--quick)" if config.get("quick") else "")
        + "; each path in its own process"
    )
    lines.append(
        "- **cells:** median (min); × = speed-up against the PyTorch original measured in this run "
        "(its median / this median; higher is better; for peak RSS: PyTorch's / this path's)"
    )
    lines += ["", "| model | path | precision | end-to-end ms | × | encoder / network ms | × | one more click ms | × "
              "| cold start s | × | peak RSS MiB | × | masks = PyTorch |",
              "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    failures: list[str] = []
    for name, model in results["models"].items():
        if model.get("status") != "ok":
            failures.append(f"{name}: {model.get('error')}")
            lines.append(f"| {name} | (all) | | failed: {_escape(str(model.get('error')))} |" + " |" * 10)
            continue
        lines += _path_rows(name, model["paths"], failures, "", _main_cells)
        failures += [f"{name} / {path} cold start: {result['cold_start_error']}"
                     for path, result in model["paths"].items() if result.get("cold_start_error")]

    for precision in ("bf16", "int8"):
        key = f"{precision}_vs_f32"
        agreement_rows = [(name, m[key]) for name, m in results["models"].items() if m.get(key) is not None]
        if not agreement_rows:
            continue
        lines += ["", f"### {precision} vs f32 masks (fastseg OpenVINO, same image and prompt)", "",
                  "| model | pixels equal | IoU of the masks' union | masks compared |", "|---|--:|--:|---|"]
        for name, agreement in agreement_rows:
            lines.append(f"| {name} | {fmt_pct(agreement['pixels_pct'])} | {fmt_pct(agreement['iou_pct'])} | "
                         f"{agreement['compared']} ({agreement['count'][0]} vs {agreement['count'][1]}) |")

    lines += _everything_table(results, failures)
    lines += _text_table(results, failures)

    versus = [(name, mode, v) for name, m in results["models"].items()
              for mode, v in (("one point, end to end", m.get("fastseg_vs_ultralytics")),
                              ("everything", (m.get("everything") or {}).get("fastseg_vs_ultralytics"))) if v]
    if versus:
        lines += ["", "### FastSAM: fastseg vs ultralytics' own OpenVINO export, same precision", "",
                  "| model | task | precision | ultralytics OpenVINO ms | fastseg ms | × |",
                  "|---|---|---|--:|--:|--:|"]
        for name, mode, v in versus:
            lines.append(f"| {name} | {mode} | {v['precision']} | {fmt_ms(v['ultralytics_ms'])} | "
                         f"{fmt_ms(v['fastseg_ms'])} | {fmt_ratio(v['speedup'])} |")

    notes = sorted({m["paths"]["ultralytics-openvino"]["precision_note"] for m in results["models"].values()
                    if m.get("paths", {}).get("ultralytics-openvino", {}).get("precision_note")})
    if notes:
        lines += ["", "### ultralytics' OpenVINO path", ""] + [f"- {n}" for n in notes]

    if failures:
        lines += ["", "### Failures", ""] + [f"- {_escape(f)}" for f in failures]
    lines.append("")
    return "\n".join(lines)


def _path_rows(name: str, paths: dict[str, Any], failures: list[str], what: str,
               cells: Callable[[str, dict[str, Any]], list[str]]) -> list[str]:
    """Table rows of one model's paths: ``model | path | cells(path, result)...``, or a failed row
    (padded to the header's width) with the error appended to ``failures``."""
    rows = []
    for path, result in paths.items():
        label = PATH_LABELS.get(path, path)
        if result.get("status") != "ok":
            failures.append(f"{name} / {path}{what}: {result.get('error')}")
            rows.append(f"| {name} | {label} | | failed (see below) |" + " |" * (len(cells(path, {})) - 2))
            continue
        rows.append("| " + " | ".join(_escape(c) for c in [name, label, *cells(path, result)]) + " |")
    return rows


def _main_cells(path: str, result: dict[str, Any]) -> list[str]:
    if not result:  # the width of a row, for failed paths
        return [""] * 12
    ratio = result.get("speedup", {})
    agreement = result.get("mask_vs_pytorch")
    return [
        str(result.get("precision", "")),
        _summary_cell(result.get("end_to_end_ms"), fmt_ms),
        fmt_ratio(ratio.get("end_to_end")),
        _summary_cell(result.get("network_ms"), fmt_ms),
        fmt_ratio(ratio.get("network")),
        _summary_cell(result.get("click_ms"), fmt_ms),
        fmt_ratio(ratio.get("click")),
        _summary_cell(result.get("cold_start_s"), fmt_s),
        fmt_ratio(ratio.get("cold_start")),
        f"{result['peak_rss_mib']:,.0f}" if result.get("peak_rss_mib") is not None else "—",
        fmt_ratio(ratio.get("peak_rss")),
        "reference" if path == "pytorch" else (fmt_pct(agreement["pixels_pct"]) if agreement else "—"),
    ]


def _everything_cells(path: str, result: dict[str, Any]) -> list[str]:
    if not result:
        return [""] * 7
    ratio = result.get("speedup", {})
    agreement = result.get("masks_vs_pytorch")
    summary = result["everything_ms"]
    return [
        str(result.get("precision", "")),
        f"{fmt_s(summary['median'] / 1000)} ({fmt_s(summary['min'] / 1000)})",
        fmt_ratio(ratio.get("everything")),
        str(result["masks"]),
        "reference" if path == "pytorch" else (
            f"{agreement['matched']} / {agreement['count'][1]} ({fmt_pct(agreement['matched_pct'])})"
            if agreement else "—"),
        f"{result['peak_rss_mib']:,.0f}",
        fmt_ratio(ratio.get("peak_rss")),
    ]


def _everything_table(results: dict[str, Any], failures: list[str]) -> list[str]:
    """The everything-mode section: one row per model and path (appends failed paths to ``failures``)."""
    sections = {name: m["everything"] for name, m in results["models"].items() if m.get("everything")}
    if not sections:
        return []
    points = sorted({s["params"].get("points_per_side") for s in sections.values() if s["params"]})
    grid = f"points_per_side {', '.join(map(str, points))}" if points else ""
    lines = ["", "### Everything mode (automatic masks, whole image)", "",
             f"SAM family: `SamAutomaticMaskGenerator` (SAM 2.1: `SAM2AutomaticMaskGenerator`) and "
             f"`Predictor.everything` at the original's defaults"
             f"{f' ({grid})' if grid else ''}; FastSAM: every detection after NMS "
             f"(conf {DEFAULT_CONF}, iou {DEFAULT_IOU}, retina masks). "
             "Time from the image in memory (encoding included) to all masks; × against the PyTorch original; "
             "matched: the original's masks with a one-to-one counterpart at IoU >= 0.98.", "",
             "| model | path | precision | everything s | × | masks | matched to PyTorch | peak RSS MiB | × |",
             "|---|---|---|--:|--:|--:|--:|--:|--:|"]
    for name, section in sections.items():
        lines += _path_rows(name, section["paths"], failures, " everything", _everything_cells)
    return lines


def _text_cells(path: str, result: dict[str, Any]) -> list[str]:
    if not result:
        return [""] * 8
    ratio = result.get("speedup", {})
    return [
        str(result.get("precision", "")),
        str(result["detections"]),
        _summary_cell(result.get("text_first_ms"), fmt_ms),
        fmt_ratio(ratio.get("text_first")),
        _summary_cell(result.get("text_again_ms"), fmt_ms) if result.get("text_again_ms") else "—",
        fmt_ratio(ratio.get("text_again")) if result.get("text_again_ms") else "—",
        f"{result['peak_rss_mib']:,.0f}",
        fmt_ratio(ratio.get("peak_rss")),
    ]


def _text_table(results: dict[str, Any], failures: list[str]) -> list[str]:
    """The FastSAM text-prompt section: one row per model and path (appends failures to ``failures``)."""
    sections = {name: m["text"] for name, m in results["models"].items() if m.get("text")}
    if not sections:
        return []
    lines = ["", "### FastSAM text prompts (CLIP ViT-B/32)", "",
             "One text per query on the image already set (ultralytics: `FastSAMPredictor.prompt(results, "
             "texts=...)` after one un-prompted prediction; fastseg: `Predictor.predict(texts=...)`). First query: "
             "the crops of every detection with more than 100 mask pixels are cut and encoded (fastseg sets the "
             "image again, untimed, before each). Again: another new text on the same image; fastseg keeps the "
             "crops' CLIP features per image, ultralytics encodes them on every query, so its first-query time is "
             "the baseline of both ×. Confidence set for about the requested number of detections.", ""]
    for name, section in sections.items():
        if section.get("status") != "ok":
            failures.append(f"{name} / text prompts: {section.get('error')}")
            continue
        lines.append(f"- {name}: conf {section['conf']:.4f}, CLIP {section['clip_weights']}")
    lines += ["", "| model | path | precision | detections | first query ms | × | again ms | × | peak RSS MiB | × |",
              "|---|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for name, section in sections.items():
        lines += _path_rows(name, section.get("paths", {}), failures, " text", _text_cells)
    return lines


# ------------------------------------------------------------------------------------------------ JSON


def to_json(results: dict[str, Any]) -> str:
    """Every raw figure, as indented JSON (non-finite numbers are refused: they would mean a bug)."""
    return json.dumps(results, indent=2, allow_nan=False) + "\n"


# ------------------------------------------------------------------------------------------------ chart

PATH_COLOURS = {
    "pytorch": "#7f7f7f",
    "ultralytics-openvino": "#ff7f0e",
    "fastseg-onnxruntime": "#9ecae1",
    "fastseg-openvino-f32": "#4292c6",
    "fastseg-openvino-bf16": "#08519c",
    "fastseg-openvino-int8": "#08306b",
}


def fmt_duration(ms: float) -> str:
    """Compact duration for chart labels: ``7.7 s``, ``1.66 s``, ``55 ms``, ``4.2 ms``."""
    if ms >= 10_000:
        return f"{ms / 1000:.0f} s"
    if ms >= 1000:
        return f"{ms / 1000:.2f} s"
    return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"


def render_chart(results: dict[str, Any], path: Path) -> Path:
    """Grouped bars, log scale: end-to-end and one-more-click medians per model and path, speed-ups on the bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    models = [n for n, m in results["models"].items() if m.get("status") == "ok"]
    paths = [p for p in PATH_LABELS if any(p in results["models"][n]["paths"] for n in models)]
    panels = [("end_to_end_ms", "end_to_end", "End to end: image in memory → full-resolution mask"),
              ("click_ms", "click", "One more click on an image already set")]
    if any(results["models"][n].get("everything") for n in models):
        panels.append(("everything_ms", "everything", "Everything mode: image in memory → all automatic masks"))

    def result_of(name: str, path: str, key: str) -> dict[str, Any] | None:
        model = results["models"][name]
        section = (model.get("everything") or {}) if key == "everything_ms" else model
        return section.get("paths", {}).get(path)

    # One panel above the other, full width: five labelled bars per model stay legible side by side.
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(9.0, 3.6 * len(models) + 2), 5.5 * len(panels)),
                             constrained_layout=True)
    width = 0.8 / max(len(paths), 1)
    for ax, (key, ratio_key, title) in zip(axes, panels):
        values_seen: list[float] = []
        for j, p in enumerate(paths):
            xs, heights, labels = [], [], []
            for i, name in enumerate(models):
                result = result_of(name, p, key)
                if not result or result.get("status") != "ok" or not result.get(key):
                    continue
                median = result[key]["median"]
                xs.append(i + (j - (len(paths) - 1) / 2) * width)
                heights.append(median)
                ratio = result.get("speedup", {}).get(ratio_key)
                labels.append(fmt_duration(median) if p == "pytorch" else fmt_ratio(ratio).replace("×", "x"))
            if not xs:
                continue
            values_seen += heights
            bars = ax.bar(xs, heights, width * 0.92, label=PATH_LABELS[p], color=PATH_COLOURS[p])
            for bar, text in zip(bars, labels):
                ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), xytext=(0, 2),
                            textcoords="offset points", ha="center", va="bottom", fontsize=8,
                            fontweight="bold" if p == "pytorch" else "normal")
        ax.set_yscale("log")
        if values_seen:
            ax.set_ylim(min(values_seen) / 2, max(values_seen) * 6)
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g} s" if v >= 1000 else f"{v:g} ms"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models)
        ax.set_ylabel("median time (log scale)")
        ax.set_title(title, fontsize=11)
        ax.grid(axis="y", which="major", alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8, loc="upper left", ncols=2)
    else:
        for ax in axes:
            ax.text(0.5, 0.5, "no path finished: see the Failures section of bench.md", ha="center",
                    transform=ax.transAxes)
    weights = {m.get("weights") for m in results["models"].values() if m.get("weights")}
    weight_text = "random weights (same graphs, same timings as real weights)" if any(
        "random" in w for w in weights) else ", ".join(sorted(weights))
    h, w = results["image"]["size"]
    fig.suptitle(
        f"fastseg bench — {results['machine'].get('cpu_model')}, {results['machine'].get('logical_cores')} cores; "
        f"{w}×{h} photo, one point prompt{' and everything mode' if len(panels) == 3 else ''}\n{weight_text}\n"
        "bold label: the PyTorch original's time; other labels: speed-up against it (higher is better)",
        fontsize=10,
    )
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
