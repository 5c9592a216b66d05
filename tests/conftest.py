"""Shared fixtures: random-weight checkpoints in the official formats and their exported model folders.

Checkpoints and exports are built once per test session. Set ``FASTSEG_TEST_CACHE=/some/dir`` to keep
them across sessions while developing: entries are keyed by a hash of the export code, so a change to
the exporter rebuilds them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

SEED = 0
ROOT = Path(__file__).resolve().parents[1]


def _code_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted([*ROOT.joinpath("export").glob("*.py"), *ROOT.joinpath("src", "fastseg").glob("*.py")]):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
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
    from fastseg_export.random_weights import write_random_checkpoint

    def make(name: str) -> Path:
        path = artifact_dir / "checkpoints" / name / get_spec(name).checkpoint_filename
        if not path.exists():
            write_random_checkpoint(name, path, seed=SEED)
        return path

    return make


@pytest.fixture(scope="session")
def exported_model(artifact_dir: Path, random_checkpoint: Callable[[str], Path]) -> Callable[[str], Path]:
    """Factory: ``exported_model("mobile_sam")`` -> model folder exported from the random checkpoint."""
    from fastseg_export.export import export_model

    def make(name: str) -> Path:
        out = artifact_dir / "models" / name
        if not (out / "manifest.json").exists():
            shutil.rmtree(out, ignore_errors=True)
            export_model(name, random_checkpoint(name), out)
        return out

    return make


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real photos that ship with scikit-image, RGB uint8."""
    from skimage import data

    return {name: np.ascontiguousarray(getattr(data, name)()) for name in ("chelsea", "astronaut", "coffee")}
