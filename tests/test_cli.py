"""The `fastseg` command line: segment on tiny model folders, its argument errors, and the export and
bench commands that the optional packages register through entry points."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import RADII, WEIGHTS_LABEL

import fastseg.cli
from fastseg.cli import main


@pytest.fixture(scope="module")
def chelsea_png(tmp_path_factory: pytest.TempPathFactory, photos) -> Path:
    path = tmp_path_factory.mktemp("images") / "chelsea.png"
    Image.fromarray(photos["chelsea"]).save(path)
    return path


@pytest.fixture(autouse=True)
def _compiled_cache_in_tmp(monkeypatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The command has no cache option: keep OpenVINO's compiled-model cache out of the home folder."""
    monkeypatch.setenv("FASTSEG_CACHE", str(tmp_path_factory.getbasetemp() / "fastseg-cache"))


def _one_line_error(capsys, message: str) -> None:
    err = capsys.readouterr().err
    assert err.startswith("fastseg: error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err


def _summary(out: str) -> tuple[int, int, list[float]]:
    """``(masks, kept, scores)`` from segment's summary line."""
    found = re.search(r": (\d+) masks, kept (\d+) \(scores \[([^]]*)\]\)", out)
    assert found, out
    scores = [float(v) for v in found[3].split(",")] if found[3] else []
    return int(found[1]), int(found[2]), scores


def _disc(size: tuple[int, int], centre: tuple[float, float], radius: float) -> tuple[np.ndarray, np.ndarray]:
    """SAM's disc of ``radius`` input pixels around ``centre``, and the pixels within 1.5 input pixels
    of its circle (see tests/test_engines_tiny.py)."""
    h, w = size
    s = 1024 / max(h, w)
    new_h, new_w = int(h * s + 0.5), int(w * s + 0.5)
    dx = (np.arange(w) + 0.5 - centre[0]) * new_w / w
    dy = (np.arange(h) + 0.5 - centre[1]) * new_h / h
    d = np.sqrt(dx[None] ** 2 + dy[:, None] ** 2)
    return d < radius, np.abs(d - radius) < 1.5


# --------------------------------------------------------------------------------------------------
# segment


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_segment_writes_the_best_mask_and_overlay(tmp_path, tiny_sam_folder, chelsea_png, photos, capsys, backend):
    mask, overlay = tmp_path / "mask.png", tmp_path / "overlay.png"
    code = main(["segment", str(chelsea_png), "--model", str(tiny_sam_folder), "--point", "225,150",
                 "--mask", str(mask), "--overlay", str(overlay), "--backend", backend])
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"mobile_sam ({WEIGHTS_LABEL}), {backend} f32: ")
    assert _summary(out) == (3, 1, [pytest.approx(0.91)])  # tests/tiny_models.py: 0.9 + 0.01 per padding point
    assert f"mask: {mask}" in out and f"overlay: {overlay}" in out
    m = np.asarray(Image.open(mask))
    o = np.asarray(Image.open(overlay))
    assert m.shape == (300, 451) and set(np.unique(m)) == {0, 255}
    expected, edge = _disc((300, 451), (225, 150), RADII[2])  # the best-scoring mask: radius 120
    assert ((m == 255) == expected)[~edge].all()
    assert o.shape == (300, 451, 3)
    image = photos["chelsea"]
    assert not np.array_equal(o[m == 255], image[m == 255])  # painted where the mask is
    assert np.array_equal(o[m == 0], image[m == 0])  # untouched elsewhere


def test_segment_single_mask_boxes_and_labels(tmp_path, tiny_sam_folder, chelsea_png, capsys) -> None:
    mask = tmp_path / "mask.png"
    # Background point first, then a foreground one: the tiny decoder's disc is around the foreground point.
    code = main(["segment", str(chelsea_png), "--model", str(tiny_sam_folder), "--point", "50,50", "--label", "0",
                 "--point", "300,200", "--label", "1", "--single-mask", "--mask", str(mask)])
    assert code == 0 and _summary(capsys.readouterr().out) == (1, 1, [pytest.approx(0.51)])
    expected, edge = _disc((300, 451), (300, 200), RADII[0])
    assert ((np.asarray(Image.open(mask)) == 255) == expected)[~edge].all()
    # Two boxes: two prompt sets, the best mask of each, united (discs around the top-left corners).
    code = main(["segment", str(chelsea_png), "--model", str(tiny_sam_folder), "--box", "100,50,300,250",
                 "--box", "350,200,440,290", "--mask", str(mask)])
    assert code == 0 and _summary(capsys.readouterr().out) == (6, 2, [pytest.approx(0.9)] * 2)
    first, edge1 = _disc((300, 451), (100, 50), RADII[2])
    second, edge2 = _disc((300, 451), (350, 200), RADII[2])
    assert ((np.asarray(Image.open(mask)) == 255) == (first | second))[~(edge1 | edge2)].all()


def test_segment_fastsam_box(tmp_path, tiny_fastsam_folder, chelsea_png, capsys) -> None:
    """FastSAM keeps every selected detection: a box around detection a selects it (a disc of radius
    90 input pixels around input (300, 300), i.e. chelsea's (132.1, 127.3))."""
    mask = tmp_path / "mask.png"
    code = main(["segment", str(chelsea_png), "--model", str(tiny_fastsam_folder), "--box", "88,83,176,171",
                 "--mask", str(mask), "--backend", "onnxruntime"])
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"fastsam_s ({WEIGHTS_LABEL}), onnxruntime f32: ")
    assert _summary(out) == (1, 1, [pytest.approx(0.9)])
    m = np.asarray(Image.open(mask)) == 255
    assert m[127, 132] and not m[127, 70] and not m[60, 132]
    assert np.count_nonzero(m) == pytest.approx(np.pi * (90 * 451 / 1024) * (90 * 300 / 681), rel=0.02)


def test_no_cache_compiles_without_the_cache(tmp_path, tiny_fastsam_folder, chelsea_png, capsys, monkeypatch) -> None:
    """--no-cache: nothing is written to the compiled-model cache; without it the cache fills."""
    monkeypatch.setenv("FASTSEG_CACHE", str(tmp_path / "cache"))
    args = ["segment", str(chelsea_png), "--model", str(tiny_fastsam_folder), "--box", "88,83,176,171"]
    assert main([*args, "--no-cache"]) == 0
    compiled = tmp_path / "cache" / "compiled"
    assert not compiled.exists() or not any(compiled.rglob("*.blob"))
    assert main(args) == 0
    assert any(compiled.rglob("*.blob"))
    capsys.readouterr()


def test_segment_everything_json(tmp_path, tiny_fastsam_folder, chelsea_png, capsys) -> None:
    from fastseg.rle import decode

    out_json, mask, overlay = tmp_path / "masks.json", tmp_path / "all.png", tmp_path / "overlay.png"
    code = main(["segment", str(chelsea_png), "--model", str(tiny_fastsam_folder), "--everything", "--conf", "0.25",
                 "--json", str(out_json), "--mask", str(mask), "--overlay", str(overlay)])
    assert code == 0
    out = capsys.readouterr().out
    assert "everything: 4 masks" in out and f"json: {out_json}" in out
    data = json.loads(out_json.read_text())
    assert data["image"] == {"file": str(chelsea_png), "height": 300, "width": 451}
    assert data["model"] == "fastsam_s" and data["weights"] == WEIGHTS_LABEL and data["parameters"] == {}
    annotations = data["annotations"]
    assert [a["score"] for a in annotations] == pytest.approx([0.9, 0.7, 0.6, 0.3])
    masks = decode([a["segmentation"] for a in annotations])
    assert masks.shape == (4, 300, 451)
    assert [a["area"] for a in annotations] == masks.sum(axis=(1, 2)).tolist()
    np.testing.assert_array_equal(np.asarray(Image.open(mask)) == 255, masks.any(axis=0))
    assert np.asarray(Image.open(overlay)).shape == (300, 451, 3)
    assert not list(tmp_path.glob(".*partial"))  # written atomically


def test_segment_everything_sam_parameters(tmp_path, tiny_sam_folder, chelsea_png, capsys) -> None:
    out_json = tmp_path / "sam.json"
    code = main(["segment", str(chelsea_png), "--model", str(tiny_sam_folder), "--everything", "--points-per-side",
                 "4", "--pred-iou-thresh", "0.85", "--json", str(out_json), "--backend", "onnxruntime"])
    assert code == 0 and "everything: 16 masks" in capsys.readouterr().out
    data = json.loads(out_json.read_text())
    assert data["parameters"] == {"points_per_side": 4, "pred_iou_thresh": 0.85}
    assert len(data["annotations"]) == 16
    assert [a["predicted_iou"] for a in data["annotations"]] == [pytest.approx(0.91)] * 16


# --------------------------------------------------------------------------------------------------
# errors: one line on stderr, exit code 2, no traceback


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--point", "500,10"], "points must lie inside the 451x300 image"),
        ([], "predict needs points and/or boxes"),
        (["--label", "1"], "--label needs --point"),
        (["--point", "1,1", "--point", "2,2", "--label", "1"], "got 2 points but 1 labels"),
        (["--box", "10,10,5,5"], "boxes must be XYXY with x1 <= x2 and y1 <= y2"),
        (["--point", "1,1", "--json", "x.json"], "--json writes everything-mode records: it needs --everything"),
        (["--everything", "--point", "1,1"], "--everything segments the whole image without prompts"),
        (["--point", "1,1", "--backend", "onnxruntime", "--precision", "bf16"], "onnxruntime backend runs f32 only"),
    ],
)
def test_segment_errors_are_one_line(tiny_sam_folder, chelsea_png, capsys, args, message) -> None:
    backend = [] if "--backend" in args else ["--backend", "onnxruntime"]  # the quickest to open
    assert main(["segment", str(chelsea_png), "--model", str(tiny_sam_folder), *backend, *args]) == 2
    _one_line_error(capsys, message)


def test_segment_file_errors_are_one_line(tmp_path, tiny_sam_folder, tiny_fastsam_folder, chelsea_png, capsys) -> None:
    sam, fastsam = str(tiny_sam_folder), str(tiny_fastsam_folder)
    ort = ["--backend", "onnxruntime"]
    assert main(["segment", str(tmp_path / "none.png"), "--model", sam, "--point", "1,1"]) == 2
    _one_line_error(capsys, "image not found")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert main(["segment", str(tmp_path / "bad.png"), "--model", sam, "--point", "1,1"]) == 2
    _one_line_error(capsys, "cannot read")
    assert main(["segment", str(chelsea_png), "--model", str(tmp_path), "--point", "1,1"]) == 2
    _one_line_error(capsys, "has no manifest.json")
    assert main(["segment", str(chelsea_png), "--model", fastsam, "--everything", "--points-per-side", "4", *ort]) == 2
    _one_line_error(capsys, "FastSAM everything mode takes only output_mode")
    assert main(["segment", str(chelsea_png), "--model", fastsam, "--point", "1,1", "--conf", "1.5", *ort]) == 2
    _one_line_error(capsys, "conf must be a number in [0, 1], got 1.5")
    assert main(["segment", str(chelsea_png), "--model", sam, "--everything", "--points-per-side", "0", *ort]) == 2
    _one_line_error(capsys, "points_per_side")
    sam2_only = ["--everything", "--use-m2m", "--mask-threshold", "1"]
    assert main(["segment", str(chelsea_png), "--model", sam, *sam2_only]) == 2
    _one_line_error(capsys, "--mask-threshold, --[no-]use-m2m: option(s) of SAM 2.1's generator only")
    assert main(["batch", str(tmp_path), "--model", sam, "--out", str(tmp_path / "o"), "--no-multimask-output"]) == 2
    _one_line_error(capsys, "--[no-]multimask-output: option(s) of SAM 2.1's generator only")


def test_debug_shows_the_traceback(tiny_sam_folder, chelsea_png) -> None:
    with pytest.raises(ValueError, match="predict needs points and/or boxes"):
        main(["--debug", "segment", str(chelsea_png), "--model", str(tiny_sam_folder), "--backend", "onnxruntime"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["segment", "x.png", "--model", "m", "--point", "1;2"], "expected X,Y (two numbers), got '1;2'"),
        (["segment", "x.png", "--model", "m", "--box", "1,2,3"], "expected X1,Y1,X2,Y2 (four numbers), got '1,2,3'"),
        (["segment", "x.png", "--model", "m", "--point", "1,1", "--label", "2"], "invalid choice: 2"),
        (["segment", "x.png", "--model", "m", "--backend", "tensorrt"], "invalid choice: 'tensorrt'"),
        (["segment", "x.png", "--model", "m", "--points-per-side", "many"], "invalid int value: 'many'"),
        (["segment", "x.png"], "the following arguments are required: --model"),
        (["export", "sam_vit_z", "--checkpoint", "x"], "invalid choice: 'sam_vit_z'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: command"),
    ],
)
def test_argument_errors_exit_2(capsys, args, message) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: fastseg") and message in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------------
# export and bench, through their entry points


def test_export_and_bench_come_from_entry_points(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["export", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fastseg export") and "--checkpoint" in out and "mobile_sam" in out
    # Every argument after `bench` goes to the benchmark's own parser, which returns its status.
    assert main(["bench", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: fastseg bench")
    assert main(["bench", "--frobnicate"]) == 2
    assert "unrecognized arguments: --frobnicate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "export" in out and "bench" in out and "not installed" not in out


def test_missing_entry_points_name_the_extra(monkeypatch, capsys) -> None:
    monkeypatch.setattr(fastseg.cli, "entry_points", lambda **kwargs: [])
    assert main(["export", "mobile_sam", "--checkpoint", "x.pt"]) == 2
    _one_line_error(capsys, "`fastseg export` is not installed: pip install 'fastseg[export]'")
    assert main(["bench", "--quick"]) == 2
    _one_line_error(capsys, "`fastseg bench` is not installed: pip install 'fastseg[bench]'")
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "(not installed: pip install 'fastseg[export]')" in capsys.readouterr().out


def test_export_argument_errors_are_one_line(tmp_path: Path, capsys) -> None:
    """Checked before the export toolchain (torch) is imported."""
    assert main(["export", "mobile_sam", "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "give the checkpoint: --checkpoint PATH, or --download")
    assert main(["export", "mobile_sam", "--checkpoint", "x.pt", "--download"]) == 2
    _one_line_error(capsys, "--checkpoint and --download exclude each other")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # imports the export toolchain (torch)
def test_export_missing_checkpoint_is_one_line(tmp_path: Path, capsys) -> None:
    missing = str(tmp_path / "missing.pt")
    assert main(["export", "mobile_sam", "--checkpoint", missing, "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "checkpoint not found")


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


def test_segment_cli_on_a_real_export(tmp_path: Path, exported_model, photos, capsys) -> None:
    """The command on a real (random-weight) MobileSAM export."""
    image = tmp_path / "chelsea.png"
    Image.fromarray(photos["chelsea"]).save(image)
    mask = tmp_path / "mask.png"
    code = main(["segment", str(image), "--model", str(exported_model("mobile_sam")), "--point", "225,150",
                 "--mask", str(mask)])
    assert code == 0
    assert "mobile_sam (random weights (seed 0))" in capsys.readouterr().out
    m = np.asarray(Image.open(mask))
    assert m.shape == (300, 451) and set(np.unique(m)) <= {0, 255}
