"""A missing, half-written, corrupt or wrong-kind model folder is refused with a clear error.

The fake folders here hold placeholder files; the tiny folders (tests/tiny_models.py) hold real
graphs, so a folder that passes the manifest checks but whose graphs do not fit is exercised too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import fastseg
import fastseg.manifest as manifest_module
from fastseg.manifest import (
    FORMAT,
    FORMAT_VERSION,
    GRAPHS_BY_FAMILY,
    ModelFolderError,
    load_model_folder,
    write_manifest,
)
from fastseg.registry import REGISTRY, get_spec
from fastseg.sam import DECODER_IMAGE_OUTPUTS, DECODER_INPUTS, DECODER_OUTPUTS, POINT_DECODER_INPUTS


def _folder(tmp_path: Path, name: str = "mobile_sam") -> Path:
    spec = get_spec(name)
    folder = tmp_path / name
    folder.mkdir()
    graphs = GRAPHS_BY_FAMILY[spec.family]
    entries = {}
    for g in graphs:
        (folder / f"{g}.onnx").write_bytes(b"onnx" * 10)
        (folder / f"{g}.xml").write_bytes(b"<xml/>")
        (folder / f"{g}.bin").write_bytes(b"\0" * 64)
        entries[g] = {"onnx": f"{g}.onnx", "openvino": f"{g}.xml", "inputs": [], "outputs": []}
    write_manifest(
        folder,
        {"format": FORMAT, "format_version": FORMAT_VERSION, "model": name, "family": spec.family,
         "spec": spec.to_dict(), "graphs": entries, "weights": "random weights (seed 0)"},
    )
    return folder


def test_valid_folder_round_trip(tmp_path: Path) -> None:
    folder = load_model_folder(_folder(tmp_path))
    assert folder.spec == REGISTRY["mobile_sam"]
    assert folder.family == "sam" and folder.weights == "random weights (seed 0)"
    assert folder.graph_file("encoder", "openvino").name == "encoder.xml"
    assert folder.graph_file("decoder", "onnxruntime").name == "decoder.onnx"
    with pytest.raises(ModelFolderError, match="no graph 'network'"):
        folder.graph_file("network", "openvino")


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match="model folder not found"):
        load_model_folder(tmp_path / "nothing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelFolderError, match="got a file"):
        load_model_folder(tmp_path / "file")


def test_half_written_folder(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (folder / "manifest.json").unlink()
    with pytest.raises(ModelFolderError, match="no manifest.json: .* export that did not finish"):
        load_model_folder(folder)


def test_missing_and_truncated_files(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (folder / "decoder.bin").unlink()
    with pytest.raises(ModelFolderError, match="incomplete: decoder.bin is missing"):
        load_model_folder(folder)
    (tmp_path / "b").mkdir()
    folder2 = _folder(tmp_path / "b")
    (folder2 / "encoder.bin").write_bytes(b"\0" * 10)
    with pytest.raises(ModelFolderError, match="encoder.bin has 10 bytes, the manifest recorded 64"):
        load_model_folder(folder2)


def test_corrupt_manifest(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="not valid JSON"):
        load_model_folder(folder)
    (folder / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ModelFolderError, match="not a fastseg manifest"):
        load_model_folder(folder)
    (folder / "manifest.json").write_text(json.dumps({"format": FORMAT, "format_version": 99}))
    with pytest.raises(ModelFolderError, match="format_version 99; this fastseg reads version 2"):
        load_model_folder(folder)


def test_wrong_family(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "fastsam_s")
    assert load_model_folder(folder).family == "fastsam"
    with pytest.raises(ModelFolderError, match="holds a 'fastsam' model .*expected a 'sam' model"):
        load_model_folder(folder, family="sam")


def test_unknown_model_name_lists_valid_ones() -> None:
    expected = "unknown model 'sam_vit_x'; expected one of: clip_vit_b32, fastsam_s, fastsam_x, mobile_sam"
    with pytest.raises(ValueError, match=expected):
        get_spec("sam_vit_x")


def test_more_malformed_manifests(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    for change, message in (
        ({"graphs": None}, "lacks the 'graphs' entry"),
        ({"family": "yolo"}, r"unknown family 'yolo', expected one of \['clip', 'fastsam', 'sam', 'sam2'\]"),
        ({"graphs": {"encoder": manifest["graphs"]["encoder"]}}, r"family 'sam' needs graphs \['decoder',"),
        ({"spec": {**manifest["spec"], "pixel_mean": None}}, "malformed 'spec' entry"),
        ({"spec": {**manifest["spec"], "colour": "blue"}}, "malformed 'spec' entry"),
    ):
        broken = {k: v for k, v in {**manifest, **change}.items() if v is not None}
        (folder / "manifest.json").write_text(json.dumps(broken))
        with pytest.raises(ModelFolderError, match=message):
            load_model_folder(folder)


# --------------------------------------------------------------------------------------------------
# Tiny folders: real graphs


def _names(entries: list[dict]) -> tuple[str, ...]:
    return tuple(e["name"] for e in entries)


def test_tiny_folders_look_like_exports(tiny_sam_folder: Path, tiny_fastsam_folder: Path) -> None:
    sam = load_model_folder(tiny_sam_folder, family="sam")
    assert sam.spec == REGISTRY["mobile_sam"] and sam.name == "mobile_sam"
    graphs = sam.manifest["graphs"]
    assert set(graphs) == set(GRAPHS_BY_FAMILY["sam"])
    assert _names(graphs["decoder"]["inputs"]) == DECODER_INPUTS
    assert _names(graphs["decoder"]["outputs"]) == _names(graphs["decoder_points"]["outputs"]) == DECODER_OUTPUTS
    assert _names(graphs["decoder_image"]["outputs"]) == DECODER_IMAGE_OUTPUTS
    assert _names(graphs["decoder_points"]["inputs"]) == POINT_DECODER_INPUTS
    assert graphs["decoder"]["inputs"][1] == {"name": "point_coords", "shape": [None, None, 2], "dtype": "float32"}
    for graph in graphs:
        for backend in ("openvino", "onnxruntime"):
            assert sam.graph_file(graph, backend).is_file()
    fastsam = load_model_folder(tiny_fastsam_folder, family="fastsam")
    assert fastsam.spec == REGISTRY["fastsam_s"]
    network = fastsam.manifest["graphs"]["network"]
    assert network["inputs"] == [{"name": "images", "shape": [1, 3, None, None], "dtype": "float32"}]
    assert _names(network["outputs"]) == ("detections", "protos")


def test_tiny_folders_match_real_exports(tiny_sam_folder: Path, tiny_fastsam_folder: Path, exported_model) -> None:
    """Every graph of a tiny folder has the input and output names of the real export, in its order,
    the same static dimensions (the tiny FastSAM fixes its anchor count) and the 'extra' entries."""
    for name, tiny in (("mobile_sam", tiny_sam_folder), ("fastsam_s", tiny_fastsam_folder)):
        real = load_model_folder(exported_model(name)).manifest
        mine = load_model_folder(tiny).manifest
        assert set(mine["graphs"]) == set(real["graphs"])
        if name == "mobile_sam":
            assert mine["extra"] == real["extra"]
        else:  # what the runtime reads
            assert mine["extra"]["num_mask_coefficients"] == real["extra"]["num_mask_coefficients"]
        for graph, entry in real["graphs"].items():
            for side in ("inputs", "outputs"):
                assert _names(mine["graphs"][graph][side]) == _names(entry[side]), (name, graph, side)
                for a, b in zip(mine["graphs"][graph][side], entry[side]):
                    assert len(a["shape"]) == len(b["shape"]) and a["dtype"] == b["dtype"]
                    assert all(x == y for x, y in zip(a["shape"], b["shape"]) if y is not None), (a, b)


def _edited_copy(folder: Path, tmp_path: Path, edit) -> Path:  # noqa: ANN001
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest, copy)
    write_manifest(copy, manifest)
    return copy


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_graphs_that_do_not_fit_are_refused(tiny_sam_folder: Path, tmp_path: Path, backend: str) -> None:
    def swap(manifest: dict, copy: Path) -> None:  # the decoder entry points at decoder_image's files
        manifest["graphs"]["decoder"] = manifest["graphs"]["decoder_image"]

    folder = _edited_copy(tiny_sam_folder, tmp_path, swap)
    with pytest.raises(ValueError, match=r"decoder inputs must include \['image_embeddings', 'point_coords'.*missing"):
        fastseg.Predictor(folder, backend=backend, cache_dir=False)


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_corrupt_graph_files_are_refused(tiny_sam_folder: Path, tmp_path: Path, backend: str) -> None:
    """A file of the recorded size but garbage inside: the backend's error, naming the file."""

    def garble(manifest: dict, copy: Path) -> None:
        for name in ("decoder_points.onnx", "decoder_points.xml"):
            path = copy / name
            path.write_bytes(b"\x07" * path.stat().st_size)

    folder = _edited_copy(tiny_sam_folder, tmp_path, garble)
    load_model_folder(folder)  # sizes match: the manifest cannot tell
    engine = "OpenVINO" if backend == "openvino" else "ONNX Runtime"
    with pytest.raises(ModelFolderError, match=f"{engine} could not load .*decoder_points"):
        fastseg.Predictor(folder, backend=backend, cache_dir=False)


@pytest.mark.parametrize(
    ("family", "key", "message"),
    [
        ("sam", "low_res_size", "needs low_res_size, num_mask_outputs and embedding_shape for a SAM model"),
        ("sam", "embedding_shape", "needs low_res_size, num_mask_outputs and embedding_shape"),
        ("fastsam", "num_mask_coefficients", "needs num_mask_coefficients for a FastSAM model"),
    ],
)
def test_missing_extra_entries_are_refused(tiny_sam_folder, tiny_fastsam_folder, tmp_path, family, key, message):
    source = tiny_sam_folder if family == "sam" else tiny_fastsam_folder
    folder = _edited_copy(source, tmp_path, lambda manifest, copy: manifest["extra"].pop(key))
    with pytest.raises(ModelFolderError, match=message):
        fastseg.Predictor(folder, backend="onnxruntime")


def test_a_spec_of_the_other_family_is_refused(tiny_fastsam_folder: Path, tmp_path: Path) -> None:
    def relabel(manifest: dict, copy: Path) -> None:
        manifest["spec"] = get_spec("mobile_sam").to_dict()

    folder = _edited_copy(tiny_fastsam_folder, tmp_path, relabel)
    with pytest.raises(ModelFolderError, match="FastSamEngine needs a fastsam model folder with letterbox resizing"):
        fastseg.Predictor(folder, backend="onnxruntime")


# --------------------------------------------------------------------------------------------------
# Integrity: content hashes, verified once; every path inside the folder (issue #11, defect 4)


@pytest.fixture
def hash_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, int]:
    """A cache root of this test's own, no in-process memo, and a count of the files hashed."""
    monkeypatch.setenv("FASTSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(manifest_module, "_MEMO", {}, raising=False)
    counts = {"hashed": 0}
    real = getattr(manifest_module, "_hash_file", None)

    def counting(path: Path) -> str:
        counts["hashed"] += 1
        return real(path)  # type: ignore[misc]

    monkeypatch.setattr(manifest_module, "_hash_file", counting, raising=False)
    return counts


def _rewrite(folder: Path, change) -> None:  # noqa: ANN001
    """Edit manifest.json in place (without recomputing ``files``, unlike write_manifest)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_write_manifest_records_size_and_sha256(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    files = json.loads((folder / "manifest.json").read_text())["files"]
    assert set(files) == {p.name for p in folder.iterdir()} - {"manifest.json"}
    for name, entry in files.items():
        data = (folder / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.parametrize("content", [b"\x01" * 64, np.full(16, np.nan, np.float32).tobytes()], ids=["other", "nan"])
def test_same_size_other_content_is_refused(tmp_path: Path, hash_cache: dict[str, int], content: bytes) -> None:
    """A .bin of the recorded size from another model, or NaN bytes in a weight, failed to be noticed
    when only sizes were checked."""
    folder = _folder(tmp_path)
    load_model_folder(folder)
    (folder / "encoder.bin").write_bytes(content)
    assert len(content) == 64
    with pytest.raises(ModelFolderError, match=r"damaged: encoder.bin .*sha256 .*the manifest recorded"):
        load_model_folder(folder)


def test_hashes_are_verified_once(tmp_path: Path, hash_cache: dict[str, int]) -> None:
    folder = _folder(tmp_path)
    n_files = len(json.loads((folder / "manifest.json").read_text())["files"])
    hash_cache["hashed"] = 0  # write_manifest hashed them
    load_model_folder(folder)
    assert hash_cache["hashed"] == n_files
    load_model_folder(folder)  # same process
    manifest_module._MEMO.clear()
    load_model_folder(folder)  # a new process: the verdicts come from the cache file
    assert hash_cache["hashed"] == n_files
    assert list((tmp_path / "cache" / "verified").iterdir()) == [tmp_path / "cache" / "verified" / "sha256.json"]
    # Same size, same mtime (os.utime): the change time and the inode still tell the file changed.
    path = folder / "encoder.bin"
    stat = path.stat()
    path.write_bytes(b"\x02" * 64)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ModelFolderError, match="encoder.bin"):
        load_model_folder(folder)


@pytest.mark.parametrize("breakage", ["garbage", "directory", "root_is_a_file", "wrong_types"])
def test_a_broken_hash_cache_means_verify_again(
    tmp_path: Path, hash_cache: dict[str, int], breakage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _folder(tmp_path)
    cache_file = tmp_path / "cache" / "verified" / "sha256.json"
    cache_file.parent.mkdir(parents=True)
    if breakage == "garbage":
        cache_file.write_bytes(b"\xff{not json")
    elif breakage == "directory":
        cache_file.mkdir()
    elif breakage == "wrong_types":
        cache_file.write_text(json.dumps({"version": 1, "files": {str(folder / "encoder.bin"): [1, 2], "x": None}}))
    else:
        (tmp_path / "file").write_text("x")
        monkeypatch.setenv("FASTSEG_CACHE", str(tmp_path / "file" / "cache"))
    n_files = len(json.loads((folder / "manifest.json").read_text())["files"])
    hash_cache["hashed"] = 0
    for _ in range(2):
        manifest_module._MEMO.clear()
        load_model_folder(folder)
    writable = breakage in ("garbage", "wrong_types")
    assert hash_cache["hashed"] == (n_files if writable else 2 * n_files)
    (folder / "decoder.bin").write_bytes(b"\x03" * 64)
    with pytest.raises(ModelFolderError, match="decoder.bin"):
        load_model_folder(folder)


def test_old_manifests_with_sizes_only_still_load(tmp_path: Path, hash_cache: dict[str, int]) -> None:
    """Folders exported before the hashes: sizes are checked, content is not (documented)."""
    folder = _folder(tmp_path)
    _rewrite(folder, lambda m: m.update(files={name: e["size"] for name, e in m["files"].items()}))
    hash_cache["hashed"] = 0
    load_model_folder(folder)
    (folder / "encoder.bin").write_bytes(b"\x01" * 64)
    load_model_folder(folder)
    assert hash_cache["hashed"] == 0
    (folder / "encoder.bin").write_bytes(b"\x01" * 63)
    with pytest.raises(ModelFolderError, match="encoder.bin has 63 bytes, the manifest recorded 64"):
        load_model_folder(folder)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"size": 64}, "files entry for 'encoder.bin'"),
        ({"size": "64", "sha256": "0" * 64}, "files entry for 'encoder.bin'"),
        ({"size": 64, "sha256": "not hex"}, "files entry for 'encoder.bin'"),
        (-1, "files entry for 'encoder.bin'"),
        (True, "files entry for 'encoder.bin'"),
    ],
)
def test_malformed_files_entries_are_refused(tmp_path: Path, entry: object, message: str) -> None:
    folder = _folder(tmp_path)
    _rewrite(folder, lambda m: m["files"].update({"encoder.bin": entry}))
    with pytest.raises(ModelFolderError, match=message):
        load_model_folder(folder)
    _rewrite(folder, lambda m: m.update(files=["encoder.bin"]))
    with pytest.raises(ModelFolderError, match="'files' must map file names to"):
        load_model_folder(folder)


def _outside(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """A folder whose manifest reaches outside it, and the name that does."""
    folder = _folder(tmp_path, "fastsam_s")
    (tmp_path / "fastsam_x").mkdir()
    other = tmp_path / "fastsam_x" / "network.xml"
    other.write_bytes(b"<xml/>")
    if kind == "dotdot_graph":  # a FastSAM-x graph loaded as FastSAM-s
        name = "../fastsam_x/network.xml"
        entry = {"size": 6, "sha256": hashlib.sha256(b"<xml/>").hexdigest()}
        _rewrite(folder, lambda m: (m["graphs"]["network"].update(openvino=name), m["files"].update({name: entry})))
    elif kind == "absolute_graph":
        name = str(other)
        _rewrite(folder, lambda m: m["graphs"]["network"].update(onnx=name))
    elif kind == "dotdot_file":
        name = "../fastsam_x/network.xml"
        _rewrite(folder, lambda m: m["files"].update({name: 6}))
    elif kind == "absolute_file":
        name = "/etc/hostname"
        _rewrite(folder, lambda m: m["files"].update({name: 1}))
    elif kind == "symlink":  # network.xml inside the folder points at another model's file
        name = "network.xml"
        (folder / "network.xml").unlink()
        (folder / "network.xml").symlink_to(other)
    elif kind == "symlinked_folder_entry":
        name = "sub/network.xml"
        (folder / "sub").symlink_to(tmp_path / "fastsam_x", target_is_directory=True)
        _rewrite(folder, lambda m: (m["graphs"]["network"].update(openvino=name), m["files"].update({name: 6})))
    else:
        raise ValueError(kind)
    return folder, name


@pytest.mark.parametrize(
    "kind", ["dotdot_graph", "absolute_graph", "dotdot_file", "absolute_file", "symlink", "symlinked_folder_entry"]
)
def test_paths_outside_the_folder_are_refused(tmp_path: Path, hash_cache: dict[str, int], kind: str) -> None:
    folder, name = _outside(tmp_path, kind)
    with pytest.raises(ModelFolderError, match=f"{re.escape(name)!s}.* outside the model folder"):
        load_model_folder(folder)


def test_graph_files_must_be_listed(tmp_path: Path, hash_cache: dict[str, int]) -> None:
    folder = _folder(tmp_path, "fastsam_s")
    (folder / "extra.xml").write_bytes(b"<xml/>")  # present, but not in the manifest's files: not verified
    _rewrite(folder, lambda m: m["graphs"]["network"].update(openvino="extra.xml"))
    with pytest.raises(ModelFolderError, match="graph 'network' uses extra.xml, which the manifest's files do not"):
        load_model_folder(folder)
    (folder / "extra.bin").write_bytes(b"\0" * 64)  # the weights OpenVINO would read with extra.xml
    _rewrite(folder, lambda m: m["files"].update({"extra.xml": 6}))
    with pytest.raises(ModelFolderError, match="graph 'network' uses extra.bin, which the manifest's files do not"):
        load_model_folder(folder)
    _rewrite(folder, lambda m: m["graphs"].update(network="network.xml"))
    with pytest.raises(ModelFolderError, match="graph 'network' must be an object"):
        load_model_folder(folder)


def test_symlinks_inside_the_folder_are_fine(tmp_path: Path, hash_cache: dict[str, int]) -> None:
    folder = _folder(tmp_path, "fastsam_s")
    (folder / "network.bin").rename(folder / "weights.bin")
    (folder / "network.bin").symlink_to("weights.bin")
    load_model_folder(folder)


def test_the_predictor_verifies_hashes(tiny_fastsam_folder: Path, tmp_path: Path, hash_cache: dict[str, int]) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_fastsam_folder, copy)
    path = copy / "network.bin"
    data = bytearray(path.read_bytes())
    data[-4:] = np.float32(np.nan).tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFolderError, match="damaged: network.bin"):
        fastseg.Predictor(copy, cache_dir=False)


def test_an_unreadable_file_is_a_model_folder_error(
    tmp_path: Path, hash_cache: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root reads every file, so the refusal to read is emulated."""
    folder = _folder(tmp_path)

    def refuse(path: Path) -> str:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(manifest_module, "_hash_file", refuse)
    with pytest.raises(ModelFolderError, match="cannot read decoder.bin .*Permission denied"):
        load_model_folder(folder)
