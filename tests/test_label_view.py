"""The compact masks the labeling page draws a click with: the display grid, the varint runs, and the
``view`` option of ``/api/predict`` and ``/api/predictions/{id}/candidates/{i}`` (fast tier).

What is drawn is approximate by design (the full mask pooled to about one cell per screen pixel);
what is accepted stays the Predictor's full-resolution mask, which is checked here too.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

import fastseg  # noqa: E402
from fastseg.label.server import create_app  # noqa: E402
from fastseg.label.session import (  # noqa: E402
    decode_varints,
    encode_varints,
    mask_to_runs,
    mask_view,
    pool_mask,
    runs_to_mask,
    view_size,
)

BASE = "http://127.0.0.1:8765"


def view_mask(view: dict[str, Any]) -> np.ndarray:
    runs = decode_varints(base64.b64decode(view["runs"]))
    return runs_to_mask(runs.tolist(), tuple(view["size"]))


def reference_pool(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """The pooling rule, one cell at a time."""
    big_h, big_w = mask.shape
    h, w = grid
    out = np.zeros(grid, dtype=bool)
    for v in range(h):
        for u in range(w):
            rows = slice(v * big_h // h, (v + 1) * big_h // h)
            cols = slice(u * big_w // w, (u + 1) * big_w // w)
            out[v, u] = mask[rows, cols].any()
    return out


@pytest.mark.parametrize(
    "values",
    [[], [0], [127, 128, 16383, 16384, 2**21 - 1, 2**21, 2**35 + 7], list(range(0, 5000, 7))],
)
def test_varints_round_trip(values: list[int]) -> None:
    data = encode_varints(np.array(values, dtype=np.int64))
    assert decode_varints(data).tolist() == values
    assert len(data) == sum(max(1, -(-int(v).bit_length() // 7)) for v in values)
    with pytest.raises(ValueError, match="inside a number"):
        decode_varints(data + b"\x80")


@pytest.mark.parametrize(
    ("size", "scale", "grid"),
    [
        ((1080, 1920), 1.0, (1080, 1920)),
        ((1080, 1920), 2.5, (1080, 1920)),
        ((1080, 1920), 0.5, (540, 960)),
        ((1080, 1920), 0.65625, (709, 1260)),
        ((7, 5), 0.01, (1, 1)),
    ],
)
def test_view_size(size: tuple[int, int], scale: float, grid: tuple[int, int]) -> None:
    assert view_size(size, scale) == grid


@pytest.mark.parametrize("scale", [0, -1, float("nan"), float("inf"), "1", True, None])
def test_view_size_refuses_bad_scales(scale: Any) -> None:
    with pytest.raises(ValueError, match="scale must be a positive number"):
        view_size((10, 10), scale)


@pytest.mark.parametrize("grid", [(1, 1), (3, 4), (10, 13), (17, 23), (20, 30)])
def test_pool_mask_sets_a_cell_if_any_pixel_under_it_is(grid: tuple[int, int]) -> None:
    rng = np.random.default_rng(grid[0] * 100 + grid[1])
    for density in (0.0, 0.003, 0.05, 0.5):
        mask = rng.random((20, 30)) < density
        np.testing.assert_array_equal(pool_mask(mask, grid), reference_pool(mask, grid))


def test_mask_view_round_trip() -> None:
    rng = np.random.default_rng(0)
    mask = np.zeros((300, 451), dtype=bool)
    mask[40:200, 100:300] = rng.random((160, 200)) < 0.6
    for scale in (1.0, 0.5, 0.3):
        view = mask_view(mask, scale)
        grid = view_size(mask.shape, scale)
        assert view["size"] == list(grid) and view["image"] == [300, 451]
        np.testing.assert_array_equal(view_mask(view), reference_pool(mask, grid))
    full = mask_view(mask, 1.0)
    assert decode_varints(base64.b64decode(full["runs"])).tolist() == mask_to_runs(mask)


@pytest.fixture
def client(tmp_path: Path, photos: dict[str, np.ndarray], tiny_sam_folder: Path) -> Any:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(photos["chelsea"]).save(folder / "a_chelsea.png")
    app = create_app(folder, tiny_sam_folder, ["cat"], port=8765, num_threads=1, cache_dir=tmp_path / "ov")
    with TestClient(app, base_url=BASE) as test_client:
        yield test_client, folder


def test_predict_sends_the_best_candidate_on_the_display_grid(client: Any, tiny_sam_folder: Path) -> None:
    http, folder = client
    reference = fastseg.Predictor(tiny_sam_folder, num_threads=1, cache_dir=False)
    handle = reference.encode(folder / "a_chelsea.png")
    expected = reference.predict(points=[[225, 150]], labels=[1], image=handle)
    body = {"index": 0, "points": [[225, 150]], "labels": [1], "multimask": True, "view": {"scale": 0.5}}
    got = http.post("/api/predict", json=body).json()
    best = got["best"]
    assert best == int(np.argmax(expected.scores)) and len(got["candidates"]) == 3
    grid = view_size((300, 451), 0.5)
    for i, (candidate, mask) in enumerate(zip(got["candidates"], expected.masks)):
        assert "rle" not in candidate
        assert candidate["area"] == int(mask.sum())
        if i == best:
            np.testing.assert_array_equal(view_mask(candidate["view"]), pool_mask(mask, grid))
        else:
            assert candidate["view"] is None
            # fetched later (Tab), at any grid
            fetched = http.get(f"/api/predictions/{got['prompt_id']}/candidates/{i}", params={"scale": 0.25}).json()
            assert fetched["candidate"] == i
            np.testing.assert_array_equal(view_mask(fetched["view"]), pool_mask(mask, view_size(mask.shape, 0.25)))
    # every candidate at once, at full resolution: the Predictor's masks exactly
    body["view"] = {"scale": 1, "candidates": "all"}
    again = http.post("/api/predict", json=body).json()
    for candidate, mask in zip(again["candidates"], expected.masks):
        np.testing.assert_array_equal(view_mask(candidate["view"]), mask)
    # what is accepted is the full-resolution mask, whatever was drawn
    stored = http.post(
        "/api/images/0/instances", json={"label": "cat", "prompt_id": got["prompt_id"], "candidate": best}
    ).json()
    np.testing.assert_array_equal(runs_to_mask(stored["rle"]["counts"], (300, 451)), expected.masks[best])


@pytest.mark.parametrize(
    ("view", "message"),
    [
        ([1], "view must be"),
        ({"scale": 0}, "scale must be a positive number"),
        ({"scale": 0.5, "candidates": "some"}, "view.candidates must be"),
        ({"scale": 0.5, "zoom": 2}, "unknown field"),
    ],
)
def test_bad_view_requests(client: Any, view: Any, message: str) -> None:
    http, _ = client
    body = {"index": 0, "points": [[10, 10]], "labels": [1], "view": view}
    answer = http.post("/api/predict", json=body)
    assert answer.status_code == 400 and message in answer.json()["error"]
    got = http.post("/api/predict", json={"index": 0, "points": [[10, 10]], "labels": [1]}).json()
    path = f"/api/predictions/{got['prompt_id']}/candidates"
    assert "candidates (0..2)" in http.get(f"{path}/3").json()["error"]
    assert http.get(f"{path}/0", params={"scale": -1}).status_code == 400
    assert http.get("/api/predictions/nope/candidates/0").status_code == 404
