"""The labeling server's annotations: one SQLite database, written before every answer.

Every change (an accepted instance, a relabel, a delete or restore, an image's state) is one
transaction committed before the server answers, with SQLite's write-ahead log and
``synchronous=FULL``: the commit is on disk (fsynced) when the call returns. So a server killed at
any moment (``kill -9``, a power cut) loses nothing it has confirmed, and a server started again on
the same database resumes where the person stopped.

Tables:

- ``meta``: ``schema`` (this module's :data:`SCHEMA`) and ``labels`` (the label list, JSON), so a
  restart without ``--labels`` keeps the labels.
- ``images``: one row per image that has been opened or given a state: ``file`` (path relative to
  the folder, ``/``-separated), ``state`` (:data:`STATES`), ``width``, ``height``, ``updated``.
- ``instances``: ``id``, ``file``, ``label``, ``height`` and ``width`` of the mask, ``rle`` (the
  mask's COCO compressed RLE counts string, column-major as COCO's), ``box`` (XYXY JSON, pixel
  edges), ``score``, ``area`` (pixels), ``prompts`` (JSON: how the mask was made), ``created``,
  ``updated`` (Unix seconds) and ``deleted`` (Unix seconds, or NULL: deletes are soft, so undo can
  restore them).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "EXPORT_FORMATS",
    "SCHEMA",
    "STATES",
    "ExportSummary",
    "Instance",
    "LabelDB",
    "check_labels",
    "default_export_path",
    "export_annotations",
    "resolve_labels",
]

#: The database layout version; a database of another version is refused.
SCHEMA = 1
#: An image's states: not started, some instances accepted, marked done by the person.
STATES = ("new", "in_progress", "done")

_TABLES = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    file TEXT PRIMARY KEY,
    state TEXT NOT NULL DEFAULT 'new' CHECK (state IN ('new', 'in_progress', 'done')),
    width INTEGER,
    height INTEGER,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    file TEXT NOT NULL,
    label TEXT NOT NULL,
    height INTEGER NOT NULL,
    width INTEGER NOT NULL,
    rle TEXT NOT NULL,
    box TEXT NOT NULL,
    score REAL,
    area INTEGER NOT NULL,
    prompts TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    deleted REAL
);
CREATE INDEX IF NOT EXISTS instances_by_file ON instances (file, id);
"""


@dataclass(frozen=True)
class Instance:
    """One stored instance (a row of ``instances``).

    Attributes:
        id: unique in the database, never reused (also after a delete).
        file: the image's path relative to the folder.
        label: its label.
        size: ``(H, W)`` of the mask (the image's, as :func:`fastseg.image.load_image` loads it).
        counts: the mask's COCO compressed RLE counts (``{"size": [H, W], "counts": counts}``).
        box: ``[x1, y1, x2, y2]`` of the mask, pixel edges (``x2`` is the last column + 1).
        score: the model's score of the mask (None if it has none, e.g. a mask drawn by hand).
        area: the mask's pixel count.
        prompts: how it was made (JSON-able; e.g. points, labels, box, candidate).
        created, updated: Unix seconds.
        deleted: Unix seconds of the (soft) delete, or None.
    """

    id: int
    file: str
    label: str
    size: tuple[int, int]
    counts: str
    box: tuple[float, float, float, float]
    score: float | None
    area: int
    prompts: dict[str, Any]
    created: float
    updated: float
    deleted: float | None

    @property
    def coco_rle(self) -> dict[str, Any]:
        """``{"size": [H, W], "counts": str}``, as ``pycocotools.mask.decode`` reads it (bytes counts)."""
        return {"size": [self.size[0], self.size[1]], "counts": self.counts}


class LabelDB:
    """The annotations of one folder, in SQLite (WAL, ``synchronous=FULL``); safe for several threads.

    Args:
        path: the database file; made (with its folder) if missing.

    Raises:
        ValueError: the file is not a SQLite database, or one of another layout version.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: no implicit transactions; every change below is one BEGIN..COMMIT.
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
        try:
            tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and "meta" not in tables:
                raise ValueError(
                    f"{self.path} is a SQLite database of something else (tables {sorted(tables)[:5]}), "
                    "not a fastseg label database; give another --db"
                )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")  # the WAL is fsynced at every commit
            self._conn.executescript(_TABLES)
            self._check_schema()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise ValueError(f"{self.path} is not a fastseg label database ({exc})") from exc
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> LabelDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_schema(self) -> None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None:
            self._conn.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA),))
        elif row[0] != str(SCHEMA):
            raise ValueError(f"{self.path} is a label database of layout {row[0]}; this fastseg reads layout {SCHEMA}")

    def _write(self, sql: Sequence[tuple[str, Sequence[Any]]]) -> list[sqlite3.Cursor]:
        """Run the statements in one transaction, committed (durably) before returning."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                cursors = [self._conn.execute(statement, params) for statement, params in sql]
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return cursors

    def _read(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(statement, params).fetchall()

    # labels -------------------------------------------------------------------------------------

    def labels(self) -> list[str] | None:
        """The label list saved by :meth:`set_labels`, or None."""
        rows = self._read("SELECT value FROM meta WHERE key = 'labels'")
        return None if not rows else [str(v) for v in json.loads(rows[0][0])]

    def set_labels(self, labels: Sequence[str]) -> None:
        self._write([("INSERT OR REPLACE INTO meta (key, value) VALUES ('labels', ?)", (json.dumps(list(labels)),))])

    def used_labels(self) -> list[str]:
        """Labels of the (not deleted) instances, in order of first use."""
        rows = self._read("SELECT label FROM instances WHERE deleted IS NULL GROUP BY label ORDER BY MIN(id)")
        return [str(r[0]) for r in rows]

    # images -------------------------------------------------------------------------------------

    def images(self) -> dict[str, tuple[str, int | None, int | None]]:
        """``file -> (state, width, height)`` of the images with a row."""
        return {str(f): (str(s), w, h) for f, s, w, h in self._read("SELECT file, state, width, height FROM images")}

    def state(self, file: str) -> str:
        rows = self._read("SELECT state FROM images WHERE file = ?", (file,))
        return "new" if not rows else str(rows[0][0])

    def size(self, file: str) -> tuple[int, int] | None:
        """The ``(H, W)`` recorded for an image, or None."""
        rows = self._read("SELECT height, width FROM images WHERE file = ?", (file,))
        if not rows or rows[0][0] is None or rows[0][1] is None:
            return None
        return int(rows[0][0]), int(rows[0][1])

    def last_file(self) -> str | None:
        """The image changed last (its state, or one of its instances), or None: where to resume."""
        rows = self._read(
            "SELECT file FROM (SELECT file, updated FROM images UNION ALL SELECT file, updated FROM instances) "
            "ORDER BY updated DESC LIMIT 1"
        )
        return str(rows[0][0]) if rows else None

    def set_state(self, file: str, state: str, size: tuple[int, int] | None = None) -> None:
        """Set an image's state (one of :data:`STATES`), and its ``(H, W)`` if given."""
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {state!r}")
        h, w = size if size is not None else (None, None)
        self._write(
            [
                (
                    "INSERT INTO images (file, state, width, height, updated) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (file) DO UPDATE SET state = excluded.state, "
                    "width = COALESCE(excluded.width, width), height = COALESCE(excluded.height, height), "
                    "updated = excluded.updated",
                    (file, state, w, h, time.time()),
                )
            ]
        )

    def note_size(self, file: str, size: tuple[int, int]) -> None:
        """Record an image's ``(H, W)`` (its state unchanged; ``new`` for a new row)."""
        h, w = size
        self._write(
            [
                (
                    "INSERT INTO images (file, state, width, height, updated) VALUES (?, 'new', ?, ?, ?) "
                    "ON CONFLICT (file) DO UPDATE SET width = excluded.width, height = excluded.height",
                    (file, w, h, time.time()),
                )
            ]
        )

    def instance_counts(self) -> dict[str, int]:
        """``file -> number of instances`` (not deleted), for the files that have any."""
        rows = self._read("SELECT file, COUNT(*) FROM instances WHERE deleted IS NULL GROUP BY file")
        return {str(f): int(n) for f, n in rows}

    # instances ----------------------------------------------------------------------------------

    def add_instance(
        self,
        file: str,
        label: str,
        coco_rle: Mapping[str, Any],
        box: Sequence[float],
        score: float | None,
        area: int,
        prompts: Mapping[str, Any],
    ) -> Instance:
        """Store an instance (durably, with the image made ``in_progress`` if it was ``new``).

        Args:
            coco_rle: the mask's COCO compressed RLE ``{"size": [H, W], "counts": str}``.
            box: XYXY, pixel edges.
        """
        h, w = (int(v) for v in coco_rle["size"])
        counts = coco_rle["counts"]
        if isinstance(counts, bytes):
            counts = counts.decode("ascii")
        if not isinstance(counts, str):
            raise ValueError(f"coco_rle counts must be a COCO compressed string, got {type(counts).__name__}")
        now = time.time()
        box_json = json.dumps([float(v) for v in box])
        prompts_json = json.dumps(dict(prompts), allow_nan=False)
        cursors = self._write(
            [
                (
                    "INSERT INTO instances (file, label, height, width, rle, box, score, area, prompts, created, "
                    "updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (file, label, h, w, counts, box_json, score, int(area), prompts_json, now, now),
                ),
                (
                    "INSERT INTO images (file, state, width, height, updated) VALUES (?, 'in_progress', ?, ?, ?) "
                    "ON CONFLICT (file) DO UPDATE SET state = CASE state WHEN 'new' THEN 'in_progress' ELSE state "
                    "END, width = excluded.width, height = excluded.height, updated = excluded.updated",
                    (file, w, h, now),
                ),
            ]
        )
        ident = cursors[0].lastrowid
        assert ident is not None
        found = self.instance(ident)
        assert found is not None
        return found

    def instance(self, ident: int) -> Instance | None:
        """The instance with id ``ident`` (deleted or not), or None."""
        rows = self._read(f"SELECT {_COLUMNS} FROM instances WHERE id = ?", (int(ident),))
        return _instance(rows[0]) if rows else None

    def instances(self, file: str | None = None, deleted: bool = False) -> list[Instance]:
        """The instances of ``file`` (of every file if None), by id; deleted ones too if ``deleted``."""
        where = [] if deleted else ["deleted IS NULL"]
        params: list[Any] = []
        if file is not None:
            where.append("file = ?")
            params.append(file)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return [_instance(r) for r in self._read(f"SELECT {_COLUMNS} FROM instances{clause} ORDER BY id", params)]

    def iter_instances(self, files: Sequence[str]) -> Iterator[Instance]:
        """The (not deleted) instances of ``files``, file by file in that order, by id within a file."""
        for file in files:
            yield from self.instances(file)

    def relabel(self, ident: int, label: str) -> Instance | None:
        """Give an instance another label; None if there is no such instance."""
        self._write([("UPDATE instances SET label = ?, updated = ? WHERE id = ?", (label, time.time(), int(ident)))])
        return self.instance(ident)

    def delete(self, ident: int) -> Instance | None:
        """Soft-delete an instance (:meth:`restore` brings it back); None if there is no such instance."""
        now = time.time()
        self._write(
            [("UPDATE instances SET deleted = ?, updated = ? WHERE id = ? AND deleted IS NULL", (now, now, int(ident)))]
        )
        return self.instance(ident)

    def restore(self, ident: int) -> Instance | None:
        """Undo a delete; None if there is no such instance."""
        self._write([("UPDATE instances SET deleted = NULL, updated = ? WHERE id = ?", (time.time(), int(ident)))])
        return self.instance(ident)


_COLUMNS = "id, file, label, height, width, rle, box, score, area, prompts, created, updated, deleted"


def _instance(row: tuple[Any, ...]) -> Instance:
    ident, file, label, h, w, rle, box, score, area, prompts, created, updated, deleted = row
    x1, y1, x2, y2 = (float(v) for v in json.loads(box))
    return Instance(
        id=int(ident),
        file=str(file),
        label=str(label),
        size=(int(h), int(w)),
        counts=str(rle),
        box=(x1, y1, x2, y2),
        score=None if score is None else float(score),
        area=int(area),
        prompts=json.loads(prompts),
        created=float(created),
        updated=float(updated),
        deleted=None if deleted is None else float(deleted),
    )


# --------------------------------------------------------------------------------------------------
# Labels


def resolve_labels(db: LabelDB, labels: Sequence[str] | None) -> list[str]:
    """The labels to use: ``labels`` (checked, and saved in ``db`` for the next runs), else the ones
    ``db`` saved; ``ValueError`` if neither."""
    saved = db.labels()
    if labels is None or len(labels) == 0:
        if not saved:
            raise ValueError(f"no labels: pass --labels a,b,c (the first time; {db.path} saves them for the next runs)")
        labels = saved
    checked = check_labels(labels)
    if checked != saved:
        db.set_labels(checked)
    return checked


def check_labels(labels: Sequence[str]) -> list[str]:
    """The label list, checked: non-empty, distinct names without commas or control characters."""
    out = [label.strip() if isinstance(label, str) else label for label in labels]
    for label in out:
        if not isinstance(label, str) or not label or len(label) > 100 or "," in label:
            raise ValueError(f"labels must be non-empty names of at most 100 characters without commas, got {label!r}")
        if any(ord(c) < 32 for c in label):
            raise ValueError(f"labels must not hold control characters, got {label!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"labels must be distinct, got {out}")
    if not out:
        raise ValueError("give at least one label")
    return out


# --------------------------------------------------------------------------------------------------
# Exports

#: Export formats: COCO instances JSON (one file), YOLO-seg and labelme (a folder, a file per image).
EXPORT_FORMATS = ("coco", "yolo", "labelme")


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote: ``path`` (the COCO file or the folder), and how many images and instances."""

    format: str
    path: Path
    images: int
    instances: int

    def as_dict(self) -> dict[str, Any]:
        return {"format": self.format, "path": str(self.path), "images": self.images, "instances": self.instances}


def default_export_path(folder: str | Path, fmt: str, segmentation: str = "rle") -> Path:
    """Where exports go when no path is given: ``FOLDER/.fastseg/export/`` ``coco.json`` (RLE),
    ``coco-polygons.json``, ``yolo/`` or ``labelme/``."""
    base = Path(folder) / ".fastseg" / "export"
    if fmt == "coco":
        return base / ("coco.json" if segmentation == "rle" else "coco-polygons.json")
    return base / fmt


def export_annotations(
    db: LabelDB,
    folder: str | Path,
    files: Sequence[str],
    labels: Sequence[str],
    fmt: str,
    out: str | Path | None = None,
    segmentation: str = "rle",
    tolerance: float = 1.0,
    sizes: Mapping[str, tuple[int, int]] | None = None,
    info: Mapping[str, Any] | None = None,
) -> ExportSummary:
    """Write the database's annotations in a label format, with fastseg's writers
    (:mod:`fastseg.formats`; polygons from :func:`fastseg.polygons.mask_to_polygons`).

    The images exported are those of ``files`` (in that order) that have been worked on: with
    instances, or with a state other than ``new`` (an image marked done without instances is a
    labelled empty image). COCO image ids are the images' positions in ``files`` plus one, annotation
    ids the instances' database ids, category ids the labels' positions plus one.

    Args:
        db: the annotations.
        folder: the images' folder (labelme's ``imagePath`` is relative to it).
        files: the folder's images, relative paths, in order.
        labels: the categories, in order; labels of instances that are not among them are added after.
        fmt: ``"coco"`` (a ``.json`` file), ``"yolo"`` or ``"labelme"`` (a folder: a file per image,
            at the image's relative path; YOLO adds ``classes.txt``).
        out: where to write (default :func:`default_export_path`).
        segmentation: COCO masks as ``"rle"`` (exact) or ``"polygons"`` (a mask too small for a
            polygon keeps its RLE); YOLO-seg and labelme are polygons.
        tolerance: polygon simplification tolerance in pixels.
        sizes: ``file -> (H, W)`` known already (else from the database or the image's header).
        info: COCO ``info``.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    if segmentation not in ("rle", "polygons"):
        raise ValueError(f"segmentation must be 'rle' or 'polygons', got {segmentation!r}")
    folder = Path(folder)
    path = default_export_path(folder, fmt, segmentation) if out is None else Path(out)
    categories = list(labels) + [label for label in db.used_labels() if label not in labels]
    category = {label: number for number, label in enumerate(categories, start=1)}
    rows = db.images()
    counts = db.instance_counts()
    chosen = [f for f in files if counts.get(f, 0) > 0 or rows.get(f, ("new", None, None))[0] != "new"]
    known = dict(sizes or {})

    def size_of(file: str) -> tuple[int, int]:
        if file in known:
            return known[file]
        _, w, h = rows.get(file, ("new", None, None))
        if w is not None and h is not None:
            return int(h), int(w)
        from fastseg.batch import _oriented_size

        return _oriented_size(folder / file)

    where = {file: number for number, file in enumerate(files, start=1)}
    image_ids = {file: where[file] for file in chosen}
    written = 0
    if fmt == "coco":
        from fastseg.formats import coco_annotation, write_coco

        images = [{"id": image_ids[f], "file_name": f, "height": size_of(f)[0], "width": size_of(f)[1]} for f in chosen]

        def annotations() -> Iterator[dict[str, Any]]:
            for inst in db.iter_instances(chosen):
                x1, y1, x2, y2 = inst.box
                polygons = _polygons(inst, tolerance) if segmentation == "polygons" else None
                yield coco_annotation(
                    inst.id,
                    image_ids[inst.file],
                    category[inst.label],
                    rle=inst.coco_rle if not polygons else None,
                    polygons=polygons or None,
                    score=inst.score,
                    area=inst.area,
                    bbox=[x1, y1, x2 - x1, y2 - y1],
                )

        written = write_coco(
            path,
            images=images,
            annotations=annotations(),
            categories=[{"id": category[c], "name": c} for c in categories],
            info={"description": "fastseg label", **dict(info or {})},
        )
        return ExportSummary(fmt, path, len(chosen), written)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{fmt} export writes a folder (a file per image); {path} is a file")
    path.mkdir(parents=True, exist_ok=True)
    from fastseg.paths import atomic_write

    if fmt == "yolo":
        from fastseg.formats import write_yolo_seg, yolo_seg_lines

        for file in chosen:
            instances = [(category[i.label] - 1, _polygons(i, tolerance)) for i in db.instances(file)]
            written += sum(1 for _, p in instances if p)
            target = path / Path(file).with_suffix(".txt")
            target.parent.mkdir(parents=True, exist_ok=True)
            write_yolo_seg(target, yolo_seg_lines(instances, size_of(file)))
        with atomic_write(path / "classes.txt", binary=False) as f:
            f.write("".join(f"{c}\n" for c in categories))
        return ExportSummary(fmt, path, len(chosen), written)
    from fastseg.formats import labelme_document, write_labelme

    for file in chosen:
        shapes: list[dict[str, Any]] = []
        for inst in db.instances(file):
            parts = _polygons(inst, tolerance)
            written += bool(parts)
            group = inst.id if len(parts) > 1 else None
            shapes.extend({"label": inst.label, "points": p.tolist(), "group_id": group} for p in parts)
        target = path / Path(file).with_suffix(".json")
        target.parent.mkdir(parents=True, exist_ok=True)
        image_path = Path(os.path.relpath(folder / file, target.parent)).as_posix()
        write_labelme(target, labelme_document(image_path, size_of(file), shapes))
    return ExportSummary(fmt, path, len(chosen), written)


def _polygons(inst: Instance, tolerance: float) -> list[Any]:
    """The instance's mask as polygons (:func:`fastseg.polygons.mask_to_polygons`)."""
    from fastseg.polygons import mask_to_polygons
    from fastseg.rle import decode

    return list(mask_to_polygons(decode([inst.coco_rle])[0], tolerance=tolerance))
