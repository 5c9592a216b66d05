"""Pieces the export family modules share: the graph description and safe checkpoint loading."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterable
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


def atomic_torch_save(obj: Any, path: Path, save: Callable[[Any, Any], None] = torch.save) -> None:
    """``torch.save`` (or ``save``, e.g. ``torch.jit.save``) to ``path`` atomically: a temporary file in
    the same folder, fsync, then ``os.replace``.

    Saved through the open file object, not a path, so torch names the archive's inner folder
    "archive" rather than after the temporary file: the bytes depend on ``obj`` alone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            save(obj, f)
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
        raise CheckpointError(f"checkpoint is corrupt or truncated: {path} ({clean_text(str(exc))})") from exc
    if bad is not None:
        raise CheckpointError(f"checkpoint is corrupt: member {bad!r} of {path} fails its CRC check")


#: ANSI escape sequences (CSI such as colours and bold, OSC such as titles and links, and two-byte ones).
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
#: Sentences of torch's weights-only refusals that advise loading the file anyway: never passed on.
_UNSAFE_ADVICE = re.compile(
    r"weights only load failed|weights_only|can still be loaded|trust|file an issue|check the documentation"
    r"|add_safe_globals|safe_globals\(|arbitrary code|will likely succeed",
    re.IGNORECASE,
)
_NO_CODE = "fastseg loads checkpoints with torch.load(weights_only=True) and never runs code from a checkpoint"


def clean_text(text: str) -> str:
    """``text`` from a library's exception or a checkpoint's contents, fit for a one-line message:
    ANSI escape sequences removed, other control characters shown as escapes, whitespace collapsed."""
    text = _ANSI.sub("", str(text))
    text = "".join(c if c.isprintable() or c in "\t\n" else repr(c)[1:-1] for c in text)
    return " ".join(text.split())


def _library_detail(exc: BaseException) -> str:
    """What went wrong, from ``exc``'s message, without torch's advice to load the file unsafely."""
    text = re.sub(r"WeightsUnpickler error:[ \t]*", "\n", _ANSI.sub("", str(exc)))
    parts = re.split(r"\n|(?<=\.)\s+(?=\S)|(?<=:)\s+(?=[A-Z])", text)
    kept = [clean_text(p) for p in parts if p.strip() and not _UNSAFE_ADVICE.search(p)]
    return " ".join(k for k in kept if k) or type(exc).__name__


def _unsafe_globals(path: Path) -> list[str] | None:
    """The Python globals ``path``'s pickle references beyond torch's own, or ``None`` if it cannot be read."""
    try:
        return [clean_text(g) for g in torch.serialization.get_unsafe_globals_in_checkpoint(str(path))]
    except Exception:  # noqa: BLE001 - damaged or unusual archive: the caller reports the load error instead
        return None


def _shown(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_state_dict(path: Path, entry: str | None = None) -> dict[str, torch.Tensor]:
    """Load a state-dict checkpoint with ``torch.load(weights_only=True)``: no code is unpickled.

    ``entry``: the file holds a dict whose ``entry`` item is the state dict (SAM 2.1's ``"model"``).

    Raises:
        CheckpointError: the file is not a readable torch archive, or it holds anything but a dict of
            tensors; a refusal names what the file references and never suggests loading it unsafely.
    """
    _check_torch_archive(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # the weights-only unpickler refused something in the file
        names = _unsafe_globals(path)
        what = (
            f"it references {_shown(names)}, which"
            if names
            else f"it uses pickle instructions the weights-only loader does not accept ({_library_detail(exc)}), so it"
        )
        raise CheckpointError(
            f"refused to unpickle {path}: {what} is not part of a plain tensor state dict; {_NO_CODE}"
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path} could not be read as a PyTorch state dict: {_library_detail(exc)}") from exc
    if entry is not None:
        if not isinstance(obj, dict) or entry not in obj:
            keys = sorted(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(f"{path} is not a checkpoint with a {entry!r} entry (got {keys})")
        obj = obj[entry]
    elif isinstance(obj, dict) and "model" in obj and not any(isinstance(v, torch.Tensor) for v in obj.values()):
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
            f"{path} cannot be inspected safely ({_library_detail(exc)}): the file is damaged, or uses pickle "
            f"features the weights-only loader refuses; refusing to unpickle it ({_NO_CODE})"
        ) from exc
    refused = sorted(set(needed) - set(allow))
    if refused:
        raise CheckpointError(
            f"{path} references Python globals outside the allow-list for this format, refusing to "
            f"unpickle it: {_shown([clean_text(name) for name in refused])} ({_NO_CODE})"
        )
    try:
        with torch.serialization.safe_globals([allow[name] for name in needed]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"refused to unpickle {path}: {_library_detail(exc)} ({_NO_CODE})") from exc
    except (RuntimeError, EOFError, OSError, AttributeError) as exc:
        raise CheckpointError(f"{path} could not be loaded: {_library_detail(exc)}") from exc


def load_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str, path: Path) -> torch.nn.Module:
    """``state`` loaded into ``model`` after :func:`check_state_dict_matches`, then ``eval()`` and frozen.

    ``eval()`` comes after loading: TinyViT caches its attention biases (a non-persistent buffer) in
    ``eval()``, so a builder's own ``eval()`` before loading would leave the random-init biases cached.
    """
    check_state_dict_matches(model, state, what, path)
    model.load_state_dict(state, strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


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
