"""The runtime never imports torch, torchvision, cv2, ultralytics or the export toolchain, and works without them.

Each check runs in a fresh interpreter whose import system refuses the forbidden packages, so an
import anywhere in the runtime (even one caught by a ``try``) shows up.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

FORBIDDEN = (
    "torch", "torchvision", "cv2", "ultralytics", "segment_anything", "mobile_sam", "timm",
    "onnx", "skimage", "scipy", "matplotlib", "fastseg_export", "fastseg_bench",
)  # fmt: skip


def _run(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _blocker() -> str:
    return textwrap.dedent(
        f"""
        import json, sys, importlib.abc
        FORBIDDEN = {FORBIDDEN!r}
        ATTEMPTS = []
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in FORBIDDEN:
                    ATTEMPTS.append(name)
                    raise ImportError("forbidden import in the runtime: " + name)
                return None
        sys.meta_path.insert(0, Block())
        def report(**values):
            loaded = sorted(m for m in sys.modules if m.split('.')[0] in FORBIDDEN)
            print(json.dumps({{"loaded": loaded, "attempts": ATTEMPTS, **values}}))
        """
    )


def test_import_fastseg_is_light() -> None:
    out = _run(
        _blocker()
        + textwrap.dedent(
            """
            import fastseg
            from fastseg import Predictor, segment, save_embedding, load_embedding
            import fastseg.cli, fastseg.amg, fastseg.records, fastseg.rle, fastseg.draw
            report(backends=sorted(m for m in sys.modules if m.split('.')[0] in ("openvino", "onnxruntime")))
            """
        )
    )
    assert out["loaded"] == [] and out["attempts"] == []
    assert out["backends"] == []  # `import fastseg` does not even load a backend


def _predict_everything(folders: dict[str, Path], image_path: Path, tmp_path: Path) -> dict:
    """In a fresh interpreter: every path of the runtime on ``folders`` ({name: folder}), both backends."""
    return _run(
        _blocker()
        + textwrap.dedent(
            f"""
            import numpy as np
            import fastseg
            image = np.load({str(image_path)!r})
            shapes = {{}}
            for name, folder in {json.dumps({k: str(v) for k, v in folders.items()})}.items():
                sam = not name.startswith("fastsam")
                options = {{}} if sam else {{"conf": 0.05}}  # random weights: low confidence detections
                click = [[225, 150]] if sam else [[132, 127]]
                for backend in ("openvino", "onnxruntime"):
                    predictor = fastseg.Predictor(folder, backend=backend, cache_dir=False, **options)
                    predictor.set_image(image)
                    result = predictor.predict(points=click, labels=[1])
                    path = fastseg.save_embedding({str(tmp_path)!r} + "/" + name, predictor.get_image_embedding())
                    predictor.set_image_embedding(fastseg.load_embedding(path))
                    again = predictor.predict(points=click, labels=[1])
                    assert np.array_equal(result.masks, again.masks)
                    params = {{"points_per_side": 4}} if sam else {{}}
                    records = predictor.everything(output_mode="coco_rle", **params)
                    records.write_json({str(tmp_path)!r} + "/" + name + ".json")
                    overlay = records.overlay(image)
                    shapes[name + "/" + backend] = [list(result.masks.shape), len(records), list(overlay.shape)]
                if sam:
                    one = fastseg.segment(image, model=folder, boxes=[50, 50, 300, 250], backend="onnxruntime")
                    shapes[name + "/segment"] = list(one.masks.shape)
                else:
                    whole = fastseg.segment(image, model=folder, everything=True, backend="onnxruntime", **options)
                    shapes[name + "/segment"] = len(whole.records)
            report(shapes=shapes)
            """
        )
    )


def test_full_predict_without_torch(tiny_sam_folder, tiny_fastsam_folder, photos, tmp_path: Path) -> None:
    """Predict, embeddings on disk, everything mode, JSON and overlays, ``fastseg.segment``: on the tiny
    folders, both backends, with every forbidden package refused."""
    image_path = tmp_path / "photo.npy"
    np.save(image_path, photos["chelsea"])
    out = _predict_everything({"mobile_sam": tiny_sam_folder, "fastsam_s": tiny_fastsam_folder}, image_path, tmp_path)
    assert out["loaded"] == [] and out["attempts"] == []
    for backend in ("openvino", "onnxruntime"):
        # Tiny graphs (tests/tiny_models.py): 3 discs; 16 grid discs; FastSAM detections a, c, d (conf
        # 0.05 lets e in: 4), of which the click selects a and d.
        assert out["shapes"][f"mobile_sam/{backend}"] == [[3, 300, 451], 16, [300, 451, 3]]
        assert out["shapes"][f"fastsam_s/{backend}"] == [[2, 300, 451], 4, [300, 451, 3]]
    assert out["shapes"]["mobile_sam/segment"] == [3, 300, 451]
    assert out["shapes"]["fastsam_s/segment"] == 4


@pytest.mark.parametrize("name", ["mobile_sam", "fastsam_s"])
def test_full_predict_without_torch_on_a_real_export(name: str, exported_model, photos, tmp_path: Path) -> None:
    """The same on a real (random-weight) export: the full-size graphs need nothing more."""
    image_path = tmp_path / "photo.npy"
    np.save(image_path, photos["chelsea"])
    out = _predict_everything({name: exported_model(name)}, image_path, tmp_path)
    assert out["loaded"] == [] and out["attempts"] == []
    for backend in ("openvino", "onnxruntime"):
        masks_shape = out["shapes"][f"{name}/{backend}"][0]
        assert masks_shape[1:] == [300, 451]


def test_folders_without_torch_or_ray(tiny_sam_folder, photos, tmp_path: Path) -> None:
    """``fastseg embed`` into a store, a Predictor reading it, and ``fastseg batch`` to COCO RLE need
    none of the forbidden packages, nor Ray (an extra used only with --ray)."""
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for name, image in photos.items():
        Image.fromarray(image).resize((200, 150)).save(folder / f"{name}.png")
    out = _run(
        _blocker().replace('FORBIDDEN = (', 'FORBIDDEN = ("ray", ')
        + textwrap.dedent(
            f"""
            import fastseg
            import fastseg.cli
            from fastseg.cli import main
            fastseg.cli._add_plugin_commands = lambda sub: None  # `export` and `bench` are other packages
            folder, model, tmp = {str(folder)!r}, {str(tiny_sam_folder)!r}, {str(tmp_path)!r}
            assert main(["embed", folder, "--model", model, "--store", tmp + "/store", "--no-progress"]) == 0
            predictor = fastseg.Predictor(model, store=tmp + "/store")
            predictor.set_image(folder + "/chelsea.png")
            args = ["batch", folder, "--model", model, "--out", tmp + "/coco.json", "--no-progress"]
            assert main(args + ["--points-per-side", "4"]) == 0
            report(hits=predictor.store_hits)
            """
        )
    )
    assert out["loaded"] == [] and out["attempts"] == []
    assert out["hits"] == 1


def test_int8_predict_without_torch(tmp_path: Path) -> None:
    """``precision="int8"`` (the INT8 encoder of a tiny folder, :mod:`tiny_models`) needs none of the
    forbidden packages: NNCF and torch are the export's, not the runtime's."""
    from tiny_models import build_tiny_sam

    model = build_tiny_sam(tmp_path / "mobile_sam", int8=True)
    out = _run(
        _blocker()
        + textwrap.dedent(
            f"""
            import warnings
            import numpy as np
            import fastseg
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the INT8 speed warning on a CPU without VNNI
                predictor = fastseg.Predictor({str(model)!r}, precision="int8", cache_dir=False)
            predictor.set_image(np.zeros((120, 160, 3), dtype=np.uint8))
            result = predictor.predict(points=[[80, 60]], labels=[1])
            encoder = predictor.graph_precisions["encoder"]
            report(precision=predictor.precision, encoder=encoder, masks=len(result.masks))
            """
        )
    )
    assert out["loaded"] == [] and out["attempts"] == []
    assert out["precision"] == "int8" and out["encoder"] == "int8" and out["masks"] == 3


def test_sam2_predict_without_torch(exported_model, photos, tmp_path: Path) -> None:
    """A SAM 2.1 export: predict on both backends, its embedding on disk and back, ``fastseg.segment``
    with a box, and everything mode (with the hole and sprinkle clean-up and mask-to-mask refinement),
    with every forbidden package refused."""
    image_path = tmp_path / "photo.npy"
    np.save(image_path, photos["chelsea"])
    folder = exported_model("sam2.1_hiera_tiny")
    out = _run(
        _blocker()
        + textwrap.dedent(
            f"""
            import numpy as np
            import fastseg
            image = np.load({str(image_path)!r})
            shapes = {{}}
            for backend in ("openvino", "onnxruntime"):
                predictor = fastseg.Predictor({str(folder)!r}, backend=backend, cache_dir=False)
                predictor.set_image(image)
                result = predictor.predict(points=[[225, 150]], labels=[1])
                path = fastseg.save_embedding({str(tmp_path)!r} + "/sam2", predictor.get_image_embedding())
                predictor.set_image_embedding(fastseg.load_embedding(path))
                assert np.array_equal(result.masks, predictor.predict(points=[[225, 150]], labels=[1]).masks)
                every = predictor.everything(
                    points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0,
                    min_mask_region_area=50, use_m2m=True, output_mode="coco_rle",
                )
                shapes[backend] = [list(result.masks.shape), len(every)]
            one = fastseg.segment(image, model={str(folder)!r}, boxes=[50, 50, 300, 250], backend="onnxruntime")
            shapes["segment"] = list(one.masks.shape)
            report(shapes=shapes)
            """
        )
    )
    assert out["loaded"] == [] and out["attempts"] == []
    for backend in ("openvino", "onnxruntime"):
        assert out["shapes"][backend] == [[3, 300, 451], 27]
    assert out["shapes"]["segment"] == [3, 300, 451]


def test_text_prompt_without_torch(exported_model, photos, tmp_path: Path) -> None:
    """FastSAM text prompts (the CLIP graphs, the tokenizer, the crops) in Python and on the command
    line, both backends, with every forbidden package refused."""
    from PIL import Image

    fastsam, clip = exported_model("fastsam_s"), exported_model("clip_vit_b32")
    image_path = tmp_path / "photo.png"
    Image.fromarray(photos["coffee"]).save(image_path)
    out = _run(
        _blocker()
        + textwrap.dedent(
            f"""
            import fastseg, fastseg.cli
            fastseg.cli._add_plugin_commands = lambda sub: None  # `export` and `bench` are other packages
            found = {{}}
            for backend in ("openvino", "onnxruntime"):
                predictor = fastseg.Predictor({str(fastsam)!r}, backend=backend, clip={str(clip)!r}, cache_dir=False)
                predictor.set_image({str(image_path)!r})
                result = predictor.predict(texts=["a cup of coffee", "a spoon"])
                found[backend] = [len(result), sorted(result.scores.round(4).tolist()), result.info["clip"]]
            code = fastseg.cli.main([
                "segment", {str(image_path)!r}, "--model", {str(fastsam)!r}, "--clip", {str(clip)!r},
                "--text", "a cup of coffee", "--mask", {str(tmp_path / "mask.png")!r},
            ])
            report(found=found, code=code)
            """
        )
    )
    assert out["loaded"] == [] and out["attempts"] == []
    assert out["code"] == 0 and (tmp_path / "mask.png").exists()
    ov, ort = out["found"]["openvino"], out["found"]["onnxruntime"]
    assert 1 <= ov[0] <= 2 and ov[0] == ort[0]  # two texts: one detection each, possibly the same
    np.testing.assert_allclose(ov[1], ort[1], atol=1e-3)
    assert ov[2].startswith("clip_vit_b32 (random weights")
