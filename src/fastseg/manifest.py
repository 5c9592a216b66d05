"""The exported model folder: its manifest, and the checks that refuse a broken folder early.

A folder is usable only if ``manifest.json`` parses, names a known family and graphs, and every file
it lists is present with the size recorded at export time (a half-copied or truncated folder fails
here with the file named, instead of deep inside a backend).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastseg.registry import ModelSpec, spec_from_dict

MANIFEST_NAME = "manifest.json"
FORMAT = "fastseg-model"
FORMAT_VERSION = 2  # 2: SAM folders gained decoder_image and decoder_points
GRAPHS_BY_FAMILY = {"sam": ("encoder", "decoder", "decoder_image", "decoder_points"), "fastsam": ("network",)}


class ModelFolderError(ValueError):
    """A model folder is missing, incomplete, corrupt, or of another kind than expected."""


@dataclass(frozen=True)
class ModelFolder:
    """A validated model folder.

    Attributes:
        path: the folder.
        manifest: the parsed ``manifest.json``.
        spec: the model's :class:`~fastseg.registry.ModelSpec`, as exported.
    """

    path: Path
    manifest: dict[str, Any]
    spec: ModelSpec

    @property
    def name(self) -> str:
        return str(self.manifest["model"])

    @property
    def family(self) -> str:
        return str(self.manifest["family"])

    @property
    def weights(self) -> str:
        """How the weights were made, e.g. ``"official checkpoint"`` or ``"random weights (seed 0)"``."""
        return str(self.manifest.get("weights", "unknown"))

    def graph_file(self, graph: str, backend: str) -> Path:
        """Path of ``graph`` for ``backend`` (``"openvino"`` -> ``.xml``, ``"onnxruntime"`` -> ``.onnx``)."""
        key = {"openvino": "openvino", "onnxruntime": "onnx"}[backend]
        try:
            name: str = self.manifest["graphs"][graph][key]
            return self.path / name
        except KeyError:
            have = ", ".join(sorted(self.manifest["graphs"]))
            raise ModelFolderError(f"{self.path}: no graph {graph!r} for {backend} (graphs: {have})") from None


def load_model_folder(path: str | Path, family: str | None = None) -> ModelFolder:
    """Read and validate a model folder written by ``fastseg export``.

    Args:
        path: the folder.
        family: if given (``"sam"`` or ``"fastsam"``), refuse a folder of another family.

    Raises:
        ModelFolderError: naming what is wrong and what was expected.
    """
    folder = Path(path)
    if not folder.exists():
        raise ModelFolderError(f"model folder not found: {folder} (create one with `fastseg export`)")
    if not folder.is_dir():
        raise ModelFolderError(f"expected a model folder written by `fastseg export`, got a file: {folder}")
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.exists():
        partial = [p.name for p in folder.iterdir()][:5]
        raise ModelFolderError(
            f"{folder} has no {MANIFEST_NAME}: not a fastseg model folder, or an export that did not finish "
            f"(found: {partial or 'nothing'})"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFolderError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelFolderError(f"{manifest_path} is not a fastseg manifest (expected format {FORMAT!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFolderError(
            f"{manifest_path} has format_version {version!r}; this fastseg reads version {FORMAT_VERSION}: "
            "export the model again with this version"
        )
    for key in ("model", "family", "spec", "graphs", "files"):
        if key not in manifest:
            raise ModelFolderError(f"{manifest_path} lacks the {key!r} entry")
    fam = manifest["family"]
    if fam not in GRAPHS_BY_FAMILY:
        raise ModelFolderError(f"{manifest_path}: unknown family {fam!r}, expected one of {sorted(GRAPHS_BY_FAMILY)}")
    if family is not None and fam != family:
        raise ModelFolderError(f"{folder} holds a {fam!r} model ({manifest['model']}), expected a {family!r} model")
    missing_graphs = [g for g in GRAPHS_BY_FAMILY[fam] if g not in manifest["graphs"]]
    if missing_graphs:
        raise ModelFolderError(f"{manifest_path}: family {fam!r} needs graphs {missing_graphs}, which are not listed")
    for name, size in manifest["files"].items():
        file = folder / name
        if not file.exists():
            raise ModelFolderError(f"{folder} is incomplete: {name} is missing (the manifest lists it)")
        actual = file.stat().st_size
        if actual != size:
            raise ModelFolderError(
                f"{folder} is damaged: {name} has {actual} bytes, the manifest recorded {size} "
                "(truncated copy or modified file? export it again)"
            )
    try:
        spec = spec_from_dict(manifest["spec"])
    except (TypeError, KeyError, ValueError) as exc:
        raise ModelFolderError(f"{manifest_path}: malformed 'spec' entry ({exc})") from exc
    return ModelFolder(path=folder, manifest=manifest, spec=spec)


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` into ``folder``, filling ``files`` with the size of every other file there."""
    manifest = dict(manifest)
    manifest["files"] = {
        p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST_NAME
    }
    path = folder / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path
