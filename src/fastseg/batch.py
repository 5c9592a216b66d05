"""Folders of images: ``fastseg embed`` fills an embedding store, ``fastseg batch`` labels every image.

The work on one image (:meth:`Worker.process`) is the same in this process and in a Ray actor
(:mod:`fastseg.distributed`): load it, encode it (or take its embedding from the store), segment it,
and return a JSON-able record. The driver (:func:`run_embed`, :func:`run_batch`) lists the folder
once, skips what is done, writes each record as it arrives and assembles the output, so memory
does not grow with the folder and a killed run loses at most the images in flight:

- ``embed``: the :class:`~fastseg.store.EmbeddingStore` is the state; an image whose embedding is
  stored is not encoded again.
- ``batch``: a journal (JSON lines, one per image, appended and flushed as each image is done) beside
  the output is the state. The output files are written from it: per image as it is done (YOLO-seg,
  labelme), or at the end and on an interruption (COCO, which is one file), so the output on disk is
  always valid. ``--resume`` reads the journal and does only the rest; an annotation is never
  written twice, because each image has one record (the last) and ids are given when the COCO file is
  assembled, in file order, whatever order the images were done in.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from fastseg.fastsam import DEFAULT_CONF, DEFAULT_IOU
from fastseg.paths import atomic_write
from fastseg.registry import SAM_LIKE_FAMILIES

if TYPE_CHECKING:
    from fastseg.formats import Prompt
    from fastseg.predictor import Predictor
    from fastseg.store import EmbeddingStore

__all__ = [
    "FORMATS",
    "IMAGE_SUFFIXES",
    "BatchSummary",
    "EmbedSummary",
    "Item",
    "JobConfig",
    "Worker",
    "list_images",
    "read_prompt_input",
    "run_batch",
    "run_embed",
]

#: The files ``list_images`` takes (case-insensitive).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
#: Output formats of ``fastseg batch``.
FORMATS = ("coco", "yolo", "labelme")
Task = Literal["embed", "everything", "prompts"]
Record = dict[str, Any]

#: The journal's first line names its version and the job; a journal of another job is not resumed.
JOURNAL_VERSION = 1
#: At most this many errors are printed in a summary (all are in the output's ``errors``).
SHOWN_ERRORS = 20


def list_images(folder: str | os.PathLike[str]) -> list[str]:
    """Paths (relative to ``folder``, ``/``-separated, sorted) of the images in ``folder`` and its
    subfolders: files with a suffix of :data:`IMAGE_SUFFIXES`. Hidden files and folders (a name
    starting with ``.``, e.g. ``.fastseg``) are skipped; symbolic links to folders are not followed."""
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"expected a folder of images, got a file: {root}")
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        base = Path(dirpath).relative_to(root)
        found.extend(
            (base / name).as_posix()
            for name in filenames
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES
        )
    found.sort()
    return found


@dataclass(frozen=True)
class JobConfig:
    """What every worker needs to do its part (plain values: it travels to Ray actors).

    Attributes:
        folder: the image folder; items name files relative to it.
        model: the exported model folder (on every machine of a Ray cluster, at this path).
        task: ``"embed"`` (fill ``store``), ``"everything"`` (automatic masks) or ``"prompts"``
            (masks for each item's boxes / points).
        store: an :class:`~fastseg.store.EmbeddingStore` folder (required for ``embed``; for the other
            tasks, embeddings found there are used and new ones added).
        threads: inference threads per worker (None: all cores).
        everything: everything-mode parameters (``Predictor.everything``'s), as ``(name, value)`` pairs.
        polygons: also turn each mask into polygons (with their vertex count and IoU).
        tolerance: polygon simplification tolerance, in pixels.
    """

    folder: str
    model: str
    task: Task
    backend: str = "openvino"
    precision: str = "f32"
    threads: int | None = None
    cache: bool = True
    store: str | None = None
    conf: float = DEFAULT_CONF
    iou: float = DEFAULT_IOU
    everything: tuple[tuple[str, float], ...] = ()
    polygons: bool = False
    tolerance: float = 1.0

    def job(self) -> dict[str, Any]:
        """What makes two runs the same job (a journal is resumed only by the same job)."""
        keep = ("model", "task", "backend", "precision", "conf", "iou", "everything", "polygons", "tolerance")
        values = asdict(self)
        job = {k: values[k] for k in keep}
        job["model"] = str(Path(self.model).resolve())
        job["everything"] = [list(pair) for pair in self.everything]
        return job


@dataclass(frozen=True)
class Item:
    """One image to do: ``file`` relative to the job's folder, and its prompts (task ``prompts``) as
    :meth:`fastseg.formats.Prompt` dicts (``to_dict``)."""

    file: str
    prompts: tuple[Mapping[str, Any], ...] = ()


class Worker:
    """Does the job's work on one image at a time; one per process or Ray actor (it owns a Predictor)."""

    def __init__(self, config: JobConfig) -> None:
        from fastseg.predictor import Predictor
        from fastseg.store import EmbeddingStore, model_key

        self.config = config
        self.store: EmbeddingStore | None = EmbeddingStore(config.store) if config.store else None
        if config.task == "embed" and self.store is None:
            raise ValueError("the embed task needs an embedding store folder")
        self.predictor: Predictor = Predictor(
            config.model,
            backend=config.backend,  # type: ignore[arg-type]  # checked by the Predictor
            precision=config.precision,  # type: ignore[arg-type]
            num_threads=config.threads,
            cache_dir=None if config.cache else False,
            conf=config.conf,
            iou=config.iou,
            store=None if config.task == "embed" else self.store,
            cached_images=1,
        )
        self.model_key = model_key(self.predictor.folder, config.backend, self.predictor.precision)
        self._everything: dict[str, Any] = dict(config.everything)
        if config.task == "everything":
            self.predictor._template.everything_params(self._everything)  # bad parameters fail before any image

    def process(self, item: Item) -> Record:
        """The record of one image: ``file``, ``height``, ``width``, ``seconds`` and, by task,
        ``stored`` (``"new"`` / ``"hit"``) or ``annotations``; or ``file`` and ``error`` if the
        image cannot be read or its prompts do not fit it."""
        from fastseg.image import load_image

        start = time.perf_counter()
        record: Record = {"file": item.file}
        try:
            pixels = load_image(Path(self.config.folder) / item.file)
            record["height"], record["width"] = (int(v) for v in pixels.shape[:2])
            if self.config.task == "embed":
                record["stored"] = self._embed(pixels)
            elif self.config.task == "everything":
                record["annotations"] = self._everything_annotations(pixels)
            else:
                record["annotations"] = self._prompted_annotations(pixels, item.prompts)
        except (OSError, ValueError) as exc:
            return {"file": item.file, "error": str(exc)}
        record["seconds"] = round(time.perf_counter() - start, 4)
        return record

    def _embed(self, pixels: npt.NDArray[np.uint8]) -> str:
        from fastseg.store import image_key

        assert self.store is not None
        key = image_key(pixels)
        if self.store.contains(key, self.model_key):
            return "hit"
        handle = self.predictor.encode(pixels)
        self.store.put(key, self.model_key, handle.embedding)
        return "new"

    def _everything_annotations(self, pixels: npt.NDArray[np.uint8]) -> list[Record]:
        handle = self.predictor.encode(pixels)
        records = self.predictor.everything(image=handle, output_mode="coco_rle", **self._everything)
        return [
            self._annotation(r["segmentation"], 1, float(r[records.score_key]), bbox=r["bbox"], area=r["area"])
            for r in records
        ]

    def _prompted_annotations(
        self, pixels: npt.NDArray[np.uint8], prompts: Sequence[Mapping[str, Any]]
    ) -> list[Record]:
        from fastseg.rle import coco_encode_mask

        if not prompts:
            return []
        handle = self.predictor.encode(pixels)
        sam = self.predictor.folder.family in SAM_LIKE_FAMILIES
        results: list[tuple[Mapping[str, Any], npt.NDArray[np.bool_], float]] = []
        # SAM: the box-only prompts in one decoder batch (one mask each, as SamPredictor with a box).
        batched = [p for p in prompts if sam and p.get("box") is not None and not p.get("points")]
        if batched:
            result = self.predictor.predict(boxes=[p["box"] for p in batched], multimask=False, image=handle)
            assert result.prompt_index is not None
            for i, prompt in enumerate(batched):
                at = int(np.flatnonzero(result.prompt_index == i)[0])
                results.append((prompt, result.masks[at], float(result.scores[at])))
        for prompt in prompts:
            if any(prompt is p for p in batched):
                continue
            points = prompt.get("points") or None
            labels = prompt.get("labels") or None
            box = prompt.get("box")
            # SamPredictor's advice: three candidates for one ambiguous point, else one mask.
            multimask = sam and box is None and points is not None and len(points) == 1
            result = self.predictor.predict(points=points, labels=labels, boxes=box, multimask=multimask, image=handle)
            if len(result) == 0:
                continue  # FastSAM: no detection answers this prompt
            best = int(np.argmax(result.scores))
            mask = result.masks[best] if sam else np.logical_or.reduce(result.masks, axis=0)
            results.append((prompt, mask, float(result.scores[best])))
        order = {id(p): i for i, p in enumerate(prompts)}
        results.sort(key=lambda r: order[id(r[0])])
        annotations = []
        for prompt, mask, score in results:
            extra = {"source_id": prompt["source_id"]} if prompt.get("source_id") is not None else {}
            annotations.append(
                self._annotation(coco_encode_mask(mask), int(prompt.get("category_id", 1)), score, mask=mask, **extra)
            )
        return annotations

    def _annotation(
        self,
        rle: Mapping[str, Any],
        category_id: int,
        score: float,
        *,
        bbox: Sequence[float] | None = None,
        area: int | None = None,
        mask: npt.NDArray[np.bool_] | None = None,
        **extra: Any,
    ) -> Record:
        from fastseg.rle import decode, to_pycocotools

        counts = rle["counts"]
        rle = {
            "size": [int(v) for v in rle["size"]],
            "counts": counts.decode() if isinstance(counts, bytes) else counts,
        }
        if bbox is None or area is None:
            from pycocotools import mask as mask_api

            coco = to_pycocotools([dict(rle)])[0]
            bbox = [float(v) for v in mask_api.toBbox(coco)]
            area = int(mask_api.area(coco))
        annotation: Record = {
            "category_id": category_id,
            "rle": rle,
            "area": int(area),
            "bbox": [round(float(v), 2) for v in bbox],
            "score": round(score, 5),
            **extra,
        }
        if self.config.polygons:
            from fastseg.polygons import mask_to_polygons_with_stats

            if mask is None:
                mask = decode([dict(rle)])[0]
            polygons, stats = mask_to_polygons_with_stats(mask, tolerance=self.config.tolerance)
            annotation["polygons"] = [[round(float(v), 2) for v in poly.ravel()] for poly in polygons]
            annotation["vertices"] = int(stats.vertices)
            annotation["polygon_iou"] = round(float(stats.iou), 5) if polygons else 0.0
        return annotation


# ------------------------------------------------------------------------------------------------
# Prompt files


@dataclass
class GivenPrompts:
    """What a prompt file gives ``batch``: the prompts of each image (by path relative to the folder),
    the categories, and (COCO) the input's image entries, kept in the output."""

    prompts: dict[str, list[Prompt]]
    categories: list[dict[str, Any]]
    images: dict[str, dict[str, Any]] | None = None


def read_prompt_input(path: Path, folder: Path, names: str | None = None) -> GivenPrompts:
    """Read ``--prompts``: a COCO JSON file (``file_name`` relative to ``folder``; boxes and keypoints)
    or a folder of YOLO txt box files (``<image path without suffix>.txt``; ``names``: the class
    names, comma-separated or a file with one per line, else the folder's ``classes.txt``).

    Raises:
        FileNotFoundError: the file is missing, or it names an image that is not in ``folder`` (named).
        ValueError: a malformed file (the message names file, line or field).
    """
    from fastseg.formats import read_coco_prompts, read_yolo_prompts

    if not path.exists():
        raise FileNotFoundError(f"prompt file not found: {path}")
    if path.is_file():
        if names is not None:
            raise ValueError("--names is for YOLO prompts; a COCO file has its own categories")
        coco = read_coco_prompts(path)
        images = {str(image["file_name"]): dict(image) for image in coco.images}
        _check_named(folder, sorted(coco.by_file), path)
        return GivenPrompts(dict(coco.by_file), [dict(c) for c in coco.categories], images)
    class_names = _class_names(path, names)
    by_stem: dict[str, str] = {}
    for file in list_images(folder):
        stem = file.rsplit(".", 1)[0]
        if stem in by_stem:
            raise ValueError(
                f"YOLO labels name images by stem, and {folder} has two images {stem}.*: {by_stem[stem]} and {file}"
            )
        by_stem[stem] = file
    missing = []

    def size_of(key: str) -> tuple[int, int]:
        if key not in by_stem:
            missing.append(key)
            return (1, 1)  # reported below, with every other missing image
        return _oriented_size(folder / by_stem[key])

    labels = read_yolo_prompts(path, size_of, class_names)
    missing.extend(k for k in labels if k not in by_stem and k not in missing)
    if missing:
        raise FileNotFoundError(
            f"{path} has labels for {len(missing)} image(s) that are not in {folder}: "
            + ", ".join(f"{k}.txt" for k in sorted(missing)[:5])
            + (" ..." if len(missing) > 5 else "")
        )
    prompts = {by_stem[key]: labels.get(key, []) for key in by_stem}
    n_classes = max((p.category_id for ps in prompts.values() for p in ps), default=-1) + 1
    if class_names is None:
        class_names = [f"class{i}" for i in range(n_classes)]
    return GivenPrompts(prompts, [{"id": i, "name": name} for i, name in enumerate(class_names)])


def _check_named(folder: Path, files: Sequence[str], source: Path) -> None:
    root = folder.resolve()
    missing = [f for f in files if not (folder / f).is_file() or not (folder / f).resolve().is_relative_to(root)]
    if missing:
        raise FileNotFoundError(
            f"{source} names {len(missing)} image(s) that are not in {folder}: "
            + ", ".join(missing[:5])
            + (" ..." if len(missing) > 5 else "")
        )


def _class_names(labels: Path, names: str | None) -> list[str] | None:
    if names is None:
        listed = labels / "classes.txt"
        return [n.strip() for n in listed.read_text().splitlines() if n.strip()] if listed.is_file() else None
    if Path(names).is_file():
        return [n.strip() for n in Path(names).read_text().splitlines() if n.strip()]
    out = [n.strip() for n in names.split(",")]
    if not all(out):
        raise ValueError(f"--names: expected comma-separated class names or a file, got {names!r}")
    return out


def _oriented_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of an image as :func:`fastseg.image.load_image` turns it (EXIF orientation), from its header."""
    from PIL import Image

    try:
        with Image.open(path) as pil:
            w, h = pil.size
            turned = pil.getexif().get(0x0112) in (5, 6, 7, 8)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the size of {path}: {exc}") from exc
    return (w, h) if turned else (h, w)


# ------------------------------------------------------------------------------------------------
# The journal


class Journal:
    """``batch``'s state: a JSON-lines file, the job on the first line, then one record per image.

    Records are appended and flushed as images are done; a line cut short by a kill is dropped when
    the journal is opened again. For each file the last record counts. Only byte offsets are kept in
    memory, so a journal of a million images is read back record by record.
    """

    def __init__(self, path: Path, job: Mapping[str, Any], resume: bool) -> None:
        self.path = path
        self.offsets: dict[str, int] = {}  # file -> offset of its last record
        self.failed: set[str] = set()  # files whose last record is an error
        if resume and path.exists():
            self._read(job)
            self._file: IO[bytes] = path.open("ab")
        else:
            with atomic_write(path) as f:
                f.write(self._line({"fastseg_batch": JOURNAL_VERSION, "job": dict(job)}))
            self._file = path.open("ab")

    @staticmethod
    def _line(value: Mapping[str, Any]) -> bytes:
        return (json.dumps(value, separators=(",", ":")) + "\n").encode()

    def _read(self, job: Mapping[str, Any]) -> None:
        with self.path.open("rb") as f:
            head = f.readline()
            try:
                first = json.loads(head)
            except ValueError:
                first = None
            if not isinstance(first, dict) or first.get("fastseg_batch") != JOURNAL_VERSION:
                raise ValueError(f"{self.path} is not a fastseg batch journal (version {JOURNAL_VERSION})")
            if first.get("job") != json.loads(json.dumps(dict(job))):
                theirs = first.get("job") or {}
                diff = sorted(k for k in set(theirs) | set(job) if theirs.get(k) != job.get(k))
                raise ValueError(
                    f"{self.path} was written by another job (different {', '.join(diff)}); "
                    "resume with the same options, or write to another --out"
                )
            good_end = f.tell()
            while True:
                offset = f.tell()
                line = f.readline()
                if not line:
                    break
                try:
                    record = json.loads(line) if line.endswith(b"\n") else None
                except ValueError:
                    record = None
                if not isinstance(record, dict) or not isinstance(record.get("file"), str):
                    if f.readline():
                        raise ValueError(f"{self.path}: line at byte {offset} is not a record (the journal is damaged)")
                    break  # the last line, cut short by a kill: dropped below
                self._note(record["file"], offset, "error" in record)
                good_end = f.tell()
        if good_end < self.path.stat().st_size:
            os.truncate(self.path, good_end)

    def _note(self, file: str, offset: int, failed: bool) -> None:
        self.offsets[file] = offset
        if failed:
            self.failed.add(file)
        else:
            self.failed.discard(file)

    def done(self, file: str) -> bool:
        """Whether ``file`` has a record that is not an error (errors are tried again on resume)."""
        return file in self.offsets and file not in self.failed

    def add(self, record: Record) -> None:
        offset = self._file.seek(0, os.SEEK_END)
        self._file.write(self._line(record))
        self._file.flush()
        self._note(record["file"], offset, "error" in record)

    def records(self, files: Iterable[str] | None = None) -> Iterator[Record]:
        """The last record of each file (of ``files``, or all in file order), read from disk one by one."""
        with self.path.open("rb") as f:
            for file in sorted(self.offsets) if files is None else files:
                f.seek(self.offsets[file])
                yield json.loads(f.readline())

    def close(self) -> None:
        self._file.close()


# ------------------------------------------------------------------------------------------------
# Outputs


@dataclass
class Categories:
    """The output's categories: COCO ``categories`` entries; their order gives YOLO class indices."""

    entries: list[dict[str, Any]]

    def index(self, category_id: int) -> int:
        for i, entry in enumerate(self.entries):
            if int(entry["id"]) == category_id:
                return i
        raise ValueError(f"category id {category_id} is not among the categories {[e['id'] for e in self.entries]}")

    def name(self, category_id: int) -> str:
        return str(self.entries[self.index(category_id)]["name"])


class Output:
    """Where ``batch`` writes: COCO (one file), YOLO-seg or labelme (a folder, a file per image)."""

    def __init__(
        self,
        fmt: str,
        path: Path,
        folder: Path,
        categories: Categories,
        images: Mapping[str, Mapping[str, Any]] | None,
        segmentation: str,
        info: Mapping[str, Any],
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
        if segmentation not in ("rle", "polygons"):
            raise ValueError(f"segmentation must be 'rle' or 'polygons', got {segmentation!r}")
        self.fmt = fmt
        self.path = path
        self.folder = folder
        self.categories = categories
        self.images = images  # file -> the input's COCO image entry (ids kept), if the prompts came as COCO
        self.segmentation = segmentation
        self.info = dict(info)

    @property
    def journal_path(self) -> Path:
        if self.fmt == "coco":
            return self.path.with_name(self.path.name + ".journal.jsonl")
        return self.path / ".fastseg-batch.jsonl"

    def prepare(self, resume: bool, overwrite: bool) -> None:
        """Refuse to overwrite earlier work unless asked; make the output folder."""
        if self.fmt == "coco":
            if self.path.is_dir():
                raise ValueError(f"--out {self.path} is a folder; COCO output is one .json file")
            if not self.path.parent.is_dir():
                raise FileNotFoundError(f"cannot write {self.path}: folder {self.path.parent} does not exist")
        elif self.path.exists() and not self.path.is_dir():
            raise ValueError(f"--out {self.path} is a file; {self.fmt} output is a folder (a file per image)")
        earlier = self.journal_path.exists() or (self.fmt == "coco" and self.path.exists())
        if earlier and not (resume or overwrite):
            raise ValueError(
                f"{self.path} holds an earlier run: pass --resume to continue it or --overwrite to start again"
            )
        if self.fmt != "coco":
            self.path.mkdir(parents=True, exist_ok=True)

    def add(self, record: Record) -> None:
        """Called as each image is done: YOLO-seg and labelme files are written at once."""
        if "error" in record or self.fmt == "coco":
            return
        if self.fmt == "yolo":
            from fastseg.formats import write_yolo_seg, yolo_seg_lines

            instances = [
                (self.categories.index(a["category_id"]), _unflatten(a["polygons"]))
                for a in record["annotations"]
                if a["polygons"]
            ]
            target = self.path / Path(record["file"]).with_suffix(".txt")
            target.parent.mkdir(parents=True, exist_ok=True)
            write_yolo_seg(target, yolo_seg_lines(instances, (record["height"], record["width"])))
        else:
            from fastseg.formats import labelme_document, write_labelme

            target = self.path / Path(record["file"]).with_suffix(".json")
            target.parent.mkdir(parents=True, exist_ok=True)
            shapes: list[dict[str, Any]] = []
            for number, a in enumerate(record["annotations"], start=1):
                parts = _unflatten(a["polygons"])
                label = self.categories.name(a["category_id"])
                group = number if len(parts) > 1 else None
                shapes.extend({"label": label, "points": part.tolist(), "group_id": group} for part in parts)
            image_path = os.path.relpath(self.folder / record["file"], target.parent)
            write_labelme(
                target,
                labelme_document(Path(image_path).as_posix(), (record["height"], record["width"]), shapes),
            )

    def finish(self, journal: Journal, files: Sequence[str]) -> Path:
        """Write what does not go per image: the COCO file; for the folders, ``classes.txt`` and
        ``errors.json``. ``files`` are the job's images (in order); those without a record are not
        written (an interrupted run's output holds what is done)."""
        recorded = [f for f in files if f in journal.offsets]
        errors = [{"file": r["file"], "error": r["error"]} for r in journal.records(recorded) if "error" in r]
        if self.fmt == "coco":
            from fastseg.formats import write_coco

            done = [f for f in recorded if f not in journal.failed]
            images = self._coco_images(journal, done)
            write_coco(
                self.path,
                images=images,
                annotations=self._coco_annotations(journal, done, images),
                categories=self.categories.entries,
                errors=errors,
                info=self.info,
            )
            return self.path
        with atomic_write(self.path / "classes.txt", binary=False) as f:
            f.write("".join(f"{e['name']}\n" for e in self.categories.entries))
        with atomic_write(self.path / "errors.json", binary=False) as f:
            json.dump({"errors": errors, "info": self.info}, f, indent=1)
        return self.path

    def _coco_images(self, journal: Journal, done: Sequence[str]) -> list[dict[str, Any]]:
        images = []
        for number, record in enumerate(journal.records(done), start=1):
            given = self.images.get(record["file"]) if self.images is not None else None
            entry = dict(given) if given is not None else {"id": number, "file_name": record["file"]}
            entry["height"], entry["width"] = record["height"], record["width"]
            images.append(entry)
        return images

    def _coco_annotations(
        self, journal: Journal, done: Sequence[str], images: Sequence[Mapping[str, Any]]
    ) -> Iterator[dict[str, Any]]:
        from fastseg.formats import coco_annotation

        ann_id = 0
        for record, image in zip(journal.records(done), images):
            for a in record["annotations"]:
                ann_id += 1
                extra = {k: a[k] for k in ("source_id", "vertices", "polygon_iou") if k in a}
                polygons = self.segmentation == "polygons" and bool(a["polygons"])  # else too small: RLE
                yield coco_annotation(
                    ann_id,
                    int(image["id"]),
                    int(a["category_id"]),
                    rle=None if polygons else a["rle"],
                    polygons=a["polygons"] if polygons else None,
                    area=a["area"],
                    bbox=a["bbox"],
                    score=a["score"],
                    extra=extra,
                )


def _unflatten(polygons: Sequence[Sequence[float]]) -> list[npt.NDArray[np.float64]]:
    return [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons]


# ------------------------------------------------------------------------------------------------
# Running


@dataclass
class EmbedSummary:
    model: str = ""
    images: int = 0
    new: int = 0
    stored_before: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    def lines(self) -> list[str]:
        rate = self.new / self.seconds if self.seconds > 0 else 0.0
        out = [f"{self.model}: embed"] if self.model else []
        out += [
            f"{self.images} images: {self.new} encoded, {self.stored_before} already in the store, "
            f"{len(self.errors)} errors; {self.seconds:.1f} s, {rate:.2f} images/s encoded"
        ]
        out += _error_lines(self.errors)
        if self.interrupted:
            out.append("interrupted: the store holds every image encoded so far; run again to go on")
        return out


@dataclass
class BatchSummary:
    model: str = ""
    images: int = 0
    done_before: int = 0
    done_now: int = 0
    masks: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    polygons: int = 0
    vertices_total: int = 0
    vertices_max: int = 0
    iou_total: float = 0.0
    iou_min: float = 1.0
    output: Path | None = None
    interrupted: bool = False

    def lines(self) -> list[str]:
        rate = self.done_now / self.seconds if self.seconds > 0 else 0.0
        out = [f"{self.model}: batch"] if self.model else []
        out += [
            f"{self.images} images: {self.done_now} done now, {self.done_before} done before, "
            f"{len(self.errors)} errors; {self.masks} masks; {self.seconds:.1f} s, {rate:.2f} images/s"
        ]
        if self.polygons:
            out.append(
                f"polygons: {self.vertices_total / self.polygons:.1f} vertices per mask on average "
                f"(max {self.vertices_max}); IoU with the mask mean {self.iou_total / self.polygons:.4f}, "
                f"min {self.iou_min:.4f}"
            )
        out += _error_lines(self.errors)
        if self.output is not None:
            out.append(f"output: {self.output}")
        if self.interrupted:
            out.append("interrupted: the output holds the images done so far; --resume goes on")
        return out

    def count(self, annotations: Sequence[Mapping[str, Any]]) -> None:
        """Add one image's annotations to the totals (running sums: a million images need no lists)."""
        self.masks += len(annotations)
        for a in annotations:
            if "vertices" in a:
                self.polygons += 1
                self.vertices_total += int(a["vertices"])
                self.vertices_max = max(self.vertices_max, int(a["vertices"]))
                self.iou_total += float(a["polygon_iou"])
                self.iou_min = min(self.iou_min, float(a["polygon_iou"]))


def _model_line(name: str, weights: str, config: JobConfig) -> str:
    return f"{name} ({weights}), {config.backend} {config.precision}"


def _error_lines(errors: Sequence[Mapping[str, str]]) -> list[str]:
    lines = [f"error: {e['file']}: {e['error']}" for e in errors[:SHOWN_ERRORS]]
    if len(errors) > SHOWN_ERRORS:
        lines.append(f"... and {len(errors) - SHOWN_ERRORS} more errors (all of them in the output's errors)")
    return lines


def _results(
    config: JobConfig, items: Sequence[Item], worker: Worker | None, ray: str | None, actors: int | None
) -> tuple[Iterator[Record], Callable[[], None] | None]:
    """Records of ``items`` (in any order) from the local worker or Ray actors, and what ends them."""
    if worker is not None:
        return (worker.process(item) for item in items), None
    from fastseg.distributed import ray_records

    return ray_records(config, items, None if ray == "local" else ray, actors)


def _local_worker(config: JobConfig, ray: str | None, actors: int | None) -> Worker | None:
    """The worker of a local run, made first so that a bad model or parameter fails before any file
    is written; for a Ray run, the same checks on the driver (the actors load the model)."""
    if ray is None:
        if actors is not None:
            raise ValueError("--actors is a Ray option: it needs --ray")
        return Worker(config)
    from fastseg.distributed import check_job

    check_job(config)
    return None


def _progress(total: int, initial: int, enabled: bool, what: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc=what, disable=not enabled, dynamic_ncols=True)


def run_embed(
    config: JobConfig,
    files: Sequence[str] | None = None,
    *,
    ray: str | None = None,
    actors: int | None = None,
    progress: bool = True,
) -> EmbedSummary:
    """Encode every image of ``config.folder`` (or ``files`` of it) into ``config.store``.

    ``ray``: None runs here; ``"local"`` starts a local Ray instance; any other value is the address
    of a running cluster (``"auto"``, ``"ray://host:10001"``). KeyboardInterrupt stops the run and
    returns the summary so far (``interrupted``); every finished entry stays in the store.
    """
    if config.task != "embed":
        raise ValueError(f"run_embed runs the embed task, got {config.task!r}")
    from fastseg.store import EmbeddingStore

    assert config.store is not None
    EmbeddingStore(config.store)  # a bad store folder fails before any model is loaded
    from fastseg.manifest import load_model_folder

    model = load_model_folder(config.model)
    files = list_images(config.folder) if files is None else list(files)
    summary = EmbedSummary(model=_model_line(model.name, model.weights, config), images=len(files))
    worker = _local_worker(config, ray, actors)
    start = time.perf_counter()
    records, closer = _results(config, [Item(f) for f in files], worker, ray, actors)
    bar = _progress(len(files), 0, progress, "embed")
    try:
        for record in records:
            if "error" in record:
                summary.errors.append({"file": record["file"], "error": record["error"]})
            elif record["stored"] == "new":
                summary.new += 1
            else:
                summary.stored_before += 1
            bar.update(1)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        bar.close()
        if closer is not None:
            closer()
    summary.errors.sort(key=lambda e: e["file"])
    summary.seconds = time.perf_counter() - start
    return summary


def run_batch(
    config: JobConfig,
    out: Path,
    fmt: str = "coco",
    *,
    segmentation: str = "rle",
    prompts: Mapping[str, Sequence[Prompt]] | None = None,
    categories: Sequence[Mapping[str, Any]] | None = None,
    images: Mapping[str, Mapping[str, Any]] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    ray: str | None = None,
    actors: int | None = None,
    progress: bool = True,
) -> BatchSummary:
    """Label a folder: every image in everything mode, or the images of ``prompts`` (file -> prompts)
    from their boxes / points; write ``fmt`` (``coco``: one JSON file; ``yolo`` / ``labelme``: a
    folder) at ``out``.

    Args:
        categories: COCO categories of the output (default: one, ``{"id": 1, "name": "object"}``).
        images: the input's COCO image entries by file, kept in the output (ids included).
        resume: go on from the journal of an earlier run of the same job; ``overwrite``: start again.
        ray, actors: as :func:`run_embed`.

    KeyboardInterrupt stops the run; the output is written with what is done and the summary says
    ``interrupted``.
    """
    if config.task not in ("everything", "prompts"):
        raise ValueError(f"run_batch runs the everything or prompts task, got {config.task!r}")
    if (config.task == "prompts") != (prompts is not None):
        raise ValueError("the prompts task needs prompts, and only it takes them")
    if fmt != "coco" or segmentation == "polygons":
        config = JobConfig(**{**asdict(config), "polygons": True})
    folder = Path(config.folder)
    if prompts is not None:
        files = sorted(prompts)
        _check_named(folder, files, Path("the prompts"))
    else:
        files = list_images(folder)
    cats = Categories([dict(c) for c in categories] if categories else [{"id": 1, "name": "object"}])
    from fastseg.manifest import load_model_folder

    model = load_model_folder(config.model)
    info = {
        "description": "written by fastseg batch",
        "model": model.name,
        "weights": model.weights,
        "task": config.task,
        "backend": config.backend,
        "precision": config.precision,
    }
    output = Output(fmt, out, folder, cats, images, segmentation, info)
    output.prepare(resume, overwrite)
    worker = _local_worker(config, ray, actors)
    job = {**config.job(), "format": fmt, "segmentation": segmentation}
    journal = Journal(output.journal_path, job, resume)
    summary = BatchSummary(model=_model_line(model.name, model.weights, config), images=len(files))
    todo = [f for f in files if not journal.done(f)]
    summary.done_before = len(files) - len(todo)
    empty: tuple[Mapping[str, Any], ...] = ()
    items = [Item(f, tuple(p.to_dict() for p in prompts[f]) if prompts is not None else empty) for f in todo]
    start = time.perf_counter()
    closer = None
    try:
        records, closer = _results(config, items, worker, ray, actors)
        bar = _progress(len(files), summary.done_before, progress, "batch")
        try:
            for record in records:
                journal.add(record)
                output.add(record)
                summary.done_now += "error" not in record
                bar.update(1)
        finally:
            bar.close()
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        if closer is not None:
            closer()
        try:
            summary.output = output.finish(journal, files)
        finally:
            journal.close()
    summary.seconds = time.perf_counter() - start
    for record in journal.records([f for f in files if f in journal.offsets]):
        if "error" in record:
            summary.errors.append({"file": record["file"], "error": record["error"]})
        else:
            summary.count(record["annotations"])
    return summary
