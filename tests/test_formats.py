"""Label formats (``fastseg.formats``): prompt files in, COCO / YOLO-seg / labelme out.

Fast tier, no model. Outputs are read back the way their users read them: COCO with
``pycocotools.coco.COCO`` and ``annToMask``, YOLO-seg and labelme with the readers here, their polygons
rasterised with pycocotools. Masks are segmentations of scikit-image's photos (the horse, the coins).
Bad prompt files come as a table: each must give a ``ValueError`` naming the file and the problem.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO
from scipy import ndimage
from skimage import data, filters, measure

from fastseg import formats
from fastseg.formats import (
    MAX_INPUT_BYTES,
    CocoPrompts,
    Prompt,
    coco_annotation,
    labelme_document,
    labelme_shapes,
    read_coco_prompts,
    read_labelme,
    read_yolo_prompts,
    read_yolo_seg,
    write_coco,
    write_labelme,
    write_yolo_seg,
    yolo_seg_lines,
)
from fastseg.polygons import mask_to_polygons, polygons_to_mask


@cache
def horse() -> np.ndarray:
    return ~data.horse().astype(bool)  # (328, 400), one part, touches no border


@cache
def coins() -> np.ndarray:
    """(303, 384): the coins, about 20 parts."""
    blurred = filters.gaussian(data.coins(), sigma=1.0, preserve_range=True)
    m = ndimage.binary_fill_holes(blurred > filters.threshold_otsu(blurred))
    labels = measure.label(m, connectivity=1)
    return (np.bincount(labels.ravel()) >= 150)[labels] & m


def coin(k: int) -> np.ndarray:
    labels = measure.label(coins(), connectivity=1)
    return labels == k + 1


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# ----------------------------------------------------------------------------------------------
# COCO out
# ----------------------------------------------------------------------------------------------

CATEGORIES = [{"id": 1, "name": "horse", "supercategory": "animal"}, {"id": 7, "name": "coin"}]


def _coco_dataset(tmp_path: Path) -> tuple[Path, dict[int, np.ndarray], dict[int, str]]:
    """Two images; the horse and three coins as RLE, the horse and all coins (one object) as polygons."""
    images = [
        {"id": 10, "file_name": "horse.png", "height": 328, "width": 400, "license": 3},
        {"id": 20, "file_name": "sub/coins.png", "height": 303, "width": 384},
    ]
    objects: list[tuple[int, int, np.ndarray, str]] = [
        (10, 1, horse(), "rle"),
        (10, 1, horse(), "polygons"),
        *[(20, 7, coin(k), "rle") for k in range(3)],
        (20, 7, coins(), "polygons"),
    ]
    errors: list[dict[str, str]] = []
    listed: list[dict[str, Any]] = []

    def annotations() -> Iterator[dict[str, Any]]:
        listed.extend(images)  # filled while the annotations stream: write_coco reads images afterwards
        for n, (image_id, category_id, m, kind) in enumerate(objects, start=1):
            polygons = mask_to_polygons(m) if kind == "polygons" else None
            yield coco_annotation(n, image_id, category_id, mask=m, polygons=polygons, score=0.5 + n / 100)
        errors.append({"file": "broken.png", "error": "cannot identify image file"})

    path = tmp_path / "out" / "instances.json"
    assert write_coco(path, listed, annotations(), CATEGORIES, errors, info={"description": "test"}) == len(objects)
    return path, {n: o[2] for n, o in enumerate(objects, start=1)}, {n: o[3] for n, o in enumerate(objects, start=1)}


def test_coco_output_reads_back_with_pycocotools(tmp_path: Path) -> None:
    path, masks, kinds = _coco_dataset(tmp_path)
    coco = COCO(str(path))
    assert sorted(coco.getImgIds()) == [10, 20] and coco.imgs[10]["license"] == 3
    assert coco.loadCats([1, 7]) == CATEGORIES
    assert coco.dataset["errors"] == [{"file": "broken.png", "error": "cannot identify image file"}]
    assert coco.dataset["info"] == {"description": "test"}
    anns = coco.loadAnns(coco.getAnnIds())
    assert len({a["id"] for a in anns}) == len(anns) == len(masks)
    for ann in anns:
        m = masks[ann["id"]]
        back = coco.annToMask(ann).astype(bool)
        if kinds[ann["id"]] == "rle":
            np.testing.assert_array_equal(back, m)
            assert isinstance(ann["segmentation"]["counts"], str)
        else:
            assert iou(back, m) >= 0.98
            assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"])
        ys, xs = np.nonzero(m)
        assert ann["area"] == m.sum() and ann["iscrowd"] == 0
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann["score"] == pytest.approx(0.5 + ann["id"] / 100)
    assert [p.name for p in path.parent.iterdir()] == ["instances.json"]  # no temporary file left


def test_coco_output_without_errors_still_lists_them(tmp_path: Path) -> None:
    path = tmp_path / "empty.json"
    write_coco(path, [{"id": 1, "file_name": "a.png", "height": 4, "width": 5}], iter(()), CATEGORIES)
    doc = json.loads(path.read_text())
    assert doc["errors"] == [] and doc["annotations"] == [] and doc["info"] == {}
    COCO(str(path))


def test_write_coco_streams(tmp_path: Path) -> None:
    """Annotations from a generator are written as they come: the peak memory while writing is a small
    part of the output's size."""
    segmentation = {"size": [400, 400], "counts": "PQ3" * 700}  # a long RLE string
    count = 4000

    def annotations() -> Iterator[dict[str, Any]]:
        for n in range(1, count + 1):
            yield {"id": n, "image_id": 1, "category_id": 7, "segmentation": segmentation, "area": 1, "bbox": [0] * 4}

    path = tmp_path / "big.json"
    tracemalloc.start()
    try:
        write_coco(path, [{"id": 1, "file_name": "a.png", "height": 400, "width": 400}], annotations(), CATEGORIES)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = path.stat().st_size
    assert size > 5_000_000 and peak < size / 10, (size, peak)
    assert len(json.loads(path.read_text())["annotations"]) == count


def _ann(**changes: Any) -> dict[str, Any]:
    return {"id": 1, "image_id": 1, "category_id": 7, "area": 1, "bbox": [0, 0, 1, 1], "segmentation": [], **changes}


@pytest.mark.parametrize(
    ("annotations", "match"),
    [
        ([_ann(), _ann()], "id 1 is used twice"),
        ([_ann(category_id=3)], "category_id 3 is not in categories"),
        ([_ann(image_id=99)], r"not in images: \[99\]"),
        ([_ann(id="1")], "must be integers"),
        ([_ann(score=float("nan"))], "not JSON compliant"),
    ],
)
def test_write_coco_refuses_bad_annotations_and_writes_nothing(
    tmp_path: Path, annotations: list[dict[str, Any]], match: str
) -> None:
    path = tmp_path / "out.json"
    images = [{"id": 1, "file_name": "a.png", "height": 4, "width": 5}]
    with pytest.raises(ValueError, match=match):
        write_coco(path, images, annotations, CATEGORIES)
    assert list(tmp_path.iterdir()) == []


def test_write_coco_refuses_duplicate_image_and_category_ids(tmp_path: Path) -> None:
    image = {"id": 1, "file_name": "a.png", "height": 4, "width": 5}
    with pytest.raises(ValueError, match="images.1.: id 1 is used twice"):
        write_coco(tmp_path / "a.json", [image, image], [], CATEGORIES)
    with pytest.raises(ValueError, match="categories.1.: id 1 is used twice"):
        write_coco(tmp_path / "b.json", [image], [], [CATEGORIES[0], CATEGORIES[0]])


def test_coco_annotation_forms() -> None:
    m = coin(0)
    by_mask = coco_annotation(5, 2, 7, mask=m)
    by_rle = coco_annotation(5, 2, 7, rle=by_mask["segmentation"])
    assert by_mask == by_rle
    assert set(by_mask) == {"id", "image_id", "category_id", "iscrowd", "area", "bbox", "segmentation"}
    polygons = mask_to_polygons(m)
    flat = [p.ravel().tolist() for p in polygons]
    given = coco_annotation(5, 2, 7, polygons=flat, area=12, bbox=[1, 2, 3, 4], extra={"source_id": 9})
    assert given["segmentation"] == flat and given["area"] == 12 and given["bbox"] == [1.0, 2.0, 3.0, 4.0]
    assert given["source_id"] == 9
    assert coco_annotation(5, 2, 7, mask=m, polygons=polygons)["segmentation"] == flat


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "pass mask or rle"),
        ({"mask": np.zeros((3, 4), np.uint8)}, r"\(H, W\) bool"),
        ({"mask": np.ones((3, 4), bool), "polygons": []}, "polygons is empty"),
        ({"mask": np.ones((3, 4), bool), "polygons": [[0, 0, 1, 1]]}, "K >= 3"),
        ({"mask": np.ones((3, 4), bool), "extra": {"area": 3}}, "may not replace"),
        ({"rle": {"size": [3, 4], "counts": b"abc"}}, "COCO RLE"),
        ({"polygons": [[0, 0, 1, 0, 1, 1]], "area": 1, "bbox": [0, 0, 1]}, "bbox must be 4"),
    ],
)
def test_coco_annotation_refuses(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        coco_annotation(1, 1, 1, **kwargs)


# ----------------------------------------------------------------------------------------------
# YOLO-seg out
# ----------------------------------------------------------------------------------------------


def test_yolo_seg_round_trip(tmp_path: Path) -> None:
    """One line per object, classes kept, coordinates normalised; several parts joined into one polygon
    (ultralytics' convention) that rasterises back to all of them."""
    h, w = coins().shape
    objects = [(0, coin(0)), (3, coins()), (2, coin(5))]
    text = yolo_seg_lines([(cls, mask_to_polygons(m)) for cls, m in objects] + [(4, [])], (h, w))
    path = tmp_path / "labels" / "sub" / "coins.txt"
    write_yolo_seg(path, text)
    lines = read_yolo_seg(path, names=["a", "b", "c", "d", "e"])
    assert [cls for cls, _ in lines] == [0, 3, 2]  # the object without polygons writes no line
    for (_, xy), (_, m) in zip(lines, objects):
        assert xy.shape[1] == 2 and len(xy) >= 3 and xy.min() >= 0 and xy.max() <= 1
        back = polygons_to_mask([xy * [w, h]], (h, w))
        assert iou(back, m) >= 0.98
    assert path.read_text().count("\n") == 3 and path.read_text() == text


def test_yolo_seg_largest_part() -> None:
    h, w = coins().shape
    polygons = mask_to_polygons(coins())
    ((cls, xy),) = _parse(yolo_seg_lines([(1, polygons)], (h, w), parts="largest"))
    np.testing.assert_allclose(xy * [w, h], polygons[0], atol=1e-3 * w)


def _parse(text: str) -> list[tuple[int, np.ndarray]]:
    out = []
    for line in text.splitlines():
        values = line.split()
        out.append((int(values[0]), np.array(values[1:], float).reshape(-1, 2)))
    return out


def test_yolo_seg_coordinates_touching_the_border_stay_within_0_1() -> None:
    m = np.zeros((50, 80), bool)
    m[:, :30] = True
    ((_, xy),) = _parse(yolo_seg_lines([(0, mask_to_polygons(m))], m.shape))
    assert xy[:, 0].min() == 0 and xy[:, 1].min() == 0 and xy[:, 1].max() == 1


@pytest.mark.parametrize(
    ("instances", "kwargs", "match"),
    [
        ([(-1, [np.zeros((3, 2))])], {}, "class index"),
        ([(1.5, [np.zeros((3, 2))])], {}, "class index"),
        ([(1, [np.zeros((2, 2))])], {}, "K >= 3"),
        ([(1, [np.zeros((3, 2))])], {"parts": "all"}, "parts must be"),
    ],
)
def test_yolo_seg_lines_refuses(instances: list[Any], kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        yolo_seg_lines(instances, (10, 10), **kwargs)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("0 0.1 0.1 0.2 0.2", "at least 3 points"),
        ("0 0.1 0.1 0.2 0.2 0.3 0.3 0.4", "at least 3 points"),
        ("0 0.1 0.1 0.2 0.2 1.3 0.3", r"normalised to \[0, 1\]"),
        ("0 0.1 x 0.2 0.2 0.3 0.3", "expected numbers"),
        ("-1 0.1 0.1 0.2 0.2 0.3 0.3", "integer >= 0"),
        ("9 0.1 0.1 0.2 0.2 0.3 0.3", "not one of the 2 names"),
    ],
)
def test_read_yolo_seg_refuses(tmp_path: Path, line: str, match: str) -> None:
    path = tmp_path / "a.txt"
    path.write_text("0 0.1 0.1 0.2 0.2 0.3 0.3\n" + line + "\n")
    with pytest.raises(ValueError, match=match) as info:
        read_yolo_seg(path, names=["a", "b"])
    assert f"{path}:2" in str(info.value)


# ----------------------------------------------------------------------------------------------
# labelme out
# ----------------------------------------------------------------------------------------------

LABELME_KEYS = {"version", "flags", "shapes", "imagePath", "imageData", "imageHeight", "imageWidth"}
SHAPE_KEYS = {"label", "points", "group_id", "description", "shape_type", "flags", "mask"}


def test_labelme_round_trip(tmp_path: Path) -> None:
    h, w = coins().shape
    objects = [("coin", coin(0)), ("all coins", coins())]
    shapes = [s for n, (label, m) in enumerate(objects, 1) for s in labelme_shapes(label, mask_to_polygons(m), n)]
    doc = labelme_document("../images/coins.png", (h, w), shapes)
    path = tmp_path / "labels" / "coins.json"
    write_labelme(path, doc)
    back = read_labelme(path)
    assert back == doc and set(back) == LABELME_KEYS and back["imageData"] is None
    assert (back["imageHeight"], back["imageWidth"], back["imagePath"]) == (h, w, "../images/coins.png")
    for n, (label, m) in enumerate(objects, 1):
        group = [s for s in back["shapes"] if s["group_id"] == n]
        assert {s["label"] for s in group} == {label} and all(set(s) == SHAPE_KEYS for s in group)
        assert all(s["shape_type"] == "polygon" for s in group)
        points = [np.array(s["points"]) for s in group]
        corners = np.concatenate(points)
        assert corners.min() >= 0 and corners[:, 0].max() <= w and corners[:, 1].max() <= h
        assert iou(polygons_to_mask(points, (h, w)), m) >= 0.98


def test_labelme_document_fills_in_shape_defaults() -> None:
    doc = labelme_document("a.png", (10, 20), [{"label": "cat", "points": [[1, 1], [5, 1], [5, 5]]}])
    (shape,) = doc["shapes"]
    assert shape == {
        "label": "cat",
        "points": [[1.0, 1.0], [5.0, 1.0], [5.0, 5.0]],
        "group_id": None,
        "description": "",
        "shape_type": "polygon",
        "flags": {},
        "mask": None,
    }


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"imageHeight": 0}, "imageHeight and imageWidth"),
        ({"imagePath": None}, "imagePath"),
        ({"shapes": {}}, "shapes must be a list"),
        ({"shapes": [{"label": "a", "points": [[1, 1], [2, 2]], "shape_type": "polygon"}]}, "at least 3 points"),
        ({"shapes": [{"label": "a", "points": [[1, 1], [2, 2], [25, 2]]}]}, "outside the 20x10 image"),
        ({"shapes": [{"label": "a", "points": [[1, 1], [2, 2], [None, 2]]}]}, "finite numbers"),
        ({"shapes": [{"points": [[1, 1], [2, 2], [3, 2]]}]}, "string 'label'"),
    ],
)
def test_read_labelme_refuses(tmp_path: Path, change: dict[str, Any], match: str) -> None:
    doc = {**labelme_document("a.png", (10, 20), []), **change}
    path = tmp_path / "a.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=match) as info:
        read_labelme(path)
    assert str(path) in str(info.value)
    with pytest.raises(ValueError, match=match):
        write_labelme(tmp_path / "b.json", doc)
    assert not (tmp_path / "b.json").exists()


# ----------------------------------------------------------------------------------------------
# Prompts in: COCO
# ----------------------------------------------------------------------------------------------


def _coco_prompt_doc() -> dict[str, Any]:
    return {
        "info": {"description": "boxes"},
        "images": [
            {"id": 1, "file_name": "horse.png", "height": 328, "width": 400},
            {"id": 2, "file_name": "sub/coins.png", "height": 303, "width": 384, "extra": "kept"},
            {"id": 3, "file_name": "nothing.png", "height": 10, "width": 10},
        ],
        "categories": [{"id": 1, "name": "horse"}, {"id": 7, "name": "coin"}],
        "annotations": [
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [10, 20, 100, 50.5]},
            {"id": 12, "image_id": 2, "category_id": 7, "bbox": [1, 2, 3, 4], "score": 0.75},
            {"id": 13, "image_id": 2, "category_id": 7, "keypoints": [5, 6, 2, 7, 8, 0, 9, 10, 1]},
            {"id": 14, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "keypoints": [1, 2, 2]},
        ],
    }


def test_read_coco_prompts(tmp_path: Path) -> None:
    path = tmp_path / "boxes.json"
    doc = _coco_prompt_doc()
    path.write_text(json.dumps(doc))
    prompts = read_coco_prompts(path)
    assert isinstance(prompts, CocoPrompts)
    assert prompts.images == doc["images"] and prompts.categories == doc["categories"]
    assert list(prompts.by_file) == ["horse.png", "sub/coins.png", "nothing.png"]
    assert prompts.by_file["nothing.png"] == []
    assert prompts.by_file["horse.png"] == [
        Prompt(box_xyxy=(10.0, 20.0, 110.0, 70.5), points=(), category_id=1, source_id=11),
        Prompt(box_xyxy=(0.0, 0.0, 5.0, 5.0), points=((1.0, 2.0),), category_id=1, source_id=14),
    ]
    box, points = prompts.by_file["sub/coins.png"]
    assert box == Prompt((1.0, 2.0, 4.0, 6.0), (), 7, 12, 0.75)
    assert points == Prompt(None, ((5.0, 6.0), (9.0, 10.0)), 7, 13)  # v > 0 only
    assert points.to_dict() == {
        "box": None,
        "points": [[5.0, 6.0], [9.0, 10.0]],
        "labels": [1, 1],
        "category_id": 7,
        "source_id": 13,
        "score": None,
    }
    for prompt in [*prompts.by_file["horse.png"], box, points]:
        assert Prompt.from_dict(json.loads(json.dumps(prompt.to_dict()))) == prompt


def _set(doc: dict[str, Any], where: str, value: Any) -> None:
    """Set ``doc["annotations"][0]["bbox"]`` for ``where="annotations.0.bbox"``; delete if value is ...."""
    *keys, last = where.split(".")
    target: Any = doc
    for key in keys:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if value is ...:
        del target[last if isinstance(target, dict) else int(last)]
    else:
        target[last if isinstance(target, dict) else int(last)] = value


BAD_COCO: list[tuple[str, Any, str]] = [
    ("annotations.0.bbox", [10, 20, 100], r"annotations\[0\] \(id 11\): 'bbox' must be 4 finite numbers"),
    ("annotations.0.bbox", [10, 20, 100, 50, 3], "'bbox' must be 4 finite numbers"),
    ("annotations.0.bbox", [10, 20, -100, 50], "'bbox' width and height must be > 0"),
    ("annotations.0.bbox", [10, 20, 100, 0], "'bbox' width and height must be > 0"),
    ("annotations.0.bbox", [10, 20, "100", 50], "'bbox' must be 4 finite numbers"),
    ("annotations.0.bbox", [10, 20, True, 50], "'bbox' must be 4 finite numbers"),
    ("annotations.0.bbox", "NAN", "'bbox' must be 4 finite numbers"),  # written as [NaN, ...]
    ("annotations.0.image_id", 99, "'image_id' 99 is not the id of an image"),
    ("annotations.0.image_id", ..., "'image_id' None is not the id of an image"),
    ("annotations.0.category_id", 3, "'category_id' 3 is not the id of a category"),
    ("annotations.2.keypoints", [5, 6, 2, 7], "'keypoints' must be finite numbers"),
    ("annotations.2.keypoints", [5, 6, 0], "needs a 'bbox' or labelled 'keypoints'"),
    ("annotations.1.score", "high", "'score' must be a finite number"),
    ("annotations.1", [1, 2], r"annotations\[1\] must be an object"),
    ("images.1.id", 1, r"images\[1\]: id 1 is used twice"),
    ("images.1.id", "2", r"images\[1\]: 'id' must be an integer"),
    ("images.1.file_name", "horse.png", "file_name 'horse.png' is listed twice"),
    ("images.1.file_name", ..., "'file_name' must be a non-empty string"),
    ("categories.1.id", 1, r"categories\[1\]: id 1 is used twice"),
    ("categories", ..., "'categories' must be a list"),
    ("images", {"id": 1}, "'images' must be a list"),
]


@pytest.mark.parametrize(("where", "value", "match"), BAD_COCO, ids=[f"{w}={v!r}" for w, v, _ in BAD_COCO])
def test_read_coco_prompts_refuses(tmp_path: Path, where: str, value: Any, match: str) -> None:
    doc = _coco_prompt_doc()
    _set(doc, where, [10, 20, float("nan"), 50] if value == "NAN" else value)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))  # json.dumps writes NaN as NaN, as some exporters do
    with pytest.raises(ValueError, match=match) as info:
        read_coco_prompts(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "got a JSON list"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
)
def test_read_coco_prompts_refuses_files(tmp_path: Path, text: str | bytes, match: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=match) as info:
        read_coco_prompts(path)
    assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError):
        read_coco_prompts(tmp_path / "missing.json")


def test_prompt_files_larger_than_the_limit_are_refused_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "huge.json"
    with open(path, "wb") as f:  # sparse: takes no disk space
        f.truncate(MAX_INPUT_BYTES + 1)

    def no_reading(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("the file was read")

    monkeypatch.setattr(Path, "read_text", no_reading)
    with pytest.raises(ValueError, match=f"{MAX_INPUT_BYTES + 1} bytes, more than") as info:
        read_coco_prompts(path)
    assert str(path) in str(info.value)
    labels = tmp_path / "labels"
    labels.mkdir()
    (tmp_path / "huge.json").rename(labels / "a.txt")
    with pytest.raises(ValueError, match="more than"):
        read_yolo_prompts(labels, {"a": (10, 10)})
    monkeypatch.undo()
    small = tmp_path / "small.json"
    small.write_text(json.dumps(_coco_prompt_doc()))
    with pytest.raises(ValueError, match="max_bytes"):
        read_coco_prompts(small, max_bytes=100)


# ----------------------------------------------------------------------------------------------
# Prompts in: YOLO boxes
# ----------------------------------------------------------------------------------------------


def _yolo_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "labels"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("0 0.5 0.5 0.5 0.25\n\n2 0.1 0.9 0.4 0.4 0.8\n")
    (folder / "sub" / "b.txt").write_text("1 0.5 0.5 1 1\n")
    (folder / "empty.txt").write_text("")
    (folder / "classes.txt").write_text("cat\ndog\nbird\n")
    return folder


def test_read_yolo_prompts(tmp_path: Path) -> None:
    folder = _yolo_folder(tmp_path)
    sizes = {"a": (100, 200), "sub/b": (30, 40)}
    prompts = read_yolo_prompts(folder, sizes, names=["cat", "dog", "bird"])
    assert list(prompts) == ["a", "empty", "sub/b"]  # classes.txt is not a label file
    assert prompts["empty"] == []
    first, second = prompts["a"]
    assert first == Prompt((50.0, 37.5, 150.0, 62.5), (), category_id=0, source_id=1)
    assert second.category_id == 2 and second.source_id == 3 and second.score == pytest.approx(0.8)
    np.testing.assert_allclose(second.box_xyxy, (0.0, 70.0, 60.0, 100.0))  # clipped to the image
    assert prompts["sub/b"] == [Prompt((0.0, 0.0, 40.0, 30.0), (), 1, 1)]

    asked: list[str] = []

    def size_of(key: str) -> tuple[int, int]:
        asked.append(key)
        return sizes[key]

    assert read_yolo_prompts(folder, size_of) == prompts
    assert asked == ["a", "sub/b"]  # not for the empty file


BAD_YOLO = [
    ("0 0.5 0.5\n", "expected 'class cx cy w h .conf.' .5 or 6 values., got 3"),
    ("0 0.5 0.5 0.5\n", "got 4"),
    ("0 0.1 0.1 0.2 0.1 0.2 0.2 0.1 0.2\n", "9 values look like a segmentation polygon"),
    ("0 0.1 0.1 0.2 0.1 0.2 0.2\n", "look like a segmentation polygon"),
    ("0 1.5 0.5 0.2 0.2\n", r"normalised to \[0, 1\]"),
    ("0 0.5 0.5 0.2 -0.2\n", r"normalised to \[0, 1\]"),
    ("0 0.5 0.5 0 0.2\n", "width and height must be > 0"),
    ("0 0.5 abc 0.2 0.2\n", "expected numbers"),
    ("0 0.5 nan 0.2 0.2\n", "non-finite"),
    ("0 0.5 0.5 inf 0.2\n", "non-finite"),
    ("-1 0.5 0.5 0.2 0.2\n", "integer >= 0"),
    ("1.5 0.5 0.5 0.2 0.2\n", "integer >= 0"),
    ("3 0.5 0.5 0.2 0.2\n", "class 3 is not one of the 3 names"),
]


@pytest.mark.parametrize(("line", "match"), BAD_YOLO, ids=[line.strip() for line, _ in BAD_YOLO])
def test_read_yolo_prompts_refuses(tmp_path: Path, line: str, match: str) -> None:
    folder = _yolo_folder(tmp_path)
    (folder / "sub" / "b.txt").write_text("1 0.5 0.5 1 1\n" + line)
    with pytest.raises(ValueError, match=match) as info:
        read_yolo_prompts(folder, {"a": (100, 200), "sub/b": (30, 40)}, names=["cat", "dog", "bird"])
    assert f"{folder / 'sub' / 'b.txt'}:2" in str(info.value)


@pytest.mark.parametrize(
    ("sizes", "match"),
    [
        ({"a": (100, 200)}, "no image size for 'sub/b'"),
        ({"a": (100, 200), "sub/b": (0, 40)}, "positive integers"),
        ({"a": (100, 200), "sub/b": (30.5, 40)}, "positive integers"),
        (lambda key: (10,), "positive integers"),
    ],
)
def test_read_yolo_prompts_needs_image_sizes(tmp_path: Path, sizes: Any, match: str) -> None:
    folder = _yolo_folder(tmp_path)
    with pytest.raises(ValueError, match=match):
        read_yolo_prompts(folder, sizes)
    with pytest.raises(FileNotFoundError):
        read_yolo_prompts(tmp_path / "missing", {})


def test_public_names() -> None:
    assert set(formats.__all__) <= set(dir(formats))
