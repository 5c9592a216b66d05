"""A missing, half-written, corrupt or wrong-kind model folder is refused with a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastseg.manifest import (
    FORMAT,
    FORMAT_VERSION,
    GRAPHS_BY_FAMILY,
    ModelFolderError,
    load_model_folder,
    write_manifest,
)
from fastseg.registry import REGISTRY, get_spec


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
    expected = "unknown model 'sam_vit_x'; expected one of: fastsam_s, fastsam_x, mobile_sam"
    with pytest.raises(ValueError, match=expected):
        get_spec("sam_vit_x")
