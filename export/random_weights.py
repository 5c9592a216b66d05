"""Seeded random-weight checkpoints in the exact official formats, for tests and benchmarks.

No pretrained weights can be fetched where fastseg is developed and tested, so tests and the default
benchmark build the real architectures with seeded random weights (calibrated to behave like trained
ones, see each family's ``write_random_checkpoint``) and save them in the very format users download.
The graphs and FLOPs are those of the real models, so timings are real; masks are not meaningful.

A sidecar ``<checkpoint>.random.json`` records the seed, so everything exported from such a file is
labelled "random weights" wherever a person sees it. The checkpoint itself stays byte-for-byte in the
official format.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastseg.registry import get_spec

SIDECAR_SUFFIX = ".random.json"


def family_module(family: str):
    """The export module of a family (``fastseg_export.sam`` or ``fastseg_export.fastsam``)."""
    if family == "sam":
        from fastseg_export import sam

        return sam
    if family == "fastsam":
        from fastseg_export import fastsam

        return fastsam
    if family == "sam2":
        from fastseg_export import sam2

        return sam2
    if family == "clip":
        from fastseg_export import clip

        return clip
    raise ValueError(f"unknown family {family!r}")


def write_random_checkpoint(name: str, path: str | Path, seed: int = 0) -> Path:
    """Write a seeded random-weight checkpoint of model ``name`` to ``path`` (official format)."""
    spec = get_spec(name)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    family_module(spec.family).write_random_checkpoint(spec, path, seed)
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    sidecar.write_text(json.dumps({"model": name, "seed": seed}) + "\n", encoding="utf-8")
    return path


def random_weights_label(checkpoint: str | Path) -> str | None:
    """``"random weights (seed N)"`` if ``checkpoint`` was written by :func:`write_random_checkpoint`."""
    sidecar = Path(str(checkpoint) + SIDECAR_SUFFIX)
    if not sidecar.exists():
        return None
    try:
        seed = json.loads(sidecar.read_text(encoding="utf-8"))["seed"]
    except (ValueError, KeyError):
        return "random weights"
    return f"random weights (seed {seed})"
