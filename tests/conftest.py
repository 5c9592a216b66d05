"""Shared fixtures: random-weight checkpoints in the official formats and their exported model folders.

Two tiers. ``pytest -m "not slow"`` (the fast tier) never imports torch or a reference package and
exports no full-size model. A test that needs any of those gets it through a fixture, and using such a
fixture marks the test ``slow`` automatically (:data:`SLOW_FIXTURES`, and every fixture whose name
starts with ``reference_``): nobody has to remember the marker.

Checkpoints and exports are built once per test session. Set ``FASTSEG_TEST_CACHE=/some/dir`` to keep
them across sessions while developing: entries are keyed by a hash of the export code, so a change to
the exporter rebuilds them.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fastseg.backends import single_threaded_numpy_blas

# The tests call the library from several threads (labeling server, Predictor threads), where
# OpenBLAS's threaded gemm can deadlock (see single_threaded_numpy_blas); the fastseg command does
# the same.
single_threaded_numpy_blas()

SEED = 0
ROOT = Path(__file__).resolve().parents[1]

#: Fixtures that bring torch, a reference implementation or a full-size export: a test using one (directly
#: or through another fixture) is marked ``slow``. So is one using a fixture named ``reference_*``.
SLOW_FIXTURES = frozenset({"random_checkpoint", "exported_model", "official_sam", "fastseg_cache"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & SLOW_FIXTURES or any(n.startswith("reference_") for n in names):
            item.add_marker(pytest.mark.slow)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018 - glibc only
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


# FASTSEG_TEST_MALLOC=0 keeps glibc's defaults (to compare time and memory).
_LIBC = _glibc() if os.environ.get("FASTSEG_TEST_MALLOC", "1") == "1" else None
if _LIBC is not None:
    # The PyTorch references allocate temporaries of hundreds of MB per layer. By default glibc serves
    # each from a fresh mmap and unmaps it when freed, so every forward pass page-faults through
    # gigabytes. Blocks up to 2 GiB now come from the heap and are reused within a test; free memory is
    # handed back after each test (below). Figures in docs/PERFORMANCE.md. Test speed only: `fastseg
    # bench` runs every library with the allocator's defaults.
    _LIBC.mallopt(-3, ctypes.c_int(2**31 - 1))  # M_MMAP_THRESHOLD
    _LIBC.mallopt(-1, ctypes.c_int(2**31 - 1))  # M_TRIM_THRESHOLD


@pytest.fixture(autouse=True)
def _hand_back_free_memory():
    yield
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


_TORCH_THREADS: list[int] = []  # torch's default thread count, read when a test first imports torch


def import_torch():  # noqa: ANN201
    """``import torch``, remembering its default thread count the first time."""
    import torch

    if not _TORCH_THREADS:
        _TORCH_THREADS.append(torch.get_num_threads())
    return torch


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> None:
    """ultralytics sets torch to ``os.cpu_count() - 1`` threads whenever it predicts (1 on two cores);
    every test starts with torch's own default again, so later PyTorch references use every core. The
    fast tier never imports torch, so this looks only at an already imported one."""
    torch = sys.modules.get("torch")
    if torch is None or not _TORCH_THREADS:
        return
    if torch.get_num_threads() != _TORCH_THREADS[0]:
        torch.set_num_threads(_TORCH_THREADS[0])


@pytest.fixture
def reference_torch():  # noqa: ANN201
    """torch itself, for a test that computes a PyTorch reference (marks it slow)."""
    return import_torch()


def _code_hash() -> str:
    """What the cached checkpoints and exports depend on: the export toolchain's code, the model specs
    and the manifest format (the runtime's own processing only feeds the export's self-check)."""
    import json

    from fastseg.manifest import FORMAT_VERSION
    from fastseg.registry import REGISTRY

    digest = hashlib.sha256()
    for path in sorted(ROOT.joinpath("export").glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    specs = {name: spec.to_dict() for name, spec in sorted(REGISTRY.items())}
    digest.update(json.dumps([FORMAT_VERSION, specs], sort_keys=True).encode())
    return digest.hexdigest()[:12]


@pytest.fixture(scope="session")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    persistent = os.environ.get("FASTSEG_TEST_CACHE")
    if persistent:
        path = Path(persistent) / _code_hash()
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def random_checkpoint(artifact_dir: Path) -> Callable[[str], Path]:
    """Factory: ``random_checkpoint("mobile_sam")`` -> path of a seeded random-weight checkpoint."""
    from fastseg.registry import get_spec

    import_torch()
    from fastseg_export.random_weights import write_random_checkpoint

    def make(name: str) -> Path:
        path = artifact_dir / "checkpoints" / name / get_spec(name).checkpoint_filename
        if not path.exists():
            write_random_checkpoint(name, path, seed=SEED)
        return path

    return make


@pytest.fixture(scope="session")
def exported_model(artifact_dir: Path, random_checkpoint: Callable[[str], Path]) -> Callable[[str], Path]:
    """Factory: ``exported_model("mobile_sam")`` -> model folder exported from the random checkpoint.

    Each export runs in a child process, as a user runs ``fastseg export``: tracing a full-size model
    leaves gigabytes of fragmented heap behind in the exporting process (more so with this module's
    large mmap threshold), which the slow tier's single process cannot afford for every model."""

    def make(name: str) -> Path:
        out = artifact_dir / "models" / name
        if not (out / "manifest.json").exists():
            shutil.rmtree(out, ignore_errors=True)
            command = [sys.executable, "-m", "fastseg.cli", "--debug", "export", name]
            command += ["--checkpoint", str(random_checkpoint(name)), "--out", str(out)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"export of {name} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return out

    return make


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real photos that ship with scikit-image, RGB uint8."""
    from skimage import data

    return {name: np.ascontiguousarray(getattr(data, name)()) for name in ("chelsea", "astronaut", "coffee")}


def _image_key(image: np.ndarray) -> tuple[tuple[int, ...], str]:
    return tuple(image.shape), hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


class OfficialSam:
    """The official SAM / MobileSAM models, built by their own builders from the session's random
    checkpoints, and each image's PyTorch encoding, shared by the test modules (the ViT-B encoder
    takes ~19 s per photo on two AVX2 cores)."""

    def __init__(self, random_checkpoint: Callable[[str], Path]) -> None:
        self._checkpoint = random_checkpoint
        self._models: dict[str, object] = {}
        self._features: dict[tuple, tuple] = {}

    def model(self, name: str):  # noqa: ANN201 - a segment_anything / mobile_sam Sam
        if name not in self._models:
            if name == "mobile_sam":
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    from mobile_sam import sam_model_registry
                arch = "vit_t"
            else:
                from segment_anything import sam_model_registry

                arch = name.removeprefix("sam_")
            # eval() after loading, as the MobileSAM README does (TinyViT caches attention biases in eval())
            self._models[name] = sam_model_registry[arch](checkpoint=str(self._checkpoint(name))).eval()
        return self._models[name]

    def set_image(self, predictor, name: str, image: np.ndarray, image_format: str = "RGB") -> None:
        """``predictor.set_image(image, image_format)`` of the original ``SamPredictor`` class, run once per image."""
        key = (name, image_format, *_image_key(image))
        if key not in self._features:
            type(predictor).set_image(predictor, image, image_format)
            self._features[key] = (predictor.features, predictor.original_size, predictor.input_size)
            return
        predictor.reset_image()
        predictor.features, predictor.original_size, predictor.input_size = self._features[key]
        predictor.is_image_set = True

    def predictor(self, name: str, image: np.ndarray):  # noqa: ANN201 - the original SamPredictor
        """A new official ``SamPredictor`` with ``image`` set."""
        if name == "mobile_sam":
            from mobile_sam import SamPredictor
        else:
            from segment_anything import SamPredictor
        predictor = SamPredictor(self.model(name))
        self.set_image(predictor, name, image)
        return predictor


@pytest.fixture(scope="session")
def official_sam(random_checkpoint: Callable[[str], Path]) -> OfficialSam:
    return OfficialSam(random_checkpoint)


class FastsegCache:
    """fastseg Predictors of the session's exported models, and each image's encoding per model,
    backend and precision, shared by the test modules (``set_image`` runs the encoder or network
    once per image; later calls restore it with ``set_image_embedding``)."""

    def __init__(self, exported_model: Callable[[str], Path], compiled_dir: Path) -> None:
        self.exported_model = exported_model
        self.compiled_dir = compiled_dir
        self._predictors: dict[tuple, object] = {}
        self._embeddings: dict[tuple, object] = {}

    def predictor(self, name: str, backend: str = "openvino", precision: str = "f32", **options: float):  # noqa: ANN201
        """A Predictor (shared; ``options``: FastSAM's ``conf`` / ``iou``)."""
        from fastseg import Predictor

        key = (name, backend, precision, tuple(sorted(options.items())))
        if key not in self._predictors:
            self._predictors[key] = Predictor(
                self.exported_model(name), backend=backend, precision=precision, cache_dir=self.compiled_dir, **options
            )
        return self._predictors[key]

    def set_image(self, predictor, image: np.ndarray):  # noqa: ANN001, ANN201
        """``predictor.set_image(image)``, encoding each image once per model, backend and precision."""
        key = (predictor.model_name, predictor.backend, predictor.precision, *_image_key(image))
        if key in self._embeddings:
            predictor.set_image_embedding(self._embeddings[key])
        else:
            predictor.set_image(image)
            self._embeddings[key] = predictor.get_image_embedding()
        return predictor


@pytest.fixture(scope="session")
def fastseg_cache(exported_model: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> FastsegCache:
    return FastsegCache(exported_model, tmp_path_factory.mktemp("ov_cache"))


@pytest.fixture(scope="session")
def tiny_sam_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SAM-family model folder registered as ``mobile_sam`` (:mod:`tiny_models`; no torch)."""
    from tiny_models import build_tiny_sam

    return build_tiny_sam(tmp_path_factory.mktemp("tiny") / "mobile_sam")


@pytest.fixture(scope="session")
def tiny_fastsam_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny FastSAM model folder registered as ``fastsam_s`` (:mod:`tiny_models`; no torch)."""
    from tiny_models import build_tiny_fastsam

    return build_tiny_fastsam(tmp_path_factory.mktemp("tiny") / "fastsam_s")
