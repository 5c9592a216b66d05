"""Inference backends behind one small interface: named arrays in, named arrays out.

Post-processing reads outputs by name, never by position. OpenVINO is the main backend; ONNX
Runtime is the second (``pip install "fastseg[onnxruntime]"``).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from fastseg.manifest import ModelFolder, ModelFolderError, file_sha256
from fastseg.paths import cache_dir

Backend = Literal["openvino", "onnxruntime"]
Precision = Literal["f32", "bf16", "int8"]
BACKENDS = ("openvino", "onnxruntime")
PRECISIONS = ("f32", "bf16", "int8")


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
    """One compiled OpenVINO model with one reusable infer request.

    Args:
        xml: the graph's OpenVINO IR (its weights: the ``.bin`` next to it).
        cache_dir: root of the compiled-model cache, or ``None`` for no cache. The model compiles into
            the sub-folder named by :func:`cache_key` of its content, so other weights behind the same
            .xml never run from an old compiled blob. A cache that cannot be used (its folder cannot be
            created, or OpenVINO fails with it but not without it: blobs of another user) is dropped
            with one ``UserWarning`` per cache root and process.
        content_key: what identifies the .xml and .bin content (:func:`open_session` passes the
            manifest's sha256s); ``None`` hashes the two files.
        snippets: let the CPU plugin fuse attention and element-wise chains into its JIT "snippets"
            kernels (OpenVINO's default). :func:`open_session` turns them off for
            :data:`NO_SNIPPETS_GRAPHS`.
    """

    def __init__(
        self,
        xml: Path,
        precision: Precision = "f32",
        num_threads: int | None = None,
        cache_dir: Path | None = None,
        content_key: str | None = None,
        snippets: bool = True,
    ) -> None:
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        config: dict[str, object] = {
            hints.inference_precision: ov.Type.f32 if precision == "f32" else ov.Type.bf16,
            hints.performance_mode: hints.PerformanceMode.LATENCY,
        }
        if num_threads:
            config[props.inference_num_threads] = int(num_threads)
        if not snippets:
            config["SNIPPETS_MODE"] = "DISABLE"
        self._compiled = _compile(xml, config, cache_dir, content_key, precision)
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


def _compile(
    xml: Path, config: dict[str, object], cache_dir: Path | None, content_key: str | None, precision: str
) -> Any:
    """``core.compile_model`` with the cache sub-folder of ``xml``'s content, else without a cache."""
    import openvino.properties as props

    snippets = config.get("SNIPPETS_MODE") != "DISABLE"
    core = _ov_core()
    cache_failure = None
    if cache_dir is not None:
        try:
            folder = cache_dir / cache_key(content_key or _files_key(xml), precision, snippets)
            folder.mkdir(parents=True, exist_ok=True)
            return core.compile_model(str(xml), "CPU", {**config, props.cache_dir: str(folder)})
        except (OSError, RuntimeError) as exc:  # RuntimeError: OpenVINO's errors
            cache_failure = exc  # the cache's fault only if the model compiles without it
    try:
        compiled = core.compile_model(str(xml), "CPU", config)
    except (OSError, RuntimeError) as exc:
        raise ModelFolderError(f"OpenVINO could not load {xml}: {load_error_detail(exc)}") from exc
    if cache_dir is not None and cache_failure is not None:
        _warn_cache(cache_dir, load_error_detail(cache_failure))
    return compiled


def single_threaded_numpy_blas() -> None:
    """Run numpy's BLAS (OpenBLAS in numpy's wheels) on one thread in this process, from now on.

    fastseg's numpy products are small (mask assembly, upscaling) and OpenVINO already uses every
    core, so BLAS threads buy nothing; and OpenBLAS's threaded ``gemm`` can deadlock when it is called
    from more than one Python thread in turn (numpy issue 17752), as the labeling server and batch
    runs do: a ``fastseg batch`` hung for good in such a call on this project's CI machine. The
    ``fastseg`` command calls this before it runs; a program using the library from several threads
    can call it too (it changes the BLAS of the whole process, so the library never does so itself).
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


#: Graphs compiled without the CPU plugin's snippets: the SAM-family decoders, where the fused
#: token-to-image attention kernel is slower than plain matrix products (which use AMX where the CPU has
#: it) and the unfused graph is faster at f32 and bf16, one prompt set or 64 (docs/PERFORMANCE.md).
#: The image encoders are faster with them.
NO_SNIPPETS_GRAPHS = ("decoder", "decoder_image", "decoder_points")

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
            raise ModelFolderError(f"ONNX Runtime could not load {onnx_path}: {load_error_detail(exc)}") from exc
        self.input_names = tuple(i.name for i in self._session.get_inputs())
        self.output_names = tuple(o.name for o in self._session.get_outputs())
        self.backend = "onnxruntime"
        self.precision: str = "f32"
        self.threads: int | None = int(num_threads) if num_threads else None

    def run(self, feeds: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[np.generic]]:
        values = self._session.run(list(self.output_names), feeds)
        return dict(zip(self.output_names, values))


#: A line of a backend's error that only gives a place in the backend's C++ sources.
_LOCATION_LINE = re.compile(r"Exception from \S+:\d+:")
_MAX_DETAIL = 1000


def load_error_detail(exc: BaseException) -> str:
    """A backend's error message on one line, without the lines that only give a C++ source location
    (OpenVINO: ``Exception from src/inference/src/cpp/core.cpp:132:``), so that the line naming the
    cause stays; at most 1000 characters; the exception's type name if nothing is left."""
    lines = (line.strip() for line in str(exc).splitlines())
    detail = " ".join(line for line in lines if line and not _LOCATION_LINE.fullmatch(line))
    if len(detail) > _MAX_DETAIL:
        detail = detail[:_MAX_DETAIL] + "..."
    return detail or type(exc).__name__


# --------------------------------------------------------------------------------------------------
# The compiled-model cache


def cache_key(content_key: str, precision: str, snippets: bool = True) -> str:
    """Name of a graph's sub-folder in the compiled-model cache: 16 hex digits of a sha256 of
    ``content_key`` (the .xml and .bin content), the OpenVINO version, ``precision`` and whether the
    graph compiles without snippets (OpenVINO's own cache key leaves that setting out)."""
    import openvino as ov

    parts = [content_key, ov.__version__, precision] + ([] if snippets else ["no-snippets"])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def graph_cache_key(folder: ModelFolder, graph: str, precision: str) -> str:
    """:func:`cache_key` of ``graph`` of ``folder`` (from the manifest's sha256s when it has them)."""
    content = _content_key(folder, folder.graph_file(graph, "openvino"))
    return cache_key(content, precision, snippets=graph not in NO_SNIPPETS_GRAPHS)


def _content_key(folder: ModelFolder, xml: Path) -> str:
    """The sha256s of ``xml`` and its ``.bin``: the manifest's, or hashed (once per file version)."""
    digests = []
    for path in (xml, xml.with_suffix(".bin")):
        if path.name in folder.manifest["files"]:
            digests.append(folder.sha256(path.name))
        else:
            digests.append(file_sha256(path) if path.is_file() else "")
    return json.dumps(digests)


def _files_key(xml: Path) -> str:
    return json.dumps([file_sha256(p) if p.is_file() else "" for p in (xml, xml.with_suffix(".bin"))])


#: Cache roots already warned about in this process: one warning each.
_CACHE_WARNED: set[str] = set()


def _warn_cache(cache_dir: Path, cause: str) -> None:
    if str(cache_dir) in _CACHE_WARNED:
        return
    _CACHE_WARNED.add(str(cache_dir))
    warnings.warn(
        f"the compiled-model cache {cache_dir} cannot be used ({cause}); models compile without it, at "
        "every start. Set FASTSEG_CACHE to a folder you can write, or pass cache_dir=False to turn the "
        "cache off",
        UserWarning,
        stacklevel=_outside_fastseg(),
    )


def _outside_fastseg() -> int:
    """``stacklevel`` of the first caller outside the fastseg package (where a warning should point)."""
    package = str(Path(__file__).resolve().parent)
    frame, level = sys._getframe(2), 2
    while frame.f_back is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def precision_name(value: object) -> str:
    """``"f32"``, ``"bf16"`` (or another OpenVINO type name) from an ``ov.Type`` property value."""
    return value.to_string() if hasattr(value, "to_string") else str(value)


def openvino_cpu_capabilities() -> tuple[str, ...]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of this CPU, e.g. ``("FP32", "INT8", "BIN", "EXPORT_IMPORT")``."""
    return tuple(str(c) for c in _ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


#: CPU flags (Linux ``/proc/cpuinfo``) of the instructions that make OpenVINO's INT8 faster than f32.
INT8_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_int8_flags() -> tuple[str, ...] | None:
    """Which of :data:`INT8_CPU_FLAGS` this CPU has (VNNI, AMX); ``None`` where it cannot be read (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return tuple(f for f in INT8_CPU_FLAGS if f in flags)


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

    Guarantee: the compiled-model cache never runs other content than the graph's current .xml and
    .bin (it is keyed on their sha256), and a cache that cannot be used costs one warning and the
    compile time, never an error.

    Args:
        precision: ``"f32"``, ``"bf16"`` or ``"int8"`` (OpenVINO only; ONNX Runtime runs f32). ``"int8"``
            runs the graph's INT8 IR (``fastseg export --int8``) where the folder has one, and the
            graph's float parts (and the graphs without an INT8 IR) at bf16 where the CPU has it,
            else f32; the session's ``precision`` then says ``"int8"`` for a quantized graph.
        num_threads: inference threads; ``None`` lets the backend use every core.
        cache_dir: OpenVINO compiled-model cache (a second process starts fast); ``None`` uses
            :func:`default_cache_dir`, ``False`` disables it.

    Raises:
        ModelFolderError: the backend cannot load the graph (the message keeps the backend's cause).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
        raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")
    if precision == "int8" and not folder.int8_graphs:
        raise ModelFolderError(
            f"{folder.path} has no INT8 graphs: export it with `fastseg export {folder.name} --int8 ...` "
            "to run precision='int8'"
        )
    path = folder.graph_file(graph, backend, int8=precision == "int8")
    if backend == "onnxruntime":
        if precision != "f32":
            raise ValueError(
                f"the onnxruntime backend runs f32 only, got precision={precision!r} (bf16 and int8 run on OpenVINO)"
            )
        return OnnxRuntimeSession(path, num_threads=num_threads, memory_arena=graph not in ONCE_PER_IMAGE_GRAPHS)
    cache: Path | None = None
    if cache_dir is not False:
        try:
            cache = cache_dir or default_cache_dir()
        except RuntimeError as exc:  # Path.home() without a home directory
            _warn_cache(Path("~/.cache/fastseg/compiled"), str(exc))
    content = None
    if cache is not None:
        try:
            content = _content_key(folder, path)
        except OSError:  # an unreadable graph: OpenVINO names the problem when it fails to load it
            content = None
    snippets = graph not in NO_SNIPPETS_GRAPHS
    if precision != "int8":
        return OpenVINOSession(path, precision, num_threads, cache_dir=cache, content_key=content, snippets=snippets)  # type: ignore[arg-type]
    session = OpenVINOSession(
        path,
        "bf16" if openvino_supports_bf16() else "f32",
        num_threads,
        cache_dir=cache,
        content_key=content,
        snippets=snippets,
    )
    if graph in folder.int8_graphs:
        session.precision = "int8"
    return session
