"""The runtime never imports torch, torchvision, cv2 or ultralytics, and works without them."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

FORBIDDEN = ("torch", "torchvision", "cv2", "ultralytics", "segment_anything", "mobile_sam", "timm")

def _run(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _blocker() -> str:
    return textwrap.dedent(
        f"""
        import json, sys, importlib.abc
        FORBIDDEN = {FORBIDDEN!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in FORBIDDEN:
                    raise ImportError("forbidden import in the runtime: " + name)
                return None
        sys.meta_path.insert(0, Block())
        """
    )


def test_import_fastseg_is_light() -> None:
    out = _run(
        _blocker()
        + textwrap.dedent(
            """
            import fastseg
            from fastseg import Predictor, segment
            print(json.dumps({"loaded": sorted(m for m in sys.modules if m.split('.')[0] in FORBIDDEN)}))
            """
        )
    )
    assert out["loaded"] == []


@pytest.mark.parametrize("name", ["mobile_sam", "fastsam_s"])
def test_full_predict_without_torch(name: str, exported_model, photos, tmp_path: Path) -> None:
    import numpy as np

    image_path = tmp_path / "photo.npy"
    np.save(image_path, photos["chelsea"])
    folder = exported_model(name)
    conf = 0.05 if name.startswith("fastsam") else 0.4  # random weights: low confidence detections
    out = _run(
        _blocker()
        + textwrap.dedent(
            f"""
            import numpy as np
            import fastseg
            image = np.load({str(image_path)!r})
            predictor = fastseg.Predictor({str(folder)!r}, conf={conf})
            predictor.set_image(image)
            result = predictor.predict(points=[[225, 150]], labels=[1])
            saved = fastseg.save_embedding({str(tmp_path / "emb.npz")!r}, predictor.get_image_embedding())
            predictor.set_image_embedding(fastseg.load_embedding(saved))
            one = fastseg.segment(image, model={str(folder)!r}, boxes=[50, 50, 300, 250], conf={conf})
            print(json.dumps({{
                "masks": list(result.masks.shape), "one": list(one.masks.shape),
                "loaded": sorted(m for m in sys.modules if m.split('.')[0] in FORBIDDEN),
            }}))
            """
        )
    )
    assert out["loaded"] == []
    assert out["masks"][1:] == [300, 451] and out["one"][1:] == [300, 451]
