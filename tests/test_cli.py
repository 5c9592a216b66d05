"""The `fastseg` command line: export and segment, their outputs and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastseg.cli import main


def test_export_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["export", "mobile_sam", "--out", str(tmp_path / "o")]) == 2
    assert "give the checkpoint: --checkpoint PATH, or --download" in capsys.readouterr().err
    missing = str(tmp_path / "missing.pt")
    assert main(["export", "mobile_sam", "--checkpoint", missing, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastseg: error: checkpoint not found") and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["export", "sam_vit_z", "--checkpoint", "x"])
    assert "invalid choice: 'sam_vit_z'" in capsys.readouterr().err


def test_export_cli_writes_model_folder(tmp_path: Path, random_checkpoint, capsys) -> None:
    """The command itself (the recipes are exported by the session's fixtures too): FastSAM-s, the
    quickest of the four to export here (one graph)."""
    out = tmp_path / "fastsam_s"
    assert main(["export", "fastsam_s", "--checkpoint", str(random_checkpoint("fastsam_s")), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == "fastsam_s" and manifest["weights"] == "random weights (seed 0)"
    assert set(manifest["graphs"]) == {"network"}
    assert {p.name for p in out.iterdir()} == {"manifest.json", "network.onnx", "network.xml", "network.bin"}
    for backend in ("onnxruntime", "openvino"):
        for figures in manifest["self_check"]["network"][backend].values():
            assert figures["max_rel"] <= 1e-3
    err = capsys.readouterr().err
    assert "self-check network" in err and "max_rel" in err and f"done: {out}" in err


def test_segment_cli_writes_mask_and_overlay(tmp_path: Path, exported_model, photos, capsys) -> None:
    image = tmp_path / "chelsea.png"
    Image.fromarray(photos["chelsea"]).save(image)
    mask, overlay = tmp_path / "mask.png", tmp_path / "overlay.png"
    code = main(["segment", str(image), "--model", str(exported_model("mobile_sam")), "--point", "225,150",
                 "--mask", str(mask), "--overlay", str(overlay)])
    assert code == 0
    out = capsys.readouterr().out
    assert "mobile_sam (random weights (seed 0))" in out
    m = np.asarray(Image.open(mask))
    o = np.asarray(Image.open(overlay))
    assert m.shape == (300, 451) and set(np.unique(m)) <= {0, 255} and (m == 255).any()
    assert o.shape == (300, 451, 3)
    assert not np.array_equal(o[m == 255], photos["chelsea"][m == 255])  # painted where the mask is
    assert np.array_equal(o[m == 0], photos["chelsea"][m == 0])  # untouched elsewhere


def test_segment_cli_bad_input(tmp_path: Path, exported_model, capsys) -> None:
    model = str(exported_model("mobile_sam"))
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(image)
    assert main(["segment", str(image), "--model", model, "--point", "100,10"]) == 2
    assert "points must lie inside the 60x40 image" in capsys.readouterr().err
    assert main(["segment", str(image), "--model", model]) == 2
    assert "predict needs points and/or boxes" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "none.png"), "--model", model, "--point", "1,1"]) == 2
    assert "image not found" in capsys.readouterr().err
    assert main(["segment", str(image), "--model", str(tmp_path), "--point", "1,1"]) == 2
    assert "has no manifest.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["segment", str(image), "--model", model, "--point", "1;2"])
    assert "expected X,Y (two numbers)" in capsys.readouterr().err
