"""One benchmark path, measured in a process of its own: ``python -m fastseg_bench.worker MODE JOB.json``.

Each path runs in a fresh process so its peak RSS is its own and no path warms another's caches
(beyond the OS file cache and, on purpose, the compiled-model cache for cold starts). The job file
names the model, the path and the files; the result is written as JSON to ``job["result"]``.

Modes:
    ``measure``  load, warm up, time end-to-end runs and clicks, read the peak RSS, save the mask.
    ``cold``     load and produce one mask, then stop: the parent times the process from its spawn.
    ``everything``  load, warm the network up with one point prompt, time automatic mask generation
                 (everything mode) at the original's defaults, read the peak RSS, save the masks as RLE.
    ``prepare``  build or reuse the checkpoint and the exported model folders (see ``prepare.py``).
    ``text``     FastSAM text prompts: after one un-prompted prediction, time text queries (a new text
                 each time) on crops encoded anew (``first``) and, for fastseg, on the same image again
                 (``again``: its crops' CLIP features are kept per image; ultralytics encodes them on
                 every query).

Only the standard library and numpy are imported at the top: the fastseg paths must not pay for (or
hide behind) torch being imported, and a cold start must count every import its path needs.
"""

from __future__ import annotations

import time

PROCESS_START = time.time()  # as early as possible: the cold-start clock is the parent's, this is a check

import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

from fastseg.backends import precision_name  # noqa: E402
from fastseg.fastsam import DEFAULT_CONF, DEFAULT_IOU  # noqa: E402
from fastseg_export.references import SAM_ARCH  # noqa: E402

#: Every path the benchmark knows, in table order, with the families it applies to.
PATHS: dict[str, tuple[str, ...]] = {
    "pytorch": ("sam", "fastsam", "sam2"),
    "ultralytics-openvino": ("fastsam",),
    "fastseg-onnxruntime": ("sam", "fastsam", "sam2"),
    "fastseg-openvino-f32": ("sam", "fastsam", "sam2"),
    "fastseg-openvino-bf16": ("sam", "fastsam", "sam2"),
    "fastseg-openvino-int8": ("sam", "fastsam", "sam2"),
}
#: Families whose everything mode is a point-grid generator with ``points_per_side``.
GRID_FAMILIES = ("sam", "sam2")

#: ultralytics FastSAM prediction settings: FastSAM's published defaults, as the issue prescribes.
FASTSAM_PREDICT = {"retina_masks": True, "imgsz": 1024, "conf": DEFAULT_CONF, "iou": DEFAULT_IOU, "verbose": False}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


# --------------------------------------------------------------------------------------------- runners
# A runner loads one path and offers: prepare_image(rgb) -> the image as that library takes it (outside
# the timed region), end_to_end(image, point) -> masks, begin_clicks(image), click(point) -> masks,
# last_network_s (network time inside the last end_to_end), info() -> dict.


class SamTorchRunner:
    """``segment_anything.SamPredictor`` / ``mobile_sam.SamPredictor`` at their defaults."""

    def __init__(self, job: dict[str, Any]) -> None:
        import torch

        model = job["model"]
        if model not in SAM_ARCH:
            raise ValueError(f"no PyTorch SAM architecture for {model!r}; expected one of {sorted(SAM_ARCH)}")
        if model == "mobile_sam":
            from mobile_sam import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry

            self.api = "mobile_sam.SamPredictor"
        else:
            from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry

            self.api = "segment_anything.SamPredictor"
        self._generator_class = SamAutomaticMaskGenerator
        sam = sam_model_registry[SAM_ARCH[model]](checkpoint=job["checkpoint"])
        sam.eval()
        self.predictor = SamPredictor(sam)
        self.last_network_s: float | None = None
        self._started = 0.0
        self._encoder_s: list[float] = []
        sam.image_encoder.register_forward_pre_hook(self._encoder_start)
        sam.image_encoder.register_forward_hook(self._encoder_stop)
        self._threads = torch.get_num_threads()

    def _encoder_start(self, *_: Any) -> None:
        self._started = time.perf_counter()

    def _encoder_stop(self, *_: Any) -> None:
        self._encoder_s.append(time.perf_counter() - self._started)

    def prepare_image(self, rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        return rgb  # SamPredictor.set_image takes RGB HWC uint8

    def _predict(self, point: tuple[float, float]) -> npt.NDArray[np.bool_]:
        masks, _, _ = self.predictor.predict(
            point_coords=np.array([point], dtype=np.float32), point_labels=np.array([1]), multimask_output=True
        )
        return np.asarray(masks, dtype=bool)

    def end_to_end(self, image: npt.NDArray[np.uint8], point: tuple[float, float]) -> npt.NDArray[np.bool_]:
        self._encoder_s.clear()
        self.predictor.set_image(image)
        masks = self._predict(point)
        self.last_network_s = sum(self._encoder_s) if self._encoder_s else None
        return masks

    def begin_clicks(self, image: npt.NDArray[np.uint8]) -> None:
        if not self.predictor.is_image_set:
            self.predictor.set_image(image)

    def click(self, point: tuple[float, float]) -> npt.NDArray[np.bool_]:
        return self._predict(point)

    def everything(self, image: npt.NDArray[np.uint8], params: dict[str, Any]) -> npt.NDArray[np.bool_]:
        generator = self._generator_class(self.predictor.model, **params)
        records = generator.generate(image)
        h, w = image.shape[:2]
        return np.array([r["segmentation"] for r in records], dtype=bool).reshape(len(records), h, w)

    def info(self) -> dict[str, Any]:
        return {"api": self.api, "precision": "f32", "threads": self._threads,
                "network": "image_encoder forward (timed with hooks inside set_image)"}


class Sam2TorchRunner(SamTorchRunner):
    """``sam2.sam2_image_predictor.SAM2ImagePredictor`` at its defaults, on ``build_sam2(config, checkpoint)``;
    everything mode: ``SAM2AutomaticMaskGenerator``."""

    def __init__(self, job: dict[str, Any]) -> None:  # SamTorchRunner's hooks and methods, on SAM 2.1
        import torch
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
        from sam2.build_sam import build_sam2
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        from fastseg_export.references import SAM2_CONFIG

        model = build_sam2(SAM2_CONFIG[job["model"]], job["checkpoint"], device="cpu")
        self.api = "sam2.SAM2ImagePredictor"
        self._generator_class = SAM2AutomaticMaskGenerator
        self.predictor = SAM2ImagePredictor(model)
        self.last_network_s = None
        self._started = 0.0
        self._encoder_s = []
        model.image_encoder.register_forward_pre_hook(self._encoder_start)
        model.image_encoder.register_forward_hook(self._encoder_stop)
        self._threads = torch.get_num_threads()

    def _predict(self, point: tuple[float, float]) -> npt.NDArray[np.bool_]:
        import torch

        with torch.inference_mode():  # as SAM2ImagePredictor's README runs it
            return super()._predict(point)

    def end_to_end(self, image: npt.NDArray[np.uint8], point: tuple[float, float]) -> npt.NDArray[np.bool_]:
        import torch

        with torch.inference_mode():
            return super().end_to_end(image, point)

    def begin_clicks(self, image: npt.NDArray[np.uint8]) -> None:
        import torch

        if not self.predictor._is_image_set:
            with torch.inference_mode():
                self.predictor.set_image(image)

    def everything(self, image: npt.NDArray[np.uint8], params: dict[str, Any]) -> npt.NDArray[np.bool_]:
        import torch

        with torch.inference_mode():
            return super().everything(image, params)



class UltralyticsFastSamRunner:
    """``ultralytics.FastSAM(weights).predict(image, points=..., retina_masks=True, imgsz=1024, conf=0.4, iou=0.9)``.

    ``weights`` is the ``.pt`` checkpoint (the PyTorch original) or the folder written by
    ``FastSAM(ckpt).export(format="openvino", imgsz=1024)`` (ultralytics' own OpenVINO path).
    """

    def __init__(self, job: dict[str, Any], weights: str, api: str) -> None:
        import torch
        from ultralytics import FastSAM

        self.model = FastSAM(weights)
        self.predict_args = {**FASTSAM_PREDICT, "conf": float(job.get("conf", DEFAULT_CONF))}
        self.clip_checkpoint = job.get("clip_checkpoint")
        self.api = api
        self.last_network_s: float | None = None
        self._everything: Any = None
        self._threads = torch.get_num_threads()
        self._precision: str | None = None

    def prepare_image(self, rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        return np.ascontiguousarray(rgb[:, :, ::-1])  # ultralytics reads numpy images as BGR (OpenCV order)

    @staticmethod
    def _masks(result: Any) -> npt.NDArray[np.bool_]:
        h, w = result.orig_shape
        if result.masks is None:
            return np.zeros((0, h, w), dtype=bool)
        masks = result.masks.data.cpu().numpy() > 0.5
        if masks.shape[1:] != (h, w):
            raise RuntimeError(f"ultralytics returned masks of shape {masks.shape[1:]}, expected the image's {(h, w)}")
        return masks

    def end_to_end(self, image: npt.NDArray[np.uint8], point: tuple[float, float]) -> npt.NDArray[np.bool_]:
        results = self.model.predict(image, points=[list(point)], labels=[1], **self.predict_args)
        self.last_network_s = float(results[0].speed["inference"]) / 1000.0
        return self._masks(results[0])

    def begin_clicks(self, image: npt.NDArray[np.uint8]) -> None:
        # ultralytics has no set_image: the nearest thing is predicting without prompts once, then
        # prompting those results with FastSAMPredictor.prompt, which is what predict(points=...) does.
        self._everything = self.model.predict(image, **self.predict_args)

    def click(self, point: tuple[float, float]) -> npt.NDArray[np.bool_]:
        results = self.model.predictor.prompt(self._everything, points=[list(point)], labels=[1])
        return self._masks(results[0])

    def everything(self, image: npt.NDArray[np.uint8], params: dict[str, Any]) -> npt.NDArray[np.bool_]:
        if params:
            raise ValueError(f"ultralytics FastSAM everything takes no SAM generator parameters, got {sorted(params)}")
        return self._masks(self.model.predict(image, **self.predict_args)[0])  # no prompt: every detection

    def begin_texts(self, image: npt.NDArray[np.uint8]) -> int:
        """Predict without prompts once and give the predictor CLIP from ``job["clip_checkpoint"]`` (as
        ``clip.load("ViT-B/32")`` would, without the download); returns the detections."""
        from ultralytics.nn.text_model import CLIP

        self.begin_clicks(image)
        predictor = self.model.predictor
        predictor.clip = CLIP(str(self.clip_checkpoint), device=predictor.device)
        return len(self._everything[0])

    def fresh_image(self, image: npt.NDArray[np.uint8]) -> None:
        """Nothing to reset: ultralytics cuts and encodes the crops on every text query."""

    def text_query(self, texts: list[str]) -> npt.NDArray[np.bool_]:
        """``FastSAMPredictor.prompt(results, texts=...)``: crops cut and encoded on every call."""
        return self._masks(self.model.predictor.prompt(self._everything, texts=texts)[0])

    def info(self) -> dict[str, Any]:
        import torch

        # ultralytics' select_device() sets torch to min(8, cpu_count - 1) threads whenever it predicts
        # (its default; 1 on a 2-core machine): read back what the timed runs used.
        info: dict[str, Any] = {"api": self.api, "threads": torch.get_num_threads(),
                                "torch_threads_before_ultralytics": self._threads,
                                "network": "ultralytics Results.speed['inference']"}
        if self._everything is not None:
            info["detections_before_prompt"] = len(self._everything[0])
        backend = getattr(self.model.predictor, "model", None)
        compiled = getattr(backend, "ov_compiled_model", None) if backend is not None else None
        if compiled is not None:
            # ultralytics compiles with {"PERFORMANCE_HINT": "LATENCY"} only, so the CPU plugin picks its
            # default precision: bf16 on CPUs with AVX-512 BF16 or AMX, f32 elsewhere. Read it back.
            info["precision"] = precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
            info["precision_source"] = "OpenVINO CPU default (ultralytics sets no precision hint), read back"
            info["ov_execution_devices"] = list(compiled.get_property("EXECUTION_DEVICES"))
            info["openvino_threads"] = int(compiled.get_property("INFERENCE_NUM_THREADS"))
        else:
            info["precision"] = "f32"
        return info


class TimedSession:
    """Wraps a fastseg backend session and records the wall time of each ``run`` under its graph name."""

    def __init__(self, inner: Any, graph: str, times: dict[str, list[float]]) -> None:
        self._inner = inner
        self._graph = graph
        self._times = times
        self.input_names = inner.input_names
        self.output_names = inner.output_names

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        out = self._inner.run(feeds)
        self._times.setdefault(self._graph, []).append(time.perf_counter() - start)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def inference_precision(self) -> str | None:
        """The precision OpenVINO actually compiled with (None for ONNX Runtime)."""
        return getattr(self._inner, "precision", None) if self._inner.backend == "openvino" else None

    def threads(self) -> int | None:
        """OpenVINO's inference thread count as compiled (None for ONNX Runtime)."""
        return getattr(self._inner, "threads", None) if self._inner.backend == "openvino" else None


class FastsegRunner:
    """``fastseg.Predictor(model_dir, backend, precision)``: ``set_image`` then ``predict``."""

    def __init__(self, job: dict[str, Any], backend: str, precision: str) -> None:
        from fastseg import Predictor

        self._times: dict[str, list[float]] = {}
        self._sessions: dict[str, TimedSession] = {}

        def timed(graph: str, session: Any) -> TimedSession:  # times each graph's runs inside the real pipeline
            self._sessions[graph] = TimedSession(session, graph, self._times)
            return self._sessions[graph]

        options: dict[str, Any] = {"conf": float(job["conf"])} if "conf" in job else {}
        if job.get("clip_dir"):
            options["clip"] = job["clip_dir"]
        self.predictor = Predictor(
            job["model_dir"], backend=backend, precision=precision, session_wrapper=timed, **options
        )
        self.family = self.predictor.folder.family
        self.network_graph = "encoder" if self.family in GRID_FAMILIES else "network"
        if self.network_graph not in self._sessions:
            raise RuntimeError(
                f"could not time the {self.network_graph!r} graph: the Predictor opened {sorted(self._sessions)}"
            )
        self.backend, self.precision = backend, precision
        self.last_network_s: float | None = None

    def prepare_image(self, rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        return rgb

    def _predict(self, point: tuple[float, float]) -> npt.NDArray[np.bool_]:
        result = self.predictor.predict(points=[list(point)], labels=[1], multimask=True)
        return np.asarray(result.masks, dtype=bool)

    def end_to_end(self, image: npt.NDArray[np.uint8], point: tuple[float, float]) -> npt.NDArray[np.bool_]:
        self._times.clear()
        self.predictor.set_image(image)
        masks = self._predict(point)
        runs = self._times.get(self.network_graph, [])
        self.last_network_s = sum(runs) if runs else None
        return masks

    def begin_clicks(self, image: npt.NDArray[np.uint8]) -> None:
        if self.predictor.image_size is None:
            self.predictor.set_image(image)

    def click(self, point: tuple[float, float]) -> npt.NDArray[np.bool_]:
        return self._predict(point)

    def everything(self, image: npt.NDArray[np.uint8], params: dict[str, Any]) -> npt.NDArray[np.bool_]:
        return self.predictor.everything(image, **params).masks

    def begin_texts(self, image: npt.NDArray[np.uint8]) -> int:
        """Set the image; returns the detections (with a non-empty mask, as ultralytics counts them)."""
        self.predictor.set_image(image)
        return len(self.predictor.everything())

    def fresh_image(self, image: npt.NDArray[np.uint8]) -> None:
        """Set the image again (untimed): the next text query cuts and encodes its crops anew."""
        self.predictor.set_image(image)

    def text_query(self, texts: list[str]) -> npt.NDArray[np.bool_]:
        return np.asarray(self.predictor.predict(texts=texts).masks, dtype=bool)

    def info(self) -> dict[str, Any]:
        compiled = {g: s.inference_precision() for g, s in self._sessions.items()}
        shown = {p for p in compiled.values() if p is not None}
        return {
            "api": f"fastseg.Predictor(backend={self.backend!r}, precision={self.precision!r})",
            # int8: the image graph's; the other graphs' (bf16 or f32) are in precision_per_graph
            "precision": "int8" if self.precision == "int8" else (
                shown.pop() if len(shown) == 1 else (self.precision if not shown else str(compiled))
            ),
            "precision_per_graph": compiled,
            "openvino_threads_per_graph": {g: s.threads() for g, s in self._sessions.items()},
            "network": f"{self.network_graph} graph session.run inside set_image",
            "weights": self.predictor.folder.weights,
            "torch_imported": "torch" in sys.modules,
        }


def make_runner(job: dict[str, Any]) -> Any:
    path, family = job["path"], job["family"]
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; expected one of {list(PATHS)}")
    if family not in PATHS[path]:
        raise ValueError(f"path {path!r} does not apply to the {family!r} family")
    if path == "pytorch":
        if family == "sam":
            return SamTorchRunner(job)
        if family == "sam2":
            return Sam2TorchRunner(job)
        return UltralyticsFastSamRunner(job, job["checkpoint"], "ultralytics.FastSAM (PyTorch)")
    if path == "ultralytics-openvino":
        return UltralyticsFastSamRunner(job, job["ultralytics_dir"], "ultralytics.FastSAM (its own OpenVINO export)")
    backend, precision = {
        "fastseg-onnxruntime": ("onnxruntime", "f32"),
        "fastseg-openvino-f32": ("openvino", "f32"),
        "fastseg-openvino-bf16": ("openvino", "bf16"),
        "fastseg-openvino-int8": ("openvino", "int8"),
    }[path]
    return FastsegRunner(job, backend, precision)


# ------------------------------------------------------------------------------------------------ modes


def _label(job: dict[str, Any]) -> str:
    return f"{job['model']} / {job['path']}"


def measure(job: dict[str, Any]) -> dict[str, Any]:
    image = np.load(job["image"])
    point = (float(job["point"][0]), float(job["point"][1]))
    label = _label(job)
    log(f"{label}: loading")
    start = time.perf_counter()
    runner = make_runner(job)
    load_s = time.perf_counter() - start
    native = runner.prepare_image(image)
    log(f"{label}: loaded in {load_s:.1f} s; warm-up x{job['warmup']}")
    for _ in range(job["warmup"]):
        runner.end_to_end(native, point)
    e2e: list[float] = []
    network: list[float] = []
    masks = None
    for i in range(job["repeats"]):
        start = time.perf_counter()
        masks = runner.end_to_end(native, point)
        e2e.append(time.perf_counter() - start)
        if runner.last_network_s is not None:
            network.append(runner.last_network_s)
        net = f", network {network[-1] * 1000:,.0f} ms" if runner.last_network_s is not None else ""
        log(f"{label}: end-to-end {i + 1}/{job['repeats']}: {e2e[-1] * 1000:,.0f} ms{net}")
    assert masks is not None  # repeats >= 1 is checked by the parent
    runner.begin_clicks(native)
    runner.click(point)  # warm-up
    clicks: list[float] = []
    for _ in range(job["click_repeats"]):
        start = time.perf_counter()
        runner.click(point)
        clicks.append(time.perf_counter() - start)
    log(f"{label}: one more click x{len(clicks)}: min {min(clicks) * 1000:,.1f} ms")
    rss = peak_rss_mib()
    np.save(job["mask"], masks)
    return {
        "status": "ok",
        "load_s": load_s,
        "end_to_end_s": e2e,
        "network_s": network,
        "click_s": clicks,
        "peak_rss_mib": rss,
        "mask_shape": list(masks.shape),
        "mask_pixels": int(np.count_nonzero(masks)),
        "info": runner.info(),
    }


def cold(job: dict[str, Any]) -> dict[str, Any]:
    image = np.load(job["image"])
    point = (float(job["point"][0]), float(job["point"][1]))
    start = time.perf_counter()
    runner = make_runner(job)
    load_s = time.perf_counter() - start
    native = runner.prepare_image(image)
    start = time.perf_counter()
    masks = runner.end_to_end(native, point)
    first_mask_s = time.perf_counter() - start
    done = time.time()
    return {
        "status": "ok",
        "process_start": PROCESS_START,
        "first_mask_at": done,
        "load_s": load_s,
        "first_mask_s": first_mask_s,
        "peak_rss_mib": peak_rss_mib(),
        "mask_shape": list(masks.shape),
    }


def everything(job: dict[str, Any]) -> dict[str, Any]:
    """Everything mode: ``job["everything_repeats"]`` timed runs after a one-point warm-up of the network.

    A whole everything run as warm-up would double the longest step of the benchmark (minutes for the
    PyTorch originals); the point prompt warms the network, and the decoder/NMS code is warm after the
    first of its many batches. The masks of the last run are saved as COCO RLE in ``job["mask"]``.
    """
    from fastseg.rle import encode

    image = np.load(job["image"])
    point = (float(job["point"][0]), float(job["point"][1]))
    params = dict(job["everything_params"]) if job["family"] in GRID_FAMILIES else {}
    label = f"{_label(job)} everything"
    log(f"{label}: loading")
    runner = make_runner(job)
    native = runner.prepare_image(image)
    runner.end_to_end(native, point)
    times: list[float] = []
    masks = None
    for i in range(job["everything_repeats"]):
        start = time.perf_counter()
        masks = runner.everything(native, params)
        times.append(time.perf_counter() - start)
        log(f"{label} {i + 1}/{job['everything_repeats']}: {times[-1]:,.1f} s, {len(masks)} masks")
    assert masks is not None  # everything_repeats >= 1 is checked by the parent
    rss = peak_rss_mib()
    rles = encode(masks) if len(masks) else []
    Path(job["mask"]).write_text(json.dumps({"size": list(image.shape[:2]), "rles": rles}), encoding="utf-8")
    return {
        "status": "ok",
        "everything_s": times,
        "masks": len(masks),
        "peak_rss_mib": rss,
        "params": params,
        "info": runner.info(),
    }


#: Texts the text-query timing asks for, one per query (new to the text cache each time).
TEXT_QUERIES = ("a cup of coffee", "a spoon", "a wooden table", "a white saucer", "the red car", "a dog")


def text(job: dict[str, Any]) -> dict[str, Any]:
    """FastSAM text prompts on the set image: ``job["text_repeats"]`` queries of one new text each,
    on crops encoded anew (``first_s``; fastseg sets the image again, untimed, before each) and, for
    fastseg, the same image again with another new text (``again_s``: the crops' features are kept)."""
    image = np.load(job["image"])
    label = f"{_label(job)} text"
    log(f"{label}: loading")
    runner = make_runner(job)
    native = runner.prepare_image(image)
    detections = runner.begin_texts(native)
    runner.text_query(["a warm-up text"])  # loads CLIP (ultralytics) and warms every graph
    first: list[float] = []
    again: list[float] = []
    selected = None
    for i in range(job["text_repeats"]):
        runner.fresh_image(native)
        start = time.perf_counter()
        selected = runner.text_query([f"{TEXT_QUERIES[i % len(TEXT_QUERIES)]} {i}"])
        first.append(time.perf_counter() - start)
        if isinstance(runner, FastsegRunner):
            start = time.perf_counter()
            runner.text_query([f"{TEXT_QUERIES[(i + 1) % len(TEXT_QUERIES)]} again {i}"])
            again.append(time.perf_counter() - start)
        log(f"{label} {i + 1}/{job['text_repeats']}: {first[-1] * 1000:,.0f} ms"
            + (f", again {again[-1] * 1000:,.1f} ms" if again else ""))
    assert selected is not None  # text_repeats >= 1 is checked by the parent
    return {
        "status": "ok",
        "detections": detections,
        "first_s": first,
        "again_s": again,
        "selected": len(selected),
        "peak_rss_mib": peak_rss_mib(),
        "info": runner.info(),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("measure", "cold", "everything", "prepare", "text"):
        print(f"usage: python -m fastseg_bench.worker measure|cold|everything|prepare|text JOB.json (got {argv})",
              file=sys.stderr)
        return 2
    mode, job_path = argv
    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    try:
        if mode == "measure":
            result = measure(job)
        elif mode == "cold":
            result = cold(job)
        elif mode == "everything":
            result = everything(job)
        elif mode == "text":
            result = text(job)
        else:
            from fastseg_bench.prepare import prepare_model

            result = prepare_model(job)
    except Exception as exc:  # noqa: BLE001 - reported to the parent with its traceback, never swallowed
        result = {
            "status": "failed",
            "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
            "traceback": traceback.format_exc(),
        }
        print(result["traceback"], file=sys.stderr, flush=True)
    tmp = Path(job["result"] + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, job["result"])
    return 0 if result.get("status") == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
