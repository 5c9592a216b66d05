"""``fastseg label`` latency in a real browser: click to mask drawn, and moving to the next image.

Starts the real labeling server (:func:`fastseg.label.server.run_label_server`, uvicorn) in a
subprocess on a temporary folder of three 1920x1080 photos (skimage's chelsea, astronaut and coffee,
resized and cropped), opens the page in headless Chromium (Debian's ``/usr/bin/chromium`` through
Playwright; no browser download), waits until the three images are encoded, then:

- clicks ``--clicks`` varied points of the first image, each a fresh prompt (Esc in between), after
  a few warm-up clicks that are not counted;
- moves ``--switches`` times between the (pre-encoded) images with ``n`` and ``p``.

Every figure is the page's own (``window.fastsegTimings``): a click is timed from the click event
(pointer up) to the frame with the mask painted, an image switch from the key press to the frame
with the new image painted. The page also records the server's time for the request, the request as
the page saw it, and its own decode and draw time, so the table says where the time goes.

Usage::

    python -m fastseg_bench.label_latency --model /tmp/models/mobile_sam --model /tmp/models/sam_vit_b \\
        --precision bf16 --out bench-results/label

Writes ``label_latency.md`` (the table, also printed) and ``label_latency.json`` (every sample) into
``--out``. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastseg_bench.machine import describe_machine, machine_line, versions_line

CHROMIUM = Path(os.environ.get("FASTSEG_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PHOTO_SIZE = (1920, 1080)  # (W, H)
PHOTOS = ("chelsea", "astronaut", "coffee")
WARMUP_CLICKS = 5
#: Seconds to let the page and the server settle once the images are encoded, before the clicks.
SETTLE = 2.0
#: The figures the page records per click, in the order the table shows them.
CLICK_FIELDS = (
    "ms",
    "server_ms",
    "predict_ms",
    "request_ms",
    "decode_ms",
    "raster_ms",
    "draw_ms",
    "paint_ms",
    "bytes",
)
OUTPUT_FILES = {"markdown": "label_latency.md", "json": "label_latency.json"}


def log(message: str) -> None:
    print(f"[label-latency] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- inputs


def make_photo(name: str, size: tuple[int, int] = PHOTO_SIZE) -> np.ndarray[Any, Any]:
    """skimage's photo ``name`` resized to cover ``size`` (W, H) and cropped at the centre, RGB uint8."""
    from PIL import Image
    from skimage import data

    pixels = np.asarray(getattr(data, name)())
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    image = Image.fromarray(pixels[..., :3])
    w, h = size
    factor = max(w / image.width, h / image.height)
    scaled = image.resize((round(image.width * factor), round(image.height * factor)), Image.Resampling.LANCZOS)
    left, top = (scaled.width - w) // 2, (scaled.height - h) // 2
    return np.asarray(scaled.crop((left, top, left + w, top + h)))


def write_photos(folder: Path) -> list[str]:
    """The benchmark's folder: the three photos as JPEG (quality 92), listed in this order."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, name in enumerate(PHOTOS):
        file = f"{chr(ord('a') + i)}_{name}.jpg"
        Image.fromarray(make_photo(name)).save(folder / file, quality=92)
        files.append(file)
    return files


def click_points(n: int, size: tuple[int, int], seed: int = 0) -> list[tuple[int, int]]:
    """``n`` varied pixels (x, y) of a ``size`` (W, H) image, away from its edges, seeded."""
    w, h = size
    rng = np.random.default_rng(seed)
    xs = rng.uniform(0.06, 0.94, n) * w
    ys = rng.uniform(0.08, 0.92, n) * h
    return [(int(x), int(y)) for x, y in zip(xs, ys)]


# --------------------------------------------------------------------------------------------- server


class Server:
    """``run_label_server`` in a subprocess on 127.0.0.1, on a free port read from what it prints."""

    _CODE = (
        "import json, sys\n"
        "from fastseg.label.server import run_label_server\n"
        "run_label_server(**json.loads(sys.argv[1]))\n"
    )
    _SERVING = re.compile(rb"serving http://127\.0\.0\.1:(\d+)/")

    def __init__(
        self, folder: Path, model: Path, precision: str, backend: str, log_path: Path, threads: int | None = None
    ) -> None:
        self.args = {
            "folder": str(folder),
            "model": str(model),
            "labels": ["object"],
            "host": "127.0.0.1",
            "port": 0,
            "precision": precision,
            "backend": backend,
            "open_browser": False,
        }
        if threads:
            self.args["num_threads"] = threads
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float) -> Server:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", self._CODE, json.dumps(self.args)], stdout=out, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the label server exited with {self.proc.returncode}:\n{self.log_text()}")
            found = self._SERVING.search(self.log_path.read_bytes())
            if found:
                self.port = int(found.group(1))
                return self
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"the label server did not start within {timeout:.0f} s:\n{self.log_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as response:
            return json.loads(response.read())

    def wait_encoded(self, indices: Sequence[int], timeout: float) -> float:
        """Wait until the server holds ``indices`` encoded in memory; the seconds waited."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            state = self.get("/api/state")
            errors = [im for im in state["images"] if im.get("error")]
            if errors:
                raise RuntimeError(f"the server could not encode {errors[0]['file']}: {errors[0]['error']}")
            if set(indices) <= set(state.get("encoded", [])):
                return time.monotonic() - start
            time.sleep(0.2)
        raise TimeoutError(f"images {list(indices)} were not encoded within {timeout:.0f} s:\n{self.log_text()}")


# --------------------------------------------------------------------------------------------- the page


def _wait_count(page: Any, kind: str, n: int, timeout: float) -> None:
    page.wait_for_function(
        "([k, n]) => window.fastsegTimings.filter(t => t.kind === k).length >= n", arg=[kind, n], timeout=timeout * 1000
    )


def _arm(page: Any, kind: str) -> None:
    """Make ``window.__fastsegNext`` a promise of the page's next timing of ``kind`` (the page announces
    each with a ``fastseg:timing`` event), so waiting for it polls nothing (``wait_for_function``
    would run its test on every animation frame, keeping the browser busy while it is timed)."""
    page.evaluate(
        """k => { window.__fastsegNext = new Promise(resolve => {
            const on = e => {
                if (e.detail.kind !== k) return;
                window.removeEventListener('fastseg:timing', on);
                resolve(e.detail);
            };
            window.addEventListener('fastseg:timing', on);
        }); }""",
        kind,
    )


def _next(page: Any) -> dict[str, Any]:
    """The timing armed by :func:`_arm`, once the page records it."""
    entry: dict[str, Any] = page.evaluate("() => window.__fastsegNext")
    return entry


def _idle(page: Any, timeout: float) -> None:
    page.wait_for_function("() => window.fastsegApp.state.pending === 0", timeout=timeout * 1000)


def measure_model(
    playwright: Any,
    model: Path,
    folder: Path,
    precision: str,
    backend: str,
    clicks: int,
    switches: int,
    viewport: tuple[int, int],
    gap: float,
    timeout: float,
    work: Path,
    threads: int | None = None,
) -> dict[str, Any]:
    """One model: start its server, open the page, click, switch images; the page's timings."""
    server = Server(folder, model, precision, backend, work / f"server-{model.name}.log", threads)
    log(f"{model.name}: starting the server ({precision})")
    started = time.monotonic()
    server.start(timeout)
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    try:
        startup = time.monotonic() - started
        state = server.get("/api/state")
        context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        page = context.new_page()
        page.set_default_timeout(timeout * 1000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.url + "/")
        page.wait_for_function("() => document.body.dataset.ready === '1'", timeout=timeout * 1000)
        _wait_count(page, "open", 1, timeout)
        encoded = server.wait_encoded(range(len(state["images"])), timeout)
        log(f"{model.name}: server up in {startup:.1f} s; images encoded {encoded:.1f} s after the page opened")
        _idle(page, timeout)
        time.sleep(SETTLE)
        info = page.evaluate("window.fastsegApp.state")
        size = (int(info["width"]), int(info["height"]))
        scale = float(page.evaluate("window.fastsegView.scale"))

        points = click_points(WARMUP_CLICKS + clicks, size)
        samples: list[dict[str, Any]] = []
        for n, (x, y) in enumerate(points):
            p = page.evaluate("([x, y]) => window.fastsegView.imageToClient(x, y)", [x, y])
            _arm(page, "click")
            t0 = time.perf_counter()
            page.mouse.click(p["x"], p["y"])
            entry = _next(page)
            outside = (time.perf_counter() - t0) * 1000
            if n >= WARMUP_CLICKS:
                samples.append({**entry, "x": x, "y": y, "playwright_ms": outside})
            page.keyboard.press("Escape")
            _idle(page, timeout)
            time.sleep(gap)
        log(f"{model.name}: {clicks} clicks, median {statistics.median(s['ms'] for s in samples):.1f} ms")

        opens: list[dict[str, Any]] = []
        order = "nnpp" * (switches // 4 + 1)
        last = len(state["images"]) - 1
        for key in order[:switches]:
            index = int(page.evaluate("window.fastsegApp.state.index"))
            if (key == "n" and index >= last) or (key == "p" and index <= 0):
                key = "p" if key == "n" else "n"
            server.wait_encoded(range(len(state["images"])), timeout)
            _arm(page, "open")
            page.keyboard.press(key)
            entry = _next(page)
            opens.append({**entry, "key": key})
            _idle(page, timeout)
            time.sleep(gap)
        if opens:
            log(f"{model.name}: {len(opens)} image switches, median {statistics.median(o['ms'] for o in opens):.1f} ms")
        model_info = server.get("/api/state")["model"]
        chromium = browser.version
        context.close()
    finally:
        browser.close()
        server.stop()
    return {
        "model": model_info.get("name", model.name),
        "model_dir": str(model),
        "weights": model_info.get("weights"),
        "precision_asked": precision,
        "precision": model_info.get("precision"),
        "backend": model_info.get("backend", backend),
        "image_size": list(size),
        "view_scale": scale,
        "viewport": list(viewport),
        "chromium": chromium,
        "server_start_s": round(startup, 2),
        "encode_wait_s": round(encoded, 2),
        "clicks": samples,
        "opens": opens,
        "page_errors": errors,
        "summary": summarize(samples, opens),
    }


# --------------------------------------------------------------------------------------------- report


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def summarize(clicks: Sequence[dict[str, Any]], opens: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"clicks": len(clicks), "switches": len(opens)}
    for name in (*CLICK_FIELDS, "playwright_ms"):
        values = [float(c[name]) for c in clicks if isinstance(c.get(name), (int, float))]
        if values:
            out[f"click_{name}"] = {"median": percentile(values, 50), "p90": percentile(values, 90)}
    if opens:
        values = [float(o["ms"]) for o in opens]
        out["open_ms"] = {"median": percentile(values, 50), "p90": percentile(values, 90)}
    return out


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def render_markdown(results: Sequence[dict[str, Any]], machine: dict[str, Any], options: dict[str, Any]) -> str:
    caps = machine.get("openvino_cpu", {}).get("optimization_capabilities")
    scale = results[0].get("view_scale") if results else None
    shown = f" The photo is shown at {scale:.0%}." if scale else ""
    lines = [
        "### `fastseg label`: click to mask and next image, in the browser",
        "",
        f"Host: {machine_line(machine)}; OpenVINO CPU capabilities: {', '.join(caps) if caps else 'unknown'}.",
        f"Versions: {versions_line(machine)}; Chromium {results[0]['chromium'] if results else '?'} headless"
        f" (software rendering), viewport {options['viewport'][0]}x{options['viewport'][1]}.{shown}",
        f"Photo {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} (JPEG); {options['clicks']} clicks at varied points, each a fresh "
        f"prompt (after {WARMUP_CLICKS} warm-up clicks), {options['switches']} moves (n/p) to pre-encoded images. "
        "Click: from the click event to the frame with the mask painted; server: the server's time for the "
        "request (of which predict: `Predictor.predict`); request: as the page saw it (server + HTTP + parsing); "
        "page: decoding and drawing the mask before the frame; bytes: the answer's size. Next image: from the key "
        "press to the frame with the image painted. Medians (p90 in parentheses).",
        "",
        "| model | weights | precision | click ms | server ms | predict ms | request ms | page ms | bytes "
        "| next image ms |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        s = r["summary"]

        def med(name: str, s: dict[str, Any] = s) -> float | None:
            return s[name]["median"] if name in s else None

        def p90(name: str, s: dict[str, Any] = s) -> float | None:
            return s[name]["p90"] if name in s else None

        page_ms = None
        parts = [med(f"click_{k}") for k in ("decode_ms", "raster_ms", "draw_ms")]
        if any(v is not None for v in parts):
            page_ms = sum(v for v in parts if v is not None)
        size = med("click_bytes")
        lines.append(
            f"| {r['model']} | {r['weights']} | {r['precision']} "
            f"| **{_fmt(med('click_ms'))}** ({_fmt(p90('click_ms'))}) "
            f"| {_fmt(med('click_server_ms'))} | {_fmt(med('click_predict_ms'))} | {_fmt(med('click_request_ms'))} "
            f"| {_fmt(page_ms)} | {'–' if size is None else f'{size / 1024:.0f} KiB'} "
            f"| **{_fmt(med('open_ms'))}** ({_fmt(p90('open_ms'))}) |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- main


def _viewport(text: str) -> tuple[int, int]:
    found = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if not found:
        raise argparse.ArgumentTypeError(f"viewport must be WIDTHxHEIGHT, e.g. 1920x1080, got {text!r}")
    return int(found.group(1)), int(found.group(2))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fastseg_bench.label_latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, type=Path, help="an exported model folder (repeat)")
    p.add_argument("--precision", default="bf16", choices=("f32", "bf16", "int8"))
    p.add_argument("--backend", default="openvino", choices=("openvino", "onnxruntime"))
    p.add_argument("--clicks", type=int, default=30, help="timed clicks per model (default 30)")
    p.add_argument("--switches", type=int, default=12, help="timed moves to the next/previous image (default 12)")
    p.add_argument("--viewport", type=_viewport, default=(1920, 1080), help="browser viewport (default 1920x1080)")
    p.add_argument("--gap", type=float, default=0.3, help="seconds between clicks, as a person pauses (default 0.3)")
    p.add_argument("--threads", type=int, default=None, help="the click Predictor's threads (default: the server's)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the server or the page")
    p.add_argument("--out", type=Path, default=Path("bench-results/label"), help="output folder")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not CHROMIUM.exists():
        print(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set FASTSEG_CHROMIUM)", file=sys.stderr)
        return 2
    for model in args.model:
        if not (model / "manifest.json").is_file():
            print(f"--model must be an exported model folder (with manifest.json), got {model}", file=sys.stderr)
            return 2
    from playwright.sync_api import sync_playwright

    machine = describe_machine()
    options = {
        "models": [str(m) for m in args.model],
        "precision": args.precision,
        "backend": args.backend,
        "clicks": args.clicks,
        "switches": args.switches,
        "viewport": list(args.viewport),
        "gap_s": args.gap,
        "threads": args.threads,
        "photo_size": list(PHOTO_SIZE),
    }
    results = []
    with tempfile.TemporaryDirectory(prefix="fastseg-label-latency-") as tmp:
        work = Path(tmp)
        with sync_playwright() as playwright:
            for model in args.model:
                folder = work / f"photos-{model.name}"  # a fresh folder and store per model
                write_photos(folder)
                results.append(
                    measure_model(
                        playwright,
                        model,
                        folder,
                        args.precision,
                        args.backend,
                        args.clicks,
                        args.switches,
                        args.viewport,
                        args.gap,
                        args.timeout,
                        work,
                        args.threads,
                    )
                )
    markdown = render_markdown(results, machine, options)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / OUTPUT_FILES["markdown"]).write_text(markdown)
    payload = {"schema": "fastseg-label-latency/1", "machine": machine, "options": options, "results": results}
    (args.out / OUTPUT_FILES["json"]).write_text(json.dumps(payload, indent=1) + "\n")
    print(markdown)
    log(f"wrote {args.out / OUTPUT_FILES['markdown']} and {args.out / OUTPUT_FILES['json']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
