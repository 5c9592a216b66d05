"""The exported model folder: its manifest, and the checks that refuse a broken folder early.

A folder is usable only if ``manifest.json`` parses, names a known family and graphs, every file and
graph path it names stays inside the folder, and every file it lists is present with the size and
content (sha256) recorded at export time. A half-copied, truncated or swapped folder fails here with
the file named, instead of deep inside a backend or, worse, with other masks.

Hashing a large graph costs time (ViT-H: seconds), so a file's sha256 is computed once per version of
the file: the digest is kept in ``<cache root>/verified/sha256.json`` (see :mod:`fastseg.paths`),
keyed by the file's absolute path, size, modification and change times and inode. A missing, broken
or unwritable cache file only means hashing again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from fastseg.paths import atomic_write, cache_dir
from fastseg.registry import ModelSpec, spec_from_dict

MANIFEST_NAME = "manifest.json"
FORMAT = "fastseg-model"
FORMAT_VERSION = 2  # 2: SAM folders gained decoder_image and decoder_points
GRAPHS_BY_FAMILY = {
    "sam": ("encoder", "decoder", "decoder_image", "decoder_points"),
    "fastsam": ("network",),
    "sam2": ("encoder", "decoder", "decoder_image", "decoder_points"),
    "clip": ("image_encoder", "text_encoder"),
}
#: The backends' keys in a graph entry of the manifest.
GRAPH_FILE_KEYS = {"openvino": "openvino", "onnxruntime": "onnx"}
#: The key of a graph's INT8 OpenVINO IR (``fastseg export --int8``), in the image graphs' entries.
INT8_FILE_KEY = "openvino_int8"

_SHA256 = re.compile(r"[0-9a-f]{64}")
_HASH_CACHE_FILE = "sha256.json"
_HASH_CACHE_VERSION = 1
_HASH_CACHE_LIMIT = 1024  # entries kept (the newest): one per file version hashed
#: This process's digests, keyed like the cache file (so a broken cache file costs one hash per process).
_MEMO: dict[str, dict[str, Any]] = {}


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

    @property
    def int8_graphs(self) -> tuple[str, ...]:
        """The graphs with an INT8 OpenVINO IR (``fastseg export --int8``); empty without one."""
        return tuple(g for g, entry in self.manifest["graphs"].items() if INT8_FILE_KEY in entry)

    def graph_file(self, graph: str, backend: str, int8: bool = False) -> Path:
        """Path of ``graph`` for ``backend`` (``"openvino"`` -> ``.xml``, ``"onnxruntime"`` -> ``.onnx``);
        ``int8``: its INT8 OpenVINO IR where the folder has one (the f32 graph otherwise)."""
        if int8 and backend == "openvino" and graph in self.int8_graphs:
            return self.path / str(self.manifest["graphs"][graph][INT8_FILE_KEY])
        key = GRAPH_FILE_KEYS[backend]
        try:
            name: str = self.manifest["graphs"][graph][key]
            return self.path / name
        except KeyError:
            have = ", ".join(sorted(self.manifest["graphs"]))
            raise ModelFolderError(f"{self.path}: no graph {graph!r} for {backend} (graphs: {have})") from None

    def sha256(self, name: str) -> str:
        """sha256 (hex) of the folder's file ``name``: the manifest's (verified when the folder was
        loaded) or, for a folder exported before the manifest carried hashes, computed once per
        version of the file (:func:`file_sha256`)."""
        entry = self.manifest["files"].get(name)
        if isinstance(entry, dict):
            return str(entry["sha256"])
        return file_sha256(self.path / name)


def load_model_folder(path: str | Path, family: str | None = None) -> ModelFolder:
    """Read and validate a model folder written by ``fastseg export``.

    Guarantee: every file and graph the manifest names lies inside the folder (no absolute path, no
    ``..``, no symlink leading out), and every file has the size and, when the manifest records it
    (folders exported since the hashes were added), the sha256 recorded at export, hashed once per
    version of the file; folders exported earlier, whose manifest has sizes only, are checked for size.

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
    if not isinstance(manifest["graphs"], dict):
        raise ModelFolderError(f"{manifest_path}: 'graphs' must map graph names to objects")
    missing_graphs = [g for g in GRAPHS_BY_FAMILY[fam] if g not in manifest["graphs"]]
    if missing_graphs:
        raise ModelFolderError(f"{manifest_path}: family {fam!r} needs graphs {missing_graphs}, which are not listed")
    files = _checked_files(manifest_path, manifest["files"])
    root = folder.resolve()
    for name in files:
        _check_inside(root, name, manifest_path, "file")
    for graph, entry in manifest["graphs"].items():
        if not isinstance(entry, dict):
            raise ModelFolderError(f"{manifest_path}: graph {graph!r} must be an object, got {type(entry).__name__}")
        for key in (*GRAPH_FILE_KEYS.values(), INT8_FILE_KEY):
            if key not in entry:
                continue
            _check_graph_file(folder, root, manifest_path, files, graph, entry[key])
            if key in ("openvino", INT8_FILE_KEY):  # OpenVINO reads the weights next to the .xml
                weights = str(PurePosixPath(entry[key]).with_suffix(".bin"))
                if weights in files or os.path.lexists(folder / weights):
                    _check_graph_file(folder, root, manifest_path, files, graph, weights)
    for name, (size, _) in files.items():
        file = folder / name
        if not file.is_file():
            raise ModelFolderError(f"{folder} is incomplete: {name} is missing (the manifest lists it)")
        actual = file.stat().st_size
        if actual != size:
            raise ModelFolderError(
                f"{folder} is damaged: {name} has {actual} bytes, the manifest recorded {size} "
                "(truncated copy or modified file? export it again)"
            )
    _verify_hashes(folder, {name: digest for name, (_, digest) in files.items() if digest is not None})
    try:
        spec = spec_from_dict(manifest["spec"])
    except (TypeError, KeyError, ValueError) as exc:
        raise ModelFolderError(f"{manifest_path}: malformed 'spec' entry ({exc})") from exc
    return ModelFolder(path=folder, manifest=manifest, spec=spec)


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` into ``folder`` (atomically), filling ``files`` with the size and sha256 of
    every other file there: ``{"encoder.bin": {"size": 1234, "sha256": "..."}}``."""
    manifest = dict(manifest)
    manifest["files"] = {
        p.name: {"size": p.stat().st_size, "sha256": _hash_file(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith(f".{MANIFEST_NAME}.")
    }
    path = folder / MANIFEST_NAME
    with atomic_write(path, binary=False) as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def file_sha256(path: Path) -> str:
    """sha256 (hex) of ``path``'s content, hashed once per version of the file (see the module docstring)."""
    cache = _HashCache()
    digest = cache.digest(Path(path))
    cache.save()
    return digest


# --------------------------------------------------------------------------------------------------
# Checks


def _checked_files(manifest_path: Path, files: object) -> dict[str, tuple[int, str | None]]:
    """``files`` as ``{name: (size, sha256 or None)}``; the old form ``{name: size}`` has no sha256."""
    if not isinstance(files, dict):
        raise ModelFolderError(
            f"{manifest_path}: 'files' must map file names to {{'size': bytes, 'sha256': hex}}, "
            f"got {type(files).__name__}"
        )
    out: dict[str, tuple[int, str | None]] = {}
    for name, entry in files.items():
        size, digest = (entry, None) if not isinstance(entry, dict) else (entry.get("size"), entry.get("sha256"))
        if (
            not isinstance(size, int)
            or isinstance(size, bool)
            or size < 0
            or (isinstance(entry, dict) and (not isinstance(digest, str) or not _SHA256.fullmatch(digest)))
        ):
            raise ModelFolderError(
                f"{manifest_path}: malformed files entry for {name!r}: expected "
                f"{{'size': bytes, 'sha256': 64 hex digits}}, got {entry!r}"
            )
        out[name] = (size, digest)
    return out


def _check_inside(root: Path, name: object, manifest_path: Path, what: str) -> None:
    """Refuse a name that is not a relative path resolving inside ``root`` (the resolved folder)."""
    if not isinstance(name, str) or not name:
        raise ModelFolderError(f"{manifest_path}: {what} names {name!r}, expected a file name inside the folder")
    if (
        PurePosixPath(name).is_absolute()
        or PureWindowsPath(name).is_absolute()
        or PureWindowsPath(name).drive
        or ".." in PurePosixPath(name).parts
        or ".." in PureWindowsPath(name).parts
        or "\0" in name
    ):
        raise ModelFolderError(f"{manifest_path}: {what} names {name}, a path outside the model folder")
    try:
        resolved = (root / name).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise ModelFolderError(f"{manifest_path}: {what} names {name}, which cannot be resolved ({exc})") from exc
    if resolved != root and root not in resolved.parents:
        raise ModelFolderError(
            f"{manifest_path}: {what} names {name}, which leads outside the model folder (to {resolved})"
        )


def _check_graph_file(
    folder: Path, root: Path, manifest_path: Path, files: dict[str, Any], graph: str, name: object
) -> None:
    """A file a graph uses must lie inside the folder and be listed (so that it is verified)."""
    _check_inside(root, name, manifest_path, f"graph {graph!r}")
    if name not in files:
        raise ModelFolderError(
            f"{manifest_path}: graph {graph!r} uses {name}, which the manifest's files do not list "
            "(so it cannot be verified)"
        )


def _verify_hashes(folder: Path, expected: dict[str, str]) -> None:
    if not expected:
        return
    cache = _HashCache()
    try:
        for name, digest in expected.items():
            try:
                actual = cache.digest(folder / name)
            except OSError as exc:
                raise ModelFolderError(f"{folder}: cannot read {name} ({exc.strerror or exc})") from exc
            if actual != digest:
                raise ModelFolderError(
                    f"{folder} is damaged: {name} has sha256 {actual[:16]}..., the manifest recorded "
                    f"{digest[:16]}... (a file of another model, or modified? export it again)"
                )
    finally:
        cache.save()  # what was verified stays verified, even when a later file fails


# --------------------------------------------------------------------------------------------------
# Hashing, once per version of a file


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _stat_key(path: Path) -> tuple[str, dict[str, int]]:
    resolved = path.resolve()
    st = resolved.stat()
    return str(resolved), {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "inode": st.st_ino,
    }


class _HashCache:
    """The cache file's entries, read once; :meth:`save` writes them back atomically if any is new.
    Every failure to read or write the cache file is silent: it only costs hashing again."""

    def __init__(self) -> None:
        self._new: dict[str, dict[str, Any]] = {}
        self._disk: dict[str, Any] | None = None

    @staticmethod
    def _path() -> Path:
        return cache_dir("verified") / _HASH_CACHE_FILE

    @classmethod
    def _read(cls) -> dict[str, Any]:
        try:
            data = json.loads(cls._path().read_text(encoding="utf-8"))
        except (OSError, RuntimeError, ValueError):  # RuntimeError: no home directory
            return {}
        if not isinstance(data, dict) or data.get("version") != _HASH_CACHE_VERSION:
            return {}
        files = data.get("files")
        return files if isinstance(files, dict) else {}

    def digest(self, path: Path) -> str:
        key, stat = _stat_key(path)
        for source in (self._new, _MEMO):
            known = source.get(key)
            if isinstance(known, dict) and {k: known.get(k) for k in stat} == stat:
                return str(known["sha256"])
        if self._disk is None:
            self._disk = self._read()
        known = self._disk.get(key)
        if isinstance(known, dict) and {k: known.get(k) for k in stat} == stat:
            sha = known.get("sha256")
            if isinstance(sha, str) and _SHA256.fullmatch(sha):
                _MEMO[key] = known
                return sha
        sha = _hash_file(path)
        if _stat_key(path) == (key, stat):  # unchanged while it was read
            self._new[key] = _MEMO[key] = {**stat, "sha256": sha}
        return sha

    def save(self) -> None:
        if not self._new:
            return
        files = {k: v for k, v in self._read().items() if k not in self._new}  # what others wrote meanwhile
        files.update(self._new)
        files = dict(list(files.items())[-_HASH_CACHE_LIMIT:])
        try:
            self._path().parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(self._path(), binary=False) as f:
                f.write(json.dumps({"version": _HASH_CACHE_VERSION, "files": files}))
        except (OSError, RuntimeError):
            pass  # an unwritable cache: the next process hashes again
        self._new = {}
