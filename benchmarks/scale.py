"""``fastseg bench --batch``: images/s of ``fastseg embed`` and ``fastseg batch`` on folders of photos.

What it measures (issue #12, item 5), for each task (``embed``: encode every image into an empty
embedding store; ``batch``: everything mode on every image, one COCO file with RLE masks):

- images/s on a folder of ``--ray-images`` (default 200) photos in one process (inference threads =
  all cores), and on a local Ray instance at 1 actor x all cores and 2 actors x half the cores;
- the peak RSS of each worker: the process of a one-process run; each Ray actor (sampled), the
  driver and all the run's processes together for a Ray run;
- how time grows with the folder: one-process runs at ``--sizes`` (default 50, 200, 1000 images).
  Seconds per image must not grow with the folder (no per-image cost that grows with it, no file
  listing read again per image, no result held until the end): the table compares the seconds per
  image of the largest folder with the smallest, the last tenth of the largest run with its first
  tenth, and the driver's memory after the first tenth with its memory at the end;
- from the measured rate, the hours a folder of 10^6 images would take on N machines of M cores.

Each run is a fresh process (``python -m fastseg_bench.scale JOB.json``), so its peak RSS is its own.
It calls :func:`fastseg.batch.run_embed` / :func:`fastseg.batch.run_batch` as the ``fastseg``
commands do, and notes when each image's record reaches the driver and the worker's time on it
(``seconds``) by wrapping ``fastseg.batch._results``, where both take their records from.

The photos: scikit-image's bundled colour photos (astronaut, chelsea, coffee, ...), each image a
different crop, flip and size (long side 800 to 1280 pixels) of one of them, written as JPEG (quality
90) into a pool under the bench cache and hard-linked into one folder per size, so the folder of 50
images is the start of the folder of 200. Every image's decoded pixels are distinct (checked: the
embedding store keys images by their pixels, so a repeated picture would be a store hit).

The models are the benchmark's (:mod:`fastseg_bench.prepare`: random-weight checkpoints in the
official formats, exported once into the bench cache) unless ``--model-dir NAME=DIR`` gives one.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

SCHEMA = "fastseg-bench-scale/1"
OUTPUT_FILES = {"markdown": "scale.md", "json": "scale.json"}

#: scikit-image's colour photos bundled with the package (no download), in the order images cycle through.
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "stereo_motorcycle",
    "retina",
)
#: Long sides of the images, in pixels: ``SIDE_STEPS`` values evenly spread over this range.
LONG_SIDES = (800, 1280)
#: 31 is prime to the 4 flips x 8 photos, so (photo, flip, size) differ for the first 992 images.
SIDE_STEPS = 31
#: At most this fraction of each side is cropped away (drawn per image from a seeded generator).
MAX_CROP = 0.08
JPEG_QUALITY = 90
SEED = 0
#: Bump when the images the builder writes change: the cached folders are then built again.
BUILD_VERSION = 1

DEFAULT_MODELS = {"embed": "mobile_sam", "batch": "fastsam_s"}
DEFAULT_SIZES = (50, 200, 1000)
DEFAULT_RAY_IMAGES = 200
QUICK_SIZES = (10, 20, 40)
QUICK_RAY_IMAGES = 20
#: Seconds between two samples of the Ray processes' memory.
SAMPLE_INTERVAL = 0.1
#: Records that reach the driver within this many seconds of the one before arrived together.
BURST_GAP_S = 0.01
#: The estimate: this many images, on machines of these many cores, this many machines.
ESTIMATE_IMAGES = 10**6
ESTIMATE_CORES = (2, 8, 32)
ESTIMATE_MACHINES = (1, 10, 100)
#: Linearity check: a ratio of seconds per image within 1 +- this counts as linear. The host varies by
#: up to +-30% between identical processes (benchmarks/README.md), so smaller differences are noise.
LINEAR_TOLERANCE = 0.25

TASK_LABELS = {
    "embed": "embed (encode into an empty store)",
    "batch": "batch (everything mode, COCO RLE)",
}
ESTIMATE_ASSUMPTION = (
    "the estimate assumes the measured throughput per core (images/s of the run divided by the cores it "
    "used) holds on every core of every machine: linear in cores and in machines, on CPUs like this one "
    "(same instruction sets and OpenVINO precision), with the images, the model and the output on storage "
    "that keeps up, and no start-up (model load, Ray actors) counted"
)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- photos


@lru_cache(maxsize=1)
def source_photos() -> tuple[tuple[str, npt.NDArray[np.uint8]], ...]:
    """The :data:`PHOTOS` this scikit-image has without a download, as ``(name, RGB uint8 (H, W, 3))``."""
    from skimage import data

    found = []
    for name in PHOTOS:
        try:
            image = getattr(data, name)()
        except (AttributeError, ImportError, OSError, ValueError):  # absent here, or only downloadable
            continue
        if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
            image = image[0]
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            continue
        found.append((name, np.ascontiguousarray(image)))
    if len(found) < 3:
        raise RuntimeError(
            f"expected at least 3 of scikit-image's colour photos {', '.join(PHOTOS)}, found "
            f"{', '.join(n for n, _ in found) or 'none'}: pip install 'scikit-image>=0.22'"
        )
    return tuple(found)


def variant_spec(index: int, photos: int, long_sides: tuple[int, int] = LONG_SIDES) -> tuple[int, int, int]:
    """``(photo, flip, long side)`` of image ``index`` among ``photos`` photos.

    Photo ``index % photos``, flip ``(index // photos) % 4`` (bit 0: left-right, bit 1: up-down), long
    side ``index % SIDE_STEPS`` of :data:`SIDE_STEPS` values evenly spread over ``long_sides``. Sizes,
    photos and flips cycle quickly, so the first 50 images are a sample of the same mix as 1,000, and
    with 8 photos the triple differs for the first 992 images (4 x 8 and 31 are coprime).
    """
    if isinstance(index, bool) or index < 0:
        raise ValueError(f"expected an image index >= 0, got {index!r}")
    if photos < 1:
        raise ValueError(f"expected at least one photo, got {photos}")
    lo, hi = long_sides
    if not 16 <= lo <= hi:
        raise ValueError(f"expected long sides 16 <= low <= high, got {long_sides}")
    side = lo + round((hi - lo) * (index % SIDE_STEPS) / (SIDE_STEPS - 1))
    return index % photos, (index // photos) % 4, side


def photo_variant(
    photos: Sequence[tuple[str, npt.NDArray[np.uint8]]],
    index: int,
    long_sides: tuple[int, int] = LONG_SIDES,
) -> tuple[str, npt.NDArray[np.uint8]]:
    """Image ``index`` of the folders: ``(file name, RGB uint8 (H, W, 3))``.

    The photo, flip and long side of :func:`variant_spec`, after cropping up to :data:`MAX_CROP` of
    each side (fractions drawn from a generator seeded by ``index``); resized with PIL bicubic.
    """
    from PIL import Image

    photo, flip, side = variant_spec(index, len(photos), long_sides)
    name, source = photos[photo]
    h, w = source.shape[:2]
    left, top, right, bottom = np.random.default_rng([SEED, index]).uniform(0.0, MAX_CROP, 4)
    crop = source[int(top * h) : h - int(bottom * h), int(left * w) : w - int(right * w)]
    if flip & 1:
        crop = crop[:, ::-1]
    if flip & 2:
        crop = crop[::-1]
    ch, cw = crop.shape[:2]
    scale = side / max(ch, cw)
    size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
    resized = Image.fromarray(np.ascontiguousarray(crop)).resize(size, Image.Resampling.BICUBIC)
    return f"{index:05d}_{name}.jpg", np.asarray(resized, dtype=np.uint8)


def _folder_key(long_sides: tuple[int, int]) -> str:
    from importlib import metadata

    versions = []
    for package in ("scikit-image", "pillow"):
        try:
            versions.append(f"{package}={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package}=none")
    text = json.dumps([BUILD_VERSION, SEED, JPEG_QUALITY, MAX_CROP, SIDE_STEPS, list(long_sides), PHOTOS, versions])
    return f"{long_sides[0]}-{long_sides[1]}-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def build_folder(root: Path, count: int, long_sides: tuple[int, int] = LONG_SIDES) -> Path:
    """A folder of ``count`` distinct photos (:func:`photo_variant` 0 .. count - 1), built once under ``root``.

    Layout: ``root/<key>/pool/`` holds every image made so far and ``pool.json`` the store key
    (:func:`fastseg.store.image_key`) of each one's decoded pixels; ``root/<key>/<count>/`` links the
    first ``count`` of them, and ``<count>.json`` marks it complete. ``<key>`` names the sizes and
    hashes the builder's settings and library versions.

    Raises:
        ValueError: ``count`` < 1, or two images decode to the same pixels.
    """
    from PIL import Image

    from fastseg.paths import atomic_write
    from fastseg.store import image_key

    if isinstance(count, bool) or count < 1:
        raise ValueError(f"expected a number of images >= 1, got {count!r}")
    base = Path(root) / _folder_key(long_sides)
    folder = base / str(count)
    marker = base / f"{count}.json"
    if marker.exists() and folder.is_dir():
        recorded = json.loads(marker.read_text(encoding="utf-8"))
        if sorted(os.listdir(folder)) == recorded.get("files"):
            return folder
    pool = base / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    index_path = base / "pool.json"
    keys: dict[str, str] = json.loads(index_path.read_text(encoding="utf-8")) if index_path.exists() else {}
    photos = source_photos()
    names: list[str] = []
    made = 0
    for i in range(count):
        name, pixels = photo_variant(photos, i, long_sides)
        names.append(name)
        if name in keys and (pool / name).is_file():
            continue
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
            keys[name] = image_key(np.asarray(decoded.convert("RGB"), dtype=np.uint8))
        with atomic_write(pool / name) as f:
            f.write(buffer.getvalue())
        made += 1
    if made:
        log(f"made {made} photo(s) in {pool}")
        with atomic_write(index_path, binary=False) as f:
            json.dump(keys, f, indent=0, sort_keys=True)
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(keys[name], name)
        if other != name:
            raise ValueError(f"{name} and {other} decode to the same pixels; expected {count} distinct images")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in names:
        try:
            os.link(pool / name, folder / name)
        except OSError:
            shutil.copy2(pool / name, folder / name)
    with atomic_write(marker, binary=False) as f:
        json.dump({"count": count, "long_sides": list(long_sides), "files": sorted(names)}, f)
    return folder


def describe_folder(count: int, long_sides: tuple[int, int]) -> str:
    names = ", ".join(name for name, _ in source_photos())
    return (
        f"{count:,} distinct JPEGs (quality {JPEG_QUALITY}) made from scikit-image's photos {names}: each a different "
        f"crop (up to {MAX_CROP:.0%} of each side), flip and size (long side {long_sides[0]}-{long_sides[1]} px)"
    )


# ---------------------------------------------------------------------------------------------- figures


def timing_figures(
    called: float,
    started: float | None,
    arrived: Sequence[float],
    worker_seconds: Sequence[float],
    ended: float,
    workers: int = 1,
) -> dict[str, Any]:
    """Rates from one run's clock readings (``time.perf_counter`` seconds).

    Args:
        called: when ``run_embed`` / ``run_batch`` was called.
        started: when it asked for the records: after the model load of a one-process run, before a
            Ray run starts Ray (None if unknown: ``called``).
        arrived: when each image's record reached the driver, in order.
        worker_seconds: each record's ``seconds``: the worker's time on that image (read, encode,
            segment), without the driver's share and without the time between images.
        ended: when the run returned (the output written).
        workers: how many workers ran at once (1, or the Ray actors).

    Returns:
        ``seconds`` (called to ended) and ``whole_images_per_s`` (images / seconds: everything);
        ``setup_s`` (called to started); ``s_per_image`` and ``images_per_s`` (started to ended: the
        first images and the output included, a one-process run's model load not);
        ``worker_images_per_s`` (``workers`` x images / the sum of ``worker_seconds``);
        ``steady_images_per_s`` (from the first record to the last); ``first_tenth_s`` /
        ``last_tenth_s`` (mean time between records over the first and last tenth of the gaps);
        ``largest_burst`` (most records that reached the driver together, within
        :data:`BURST_GAP_S` of the one before); ``finish_s`` (last record to ended). Rates need at
        least two records, else they are None.
    """
    n = len(arrived)
    begin = called if started is None else started
    busy = float(sum(worker_seconds))
    out: dict[str, Any] = {
        "seconds": ended - called,
        "whole_images_per_s": n / (ended - called) if n and ended > called else None,
        "setup_s": begin - called,
        "s_per_image": (ended - begin) / n if n else None,
        "images_per_s": n / (ended - begin) if n and ended > begin else None,
        "worker_images_per_s": workers * len(worker_seconds) / busy if busy > 0 else None,
        "steady_images_per_s": None,
        "first_tenth_s": None,
        "last_tenth_s": None,
        "largest_burst": None,
        "finish_s": (ended - arrived[-1]) if n else None,
    }
    if n >= 2 and arrived[-1] > arrived[0]:
        gaps = np.diff(np.asarray(arrived, dtype=np.float64))
        out["steady_images_per_s"] = (n - 1) / (arrived[-1] - arrived[0])
        k = max(1, len(gaps) // 10)
        out["first_tenth_s"] = float(np.mean(gaps[:k]))
        out["last_tenth_s"] = float(np.mean(gaps[-k:]))
    if n:
        burst = largest = 1
        for gap in np.diff(np.asarray(arrived, dtype=np.float64)):
            burst = burst + 1 if gap <= BURST_GAP_S else 1
            largest = max(largest, burst)
        out["largest_burst"] = largest
    return out


def estimate_hours(
    images_per_s: float,
    cores_used: int,
    *,
    images: int = ESTIMATE_IMAGES,
    cores: Sequence[int] = ESTIMATE_CORES,
    machines: Sequence[int] = ESTIMATE_MACHINES,
) -> dict[str, Any]:
    """Hours for ``images`` on N machines of M cores, from a rate measured on ``cores_used`` cores.

    ``hours[i][j] = images / (images_per_s / cores_used * cores[i] * machines[j]) / 3600``: the rate
    per core is assumed to hold on every core of every machine (:data:`ESTIMATE_ASSUMPTION`).
    """
    if not (np.isfinite(images_per_s) and images_per_s > 0):
        raise ValueError(f"expected a rate in images/s > 0, got {images_per_s!r}")
    if isinstance(cores_used, bool) or cores_used < 1:
        raise ValueError(f"expected the cores the rate was measured on (>= 1), got {cores_used!r}")
    per_core = images_per_s / cores_used
    return {
        "images": images,
        "images_per_s": images_per_s,
        "cores_used": cores_used,
        "per_core_images_per_s": per_core,
        "cores": list(cores),
        "machines": list(machines),
        "hours": [[images / (per_core * m * n) / 3600 for n in machines] for m in cores],
        "assumption": ESTIMATE_ASSUMPTION,
    }


def linearity(runs: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """How one task's one-process runs at several folder sizes compare (None with fewer than two).

    ``size_ratio``: seconds per image of the largest folder / of the smallest; ``steady_ratio``: the
    same for the steady rate; ``tenth_ratio``: in the largest run, the last tenth's seconds per image /
    the first tenth's; ``rss_growth_mib``: its driver RSS at the end minus after the first tenth.
    ``linear``: every ratio within 1 +- :data:`LINEAR_TOLERANCE`.
    """
    ok = sorted((r for r in runs if r.get("status") == "ok"), key=lambda r: r["images"])
    if len(ok) < 2:
        return None
    small, large = ok[0], ok[-1]

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    ratios = {
        "size_ratio": ratio(large.get("s_per_image"), small.get("s_per_image")),
        # seconds per image, large / small = rate, small / large
        "steady_ratio": ratio(small.get("steady_images_per_s"), large.get("steady_images_per_s")),
        "tenth_ratio": ratio(large.get("last_tenth_s"), large.get("first_tenth_s")),
    }
    rss = large.get("driver_rss_mib") or {}
    growth = None
    if rss.get("after_first_tenth") is not None and rss.get("at_end") is not None:
        growth = rss["at_end"] - rss["after_first_tenth"]
    known = [r for r in ratios.values() if r is not None]
    return {
        "sizes": [r["images"] for r in ok],
        **ratios,
        "rss_growth_mib": growth,
        "tolerance": LINEAR_TOLERANCE,
        "linear": bool(known) and all(abs(r - 1) <= LINEAR_TOLERANCE for r in known),
    }


# ---------------------------------------------------------------------------------------------- children


class _Recorder:
    """Wraps ``fastseg.batch._results`` (what ``run_embed`` / ``run_batch`` take the records from): the
    time each record reaches the driver, its ``seconds`` and the driver's RSS then."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.started: float | None = None
        self.arrived: list[float] = []
        self.seconds: list[float] = []
        self.rss: list[int] = []

    def wrap(self, results: Any) -> Any:
        def recorded(*args: Any, **kwargs: Any) -> tuple[Iterator[dict[str, Any]], Any]:
            self.started = time.perf_counter()
            records, closer = results(*args, **kwargs)
            return self._watch(records), closer

        return recorded

    def _watch(self, records: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for record in records:
            self.arrived.append(time.perf_counter())
            self.seconds.append(float(record.get("seconds") or 0.0))
            self.rss.append(self._process.memory_info().rss)
            yield record


class _Sampler:
    """Samples the memory of this process's descendants every :data:`SAMPLE_INTERVAL` s in a thread:
    the peak RSS of each process whose name contains ``marker`` (the Ray actors) and the peak of the
    sum over all of them and this process."""

    def __init__(self, marker: str) -> None:
        import psutil

        self._psutil = psutil
        self._marker = marker
        self._stop = threading.Event()
        self.actors: dict[int, int] = {}
        self.total_peak = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        psutil = self._psutil
        me = psutil.Process()
        while not self._stop.is_set():
            total = me.memory_info().rss
            seen = []
            for child in me.children(recursive=True):
                try:
                    seen.append((child.pid, child.ppid(), child.name(), child.memory_info().rss))
                except psutil.Error:  # ended between listing and reading
                    continue
            for pid, parent, name, rss in seen:
                total += rss
                # A process an actor forks carries the actor's name: it is not another actor.
                if pid in self.actors or (self._marker in name and parent not in self.actors):
                    self.actors[pid] = max(self.actors.get(pid, 0), rss)
            self.total_peak = max(self.total_peak, total)
            self._stop.wait(SAMPLE_INTERVAL)


def peak_rss_bytes() -> int:
    """This process's peak RSS: ``VmHWM`` of ``/proc/self/status`` on Linux, else ``ru_maxrss``.

    Not ``ru_maxrss`` on Linux: it carries the parent's peak over ``fork`` and ``exec``, so a child of
    a process larger than itself would report the parent's peak.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB elsewhere


def _mib(value: float) -> float:
    return round(value / 2**20, 1)


def _folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One measured run, in this process: ``job`` keys ``task`` (``embed`` / ``batch``), ``model_dir``,
    ``folder``, ``precision``, ``threads`` (None: all cores), ``ray`` (None or ``"local"``), ``actors``,
    ``work`` (a scratch folder for the store or the output; emptied after)."""
    import fastseg.batch as batch
    from fastseg.batch import JobConfig, run_batch, run_embed

    work = Path(job["work"])
    work.mkdir(parents=True, exist_ok=True)
    task, ray, actors = job["task"], job.get("ray"), job.get("actors")
    store = work / "store"
    output = work / "output.json"
    config = JobConfig(
        folder=job["folder"],
        model=job["model_dir"],
        task="embed" if task == "embed" else "everything",
        precision=job["precision"],
        threads=job.get("threads"),
        store=str(store) if task == "embed" else None,
    )
    recorder = _Recorder()
    original = getattr(batch, "_results", None)
    if original is None:
        log("fastseg.batch has no _results any more: only whole-run times are measured")
    else:
        batch._results = recorder.wrap(original)
    sampler = None
    if ray is not None:
        from fastseg.distributed import _Actor

        sampler = _Sampler(f"({_Actor.__name__})")
    try:
        with sampler if sampler is not None else contextlib.nullcontext():
            called = time.perf_counter()
            summary: Any
            if task == "embed":
                summary = run_embed(config, ray=ray, actors=actors, progress=False)
            else:
                summary = run_batch(config, output, "coco", ray=ray, actors=actors, progress=False)
            ended = time.perf_counter()
    finally:
        if original is not None:
            batch._results = original
    if summary.interrupted:
        raise RuntimeError("the run was interrupted")
    done = summary.new if task == "embed" else summary.done_now
    if summary.errors or done != summary.images:
        first = summary.errors[0] if summary.errors else {}
        raise RuntimeError(
            f"{summary.images} images, {done} done, {len(summary.errors)} errors"
            + (f" (first: {first.get('file')}: {first.get('error')})" if first else "")
        )
    n = len(recorder.arrived)
    workers = (actors or 1) if ray is not None else 1
    result: dict[str, Any] = {"status": "ok", "images": summary.images, "timed_images": n}
    result.update(timing_figures(called, recorder.started, recorder.arrived, recorder.seconds, ended, workers))
    if n:
        tenth = max(1, n // 10) - 1
        result["driver_rss_mib"] = {"after_first_tenth": _mib(recorder.rss[tenth]), "at_end": _mib(recorder.rss[-1])}
    result["peak_rss_mib"] = _mib(peak_rss_bytes())
    if sampler is not None:
        result["actors_peak_rss_mib"] = sorted((_mib(v) for v in sampler.actors.values()), reverse=True)
        result["all_processes_peak_rss_mib"] = _mib(sampler.total_peak)
    if task == "embed":
        result["stored_bytes_per_image"] = _folder_bytes(store) / max(1, summary.images)
    else:
        result["masks"] = summary.masks
        result["masks_per_image"] = summary.masks / max(1, summary.images)
        result["output_bytes_per_image"] = _folder_bytes(output) / max(1, summary.images)
    shutil.rmtree(work, ignore_errors=True)
    return result


def child_main(argv: Sequence[str]) -> int:
    """``python -m fastseg_bench.scale JOB.json``: run the job, write the result to ``job["result"]``."""
    if len(argv) != 1:
        print("usage: python -m fastseg_bench.scale JOB.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    try:
        result = run_job(job)
    except Exception as exc:  # noqa: BLE001 - the parent reports it on the run; the traceback goes to stderr
        traceback.print_exc()
        text = str(exc).strip()
        result = {"status": "failed", "error": f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"}
    Path(job["result"]).write_text(json.dumps(result), encoding="utf-8")
    return 0 if result["status"] == "ok" else 1


def child_env() -> dict[str, str]:
    from fastseg_bench.run import child_env as bench_env

    env: dict[str, str] = bench_env()
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report sent from a benchmark
    return env


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """End the run's process and every process it started (its process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def run_process(job: dict[str, Any], work: Path, tag: str, timeout: float) -> dict[str, Any]:
    """Run ``job`` in a fresh ``python -m fastseg_bench.scale`` process; its output goes to our stderr."""
    job = dict(job, result=str(work / f"{tag}.result.json"), work=str(work / tag))
    job_path = work / f"{tag}.job.json"
    job_path.write_text(json.dumps(job), encoding="utf-8")
    Path(job["result"]).unlink(missing_ok=True)
    tail: deque[str] = deque(maxlen=15)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastseg_bench.scale", str(job_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=child_env(),
        text=True,
        errors="replace",
        bufsize=1,
        start_new_session=True,  # its own process group: a Ray run's processes end with it
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
        _kill_group(proc)
        reader.join(5)
        return {"status": "failed", "error": f"timed out after {timeout:.0f} s ({tag})"}
    except BaseException:
        _kill_group(proc)
        raise
    reader.join(5)
    shutil.rmtree(work / tag, ignore_errors=True)
    result_path = Path(job["result"])
    if result_path.exists():
        result: dict[str, Any] = json.loads(result_path.read_text(encoding="utf-8"))
        return result
    last = " | ".join(line for line in tail if line)[-600:]
    return {"status": "failed", "error": f"process exited with status {code} without a result; last output: {last}"}


# ---------------------------------------------------------------------------------------------- options


@dataclass
class ScaleConfig:
    models: dict[str, str]  # task -> model name
    sizes: list[int]
    ray_images: int
    ray_layouts: list[tuple[int, int]]  # (actors, threads per actor)
    skip_ray: bool
    precision: str  # "auto", "f32" or "bf16"
    quick: bool
    long_sides: tuple[int, int] = LONG_SIDES
    model_dirs: dict[str, Path] = field(default_factory=dict)
    out: Path = Path("bench-results")
    cache: Path | None = None
    timeout: float = 7200.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ray_layouts"] = [list(x) for x in self.ray_layouts]
        data["long_sides"] = list(self.long_sides)
        data["model_dirs"] = {k: str(v) for k, v in self.model_dirs.items()}
        data["out"] = str(self.out)
        data["cache"] = None if self.cache is None else str(self.cache)
        return data


def _task_models(text: str) -> dict[str, str]:
    from fastseg.registry import REGISTRY

    models: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        task, sep, name = part.partition("=")
        if not sep or task not in DEFAULT_MODELS or not name:
            raise argparse.ArgumentTypeError(
                f"expected TASK=MODEL pairs with TASK in {', '.join(DEFAULT_MODELS)} (e.g. embed=mobile_sam), "
                f"got {part!r}"
            )
        if name not in REGISTRY:
            raise argparse.ArgumentTypeError(f"unknown model {name!r}; expected one of: {', '.join(REGISTRY)}")
        if task in models:
            raise argparse.ArgumentTypeError(f"{task} given twice in {text!r}")
        models[task] = name
    return models


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers of images, got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"expected numbers of images >= 1, got {text!r}")
    return sizes


def _layouts(text: str) -> list[tuple[int, int]]:
    layouts = []
    for part in (p.strip() for p in text.split(",")):
        a, sep, t = part.partition("x")
        try:
            layout = (int(a), int(t))
        except ValueError:
            layout = (0, 0)
        if not sep or min(layout) < 1:
            raise argparse.ArgumentTypeError(f"expected ACTORSxTHREADS (e.g. 2x1), got {part!r}")
        layouts.append(layout)
    return layouts


def _long_sides(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH pixels, got {text!r}") from None
    if not 16 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"expected 16 <= LOW <= HIGH, got {text!r}")
    return lo, hi


def _model_dir(text: str) -> tuple[str, Path]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {text!r}")
    return name, Path(value).expanduser()


def default_layouts(cores: int) -> list[tuple[int, int]]:
    """1 actor x all cores and 2 actors x half the cores each (2 x 1 on two cores)."""
    layouts = [(1, cores)]
    if cores >= 2:
        layouts.append((2, cores // 2))
    return layouts


def build_parser() -> argparse.ArgumentParser:
    from fastseg_bench.run import _count, _seconds

    parser = argparse.ArgumentParser(
        prog="fastseg bench --batch",
        description=(
            "Images/s of `fastseg embed` and everything-mode `fastseg batch` on folders of distinct photos: one "
            "process and Ray local actors on one folder, then one-process runs at growing folder sizes (seconds "
            "per image must not grow). Writes scale.md and scale.json into --out."
        ),
    )
    parser.add_argument(
        "--models",
        type=_task_models,
        default=dict(DEFAULT_MODELS),
        metavar="TASK=MODEL,...",
        help="tasks to run and their models (default: embed=mobile_sam,batch=fastsam_s; give one pair to run one task)",
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        metavar="N,M,...",
        help=f"folder sizes of the one-process runs (default {','.join(map(str, DEFAULT_SIZES))})",
    )
    parser.add_argument(
        "--ray-images",
        type=_count(1),
        metavar="N",
        help=f"folder size of the Ray runs and their one-process baseline (default {DEFAULT_RAY_IMAGES})",
    )
    parser.add_argument(
        "--ray-layouts",
        type=_layouts,
        metavar="AxT,...",
        help="Ray local layouts, actors x threads each (default: 1 x all cores, 2 x half)",
    )
    parser.add_argument("--skip-ray", action="store_true", help="only the one-process runs")
    parser.add_argument(
        "--precision",
        choices=("auto", "f32", "bf16"),
        default="auto",
        help="OpenVINO precision (default auto: bf16 where OpenVINO reports BF16 on this CPU, else f32)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"small folders: sizes {','.join(map(str, QUICK_SIZES))}, Ray on {QUICK_RAY_IMAGES}",
    )
    parser.add_argument(
        "--long-sides",
        type=_long_sides,
        default=LONG_SIDES,
        metavar="LOW,HIGH",
        help=f"long side of the photos, pixels (default {LONG_SIDES[0]},{LONG_SIDES[1]})",
    )
    parser.add_argument(
        "--model-dir",
        type=_model_dir,
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="an existing `fastseg export` folder for a model (repeatable); default: the "
        "benchmark's random-weight export, made once in the cache",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        metavar="DIR",
        help="where to write scale.md and scale.json (default: bench-results/)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        metavar="DIR",
        help="models and photo folders (default: $FASTSEG_CACHE/bench or ~/.cache/fastseg/bench)",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=7200.0,
        metavar="SECONDS",
        help="give up on one run after this long (default 7200)",
    )
    return parser


def parse_args(argv: Sequence[str]) -> ScaleConfig:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    model_dirs: dict[str, Path] = {}
    for name, path in args.model_dir:
        if name not in args.models.values():
            parser.error(
                f"--model-dir {name}=...: {name} is not run (--models "
                f"{','.join(f'{t}={m}' for t, m in args.models.items())})"
            )
        if name in model_dirs:
            parser.error(f"--model-dir given twice for {name}")
        if not path.is_dir():
            parser.error(f"--model-dir {name}={path}: expected a folder written by `fastseg export`")
        model_dirs[name] = path
    sizes = args.sizes or list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    ray_images = args.ray_images or (QUICK_RAY_IMAGES if args.quick else DEFAULT_RAY_IMAGES)
    cores = _usable_cores()
    return ScaleConfig(
        models=args.models,
        sizes=sizes,
        ray_images=ray_images,
        ray_layouts=args.ray_layouts or default_layouts(cores),
        skip_ray=args.skip_ray,
        precision=args.precision,
        quick=args.quick,
        long_sides=args.long_sides,
        model_dirs=model_dirs,
        out=args.out,
        cache=args.cache,
        timeout=args.timeout,
    )


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------- running


def choose_precision(requested: str, capabilities: Sequence[str] | None) -> tuple[str, str]:
    """``(precision to ask for, what OpenVINO runs)``: ``auto`` is bf16 where OpenVINO reports BF16, else
    f32; bf16 asked for on a CPU without it runs at f32 (OpenVINO's fallback)."""
    has_bf16 = capabilities is not None and "BF16" in capabilities
    if requested == "auto":
        requested = "bf16" if has_bf16 else "f32"
    if requested not in ("f32", "bf16"):
        raise ValueError(f"expected precision auto, f32 or bf16, got {requested!r}")
    return requested, ("bf16" if requested == "bf16" and has_bf16 else "f32")


def plan_runs(config: ScaleConfig, cores: int) -> list[dict[str, Any]]:
    """Every run, in order: per task, one process at each size (the Ray size among them), then Ray."""
    runs = []
    for task in config.models:
        sizes = sorted(set(config.sizes) | ({config.ray_images} if not config.skip_ray else set()))
        for size in sizes:
            runs.append(
                {
                    "task": task,
                    "images": size,
                    "mode": "one process",
                    "actors": None,
                    "threads": None,
                    "cores": cores,
                    "tag": f"{task}-{size}-local",
                }
            )
        if not config.skip_ray:
            for actors, threads in config.ray_layouts:
                runs.append(
                    {
                        "task": task,
                        "images": config.ray_images,
                        "mode": "ray local",
                        "actors": actors,
                        "threads": threads,
                        "cores": actors * threads,
                        "tag": f"{task}-{config.ray_images}-ray{actors}x{threads}",
                    }
                )
    return runs


def prepare_models(config: ScaleConfig, cache: Path, work: Path) -> dict[str, dict[str, Any]]:
    """Per model: ``{"status", "model_dir", "weights"}`` (or ``"error"``): a --model-dir, or the bench's export."""
    from fastseg.manifest import load_model_folder
    from fastseg_bench.run import run_child

    prepared: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(config.models.values()):
        if name in config.model_dirs:
            try:
                folder = load_model_folder(config.model_dirs[name])
            except (OSError, ValueError) as exc:  # ModelFolderError is a ValueError
                prepared[name] = {"status": "failed", "error": f"--model-dir {name}=...: {exc}"}
                continue
            if folder.name != name:
                prepared[name] = {
                    "status": "failed",
                    "error": f"--model-dir {name}={folder.path} holds a {folder.name!r} model",
                }
                continue
            prepared[name] = {"status": "ok", "model_dir": str(folder.path), "weights": folder.weights}
            continue
        log(f"{name}: preparing the random-weight checkpoint and its export")
        prep, _ = run_child(
            "prepare",
            {"model": name, "cache": str(cache), "checkpoint": None, "model_dir": None, "ultralytics": False},
            work,
            f"{name}-prepare",
            config.timeout,
        )
        if prep.get("status") != "ok" or not prep.get("model_dir"):
            prepared[name] = {"status": "failed", "error": prep.get("error") or prep.get("model_dir_error")}
            continue
        prepared[name] = {"status": "ok", "model_dir": prep["model_dir"], "weights": prep["weights"]}
    return prepared


def _ray_missing() -> str | None:
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError as exc:
        return f"Ray with Ray Data is not installed ({exc}): pip install 'fastseg[ray]'"
    return None


def summarize_results(results: dict[str, Any]) -> None:
    """Fill ``linearity`` and ``estimate`` per task from the runs (in place)."""
    results["linearity"] = {}
    results["estimate"] = {}
    for task in results["models"]:
        local = [r for r in results["runs"] if r["task"] == task and r["mode"] == "one process"]
        results["linearity"][task] = linearity(local)
        base = [r for r in local if r["images"] == results["config"]["ray_images"] and r.get("status") == "ok"]
        base = base or [r for r in local if r.get("status") == "ok"]
        rate = (base[-1].get("steady_images_per_s") or base[-1].get("images_per_s")) if base else None
        if rate:
            estimate = estimate_hours(rate, base[-1]["cores"])
            estimate["basis"] = f"one process, {base[-1]['images']} images, {base[-1]['cores']} cores"
            per_image = base[-1].get("stored_bytes_per_image") or base[-1].get("output_bytes_per_image")
            estimate["output_bytes_per_image"] = per_image
            results["estimate"][task] = estimate
        else:
            results["estimate"][task] = None


def run(config: ScaleConfig) -> int:
    from fastseg_bench.machine import describe_machine
    from fastseg_bench.prepare import default_cache_root
    from fastseg_bench.run import bench_lock

    cache = config.cache or default_cache_root()
    with bench_lock(cache):
        started = time.perf_counter()
        machine = describe_machine()
        capabilities = (machine.get("openvino_cpu") or {}).get("optimization_capabilities")
        precision, runs_at = choose_precision(config.precision, capabilities)
        cores = _usable_cores()
        skipped_ray = "--skip-ray" if config.skip_ray else _ray_missing()
        if skipped_ray and not config.skip_ray:
            log(f"not running Ray: {skipped_ray}")
            config.skip_ray = True
        results: dict[str, Any] = {
            "schema": SCHEMA,
            "config": config.to_dict(),
            "machine": machine,
            "precision": {"requested": config.precision, "asked": precision, "runs_at": runs_at},
            "ray_skipped": skipped_ray,
            "models": {},
            "folders": {},
            "runs": [],
        }
        config.out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="fastseg-scale-") as tmp:
            work = Path(tmp)
            prepared = prepare_models(config, cache, work)
            for task, name in config.models.items():
                results["models"][task] = {"name": name, **prepared[name]}
            plan = plan_runs(config, cores)
            folders: dict[int, Path] = {}
            for size in sorted({r["images"] for r in plan}):
                folders[size] = build_folder(cache / "scale-photos", size, config.long_sides)
                results["folders"][str(size)] = {
                    "path": str(folders[size]),
                    "description": describe_folder(size, config.long_sides),
                }
            for i, spec in enumerate(plan):
                model = results["models"][spec["task"]]
                entry = {k: v for k, v in spec.items() if k != "tag"}
                entry.update(model=model["name"], precision=runs_at)
                if model["status"] != "ok":
                    entry.update(status="failed", error=model["error"])
                    results["runs"].append(entry)
                    continue
                log(
                    f"run {i + 1}/{len(plan)}: {spec['task']} with {model['name']} on {spec['images']} images, "
                    f"{spec['mode']}" + (f" {spec['actors']} x {spec['threads']} threads" if spec["actors"] else "")
                )
                job = {
                    "task": spec["task"],
                    "model_dir": model["model_dir"],
                    "folder": str(folders[spec["images"]]),
                    "precision": precision,
                    "threads": spec["threads"],
                    "ray": "local" if spec["mode"] == "ray local" else None,
                    "actors": spec["actors"],
                }
                measured = run_process(job, work, spec["tag"], config.timeout)
                entry.update(measured)
                if measured.get("status") == "ok":
                    log(
                        f"{spec['tag']}: {fmt_rate(measured.get('whole_images_per_s'))} images/s over the whole run, "
                        f"{fmt_rate(measured.get('worker_images_per_s'))} in the workers; driver peak RSS "
                        f"{measured['peak_rss_mib']:.0f} MiB"
                    )
                results["runs"].append(entry)
        summarize_results(results)
        results["elapsed_s"] = time.perf_counter() - started
        markdown = render_markdown(results)
        files = {kind: config.out / name for kind, name in OUTPUT_FILES.items()}
        files["markdown"].write_text(markdown, encoding="utf-8")
        files["json"].write_text(json.dumps(results, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    print(markdown)
    log(f"wrote {', '.join(str(f) for f in files.values())} in {results['elapsed_s'] / 60:.1f} min")
    failed = [r for r in results["runs"] if r.get("status") != "ok"]
    if failed:
        log(f"{len(failed)} run(s) failed; see the Failures section")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fastseg bench --batch``; returns the exit status (0 ok, 1 a run failed, 2 bad options)."""
    try:
        config = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return int(exc.code or 0) if isinstance(exc.code, int) or exc.code is None else 2
    return run(config)


# ---------------------------------------------------------------------------------------------- report


def fmt_rate(value: float | None) -> str:
    """Images/s or seconds: ``12.3``, ``1.23``, ``0.123``; ``—`` for None."""
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def fmt_hours(hours: float) -> str:
    """``1,234 h``, ``12.3 h``, ``1.2 h``, ``45 min``."""
    if hours >= 100:
        return f"{hours:,.0f} h"
    if hours >= 1:
        return f"{hours:.1f} h"
    return f"{hours * 60:.0f} min"


def fmt_bytes(value: float) -> str:
    """``512 B``, ``3.4 KiB``, ``4.0 MiB``, ``3.8 TiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _mib_cell(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _ratio_cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def host_line(results: dict[str, Any]) -> str:
    """CPU, cores, OpenVINO's capabilities and the precision run, for the line above each table."""
    from fastseg_bench.machine import machine_line

    machine = results["machine"]
    ov = machine.get("openvino_cpu") or {}
    caps = ov.get("optimization_capabilities")
    caps_text = ", ".join(caps) if caps else f"unknown ({ov.get('error', 'not read')})"
    precision = results["precision"]
    asked = precision["asked"]
    runs = precision["runs_at"]
    precision_text = runs if asked == runs else f"{runs} ({asked} asked for; OpenVINO has no {asked} on this CPU)"
    return f"{machine_line(machine)}; OpenVINO capabilities {caps_text}; precision {precision_text}"


def _weights_text(results: dict[str, Any]) -> str:
    parts = [f"{m['name']}: {m.get('weights') or 'unknown'}" for m in results["models"].values()]
    return "; ".join(dict.fromkeys(parts))


def _random(results: dict[str, Any]) -> bool:
    return any("random" in str(m.get("weights")) for m in results["models"].values())


def render_markdown(results: dict[str, Any]) -> str:
    """The report: the host, the throughput table, the linearity table and the 10^6-image estimate."""
    from fastseg_bench.machine import versions_line
    from fastseg_bench.report import RANDOM_WEIGHTS_NOTE

    machine = results["machine"]
    config = results["config"]
    random = _random(results)
    tag = " (random weights)" if random else ""
    host = f"*{host_line(results)}*"
    lines = [f"# fastseg bench --batch: folders of images{tag}", ""]
    lines.append(f"- **machine:** {host_line(results)}")
    lines.append(f"- **software:** {versions_line(machine)}")
    load = machine.get("load_average_at_start")
    lines.append(
        f"- **date:** {machine.get('date')}"
        + (f"; load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}" if load else "")
    )
    lines.append(f"- **weights:** {_weights_text(results)}")
    if random:
        lines.append(f"- **random weights:** {RANDOM_WEIGHTS_NOTE}")
    for task, model in results["models"].items():
        lines.append(f"- **{task}:** {TASK_LABELS.get(task, task)} with {model['name']}")
    sizes = sorted({r["images"] for r in results["runs"]})
    if sizes:
        lines.append(
            f"- **images:** {describe_folder(sizes[-1], tuple(config['long_sides']))} (each smaller folder "
            "is the start of the larger one)"
        )
    if results.get("ray_skipped"):
        lines.append(f"- **Ray not run:** {results['ray_skipped']}")
    lines.append(
        "- **throughput cells:** whole run = images / the time `run_embed` / `run_batch` took (model load, Ray "
        "start-up and writing the output included); in the workers = workers × images / the sum of each image's "
        "time inside its worker (read, encode, segment: no start-up, no scheduling, no writing); burst = most "
        "records that reached the driver together; peak RSS per worker: the process (one process) or the "
        f"largest Ray actor (sampled every {SAMPLE_INTERVAL:g} s); all processes: the driver, the actors and "
        "Ray's own processes, summed at their peak (shared pages counted in each)"
    )
    lines.append(
        "- **growth cells:** s / image = (first image asked for → output written) / images, the model load "
        "excluded; steady = between the first record and the last; first / last tenth = the mean time between "
        "records over the first and the last tenth of the run"
    )
    lines.append(f"- **elapsed:** {results.get('elapsed_s', 0) / 60:.1f} min")
    ok_sizes = {r["images"] for r in results["runs"] if r.get("status") == "ok"}
    shown = config["ray_images"] if config["ray_images"] in ok_sizes or not ok_sizes else max(ok_sizes)
    lines += ["", f"## Throughput, {shown:,} images{tag}", "", host, ""]
    lines += [
        "| task | model | precision | run | workers × threads | images/s, whole run | images/s in the workers "
        "| burst | peak RSS per worker MiB | driver peak RSS MiB | all processes MiB | masks / image |",
        "|---|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    failures = []
    for r in results["runs"]:
        if r.get("status") != "ok":
            failures.append(
                f"- {r['task']} / {r['images']} images / {r['mode']}"
                + (f" {r['actors']}x{r['threads']}" if r.get("actors") else "")
                + f": {r.get('error')}"
            )
            continue
        if r["images"] != shown:
            continue
        ray = r["mode"] == "ray local"
        layout = f"{r['actors']} × {r['threads']}" if ray else f"1 × {r['cores']}"
        if ray:
            worker_rss = max(r["actors_peak_rss_mib"]) if r.get("actors_peak_rss_mib") else None
        else:
            worker_rss = r.get("peak_rss_mib")
        masks = r.get("masks_per_image")
        lines.append(
            f"| {r['task']} | {r['model']} | {r['precision']} | {r['mode']} | {layout} | "
            f"{fmt_rate(r.get('whole_images_per_s'))} | {fmt_rate(r.get('worker_images_per_s'))} | "
            f"{r.get('largest_burst') or '—'} | {_mib_cell(worker_rss)} | "
            f"{_mib_cell(r.get('peak_rss_mib')) if ray else '—'} | {_mib_cell(r.get('all_processes_peak_rss_mib'))} | "
            f"{'—' if masks is None else f'{masks:.1f}'} |"
        )
    lines += ["", f"## Seconds per image as the folder grows (one process){tag}", "", host, ""]
    lines += [
        "| task | model | precision | images | s / image | steady s / image | first tenth s / image | last "
        "tenth s / image | peak RSS MiB | driver RSS after first tenth → end MiB |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results["runs"]:
        if r.get("status") != "ok" or r["mode"] != "one process":
            continue
        steady = r.get("steady_images_per_s")
        rss = r.get("driver_rss_mib") or {}
        lines.append(
            f"| {r['task']} | {r['model']} | {r['precision']} | {r['images']:,} | {fmt_rate(r.get('s_per_image'))} | "
            f"{fmt_rate(1 / steady if steady else None)} | {fmt_rate(r.get('first_tenth_s'))} | "
            f"{fmt_rate(r.get('last_tenth_s'))} | {_mib_cell(r.get('peak_rss_mib'))} | "
            f"{_mib_cell(rss.get('after_first_tenth'))} → {_mib_cell(rss.get('at_end'))} |"
        )
    lines.append("")
    for task, lin in (results.get("linearity") or {}).items():
        if lin is None:
            continue
        verdict = "linear" if lin["linear"] else "NOT linear"
        growth = lin.get("rss_growth_mib")
        lines.append(
            f"- **{task}:** s / image at {lin['sizes'][-1]:,} vs {lin['sizes'][0]:,} images "
            f"{_ratio_cell(lin['size_ratio'])} (steady {_ratio_cell(lin['steady_ratio'])}); last tenth vs first "
            f"tenth of the {lin['sizes'][-1]:,}-image run {_ratio_cell(lin['tenth_ratio'])}; driver RSS "
            + ("—" if growth is None else f"{growth:+,.0f} MiB")
            + f" from the first tenth to the end: {verdict} (ratios within 1 ± {lin['tolerance']:g})"
        )
    estimates = {t: e for t, e in (results.get("estimate") or {}).items() if e}
    if estimates:
        first = next(iter(estimates.values()))
        machines = first["machines"]
        lines += ["", f"## Estimate: {first['images']:,} images on N machines of M cores{tag}", "", host, ""]
        lines += [
            "| task | model | measured images/s per core | cores per machine | "
            + " | ".join(f"{n} machine{'s' if n > 1 else ''}" for n in machines)
            + " |",
            "|---|---|--:|--:|" + "--:|" * len(machines),
        ]
        for task, e in estimates.items():
            for cores, hours in zip(e["cores"], e["hours"]):
                lines.append(
                    f"| {task} | {results['models'][task]['name']} | {fmt_rate(e['per_core_images_per_s'])} "
                    f"| {cores} | " + " | ".join(fmt_hours(h) for h in hours) + " |"
                )
        lines.append("")
        bases = "; ".join(
            f"{t}: {e['basis']}, {fmt_rate(e['images_per_s'])} images/s steady" for t, e in estimates.items()
        )
        lines.append(f"Basis: {bases}. Assumption: {first['assumption']}.")
        sizes_text = [
            f"{task}: {'the embedding store' if task == 'embed' else 'the COCO file'} takes "
            f"{fmt_bytes(e['output_bytes_per_image'])} per image, "
            f"{fmt_bytes(e['output_bytes_per_image'] * e['images'])} for {e['images']:,} images"
            for task, e in estimates.items()
            if e.get("output_bytes_per_image")
        ]
        if sizes_text:
            lines += ["", "Output size: " + "; ".join(sizes_text) + "."]
    if failures:
        lines += ["", "## Failures", "", *failures]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
