"""Pieces the export family modules share: the graph description and safe checkpoint loading."""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fastseg_export.errors import CheckpointError


@dataclass
class Graph:
    """One graph to export.

    Attributes:
        name: file stem and manifest key, e.g. ``"encoder"``.
        module: the torch module to trace (eval mode, float32).
        example_inputs: tensors to trace with, in ``input_names`` order.
        input_names, output_names: the names the runtime reads and writes by.
        dynamic_axes: ``{name: {axis: label}}`` for dimensions that vary at run time.
        opset: ONNX opset.
    """

    name: str
    module: torch.nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    opset: int = 17


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically: a temporary file in the same folder, fsync, then ``os.replace``.

    Saved through the open file object, not a path, so torch names the archive's inner folder
    "archive" rather than after the temporary file: the bytes depend on ``obj`` alone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _check_torch_archive(path: Path) -> None:
    """Raise ``CheckpointError`` unless ``path`` is a readable file in ``torch.save`` zip format."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint must be a file, got a directory: {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint: expected a torch.save zip archive, "
            f"got {size} bytes of something else (truncated download or wrong file?)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CheckpointError(f"checkpoint is corrupt or truncated: {path} ({exc})") from exc
    if bad is not None:
        raise CheckpointError(f"checkpoint is corrupt: member {bad!r} of {path} fails its CRC check")


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a state-dict checkpoint with ``torch.load(weights_only=True)``: no code is unpickled."""
    _check_torch_archive(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} could not be loaded as a state dict with weights_only=True: {first}"
        ) from exc
    if isinstance(obj, dict) and "model" in obj and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds a training checkpoint (keys {sorted(obj)[:6]}), not a state dict")
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} is not a state dict: expected a dict of tensors, got {type(obj).__name__}")
    return obj


def load_allowlisted(path: Path, allowed: Iterable[Any]) -> Any:
    """Unpickle a checkpoint that stores Python objects, allowing only the given globals.

    ``torch.load(weights_only=True)`` refuses any global not registered; the globals this checkpoint
    references are compared against ``allowed`` first, so a file that needs anything else is rejected
    with its names listed, before a single object is built.
    """
    _check_torch_archive(path)
    allow = {f"{obj.__module__}.{obj.__qualname__}": obj for obj in allowed}
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as exc:  # torch raises several types for damaged or unusual archives
        raise CheckpointError(
            f"{path} cannot be inspected safely ({exc}): the file is damaged, or uses pickle features the "
            "weights-only loader refuses; refusing to unpickle it"
        ) from exc
    refused = sorted(set(needed) - set(allow))
    if refused:
        shown = ", ".join(refused[:8]) + (" ..." if len(refused) > 8 else "")
        raise CheckpointError(
            f"{path} references Python globals outside the allow-list for this format, refusing to "
            f"unpickle it: {shown}"
        )
    try:
        with torch.serialization.safe_globals([allow[name] for name in needed]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} could not be loaded: {first}") from exc


def check_state_dict_matches(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str, path: Path) -> None:
    """Raise ``CheckpointError`` unless ``state`` has exactly the keys and shapes of ``model``."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape)
    )
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if mismatched:
        k = mismatched[0]
        parts.append(
            f"{len(mismatched)} shape mismatches (e.g. {k}: expected {tuple(expected[k].shape)}, "
            f"got {tuple(state[k].shape)})"
        )
    raise CheckpointError(f"{path} is not a {what} checkpoint: " + "; ".join(parts))
