"""``fastseg embed`` / ``fastseg batch`` on folders of real photos, with the tiny models (fast tier).

What is checked: the masks written are the Predictor's, mask for mask; every format reads back with
its reader; bad images are reported and never stop the run; an interrupted or killed run leaves a
valid output and ``--resume`` finishes it without duplicating an annotation.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fastseg
from fastseg.batch import JobConfig, Journal, Worker, list_images, run_batch, run_embed
from fastseg.cli import main

pycocotools_coco = pytest.importorskip("pycocotools.coco")


def make_folder(root: Path, photos: dict[str, np.ndarray], copies: int = 1, side: int = 160) -> Path:
    """Small distinct photos (resized, flipped), in a subfolder too, with a hidden folder that is skipped."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir(exist_ok=True)
    (root / ".hidden").mkdir(exist_ok=True)
    n = 0
    for copy in range(copies):
        for name, image in sorted(photos.items()):
            pil = Image.fromarray(image)
            pil = pil.resize((side, round(side * pil.height / pil.width)))
            if copy % 2:
                pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            where = root / "sub" if n % 2 else root
            pil.save(where / f"{name}_{copy}.{'png' if n % 3 == 0 else 'jpg'}")
            n += 1
    Image.fromarray(photos["chelsea"]).save(root / ".hidden" / "skipped.png")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def folder(tmp_path: Path, photos: dict[str, np.ndarray]) -> Path:
    return make_folder(tmp_path / "photos", photos)


def config(folder: Path, model: Path, task: str = "everything", **options: object) -> JobConfig:
    return JobConfig(folder=str(folder), model=str(model), task=task, threads=1, **options)  # type: ignore[arg-type]


def coco_masks(path: Path) -> dict[str, list[np.ndarray]]:
    """file -> masks of a COCO file, read with pycocotools."""
    coco = pycocotools_coco.COCO(str(path))
    out = {}
    for image_id, image in coco.imgs.items():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        out[image["file_name"]] = [coco.annToMask(a).astype(bool) for a in sorted(anns, key=lambda a: a["id"])]
    return out


def test_list_images_recurses_and_skips_hidden(folder: Path) -> None:
    files = list_images(folder)
    assert files == sorted(files)
    assert any(f.startswith("sub/") for f in files)
    assert not any(".hidden" in f or f.endswith(".txt") for f in files)
    with pytest.raises(FileNotFoundError, match="folder not found"):
        list_images(folder / "nope")
    with pytest.raises(NotADirectoryError, match="expected a folder"):
        list_images(folder / "notes.txt")


@pytest.mark.parametrize("family", ["sam", "fastsam"])
def test_everything_coco_equals_the_predictor(
    folder: Path, tmp_path: Path, tiny_sam_folder: Path, tiny_fastsam_folder: Path, family: str
) -> None:
    model = tiny_sam_folder if family == "sam" else tiny_fastsam_folder
    params = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0} if family == "sam" else {}
    out = tmp_path / "coco.json"
    summary = run_batch(config(folder, model, everything=tuple(sorted(params.items()))), out, progress=False)
    assert summary.done_now == len(list_images(folder)) and not summary.errors and not summary.interrupted
    got = coco_masks(out)
    predictor = fastseg.Predictor(model, num_threads=1)
    total = 0
    for file in list_images(folder):
        expected = predictor.everything(folder / file, **params).masks
        assert len(got[file]) == len(expected)
        for a, b in zip(got[file], expected):
            assert np.array_equal(a, b)
        total += len(expected)
    assert total > 0 and summary.masks == total
    data = json.loads(out.read_text())
    assert data["errors"] == [] and data["categories"] == [{"id": 1, "name": "object"}]
    assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])


def test_bad_images_are_reported_and_do_not_stop_the_run(
    folder: Path, tmp_path: Path, tiny_fastsam_folder: Path
) -> None:
    good = (folder / "astronaut_0.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 3])
    (folder / "sub" / "text.jpg").write_text("this is not a JPEG")
    out = tmp_path / "coco.json"
    summary = run_batch(config(folder, tiny_fastsam_folder), out, progress=False)
    assert sorted(e["file"] for e in summary.errors) == ["sub/text.jpg", "truncated.png"]
    assert summary.done_now == len(list_images(folder)) - 2
    data = json.loads(out.read_text())
    assert sorted(e["file"] for e in data["errors"]) == ["sub/text.jpg", "truncated.png"]
    assert all("cannot read" in e["error"] for e in data["errors"])
    assert {i["file_name"] for i in data["images"]} == set(list_images(folder)) - {"sub/text.jpg", "truncated.png"}
    lines = summary.lines()
    assert any(line.startswith("error: truncated.png:") for line in lines)


def test_interrupted_run_leaves_a_valid_output_and_resume_finishes_it(
    folder: Path, tmp_path: Path, tiny_fastsam_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = config(folder, tiny_fastsam_folder)
    full = tmp_path / "full.json"
    run_batch(job, full, progress=False)
    calls = {"n": 0}
    process = Worker.process

    def interrupted(self: Worker, item: object) -> dict:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return process(self, item)  # type: ignore[arg-type]

    monkeypatch.setattr(Worker, "process", interrupted)
    out = tmp_path / "part.json"
    summary = run_batch(job, out, progress=False)
    assert summary.interrupted and summary.done_now == 2
    assert len(json.loads(out.read_text())["images"]) == 2  # valid COCO with what is done
    monkeypatch.setattr(Worker, "process", process)
    with pytest.raises(ValueError, match="--resume"):
        run_batch(job, out, progress=False)
    summary = run_batch(job, out, resume=True, progress=False)
    assert summary.done_before == 2 and summary.done_now == len(list_images(folder)) - 2
    assert json.loads(out.read_text())["annotations"] == json.loads(full.read_text())["annotations"]
    # Resuming a finished run does nothing and duplicates nothing.
    summary = run_batch(job, out, resume=True, progress=False)
    assert summary.done_now == 0
    assert json.loads(out.read_text())["annotations"] == json.loads(full.read_text())["annotations"]
    # Another job does not resume this journal.
    with pytest.raises(ValueError, match="another job.*conf"):
        run_batch(config(folder, tiny_fastsam_folder, conf=0.5), out, resume=True, progress=False)
    summary = run_batch(config(folder, tiny_fastsam_folder, conf=0.5), out, overwrite=True, progress=False)
    assert summary.done_before == 0


def test_a_journal_line_cut_by_a_kill_is_dropped(folder: Path, tmp_path: Path, tiny_fastsam_folder: Path) -> None:
    job = config(folder, tiny_fastsam_folder)
    out = tmp_path / "coco.json"
    run_batch(job, out, progress=False)
    journal = out.with_name(out.name + ".journal.jsonl")
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:3]) + lines[3][:20])  # header, two records, a cut one
    summary = run_batch(job, out, resume=True, progress=False)
    assert summary.done_before == 2 and summary.done_now == len(list_images(folder)) - 2
    records = [json.loads(line) for line in journal.read_bytes().splitlines()[1:]]
    assert len(records) == len({r["file"] for r in records}) == len(list_images(folder))
    journal.write_bytes(b"".join(lines[:2]) + b"garbage\n" + lines[2])
    with pytest.raises(ValueError, match="damaged"):
        Journal(journal, json.loads(lines[0])["job"], resume=True)


def test_killed_cli_run_resumes_without_duplicates(tmp_path: Path, photos: dict, tiny_fastsam_folder: Path) -> None:
    folder = make_folder(tmp_path / "many", photos, copies=12)
    out = tmp_path / "coco.json"
    journal = out.with_name(out.name + ".journal.jsonl")
    args = [sys.executable, "-m", "fastseg.cli", "batch", str(folder), "--model", str(tiny_fastsam_folder)]
    args += ["--out", str(out), "--threads", "1", "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_bytes().count(b"\n") >= 4:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = journal.read_bytes().count(b"\n") - 1
    assert 0 < done < len(list_images(folder)), "the run should be killed half way"
    result = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "done before" in result.stdout
    data = json.loads(out.read_text())
    assert len(data["images"]) == len(list_images(folder))
    assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])
    per_image = {}
    for a in data["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a["segmentation"]["counts"])
    assert all(len(v) == len(set(v)) for v in per_image.values()), "an annotation was written twice"


def test_embed_fills_the_store_and_a_second_run_encodes_nothing(
    folder: Path, tmp_path: Path, tiny_sam_folder: Path
) -> None:
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    store = tmp_path / "store"
    job = config(folder, tiny_sam_folder, task="embed", store=str(store))
    first = run_embed(job, progress=False)
    n = len(list_images(folder)) - 1
    assert first.new == n and first.stored_before == 0
    assert [e["file"] for e in first.errors] == ["broken.jpg"]
    second = run_embed(job, progress=False)
    assert second.new == 0 and second.stored_before == n
    # A Predictor given the store finds every image there: no encoder run.
    runs = []

    def count(name: str, session):  # noqa: ANN001, ANN202
        if name == "encoder":
            run = session.run

            def counted(*a, **k):  # noqa: ANN002, ANN003, ANN202
                runs.append(1)
                return run(*a, **k)

            session.run = counted
        return session

    predictor = fastseg.Predictor(tiny_sam_folder, num_threads=1, store=store, session_wrapper=count)
    predictor.set_image(folder / "astronaut_0.png")
    assert runs == []


def test_cli_batch_and_embed_print_a_summary(folder: Path, tmp_path: Path, tiny_fastsam_folder: Path, capsys) -> None:
    out = tmp_path / "coco.json"
    assert main(["batch", str(folder), "--model", str(tiny_fastsam_folder), "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert f"{len(list_images(folder))} images:" in text and "images/s" in text and str(out) in text
    store = tmp_path / "store"
    assert (
        main(["embed", str(folder), "--model", str(tiny_fastsam_folder), "--store", str(store), "--no-progress"]) == 0
    )
    assert "encoded" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--resume", "--overwrite"], "give one of them"),
        (["--tolerance", "-1"], "at least 0"),
        (["--threads", "0"], "at least 1"),
        (["--actors", "2"], "needs --ray"),
        (["--names", "a,b"], "needs --prompts"),
        (["--format", "yolo", "--out-is-file"], "is a file"),
    ],
)
def test_cli_batch_errors_are_one_line(
    folder: Path, tmp_path: Path, tiny_fastsam_folder: Path, capsys, extra: list[str], message: str
) -> None:
    out = tmp_path / "out.json"
    if "--out-is-file" in extra:
        extra = [e for e in extra if e != "--out-is-file"]
        out.write_text("{}")
    args = ["batch", str(folder), "--model", str(tiny_fastsam_folder), "--out", str(out), "--no-progress", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_cli_missing_folder_is_one_line(tmp_path: Path, tiny_fastsam_folder: Path, capsys) -> None:
    args = ["batch", str(tmp_path / "nope"), "--model", str(tiny_fastsam_folder), "--out", str(tmp_path / "o.json")]
    assert main(args) == 2
    assert "folder not found" in capsys.readouterr().err
    assert main(["embed", str(tmp_path / "nope"), "--model", str(tiny_fastsam_folder), "--store", str(tmp_path)]) == 2


def test_output_is_atomic_no_partial_files_left(folder: Path, tmp_path: Path, tiny_fastsam_folder: Path) -> None:
    out_dir = tmp_path / "labelme"
    run_batch(config(folder, tiny_fastsam_folder), out_dir, "labelme", progress=False)
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".partial")]
    assert leftovers == []
    assert os.path.exists(out_dir / "errors.json")


def write_coco_prompts(path: Path, folder: Path, files: list[str]) -> dict:
    """A COCO dataset of boxes (and one keypoint prompt) over ``files``, with an image that has none."""
    images, annotations = [], []
    for n, file in enumerate(files, start=10):
        with Image.open(folder / file) as pil:
            w, h = pil.size
        images.append({"id": n, "file_name": file, "width": w, "height": h, "license": 3})
        annotations.append(
            {"id": 100 + n, "image_id": n, "category_id": 7, "bbox": [w * 0.1, h * 0.2, w * 0.5, h * 0.6]}
        )
        annotations.append(
            {"id": 200 + n, "image_id": n, "category_id": 9, "bbox": [w * 0.5, h * 0.1, w * 0.3, h * 0.3]}
        )
        annotations.append(
            {"id": 300 + n, "image_id": n, "category_id": 9, "keypoints": [w * 0.3, h * 0.4, 2], "num_keypoints": 1}
        )
    images.append({"id": 99, "file_name": files[0].replace(".", "_none."), "width": 1, "height": 1})
    data = {
        "images": images[:-1],
        "annotations": annotations,
        "categories": [{"id": 7, "name": "cat", "supercategory": "animal"}, {"id": 9, "name": "thing"}],
    }
    path.write_text(json.dumps(data))
    return data


@pytest.mark.parametrize("family", ["sam", "fastsam"])
def test_boxes_to_masks_equal_predict(
    folder: Path, tmp_path: Path, tiny_sam_folder: Path, tiny_fastsam_folder: Path, family: str
) -> None:
    model = tiny_sam_folder if family == "sam" else tiny_fastsam_folder
    files = list_images(folder)[:3]
    given = write_coco_prompts(tmp_path / "boxes.json", folder, files)
    out = tmp_path / "masks.json"
    code = main(["batch", str(folder), "--model", str(model), "--prompts", str(tmp_path / "boxes.json"),
                 "--out", str(out), "--threads", "1", "--no-progress"])  # fmt: skip
    assert code == 0
    data = json.loads(out.read_text())
    assert data["categories"] == given["categories"]
    assert [(i["id"], i["file_name"], i.get("license")) for i in data["images"]] == [
        (i["id"], i["file_name"], i.get("license")) for i in given["images"]
    ]
    masks = coco_masks(out)
    predictor = fastseg.Predictor(model, num_threads=1)
    for image in given["images"]:
        handle = predictor.encode(folder / image["file_name"])
        anns = [a for a in given["annotations"] if a["image_id"] == image["id"]]
        got = iter(masks[image["file_name"]])
        written = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        assert [a["source_id"] for a in written] == [a["id"] for a in anns][: len(written)] or family == "fastsam"
        for a in anns:
            if "bbox" in a:
                x, y, w, h = a["bbox"]
                result = predictor.predict(boxes=[x, y, x + w, y + h], multimask=False, image=handle)
            else:
                result = predictor.predict(points=[a["keypoints"][:2]], labels=[1], image=handle)
            if len(result) == 0:
                continue
            expected = result.masks[int(np.argmax(result.scores))] if family == "sam" else result.masks.any(axis=0)
            assert np.array_equal(next(got), expected)
        assert next(got, None) is None


def test_prompts_naming_a_missing_image_is_an_error(
    folder: Path, tmp_path: Path, tiny_sam_folder: Path, capsys
) -> None:
    given = write_coco_prompts(tmp_path / "boxes.json", folder, list_images(folder)[:2])
    given["images"][1]["file_name"] = "gone/away.jpg"
    (tmp_path / "boxes.json").write_text(json.dumps(given))
    args = ["batch", str(folder), "--model", str(tiny_sam_folder), "--prompts", str(tmp_path / "boxes.json")]
    assert main([*args, "--out", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err
    assert "gone/away.jpg" in err and err.count("\n") == 1
    assert not (tmp_path / "o.json").exists()


def test_yolo_boxes_to_yolo_seg_and_labelme(tmp_path: Path, photos: dict, tiny_sam_folder: Path) -> None:
    from fastseg.batch import read_prompt_input
    from fastseg.formats import read_labelme, read_yolo_seg
    from fastseg.polygons import polygons_to_mask

    folder = make_folder(tmp_path / "photos", photos, side=640)

    labels = tmp_path / "labels"
    files = list_images(folder)
    for file in files[:2]:
        target = labels / Path(file).with_suffix(".txt")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("0 0.5 0.5 0.4 0.4\n1 0.3 0.3 0.2 0.2 0.9\n")
    given = read_prompt_input(labels, folder, "cat,dog")
    assert sorted(given.prompts) == files and given.categories == [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}]
    job = config(folder, tiny_sam_folder, task="prompts")
    for fmt in ("yolo", "labelme"):
        out = tmp_path / fmt
        summary = run_batch(job, out, fmt, prompts=given.prompts, categories=given.categories, progress=False)
        assert summary.masks == 4 and summary.polygons == 4 and summary.iou_min >= 0.98
        coco = tmp_path / f"{fmt}.json"
        run_batch(job, coco, prompts=given.prompts, categories=given.categories, progress=False)
        expected = coco_masks(coco)
        for file in files[:2]:
            h, w = np.asarray(Image.open(folder / file)).shape[:2]
            if fmt == "yolo":
                instances = read_yolo_seg(out / Path(file).with_suffix(".txt"))
                assert [c for c, _ in instances] == [0, 1]
                got = [polygons_to_mask([poly * [w, h]], (h, w)) for _, poly in instances]
            else:
                doc = read_labelme(out / Path(file).with_suffix(".json"))
                assert [s["label"] for s in doc["shapes"]] == ["cat", "dog"]
                assert (out / Path(file).with_suffix(".json")).parent.joinpath(doc["imagePath"]).resolve() == (
                    folder / file
                ).resolve()
                got = [polygons_to_mask([np.array(s["points"])], (h, w)) for s in doc["shapes"]]
            for a, b in zip(got, expected[file]):
                iou = (a & b).sum() / max((a | b).sum(), 1)
                assert iou >= 0.98
        assert (out / "classes.txt").read_text() == "cat\ndog\n"
        assert json.loads((out / "errors.json").read_text())["errors"] == []
    # A label file for an image that is not there is an error naming it.
    (labels / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(FileNotFoundError, match="ghost.txt"):
        read_prompt_input(labels, folder, None)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["everything", "embed"])
def test_ray_local_equals_the_local_run(folder: Path, tmp_path: Path, tiny_sam_folder: Path, task: str) -> None:
    """Ray Data on a local Ray instance with two actors writes the same masks (and store entries)."""
    pytest.importorskip("ray")
    params = (("points_per_side", 4), ("pred_iou_thresh", 0.0), ("stability_score_thresh", 0.0))
    if task == "embed":
        local, distributed = tmp_path / "store_local", tmp_path / "store_ray"
        run_embed(config(folder, tiny_sam_folder, task="embed", store=str(local)), progress=False)
        job = config(folder, tiny_sam_folder, task="embed", store=str(distributed))
        summary = run_embed(job, ray="local", actors=2, progress=False)
        assert summary.new == len(list_images(folder)) and not summary.errors
        ours = sorted(p.relative_to(local) for p in local.rglob("*.npz"))
        assert ours == sorted(p.relative_to(distributed) for p in distributed.rglob("*.npz"))
        for rel in ours:
            a, b = np.load(local / rel), np.load(distributed / rel)
            assert np.array_equal(a["embedding"], b["embedding"])
        return
    run_batch(config(folder, tiny_sam_folder, everything=params), tmp_path / "local.json", progress=False)
    summary = run_batch(
        config(folder, tiny_sam_folder, everything=params), tmp_path / "ray.json", ray="local", actors=2, progress=False
    )
    assert summary.done_now == len(list_images(folder)) and not summary.errors
    local = json.loads((tmp_path / "local.json").read_text())
    distributed = json.loads((tmp_path / "ray.json").read_text())
    assert distributed["annotations"] == local["annotations"] and distributed["images"] == local["images"]
