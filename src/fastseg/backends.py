"""Inference backends behind one small interface: named arrays in, named arrays out.

Post-processing reads outputs by name, never by position. OpenVINO is the main backend; ONNX
Runtime is the second (``pip install "fastseg[onnxruntime]"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from fastseg.manifest import ModelFolder, ModelFolderError
from fastseg.paths import cache_dir

Backend = Literal["openvino", "onnxruntime"]
Precision = Literal["f32", "bf16"]
BACKENDS = ("openvino", "onnxruntime")
PRECISIONS = ("f32", "bf16")


class Session(Protocol):
    """One graph on one backend: named arrays in, named arrays out."""

    backend: str
    precision: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, feeds: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[np.generic]]: ...


def default_cache_dir() -> Path:
    """Where OpenVINO keeps compiled models: ``$FASTSEG_CACHE/compiled`` or ``~/.cache/fastseg/compiled``."""
    return cache_dir("compiled")


class OpenVINOSession:
    """One compiled OpenVINO model with one reusable infer request."""

    def __init__(
        self,
        xml: Path,
        precision: Precision = "f32",
        num_threads: int | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        core = _ov_core()
        config: dict[str, object] = {
            hints.inference_precision: ov.Type.f32 if precision == "f32" else ov.Type.bf16,
            hints.performance_mode: hints.PerformanceMode.LATENCY,
        }
        if num_threads:
            config[props.inference_num_threads] = int(num_threads)
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            config[props.cache_dir] = str(cache_dir)
        try:
            self._compiled = core.compile_model(str(xml), "CPU", config)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unknown error"
            raise ModelFolderError(f"OpenVINO could not load {xml}: {first}") from exc
        self._request = self._compiled.create_infer_request()
        self.input_names = tuple(p.get_any_name() for p in self._compiled.inputs)
        self.output_names = tuple(p.get_any_name() for p in self._compiled.outputs)
        self._outputs = list(self._compiled.outputs)
        self.backend = "openvino"
        #: What OpenVINO compiled with, read back: a CPU without native bf16 runs f32 whatever was asked.
        self.precision: str = precision_name(self._compiled.get_property(hints.inference_precision))
        #: Inference threads, read back.
        self.threads: int | None = int(self._compiled.get_property(props.inference_num_threads))

    def run(self, feeds: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[np.generic]]:
        self._request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()}, share_inputs=True)
        # The request reuses its output buffers: copy so results survive the next call.
        request = self._request
        return {name: request.get_tensor(port).data.copy() for name, port in zip(self.output_names, self._outputs)}


#: Graphs run once per image, whose activations are large (SAM ViT-B's encoder: GBs).
ONCE_PER_IMAGE_GRAPHS = ("encoder", "network")


class OnnxRuntimeSession:
    """An ONNX Runtime CPU session.

    ``memory_arena``: ONNX Runtime's CPU arena keeps the largest activations it ever allocated. That
    pays off for the small per-click graphs but not for a once-per-image encoder, whose arena would
    hold gigabytes after one run (docs/PERFORMANCE.md); :func:`open_session` turns it off for
    :data:`ONCE_PER_IMAGE_GRAPHS`.
    """

    def __init__(self, onnx_path: Path, num_threads: int | None = None, memory_arena: bool = True) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError("the onnxruntime backend needs ONNX Runtime: pip install 'fastseg[onnxruntime]'") from exc
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_cpu_mem_arena = bool(memory_arena)
        try:
            self._session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception hierarchy
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelFolderError(f"ONNX Runtime could not load {onnx_path}: {first}") from exc
        self.input_names = tuple(i.name for i in self._session.get_inputs())
        self.output_names = tuple(o.name for o in self._session.get_outputs())
        self.backend = "onnxruntime"
        self.precision: str = "f32"
        self.threads: int | None = int(num_threads) if num_threads else None

    def run(self, feeds: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[np.generic]]:
        values = self._session.run(list(self.output_names), feeds)
        return dict(zip(self.output_names, values))


def precision_name(value: object) -> str:
    """``"f32"``, ``"bf16"`` (or another OpenVINO type name) from an ``ov.Type`` property value."""
    return value.to_string() if hasattr(value, "to_string") else str(value)


def openvino_cpu_capabilities() -> tuple[str, ...]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of this CPU, e.g. ``("FP32", "INT8", "BIN", "EXPORT_IMPORT")``."""
    return tuple(str(c) for c in _ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def openvino_supports_bf16() -> bool:
    """True when OpenVINO can run bf16 on this CPU (AVX-512 BF16 or AMX); elsewhere it runs f32 when asked for bf16."""
    return "BF16" in openvino_cpu_capabilities()


_CORE = None


def _ov_core() -> Any:  # one Core per process: it owns the plugin and its thread pool
    global _CORE
    if _CORE is None:
        import openvino as ov

        _CORE = ov.Core()
    return _CORE


def open_session(
    folder: ModelFolder,
    graph: str,
    backend: str = "openvino",
    precision: str = "f32",
    num_threads: int | None = None,
    cache_dir: Path | None | Literal[False] = None,
) -> Session:
    """Open ``graph`` of ``folder`` on ``backend``.

    Args:
        precision: ``"f32"`` or ``"bf16"`` (OpenVINO only; ONNX Runtime runs f32).
        num_threads: inference threads; ``None`` lets the backend use every core.
        cache_dir: OpenVINO compiled-model cache (a second process starts fast); ``None`` uses
            :func:`default_cache_dir`, ``False`` disables it.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
        raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")
    path = folder.graph_file(graph, backend)
    if backend == "onnxruntime":
        if precision != "f32":
            raise ValueError(f"the onnxruntime backend runs f32 only, got precision={precision!r}")
        return OnnxRuntimeSession(path, num_threads=num_threads, memory_arena=graph not in ONCE_PER_IMAGE_GRAPHS)
    cache = None if cache_dir is False else (cache_dir or default_cache_dir())
    return OpenVINOSession(path, precision=precision, num_threads=num_threads, cache_dir=cache)  # type: ignore[arg-type]
