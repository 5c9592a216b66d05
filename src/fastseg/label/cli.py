"""``fastseg label FOLDER --model DIR --labels a,b,c``: serve the labeling page, or export its labels.

:func:`add_label_command` adds the subcommand to ``fastseg``'s parser. ``--export`` writes the
annotations of the folder's database in a label format and exits, without a model or a server.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastseg.backends import BACKENDS, PRECISIONS

__all__ = ["add_label_command", "cmd_label", "main"]

DEFAULT_PORT = 8765


def _labels(text: str) -> list[str]:
    labels = [part.strip() for part in text.split(",")]
    if not all(labels):
        raise argparse.ArgumentTypeError(f"expected names separated by commas, e.g. cat,dog,person; got {text!r}")
    return labels


def add_label_command(sub: Any) -> argparse.ArgumentParser:
    """Add ``label`` to ``fastseg``'s subcommands (``sub``: the parser's ``add_subparsers()``)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "label",
        help="label a folder in a web page: click to mask, accept, export (pip install 'fastseg[label]')",
        description="Serve a labeling page for FOLDER on this machine (http://127.0.0.1:8765/ by default): "
        "click for masks, accept them as labelled instances (stored in FOLDER/.fastseg/labels.sqlite at "
        "once), export COCO, YOLO-seg or labelme. With --export, export the stored labels and exit.",
    )
    p.add_argument("folder", type=Path, help="folder of images (subfolders included)")
    p.add_argument("--model", type=Path, help="model folder written by `fastseg export` (not needed with --export)")
    p.add_argument(
        "--labels",
        type=_labels,
        help="label names, comma-separated (the first time; later runs reuse the saved ones)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: a free one)")
    p.add_argument("--db", type=Path, help="annotations database (default FOLDER/.fastseg/labels.sqlite)")
    p.add_argument("--store", type=Path, help="embedding store (default FOLDER/.fastseg/store)")
    p.add_argument("--backend", choices=BACKENDS, default="openvino")
    p.add_argument("--precision", choices=PRECISIONS, default="f32")
    p.add_argument("--threads", type=int, help="inference threads of the click model (default: all cores)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    p.add_argument(
        "--export",
        choices=("coco", "yolo", "labelme"),
        help="write the stored labels in this format and exit (no server, no model)",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="--export: COCO: a .json file; yolo, labelme: a folder (default FOLDER/.fastseg/export/...)",
    )
    p.add_argument(
        "--segmentation",
        choices=("rle", "polygons"),
        default="rle",
        help="--export coco: masks as RLE (exact, default) or polygons; yolo and labelme are polygons",
    )
    p.set_defaults(func=cmd_label)
    return p


def cmd_label(args: argparse.Namespace) -> int:
    if args.export is not None:
        return _export(args)
    if args.out is not None:
        raise ValueError("--out is where --export writes; give --export coco|yolo|labelme too")
    if args.model is None:
        raise ValueError("the labeling server needs --model DIR (a folder written by `fastseg export`)")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be 0..65535, got {args.port}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    from fastseg.label.server import run_label_server

    run_label_server(
        args.folder,
        args.model,
        args.labels,
        host=args.host,
        port=args.port,
        db=args.db,
        store=args.store,
        precision=args.precision,
        backend=args.backend,
        open_browser=args.open,
        num_threads=args.threads,
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from fastseg.batch import list_images
    from fastseg.label.db import LabelDB, check_labels, export_annotations

    folder: Path = args.folder
    path = folder / ".fastseg" / "labels.sqlite" if args.db is None else args.db
    if not path.is_file():
        raise FileNotFoundError(f"no label database at {path}: label the folder first (fastseg label {folder} ...)")
    with LabelDB(path) as db:
        labels = check_labels(args.labels) if args.labels else (db.labels() or [])
        summary = export_annotations(
            db, folder, list_images(folder), labels, args.export, args.out, segmentation=args.segmentation
        )
    print(f"fastseg label: {summary.instances} instances of {summary.images} images -> {summary.path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fastseg.label.cli FOLDER ...``: the ``label`` subcommand on its own."""
    parser = argparse.ArgumentParser(prog="fastseg")
    sub = parser.add_subparsers(dest="command")
    add_label_command(sub)
    args = parser.parse_args(["label", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("fastseg: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, ImportError, RuntimeError) as exc:
        print(f"fastseg: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
