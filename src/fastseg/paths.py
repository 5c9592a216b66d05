"""Where fastseg keeps files between runs: one cache root, one folder per kind of file."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$FASTSEG_CACHE`` if set, else ``~/.cache/fastseg``."""
    root = os.environ.get("FASTSEG_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "fastseg"


def cache_dir(kind: str) -> Path:
    """``cache_root() / kind``: ``compiled`` (OpenVINO's compiled models), ``checkpoints`` (downloads),
    ``bench`` (the benchmark's checkpoints and exports)."""
    return cache_root() / kind
