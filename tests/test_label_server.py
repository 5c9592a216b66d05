"""The ``fastseg label`` server over HTTP, on the tiny models and folders of real photos (fast tier).

What is checked: every endpoint; the masks sent and stored are the Predictor's, pixel for pixel
(a click, a refinement with the previous logits, an everything proposal); relabel, delete and
restore; exports read back (COCO with pycocotools, YOLO-seg and labelme with fastseg's readers);
the background encoder fills the store and never holds a click behind an encoder run; the guards
(path traversal, foreign Host, other origins, oversized bodies, bad prompts) answer JSON errors;
and a real uvicorn server killed with SIGKILL keeps every accepted instance, and survives clients
that hang up mid-request.
"""

from __future__ import annotations

import io
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pycocotools_coco = pytest.importorskip("pycocotools.coco")

from fastapi.testclient import TestClient  # noqa: E402

import fastseg  # noqa: E402
from fastseg.image import load_image  # noqa: E402
from fastseg.label.db import LabelDB  # noqa: E402
from fastseg.label.server import allowed_hosts, create_app, run_label_server  # noqa: E402
from fastseg.label.session import mask_box, mask_to_runs, runs_to_mask  # noqa: E402
from fastseg.rle import decode  # noqa: E402

LABELS = ["cat", "dog", "person"]
BASE = "http://127.0.0.1:8765"
SAM_EVERYTHING = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def make_folder(root: Path, photos: dict[str, np.ndarray], side: int = 160) -> Path:
    """Small photos: JPEG and PNG, one in a subfolder, one JPEG turned by its EXIF tag, one BMP."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir()

    def small(name: str) -> Image.Image:
        pil = Image.fromarray(photos[name])
        return pil.resize((side, round(side * pil.height / pil.width)))

    small("astronaut").save(root / "a_astronaut.jpg", quality=90)
    small("chelsea").save(root / "b_chelsea.png")
    small("coffee").save(root / "sub" / "c_coffee.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # turned 90 degrees: load_image (and the page) show it upright
    small("chelsea").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "d_turned.jpg", exif=exif)
    small("astronaut").transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(root / "e_plain.bmp")
    return root


def files_of(folder: Path) -> list[str]:
    return ["a_astronaut.jpg", "b_chelsea.png", "d_turned.jpg", "e_plain.bmp", "sub/c_coffee.jpg"]


@pytest.fixture
def folder(tmp_path: Path, photos: dict[str, np.ndarray]) -> Path:
    return make_folder(tmp_path / "photos", photos)


def model_of(family: str, tiny_sam_folder: Path, tiny_fastsam_folder: Path) -> Path:
    return tiny_sam_folder if family == "sam" else tiny_fastsam_folder


@pytest.fixture
def open_client(tmp_path: Path) -> Iterator[Any]:
    """Factory: ``open_client(folder, model, **create_app options)`` -> a started TestClient."""
    clients: list[TestClient] = []

    def make(folder: Path, model: Path, labels: list[str] | None = LABELS, **options: Any) -> TestClient:
        options.setdefault("port", 8765)
        options.setdefault("num_threads", 1)
        options.setdefault("cache_dir", tmp_path / "ov_cache")
        options.setdefault(
            "everything_params", SAM_EVERYTHING if "sam" in model.name and "fast" not in model.name else {}
        )
        raise_errors = options.pop("raise_server_exceptions", True)
        app = create_app(folder, model, labels, **options)
        client = TestClient(app, base_url=BASE, raise_server_exceptions=raise_errors)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def predictor(model: Path) -> Any:
    return fastseg.Predictor(model, num_threads=1, cache_dir=False)


def mask_of(rle: dict[str, Any]) -> np.ndarray:
    return runs_to_mask(rle["counts"], tuple(rle["size"]))


def error_of(response: Any, status: int) -> str:
    """The JSON error message of a response with ``status``; never a traceback."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in response.text and 'File "' not in response.text
    return str(body["error"])


# --------------------------------------------------------------------------------------------------
# Masks on the wire


@pytest.mark.parametrize(
    "mask",
    [
        np.zeros((3, 4), bool),
        np.ones((3, 4), bool),
        np.eye(4, dtype=bool),
        np.array([[1, 0, 0], [0, 0, 1]], bool),
        np.random.default_rng(0).random((37, 53)) > 0.5,
    ],
)
def test_row_major_runs_round_trip(mask: np.ndarray) -> None:
    runs = mask_to_runs(mask)
    assert sum(runs) == mask.size and all(r >= 0 for r in runs)
    assert runs[0] == (0 if mask.flat[0] else runs[0])
    flat = np.repeat(np.arange(len(runs)) % 2, runs).astype(bool)
    assert np.array_equal(flat, mask.ravel())  # row-major, zeros first
    assert np.array_equal(runs_to_mask(runs, mask.shape), mask)
    box = mask_box(mask)
    if mask.any():
        ys, xs = np.nonzero(mask)
        assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    else:
        assert box is None


def test_row_major_runs_of_random_masks() -> None:
    rng = np.random.default_rng(1)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 9, 2))
        mask = rng.random((h, w)) > rng.random()
        runs = mask_to_runs(mask)
        assert np.array_equal(np.repeat(np.arange(len(runs)) % 2, runs).astype(bool), mask.ravel())
        assert all(r > 0 for r in runs[1:]) and runs[0] >= 0


@pytest.mark.parametrize(
    "runs, message",
    [([1, 2], "sum to 3"), ([-1, 13], "non-negative"), ([], "non-empty"), ([1.5, 10.5], "integers")],
)
def test_runs_that_do_not_make_the_mask_are_refused(runs: list[Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        runs_to_mask(runs, (3, 4))


# --------------------------------------------------------------------------------------------------
# State, images, page


def test_state_lists_the_folder_with_sizes_states_and_model(
    folder: Path, open_client: Any, tiny_sam_folder: Path
) -> None:
    client = open_client(folder, tiny_sam_folder)
    state = client.get("/api/state").json()
    assert state["labels"] == LABELS
    assert state["model"]["name"] == "mobile_sam" and state["model"]["family"] == "sam"
    assert state["model"]["precision"] == "f32" and state["model"]["weights"]
    assert [i["file"] for i in state["images"]] == files_of(folder)
    assert [i["index"] for i in state["images"]] == list(range(5))
    for item in state["images"]:
        h, w = load_image(folder / item["file"]).shape[:2]
        assert (item["height"], item["width"]) == (h, w)
        assert item["state"] == "new" and item["instances"] == 0
    assert state["counts"] == {"images": 5, "new": 5, "in_progress": 0, "done": 0, "instances": 0}


def test_images_are_served_as_the_model_sees_them(folder: Path, open_client: Any, tiny_sam_folder: Path) -> None:
    client = open_client(folder, tiny_sam_folder)
    for index, file in enumerate(files_of(folder)):
        for response in (client.get(f"/api/image/{index}"), client.get("/api/file", params={"path": file})):
            assert response.status_code == 200, response.text
            served = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
            expected = load_image(folder / file)
            assert served.shape == expected.shape
            if file.endswith(".png") or file.endswith(".bmp") or file == "d_turned.jpg":
                assert response.headers["content-type"] == "image/png"
                assert np.array_equal(served, expected)  # lossless, upright
            else:  # a JPEG without rotation: its own bytes
                assert response.headers["content-type"] == "image/jpeg"
                assert response.content == (folder / file).read_bytes()
            assert "content-security-policy" in response.headers
    error_of(client.get("/api/image/5"), 404)
    error_of(client.get("/api/image/-1"), 404)
    assert "index" in error_of(client.get("/api/image/abc"), 400)


def test_the_page_and_its_files_are_served(
    folder: Path, open_client: Any, tiny_sam_folder: Path, tmp_path: Path
) -> None:
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text(
        "<!doctype html><title>fastseg label</title><script src=/static/app.js></script>"
    )
    (static / "app.js").write_text("console.log('hi');")
    (static / "style.css").write_text("body{}")
    client = open_client(folder, tiny_sam_folder, static_dir=static)
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "fastseg label" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    error_of(client.get("/static/missing.js"), 404)
    error_of(client.get("/static/..%2Fserver.py"), 404)
    error_of(client.get("/static/.hidden"), 404)
    # no API documentation pages (they load scripts from a CDN)
    for path in ("/docs", "/redoc", "/openapi.json"):
        error_of(client.get(path), 404)


def test_the_shipped_page_is_served(folder: Path, open_client: Any, tiny_sam_folder: Path) -> None:
    from fastseg.label.server import STATIC_DIR

    if not (STATIC_DIR / "index.html").is_file():
        pytest.skip("the page is not in the package yet")
    client = open_client(folder, tiny_sam_folder)
    page = client.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert "http://" not in page.text.replace("http://www.w3.org", "") and "https://" not in page.text


# --------------------------------------------------------------------------------------------------
# Clicks


@pytest.mark.parametrize("family", ["sam", "fastsam"])
def test_a_click_and_its_accepted_instance_are_the_predictors_mask(
    folder: Path, open_client: Any, tiny_sam_folder: Path, tiny_fastsam_folder: Path, family: str
) -> None:
    model = model_of(family, tiny_sam_folder, tiny_fastsam_folder)
    client = open_client(folder, model)
    reference = predictor(model)
    for index in (0, 2):  # a plain JPEG and an EXIF-turned one
        file = files_of(folder)[index]
        handle = reference.encode(folder / file)
        h, w = handle.original_size
        opened = client.post(f"/api/images/{index}/open")
        assert opened.status_code == 200, opened.text
        assert opened.json()["width"] == w and opened.json()["height"] == h and opened.json()["encoded_ms"] >= 0
        # (47, 47) is inside the tiny FastSAM's disc detection "a" on these photos (160 px long side)
        prompts = [
            {"points": [[47, 47]], "labels": [1], "box": None},
            {"points": [[47, 47], [w * 0.9, h * 0.1]], "labels": [1, 0], "box": None},
            {"points": [], "labels": [], "box": [2, 3, w * 0.8, h * 0.9]},
        ]
        shown = 0
        for prompt in prompts:
            body = {"index": index, **prompt, "mask_input": None, "multimask": True}
            answer = client.post("/api/predict", json=body)
            assert answer.status_code == 200, answer.text
            got = answer.json()
            assert got["ms"] >= got["predict_ms"] > 0 and got["prompt_id"]
            expected = reference.predict(
                points=np.array(prompt["points"]) if prompt["points"] else None,
                labels=np.array(prompt["labels"]) if prompt["labels"] else None,
                boxes=prompt["box"],
                multimask=True,
                image=handle,
            )
            masks, scores = expected.masks, expected.scores
            if family == "fastsam" and len(masks):
                masks, scores = masks.any(axis=0, keepdims=True), scores.max(keepdims=True)
            assert len(got["candidates"]) == len(masks) == (3 if family == "sam" else len(masks))
            for candidate, mask, score in zip(got["candidates"], masks, scores):
                assert candidate["rle"]["size"] == [h, w]
                assert np.array_equal(mask_of(candidate["rle"]), mask)
                assert candidate["score"] == pytest.approx(float(score), abs=1e-6)
                assert candidate["box"] == mask_box(mask)
            if not len(masks):
                assert got["best"] is None
                continue
            shown += 1
            assert got["best"] == int(np.argmax(scores))
            chosen = len(masks) - 1
            accepted = client.post(
                f"/api/images/{index}/instances",
                json={"label": "dog", "prompt_id": got["prompt_id"], "candidate": chosen},
            )
            assert accepted.status_code == 200, accepted.text
            stored = accepted.json()
            assert stored["label"] == "dog" and stored["index"] == index and stored["file"] == file
            assert np.array_equal(mask_of(stored["rle"]), masks[chosen])
            assert stored["area"] == int(masks[chosen].sum()) and stored["box"] == mask_box(masks[chosen])
            assert stored["score"] == pytest.approx(float(scores[chosen]), abs=1e-6)
        assert shown >= 2
        listed = client.get(f"/api/images/{index}/instances").json()
        assert listed and all(i["file"] == file for i in listed)
        db = LabelDB(folder / ".fastseg" / "labels.sqlite")
        for item, inst in zip(listed, db.instances(file)):
            assert item["id"] == inst.id
            assert np.array_equal(decode([inst.coco_rle])[0], mask_of(item["rle"]))  # the stored COCO RLE
        db.close()
    state = client.get("/api/state").json()
    assert state["images"][0]["state"] == "in_progress" and state["images"][0]["instances"] >= 1


def test_refining_feeds_back_the_chosen_candidates_logits(
    folder: Path, open_client: Any, tiny_sam_folder: Path
) -> None:
    client = open_client(folder, tiny_sam_folder)
    reference = predictor(tiny_sam_folder)
    handle = reference.encode(folder / "b_chelsea.png")
    h, w = handle.original_size
    first = client.post("/api/predict", json={"index": 1, "points": [[w / 2, h / 2]], "labels": [1], "multimask": True})
    assert first.status_code == 200 and first.json()["mask_input"] is False
    r1 = reference.predict(points=[[w / 2, h / 2]], labels=[1], multimask=True, image=handle)
    assert r1.low_res_logits is not None
    for chosen in (0, 2):
        points = [[w / 2, h / 2], [w * 0.2, h * 0.3]]
        # the page says which candidate it shows; "previous" is the last prediction on this image
        again = client.post(
            "/api/predict",
            json={
                "index": 1,
                "points": points,
                "labels": [1, 0],
                "mask_input": "previous",
                "candidate": chosen,
                "multimask": False,
                "previous": first.json()["prompt_id"],
            },
        )
        assert again.status_code == 200, again.text
        assert again.json()["mask_input"] is True
        expected = reference.predict(
            points=points, labels=[1, 0], mask_input=r1.low_res_logits[chosen], multimask=False, image=handle
        )
        without = reference.predict(points=points, labels=[1, 0], multimask=False, image=handle)
        got = again.json()["candidates"]
        assert len(got) == 1
        assert np.array_equal(mask_of(got[0]["rle"]), expected.masks[0])
        assert not np.array_equal(expected.masks[0], without.masks[0]), "the mask input should change the mask"
    # "previous" without a prompt_id: the image's last prediction (the refinement just made), its best
    last = client.post(
        "/api/predict",
        json={"index": 1, "points": [[w / 2, h / 2]], "labels": [1], "mask_input": "previous", "multimask": False},
    )
    assert last.status_code == 200 and last.json()["mask_input"] is True
    # an image without an earlier prediction: answered without mask input, and says so
    fresh = client.post(
        "/api/predict",
        json={"index": 0, "points": [[5, 5]], "labels": [1], "mask_input": "previous", "multimask": True},
    )
    assert fresh.status_code == 200 and fresh.json()["mask_input"] is False
    bad = client.post(
        "/api/predict",
        json={"index": 1, "points": [[5, 5]], "labels": [1], "mask_input": "previous", "candidate": 7},
    )
    assert "candidate" in error_of(bad, 400)


@pytest.mark.parametrize("family", ["sam", "fastsam"])
def test_everything_proposals_are_the_predictors_and_can_be_accepted(
    folder: Path, open_client: Any, tiny_sam_folder: Path, tiny_fastsam_folder: Path, family: str
) -> None:
    model = model_of(family, tiny_sam_folder, tiny_fastsam_folder)
    client = open_client(folder, model)
    params = SAM_EVERYTHING if family == "sam" else {}
    expected = predictor(model).everything(folder / "b_chelsea.png", **params)
    answer = client.post("/api/images/1/everything")
    assert answer.status_code == 200, answer.text
    proposals = answer.json()["proposals"]
    assert len(proposals) == len(expected) > 0
    for proposal, mask, record in zip(proposals, expected.masks, expected):
        assert np.array_equal(mask_of(proposal["rle"]), mask)
        assert proposal["area"] == record["area"] and proposal["box"] == mask_box(mask)
    pick = proposals[0]
    accepted = client.post("/api/images/1/instances", json={"label": "cat", "rle": pick["rle"], "score": pick["score"]})
    assert accepted.status_code == 200, accepted.text
    assert np.array_equal(mask_of(accepted.json()["rle"]), expected.masks[0])
    assert accepted.json()["score"] == pytest.approx(pick["score"])
    wrong_size = {"label": "cat", "rle": {"size": [3, 4], "counts": [12]}}
    assert "size" in error_of(client.post("/api/images/1/instances", json=wrong_size), 400)
    empty = {"label": "cat", "rle": {"size": pick["rle"]["size"], "counts": [int(np.prod(pick["rle"]["size"]))]}}
    assert "empty" in error_of(client.post("/api/images/1/instances", json=empty), 400)


# --------------------------------------------------------------------------------------------------
# Instances and states


def _accept_one(client: TestClient, index: int, label: str = "cat", x: float = 60, y: float = 50) -> dict[str, Any]:
    got = client.post("/api/predict", json={"index": index, "points": [[x, y]], "labels": [1], "multimask": True})
    assert got.status_code == 200, got.text
    answer = client.post(
        f"/api/images/{index}/instances", json={"label": label, "prompt_id": got.json()["prompt_id"], "candidate": 0}
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_relabel_delete_restore_and_image_states(folder: Path, open_client: Any, tiny_sam_folder: Path) -> None:
    client = open_client(folder, tiny_sam_folder)
    a = _accept_one(client, 0)
    b = _accept_one(client, 0, "person", 30, 20)
    assert b["id"] > a["id"]
    relabelled = client.patch(f"/api/instances/{a['id']}", json={"label": "dog"})
    assert relabelled.status_code == 200 and relabelled.json()["label"] == "dog"
    assert relabelled.json()["rle"] == a["rle"]
    deleted = client.delete(f"/api/instances/{b['id']}")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert [i["id"] for i in client.get("/api/images/0/instances").json()] == [a["id"]]
    with_deleted = client.get("/api/images/0/instances", params={"deleted": "true"}).json()
    assert [i["id"] for i in with_deleted] == [a["id"], b["id"]]
    restored = client.post(f"/api/instances/{b['id']}/restore")
    assert restored.status_code == 200 and restored.json()["deleted"] is False
    assert [i["id"] for i in client.get("/api/images/0/instances").json()] == [a["id"], b["id"]]
    assert client.get("/api/state").json()["images"][0]["state"] == "in_progress"
    done = client.post("/api/images/0/state", json={"state": "done"})
    assert done.status_code == 200 and done.json()["state"] == "done"
    marked = client.post("/api/images/3/state", json={"state": "done"})  # a labelled empty image
    assert marked.status_code == 200
    state = client.get("/api/state").json()
    assert [i["state"] for i in state["images"]] == ["done", "new", "new", "done", "new"]
    assert state["counts"] == {"images": 5, "new": 3, "in_progress": 0, "done": 2, "instances": 2}
    # an accept on a done image keeps it done
    _accept_one(client, 0, "cat", 90, 90)
    assert client.get("/api/state").json()["images"][0]["state"] == "done"
    error_of(client.patch("/api/instances/999", json={"label": "dog"}), 404)
    error_of(client.delete("/api/instances/999"), 404)
    error_of(client.post("/api/instances/999/restore"), 404)
    assert "unknown label" in error_of(client.patch(f"/api/instances/{a['id']}", json={"label": "horse"}), 400)
    assert "state" in error_of(client.post("/api/images/0/state", json={"state": "finished"}), 400)


def test_labels_are_saved_and_old_ones_stay_listed(folder: Path, open_client: Any, tiny_sam_folder: Path) -> None:
    client = open_client(folder, tiny_sam_folder, labels=["cat", "dog"])
    _accept_one(client, 0, "dog")
    client.close()
    again = open_client(folder, tiny_sam_folder, labels=None)  # the saved labels
    assert again.get("/api/state").json()["labels"] == ["cat", "dog"]
    again.close()
    renamed = open_client(folder, tiny_sam_folder, labels=["cat", "bird"])
    assert renamed.get("/api/state").json()["labels"] == ["cat", "bird", "dog"]  # dog is still used
    with pytest.raises(ValueError, match="no labels"):
        create_app(folder, tiny_sam_folder, None, db=folder / "other.sqlite", cache_dir=False)
    with pytest.raises(ValueError, match="distinct"):
        create_app(folder, tiny_sam_folder, ["a", "a"], db=folder / "other2.sqlite", cache_dir=False)


# --------------------------------------------------------------------------------------------------
# Exports


def test_exports_read_back_equal_to_the_stored_masks(
    folder: Path, open_client: Any, tiny_sam_folder: Path, tmp_path: Path
) -> None:
    from fastseg.formats import read_labelme, read_yolo_seg
    from fastseg.label.cli import main as label_main
    from fastseg.polygons import polygons_to_mask

    client = open_client(folder, tiny_sam_folder)
    accepted = [_accept_one(client, 0, "cat"), _accept_one(client, 0, "person", 100, 20), _accept_one(client, 4, "dog")]
    gone = _accept_one(client, 1, "dog")
    client.delete(f"/api/instances/{gone['id']}")
    client.post("/api/images/2/state", json={"state": "done"})
    masks = {a["id"]: mask_of(a["rle"]) for a in accepted}

    answer = client.post("/api/export", json={"format": "coco", "segmentation": "rle"})
    assert answer.status_code == 200, answer.text
    summary = answer.json()
    assert summary["images"] == 4 and summary["instances"] == 3  # 0, 1 (deleted only), 2 (done), 4
    path = Path(summary["path"])
    assert path == folder / ".fastseg" / "export" / "coco.json"
    coco = pycocotools_coco.COCO(str(path))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == LABELS
    for ann in coco.loadAnns(coco.getAnnIds()):
        assert np.array_equal(coco.annToMask(ann).astype(bool), masks[ann["id"]])
        image = coco.imgs[ann["image_id"]]
        assert image["file_name"] == files_of(folder)[ann["image_id"] - 1]
        assert coco.cats[ann["category_id"]]["name"] == next(a["label"] for a in accepted if a["id"] == ann["id"])
    downloaded = client.get("/api/export/coco.json")
    assert downloaded.status_code == 200 and "attachment" in downloaded.headers["content-disposition"]
    assert json.loads(downloaded.content)["annotations"] == json.loads(path.read_text())["annotations"]

    polygons = client.post("/api/export", json={"format": "coco", "segmentation": "polygons"}).json()
    data = json.loads(Path(polygons["path"]).read_text())
    for ann in data["annotations"]:
        assert isinstance(ann["segmentation"], list)
        h, w = masks[ann["id"]].shape
        rebuilt = polygons_to_mask([np.reshape(p, (-1, 2)) for p in ann["segmentation"]], (h, w))
        iou = (rebuilt & masks[ann["id"]]).sum() / (rebuilt | masks[ann["id"]]).sum()
        assert iou > 0.9

    yolo = client.post("/api/export", json={"format": "yolo"}).json()
    root = Path(yolo["path"])
    assert (root / "classes.txt").read_text().split() == LABELS
    lines = read_yolo_seg(root / "a_astronaut.txt", names=LABELS)
    assert [cls for cls, _ in lines] == [0, 2]
    assert read_yolo_seg(root / "d_turned.txt") == []  # done, no instances: an empty label file
    assert (root / "sub" / "c_coffee.txt").exists()

    labelme = client.post("/api/export", json={"format": "labelme"}).json()
    doc = read_labelme(Path(labelme["path"]) / "a_astronaut.json")
    assert [s["label"] for s in doc["shapes"]][:1] == ["cat"]
    assert (Path(labelme["path"]) / doc["imagePath"]).resolve() == (folder / "a_astronaut.jpg").resolve()
    assert "format" in error_of(client.post("/api/export", json={"format": "voc"}), 400)

    # the same export from the command line, without a server or a model
    client.close()
    out = tmp_path / "cli.json"
    assert label_main([str(folder), "--export", "coco", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["annotations"] == json.loads(path.read_text())["annotations"]
    assert label_main([str(folder), "--export", "yolo", "--out", str(tmp_path / "cli_yolo")]) == 0
    assert (tmp_path / "cli_yolo" / "a_astronaut.txt").read_text() == (root / "a_astronaut.txt").read_text()
    assert label_main([str(tmp_path), "--export", "coco"]) == 2  # no database there


# --------------------------------------------------------------------------------------------------
# Background encoding


def test_the_next_images_are_encoded_ahead_into_the_store(
    folder: Path, open_client: Any, tiny_sam_folder: Path
) -> None:
    client = open_client(folder, tiny_sam_folder)
    session = client.app.state.service.session  # type: ignore[attr-defined]
    assert client.post("/api/images/0/open").status_code == 200
    assert session.wait_idle(60)
    assert set(session.encoded()) == {0, 1, 2}
    assert session.click.store_misses == 1  # image 0, opened by hand: encoded at once
    assert session.background.store_misses == 2  # images 1 and 2, ahead
    store = folder / ".fastseg" / "store"
    assert len(list(store.glob("*/*/*.npz"))) == 3
    opened = client.post("/api/images/1/open").json()
    assert opened["encoded_ms"] < 50  # in memory: no wait
    assert session.wait_idle(60)
    assert 3 in session.encoded()
    client.close()
    # a new server reads the stored embeddings: no encoder run
    again = open_client(folder, tiny_sam_folder)
    fresh = again.app.state.service.session  # type: ignore[attr-defined]
    assert again.post("/api/images/2/open").status_code == 200
    assert fresh.wait_idle(60)
    assert fresh.click.store_misses == 0 and fresh.click.store_hits == 1
    assert fresh.background.store_misses == 1 and fresh.background.store_hits == 1  # 3 was stored, 4 was not


def test_a_click_never_waits_for_the_background_encoder(
    folder: Path, open_client: Any, tiny_sam_folder: Path, tmp_path: Path
) -> None:
    """The background Predictor's encoder is made to take 1.5 s: clicks meanwhile take no longer than usual."""
    encoding = threading.Event()

    class SlowEncoder:
        def __init__(self, session: Any) -> None:
            self.session = session

        def run(self, inputs: Any) -> Any:
            encoding.set()
            time.sleep(1.5)
            return self.session.run(inputs)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.session, name)

    def wrap(graph: str, session: Any) -> Any:
        return SlowEncoder(session) if graph == "encoder" else session

    client = open_client(folder, tiny_sam_folder, store=tmp_path / "store")
    session = client.app.state.service.session  # type: ignore[attr-defined]
    session.background = fastseg.Predictor(
        tiny_sam_folder, num_threads=1, cache_dir=False, store=session.store, session_wrapper=wrap
    )
    assert client.post("/api/images/0/open").status_code == 200
    assert encoding.wait(10), "the background encoder should start on image 1"
    times = []
    for i in range(5):
        start = time.perf_counter()
        answer = client.post("/api/predict", json={"index": 0, "points": [[20 + 5 * i, 30]], "labels": [1]})
        times.append(time.perf_counter() - start)
        assert answer.status_code == 200
    assert max(times) < 0.5, times
    assert session.wait_idle(30)


# --------------------------------------------------------------------------------------------------
# Guards


def test_paths_outside_the_folder_are_refused(
    folder: Path, open_client: Any, tiny_sam_folder: Path, tmp_path: Path, photos: dict[str, np.ndarray]
) -> None:
    outside = tmp_path / "secret.png"
    Image.fromarray(photos["coffee"][:50, :50]).save(outside)
    (folder / "link_out.png").symlink_to(outside)
    (folder / "sub" / "link_dir").symlink_to(tmp_path, target_is_directory=True)
    (folder / "inside_link.png").symlink_to(folder / "b_chelsea.png")
    client = open_client(folder, tiny_sam_folder)
    files = [i["file"] for i in client.get("/api/state").json()["images"]]
    assert "link_out.png" not in files and "inside_link.png" in files  # a link inside the folder is fine
    refused = {
        "../secret.png": 403,
        "sub/../../secret.png": 403,
        str(outside): 403,
        "/etc/passwd": 403,
        "link_out.png": 403,
        "sub/link_dir/secret.png": 403,
        ".fastseg/labels.sqlite": 403,
        "./b_chelsea.png": 403,
        "sub\\..\\..\\secret.png": 403,
        "nope.png": 404,
        "sub": 404,
    }
    for path, status in refused.items():
        error_of(client.get("/api/file", params={"path": path}), status)
    # percent-encoded dots reach the server as dots
    error_of(client.get("/api/file?path=%2e%2e%2fsecret.png"), 403)
    error_of(client.get("/api/file?path=%2e%2e/%2e%2e/etc/passwd"), 403)
    error_of(client.get("/api/file?path=%2Fetc%2Fpasswd"), 403)
    assert client.get("/api/file", params={"path": "inside_link.png"}).status_code == 200
    assert client.get("/api/file", params={"path": "sub/c_coffee.jpg"}).status_code == 200
    # a listed image whose link is turned to point out after the server started
    index = files.index("inside_link.png")
    (folder / "inside_link.png").unlink()
    (folder / "inside_link.png").symlink_to(outside)
    error_of(client.get(f"/api/image/{index}"), 403)


def test_foreign_hosts_and_origins_are_refused(folder: Path, open_client: Any, tiny_sam_folder: Path) -> None:
    client = open_client(folder, tiny_sam_folder)
    for host in ("127.0.0.1:8765", "127.0.0.1", "localhost:8765", "LOCALHOST", "[::1]:8765", "[::1]"):
        assert client.get("/api/state", headers={"host": host}).status_code == 200, host
    for host in ("evil.example", "evil.example:8765", "127.0.0.1:8766", "127.0.0.1.evil.example", "", "[::1", "::1"):
        message = error_of(client.get("/api/state", headers={"host": host}), 400)
        assert "Host" in message
    twice = client.get("/api/state", headers=[("host", "127.0.0.1:8765"), ("host", "evil.example")])
    assert "one Host header" in error_of(twice, 400)
    page = client.get("/", headers={"host": "attacker.test:8765"})
    error_of(page, 400)
    # other sites may not change anything, nor read the API
    cross = client.post("/api/images/0/state", json={"state": "done"}, headers={"origin": "http://evil.example"})
    assert "origin" in error_of(cross, 403)
    error_of(client.post("/api/images/0/state", json={"state": "done"}, headers={"origin": "null"}), 403)
    error_of(client.get("/api/state", headers={"sec-fetch-site": "cross-site"}), 403)
    error_of(client.delete("/api/instances/1", headers={"sec-fetch-site": "same-site"}), 403)
    same = client.post(
        "/api/images/0/state",
        json={"state": "done"},
        headers={"origin": "http://127.0.0.1:8765", "sec-fetch-site": "same-origin"},
    )
    assert same.status_code == 200, same.text
    # a form or text body (what a cross-site page can send without asking) is refused
    form = client.post("/api/images/0/state", content=b"state=done", headers={"content-type": "text/plain"})
    assert "JSON" in error_of(form, 415)
    assert client.get("/api/state").json()["images"][0]["state"] == "done"


def test_allowed_host_names() -> None:
    assert allowed_hosts("127.0.0.1") == ["127.0.0.1", "[::1]", "localhost"]
    assert allowed_hosts("::1") == ["127.0.0.1", "[::1]", "localhost"]
    assert allowed_hosts("192.168.1.20") == ["192.168.1.20"]
    assert "127.0.0.1" in allowed_hosts("0.0.0.0") and "0.0.0.0" in allowed_hosts("0.0.0.0")


def test_oversized_bodies_get_413(folder: Path, open_client: Any, tiny_sam_folder: Path) -> None:
    client = open_client(folder, tiny_sam_folder)
    big = {"index": 0, "points": [[1, 1]] * 200_000, "labels": [1] * 200_000}
    message = error_of(client.post("/api/predict", json=big), 413)
    assert str(1 << 20) in message

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"index": 0, "points": ['
        for _ in range(100):
            yield b"[1, 1], " * 2000
        yield b"[1, 1]]}"

    error_of(client.post("/api/predict", content=chunks(), headers={"content-type": "application/json"}), 413)
    small = client.post("/api/predict", json={"index": 0, "points": [[1, 1]], "labels": [1]})
    assert small.status_code == 200


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"index": 0, "points": [[500, 20]], "labels": [1]}, 400, "inside the 160x160 image"),
        ({"index": 0, "points": [[-1, 20]], "labels": [1]}, 400, "inside"),
        ({"index": 0, "box": [0, 0, 10, 900]}, 400, "inside"),
        ({"index": 0, "box": [50, 50, 10, 10]}, 400, "x1 <= x2"),
        ({"index": 0, "points": "abc"}, 400, "points must be a list of [x, y]"),
        ({"index": 0, "points": [[1, "2"]]}, 400, "points must be a list"),
        ({"index": 0, "points": [[1, 2, 3]]}, 400, "points must be a list"),
        ({"index": 0, "points": [[1, 2]], "labels": [2]}, 400, "labels must be a list of 1"),
        ({"index": 0, "points": [[1, 2]], "labels": [1, 0]}, 400, "1 points but 2 labels"),
        ({"index": 0, "points": [[1, 2]], "labels": [True]}, 400, "labels"),
        ({"index": 0, "box": [1, 2, 3]}, 400, "box must be [x1, y1, x2, y2]"),
        ({"index": 0, "points": []}, 400, "at least one point or a box"),
        ({"index": 0, "points": [[1, 2]], "multimask": "yes"}, 400, "multimask must be true or false"),
        ({"index": 0, "points": [[1, 2]], "mask_input": "mine"}, 400, "mask_input"),
        ({"index": 0, "points": [[1, 2]], "colour": "red"}, 400, "unknown field"),
        ({"index": 99, "points": [[1, 2]]}, 404, "no image 99"),
        ({"index": "0", "points": [[1, 2]]}, 400, "index must be an integer"),
        ({"points": [[1, 2]]}, 400, "index must be an integer"),
        ({"index": 0, "points": [[1, 2]], "previous": "0123abcd", "mask_input": "previous"}, 404, "not kept"),
    ],
)
def test_bad_prompts_get_a_clear_json_error(
    folder: Path, open_client: Any, tiny_sam_folder: Path, body: dict[str, Any], status: int, words: str
) -> None:
    client = open_client(folder, tiny_sam_folder)
    message = error_of(client.post("/api/predict", json=body), status)
    assert words in message, message


def test_bad_requests_get_json_errors(folder: Path, open_client: Any, tiny_sam_folder: Path) -> None:
    client = open_client(folder, tiny_sam_folder)
    got = client.post("/api/predict", json={"index": 0, "points": [[10, 10]], "labels": [1]}).json()
    accept = "/api/images/0/instances"
    assert "unknown label 'horse'" in error_of(
        client.post(accept, json={"label": "horse", "prompt_id": got["prompt_id"]}), 400
    )
    assert "not kept" in error_of(client.post(accept, json={"label": "cat", "prompt_id": "feedbeef"}), 404)
    assert "candidates (0..2)" in error_of(
        client.post(accept, json={"label": "cat", "prompt_id": got["prompt_id"], "candidate": 3}), 400
    )
    assert "not on image 1" in error_of(
        client.post("/api/images/1/instances", json={"label": "cat", "prompt_id": got["prompt_id"]}), 400
    )
    assert "either prompt_id" in error_of(client.post(accept, json={"label": "cat"}), 400)
    assert "label must be a string" in error_of(client.post(accept, json={"label": 3, "prompt_id": "x"}), 400)
    not_json = client.post("/api/predict", content=b"{nope", headers={"content-type": "application/json"})
    assert "not valid JSON" in error_of(not_json, 400)
    assert "JSON object" in error_of(client.post("/api/predict", json=[1, 2]), 400)
    assert "no such endpoint" in error_of(client.get("/api/nothing"), 404)
    assert "not allowed" in error_of(client.put("/api/state", json={}), 405)
    error_of(client.post("/api/images/9/open"), 404)
    error_of(client.post("/api/images/x/everything"), 400)
    assert "Field required" in error_of(client.get("/api/file"), 400) or "path" in error_of(
        client.get("/api/file"), 400
    )


def test_an_unreadable_image_is_a_json_error(folder: Path, open_client: Any, tiny_sam_folder: Path) -> None:
    (folder / "f_broken.jpg").write_bytes(b"not a jpeg at all")
    client = open_client(folder, tiny_sam_folder)
    files = [i["file"] for i in client.get("/api/state").json()["images"]]
    index = files.index("f_broken.jpg")
    assert client.get("/api/state").json()["images"][index]["width"] is None
    assert "cannot read" in error_of(client.post(f"/api/images/{index}/open"), 400)
    assert "cannot read" in error_of(client.get(f"/api/image/{index}"), 400)
    assert client.post("/api/images/0/open").status_code == 200  # the others are fine


def test_the_database_refuses_what_is_not_its_own(tmp_path: Path) -> None:
    import sqlite3

    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE stuff (x)")
    with pytest.raises(ValueError, match="something else"):
        LabelDB(other)
    (tmp_path / "garbage.sqlite").write_bytes(b"garbage" * 1000)
    with pytest.raises(ValueError, match="not a fastseg label database"):
        LabelDB(tmp_path / "garbage.sqlite")
    with LabelDB(tmp_path / "ok.sqlite") as db:
        assert db.labels() is None
        db.set_labels(["a"])
    with LabelDB(tmp_path / "ok.sqlite") as db:
        assert db.labels() == ["a"]
        assert db._read("PRAGMA journal_mode")[0][0] == "wal"
        assert db._read("PRAGMA synchronous")[0][0] == 2  # FULL


# --------------------------------------------------------------------------------------------------
# A real server: kill -9, restart, clients that hang up


class Server:
    """``python -m fastseg.label.cli`` in a subprocess on a free port."""

    def __init__(self, folder: Path, model: Path, cache: Path, labels: str | None = "cat,dog") -> None:
        args = [sys.executable, "-m", "fastseg.label.cli", str(folder), "--model", str(model), "--port", "0"]
        args += ["--threads", "1"] + (["--labels", labels] if labels else [])
        env = {**os.environ, "FASTSEG_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.url = ""
        lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        threading.Thread(target=lambda: [lines.put(line.decode()) for line in stdout], daemon=True).start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if "serving http://" in line:
                self.url = line.split("serving ")[1].split()[0].rstrip("/")
                break
        if not self.url:
            self.proc.kill()
            _, err = self.proc.communicate()
            raise AssertionError(f"the server did not start: {err.decode()}")
        self.port = int(self.url.rsplit(":", 1)[1])

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode()


def _raw(port: int, data: bytes, read: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        if not read:
            return b""
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def test_a_killed_server_keeps_every_accepted_instance_and_resumes(
    folder: Path, tiny_sam_folder: Path, tmp_path: Path
) -> None:
    import httpx

    server = Server(folder, tiny_sam_folder, tmp_path / "cache")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            assert http.post("/api/images/0/open").status_code == 200
            ids = []
            for i in range(3):
                got = http.post("/api/predict", json={"index": 0, "points": [[20 + 30 * i, 40]], "labels": [1]})
                accepted = http.post(
                    "/api/images/0/instances",
                    json={"label": "dog", "prompt_id": got.json()["prompt_id"], "candidate": i},
                )
                assert accepted.status_code == 200
                ids.append((accepted.json()["id"], accepted.json()["rle"]))
            http.post("/api/images/1/state", json={"state": "done"})
    finally:
        server.kill()  # at once after the last answer: nothing is flushed on the way out
    assert server.proc.returncode == -signal.SIGKILL
    again = Server(folder, tiny_sam_folder, tmp_path / "cache", labels=None)
    try:
        with httpx.Client(base_url=again.url, timeout=60) as http:
            listed = http.get("/api/images/0/instances").json()
            assert [(i["id"], i["rle"]) for i in listed] == ids
            state = http.get("/api/state").json()
            assert state["labels"] == ["cat", "dog"]
            assert [i["state"] for i in state["images"][:2]] == ["in_progress", "done"]
            assert state["last"] == 1  # where the person stopped
            # the work goes on: a new id, after the old ones
            got = http.post("/api/predict", json={"index": 0, "points": [[50, 50]], "labels": [1]})
            more = http.post("/api/images/0/instances", json={"label": "cat", "prompt_id": got.json()["prompt_id"]})
            assert more.json()["id"] > max(i for i, _ in ids)
    finally:
        err = again.stop()
    assert "Traceback" not in err, err


def test_clients_that_hang_up_mid_request_leave_the_server_serving(
    folder: Path, tiny_sam_folder: Path, tmp_path: Path
) -> None:
    import httpx

    server = Server(folder, tiny_sam_folder, tmp_path / "cache")
    try:
        host = f"127.0.0.1:{server.port}".encode()
        body = json.dumps({"index": 0, "points": [[10, 10]], "labels": [1]}).encode()
        head = b"POST /api/predict HTTP/1.1\r\nHost: " + host + b"\r\nContent-Type: application/json\r\n"
        # half a body, then gone
        _raw(server.port, head + b"Content-Length: %d\r\n\r\n" % len(body) + body[: len(body) // 2])
        # half the headers, then gone
        _raw(server.port, b"POST /api/predict HTTP/1.1\r\nHost: " + host + b"\r\nContent-Le")
        # a whole request (the encoder runs for it), gone before the answer
        _raw(server.port, head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        _raw(server.port, b"POST /api/images/2/open HTTP/1.1\r\nHost: " + host + b"\r\nContent-Length: 0\r\n\r\n")
        # garbage
        _raw(server.port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64))
        # many at once
        threads = [
            threading.Thread(target=_raw, args=(server.port, head + b"Content-Length: 100\r\n\r\n{")) for _ in range(20)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(0.5)
        assert server.proc.poll() is None, "the server died"
        with httpx.Client(base_url=server.url, timeout=60) as http:
            assert http.get("/api/state").status_code == 200
            got = http.post("/api/predict", json={"index": 0, "points": [[10, 10]], "labels": [1]})
            assert got.status_code == 200 and len(got.json()["candidates"]) == 3
        answer = _raw(
            server.port,
            head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body,
            read=True,
        )
        assert answer.startswith(b"HTTP/1.1 200")
    finally:
        err = server.stop()
    assert server.proc.returncode == 0, err
    assert "Traceback" not in err, err


def test_a_host_that_is_not_loopback_is_warned_about(
    folder: Path, tiny_sam_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.2", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="cannot listen on 127.0.0.2"):
            run_label_server(folder, tiny_sam_folder, LABELS, host="127.0.0.2", port=port)
    assert capsys.readouterr().err == ""  # 127.0.0.2 is loopback too
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="cannot listen"):
            run_label_server(folder, tiny_sam_folder, LABELS, host="0.0.0.0", port=port)
    assert "warning: listening on 0.0.0.0" in capsys.readouterr().err


def test_without_fastapi_the_error_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['fastapi'] = None\n"
        "import fastseg.label, fastseg.label.db, fastseg.label.cli  # these need no FastAPI\n"
        "try:\n    import fastseg.label.server\nexcept ImportError as e:\n    print(e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "pip install 'fastseg[label]'" in result.stdout and "fastapi" in result.stdout


def test_a_sam2_model_labels_like_sam(folder: Path, open_client: Any, exported_model: Any) -> None:
    """SAM 2.1 on the page's API: three candidates, a refinement fed the previous logits, an accept,
    everything-mode proposals, and a COCO export equal to ``Predictor.predict`` for the same clicks."""
    model = exported_model("sam2.1_hiera_tiny")
    client = open_client(folder, model, everything_params={**SAM_EVERYTHING, "box_nms_thresh": 1.0})
    first = client.post("/api/predict", json={"index": 1, "points": [[80, 50]], "labels": [1], "multimask": True})
    assert first.status_code == 200, first.text
    assert len(first.json()["candidates"]) == 3
    refine = {"index": 1, "points": [[80, 50], [20, 15]], "labels": [1, 0], "multimask": False,
              "mask_input": "previous", "previous": first.json()["prompt_id"], "candidate": 0}
    second = client.post("/api/predict", json=refine)
    assert second.status_code == 200, second.text
    assert second.json()["mask_input"] is True and len(second.json()["candidates"]) == 1
    accepted = client.post(
        "/api/images/1/instances", json={"label": "cat", "prompt_id": second.json()["prompt_id"], "candidate": 0}
    )
    assert accepted.status_code == 200, accepted.text
    everything = client.post("/api/images/1/everything", json={})
    assert everything.status_code == 200, everything.text
    assert len(everything.json()["proposals"]) == 3 * 16  # NMS off: every grid point's three masks
    coco = client.post("/api/export", json={"format": "coco", "segmentation": "rle"}).json()
    index = pycocotools_coco.COCO(coco["path"])
    ann = index.loadAnns(index.getAnnIds())[0]

    predictor = fastseg.Predictor(model, num_threads=1, cache_dir=False)
    predictor.set_image(np.asarray(Image.open(folder / files_of(folder)[1]).convert("RGB")))
    one = predictor.predict(points=[[80, 50]], labels=[1], multimask=True)
    two = predictor.predict(
        points=[[80, 50], [20, 15]], labels=[1, 0], mask_input=one.low_res_logits[0:1], multimask=False
    )
    assert np.array_equal(index.annToMask(ann).astype(bool), two.masks[0])
