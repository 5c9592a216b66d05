"""The ``fastseg`` command: ``segment`` here; ``export`` and ``bench`` come from their packages.

The runtime never imports the export toolchain or the benchmark: they register their commands through
the ``fastseg.commands`` entry point group (see ``pyproject.toml``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from functools import partial
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from fastseg import __version__
from fastseg.backends import BACKENDS, PRECISIONS
from fastseg.fastsam import DEFAULT_CONF, DEFAULT_IOU
from fastseg.registry import SAM_LIKE_FAMILIES

if TYPE_CHECKING:
    from fastseg.predictor import Predictor


def _pair(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y (two numbers), got {text!r}") from None
    return x, y


def _box(text: str) -> tuple[float, float, float, float]:
    try:
        x1, y1, x2, y2 = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X1,Y1,X2,Y2 (four numbers), got {text!r}") from None
    return x1, y1, x2, y2


def _check_png_outputs(args: argparse.Namespace) -> None:
    """--mask and --overlay are written as PNG (lossless: a mask survives exactly): refuse another suffix
    before any work, rather than write PNG bytes into a file named .jpg."""
    for option in ("mask", "overlay"):
        path = getattr(args, option)
        if path is not None and path.suffix.lower() != ".png":
            raise ValueError(f"--{option} writes a PNG file: give a path ending in .png, got {path}")


def _predictor(args: argparse.Namespace) -> Predictor:
    from fastseg.predictor import Predictor

    return Predictor(
        args.model,
        backend=args.backend,
        precision=args.precision,
        cache_dir=False if args.no_cache else None,
        conf=args.conf,
        iou=args.iou,
        **({"clip": args.clip} if getattr(args, "clip", None) is not None else {}),
    )


def cmd_segment(args: argparse.Namespace) -> int:
    from fastseg.draw import save_png
    from fastseg.image import load_image

    _check_png_outputs(args)
    image = load_image(args.image)
    if args.everything:
        return _segment_everything(args, image)
    if args.json:
        raise ValueError("--json writes everything-mode records: it needs --everything")
    points = np.array(args.point, dtype=np.float64) if args.point else None
    labels = None
    if args.label:
        if points is None:
            raise ValueError("--label needs --point")
        labels = args.label
    boxes = np.array(args.box, dtype=np.float64) if args.box else None
    if args.clip is not None and not args.text:
        raise ValueError("--clip is the CLIP model of --text prompts: give --text too")
    if args.text and args.clip is None:
        raise ValueError(
            "--text needs --clip FOLDER, a CLIP model exported with "
            "`fastseg export clip_vit_b32 --checkpoint ViT-B-32.pt`"
        )
    predictor = _predictor(args)
    start = time.perf_counter()
    predictor.set_image(image)
    result = predictor.predict(
        points=points, labels=labels, boxes=boxes, multimask=not args.single_mask, texts=args.text or None
    )
    elapsed = time.perf_counter() - start
    best = result.best() if predictor.folder.family in SAM_LIKE_FAMILIES else result
    union = (
        cast("npt.NDArray[np.bool_]", best.masks.any(axis=0)) if len(best) else np.zeros(image.shape[:2], dtype=bool)
    )
    clip = f", {result.info['clip']}" if "clip" in result.info else ""
    print(
        f"{predictor.model_name} ({predictor.folder.weights}{clip}), {args.backend} {predictor.precision}: "
        f"{len(result)} masks, kept {len(best)} (scores {[round(float(s), 3) for s in best.scores]}), "
        f"{union.sum()} pixels, {elapsed * 1000:.0f} ms"
    )
    if args.mask:
        print(f"mask: {save_png(union, args.mask)}")
    if args.overlay:
        print(f"overlay: {save_png(best.overlay(image), args.overlay)}")
    return 0


#: ``fastseg segment --everything`` options: (flag, type, help), passed on only when given.
EVERYTHING_OPTIONS = (
    ("points_per_side", int, "grid points per side (default 32)"),
    ("points_per_batch", int, "prompt sets per decoder run (default 64)"),
    ("pred_iou_thresh", float, "keep masks with predicted IoU above this (default 0.88; SAM 2.1: 0.8)"),
    ("stability_score_thresh", float, "keep masks with stability score at least this (default 0.95)"),
    ("stability_score_offset", float, "logit offset of the stability score (default 1.0)"),
    ("box_nms_thresh", float, "box NMS IoU within a crop; 1.0 turns NMS off (default 0.7)"),
    ("crop_n_layers", int, "extra layers of image crops (default 0)"),
    ("crop_nms_thresh", float, "box NMS IoU between crops (default 0.7)"),
    ("crop_overlap_ratio", float, "crop overlap, fraction of the short side (default 512/1500)"),
    ("crop_n_points_downscale_factor", int, "points per side shrink by this per crop layer (default 1)"),
    ("min_mask_region_area", int, "remove islands and holes smaller than this, in pixels (default 0)"),
    ("mask_threshold", float, "SAM 2.1 only: logit threshold of the masks (default 0.0)"),
    ("use_m2m", bool, "SAM 2.1 only: refine each mask once with its own logits as mask input (default off)"),
    ("multimask_output", bool, "SAM 2.1 only: three masks per grid point, or SAM 2's one choice (default on)"),
)


def _check_sam2_options(params: dict[str, Any], family: str, model: object) -> None:
    """The options only SAM 2.1's generator has, given for another model: one clear line, not a TypeError."""
    only = [(n, k) for n, k, text in EVERYTHING_OPTIONS if n in params and text.startswith("SAM 2.1 only")]
    if only and family != "sam2":
        flags = ", ".join(("--[no-]" if k is bool else "--") + n.replace("_", "-") for n, k in only)
        raise ValueError(f"{flags}: option(s) of SAM 2.1's generator only; {model} is a {family} model")


def _add_everything_options(group: Any) -> None:
    for name, kind, text in EVERYTHING_OPTIONS:
        flag = "--" + name.replace("_", "-")
        if kind is bool:  # --use-m2m / --no-use-m2m
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            group.add_argument(flag, dest=name, type=kind, metavar=kind.__name__.upper(), help=text)


def _segment_everything(args: argparse.Namespace, image: npt.NDArray[np.uint8]) -> int:
    from fastseg.draw import save_png
    from fastseg.records import iter_masks

    if args.point or args.box or args.label or args.text:
        raise ValueError("--everything segments the whole image without prompts; drop --point/--label/--box/--text")
    params = {name: getattr(args, name) for name, _, _ in EVERYTHING_OPTIONS if getattr(args, name) is not None}
    predictor = _predictor(args)
    _check_sam2_options(params, predictor.folder.family, args.model)
    start = time.perf_counter()  # Predictor.everything checks the parameters before it encodes the image
    records = predictor.everything(image, progress=args.progress, **params)
    elapsed = time.perf_counter() - start
    print(
        f"{predictor.model_name} ({predictor.folder.weights}), {args.backend} {predictor.precision}: "
        f"everything: {len(records)} masks, {elapsed * 1000:.0f} ms"
    )
    if args.json:
        info = {
            "image": {"file": str(args.image), "height": int(image.shape[0]), "width": int(image.shape[1])},
            "model": predictor.model_name,
            "weights": predictor.folder.weights,
            "backend": args.backend,
            "precision": predictor.precision,
            "parameters": params,
        }
        print(f"json: {records.write_json(args.json, **info)}")
    if args.mask:
        union = np.zeros(image.shape[:2], dtype=bool)
        for mask in iter_masks(records):
            union |= mask
        print(f"mask: {save_png(union, args.mask)}")
    if args.overlay:
        print(f"overlay: {save_png(records.overlay(image), args.overlay)}")
    return 0


def _job_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``embed`` and ``batch``."""
    p.add_argument("folder", type=Path, help="folder of images (subfolders included)")
    p.add_argument("--model", required=True, type=Path, help="model folder written by `fastseg export`")
    p.add_argument("--backend", choices=BACKENDS, default="openvino")
    p.add_argument("--precision", choices=PRECISIONS, default="f32")
    p.add_argument("--threads", type=int, help="inference threads per worker (default: all cores; Ray: cores / actors)")
    p.add_argument("--no-cache", action="store_true", help="compile without OpenVINO's compiled-model cache")
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run on Ray (pip install 'fastseg[ray]'): a local instance, or the cluster at ADDRESS (e.g. auto)",
    )
    p.add_argument("--actors", type=int, help="--ray: number of actors, one Predictor each (default: one per machine)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _job(args: argparse.Namespace, task: str, everything: dict[str, float] | None = None) -> Any:
    from fastseg.batch import JobConfig

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    return JobConfig(
        folder=str(args.folder),
        model=str(args.model),
        task=task,  # type: ignore[arg-type]
        backend=args.backend,
        precision=args.precision,
        threads=args.threads,
        cache=not args.no_cache,
        store=None if args.store is None else str(args.store),
        conf=getattr(args, "conf", DEFAULT_CONF),
        iou=getattr(args, "iou", DEFAULT_IOU),
        everything=tuple(sorted((everything or {}).items())),
        tolerance=getattr(args, "tolerance", 1.0),
    )


def cmd_embed(args: argparse.Namespace) -> int:
    from fastseg.batch import run_embed

    summary = run_embed(_job(args, "embed"), ray=args.ray, actors=args.actors, progress=not args.no_progress)
    for line in summary.lines():
        print(line)
    return 130 if summary.interrupted else 0


def cmd_batch(args: argparse.Namespace) -> int:
    from fastseg.batch import read_prompt_input, run_batch

    if args.resume and args.overwrite:
        raise ValueError("--resume continues an earlier run and --overwrite starts again: give one of them")
    if args.tolerance < 0:
        raise ValueError(f"--tolerance is a distance in pixels, at least 0; got {args.tolerance}")
    params = {name: getattr(args, name) for name, _, _ in EVERYTHING_OPTIONS if getattr(args, name) is not None}
    given = None
    if args.prompts is not None:
        if params:
            raise ValueError("everything-mode options apply without --prompts; drop them or --prompts")
        given = read_prompt_input(args.prompts, args.folder, args.names)
    elif args.names is not None:
        raise ValueError("--names gives the class names of YOLO --prompts; it needs --prompts")
    if params:
        from fastseg.manifest import load_model_folder

        _check_sam2_options(params, load_model_folder(args.model).family, args.model)
    config = _job(args, "everything" if given is None else "prompts", params)
    summary = run_batch(
        config,
        args.out,
        args.format,
        segmentation=args.segmentation,
        prompts=None if given is None else given.prompts,
        categories=None if given is None else given.categories,
        images=None if given is None else given.images,
        resume=args.resume,
        overwrite=args.overwrite,
        ray=args.ray,
        actors=args.actors,
        progress=not args.no_progress,
    )
    for line in summary.lines():
        print(line)
    return 130 if summary.interrupted else 0


def _add_folder_commands(sub: Any) -> None:
    em = sub.add_parser(
        "embed",
        help="encode every image of a folder into an embedding store (resumable)",
        description="Encode every image of FOLDER (and its subfolders) into the embedding store --store; "
        "images already stored are skipped, so running it again goes on where it stopped.",
    )
    _job_options(em)
    em.add_argument("--store", required=True, type=Path, help="embedding store folder (made if missing)")
    em.set_defaults(func=cmd_embed)

    ba = sub.add_parser(
        "batch",
        help="label a folder: everything mode, or masks for the boxes/points of a COCO or YOLO file",
        description="Segment every image of FOLDER in everything mode, or the boxes / points of --prompts "
        "(a COCO JSON file, or a folder of YOLO txt box files), and write COCO JSON, YOLO-seg or labelme.",
    )
    _job_options(ba)
    ba.add_argument("--out", required=True, type=Path, help="COCO: a .json file; yolo, labelme: a folder")
    ba.add_argument("--format", choices=("coco", "yolo", "labelme"), default="coco", help="output format (coco)")
    ba.add_argument(
        "--segmentation",
        choices=("rle", "polygons"),
        default="rle",
        help="COCO masks as RLE (exact, default) or polygons; yolo and labelme are polygons",
    )
    ba.add_argument(
        "--tolerance", type=float, default=1.0, help="polygon simplification tolerance in pixels (default 1.0)"
    )
    ba.add_argument(
        "--prompts",
        type=Path,
        help="boxes/points to segment: a COCO JSON file (bbox, keypoints) or a folder of YOLO txt boxes",
    )
    ba.add_argument("--names", help="YOLO --prompts: class names, comma-separated or a file with one per line")
    ba.add_argument("--store", type=Path, help="embedding store: use the embeddings found there, add new ones")
    ba.add_argument("--resume", action="store_true", help="continue an earlier run into the same --out")
    ba.add_argument("--overwrite", action="store_true", help="start again, replacing an earlier run's --out")
    ba.add_argument("--conf", type=float, default=DEFAULT_CONF, help=f"FastSAM confidence (default {DEFAULT_CONF})")
    ba.add_argument("--iou", type=float, default=DEFAULT_IOU, help=f"FastSAM NMS IoU (default {DEFAULT_IOU})")
    gen = ba.add_argument_group("everything mode, SAM family (SamAutomaticMaskGenerator / SAM2's parameters)")
    _add_everything_options(gen)
    ba.set_defaults(func=cmd_batch)


#: Commands that other fastseg packages add through the ``fastseg.commands`` entry point group
#: (``add_command(subparsers)``), and the extra that installs each.
PLUGIN_COMMANDS = {"export": "export", "bench": "bench"}


def _add_plugin_commands(sub: Any) -> None:
    """Commands of the installed extras; a missing one still parses and says which extra brings it."""
    found = {ep.name: ep for ep in entry_points(group="fastseg.commands")}
    for ep in found.values():
        ep.load()(sub)
    for name, extra in PLUGIN_COMMANDS.items():
        if name in found:
            continue
        absent = sub.add_parser(
            name, help=f"(not installed: pip install 'fastseg[{extra}]')", add_help=False, prefix_chars="\0"
        )
        absent.add_argument("args", nargs=argparse.REMAINDER)
        absent.set_defaults(func=partial(_not_installed, name, extra))


def _not_installed(name: str, extra: str, args: argparse.Namespace) -> int:
    raise ImportError(f"`fastseg {name}` is not installed: pip install 'fastseg[{extra}]'")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastseg", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fastseg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    sg = sub.add_parser("segment", help="segment an image from point/box prompts")
    sg.add_argument("image", help="image file")
    sg.add_argument("--model", required=True, type=Path, help="model folder written by `fastseg export`")
    sg.add_argument("--point", type=_pair, action="append", metavar="X,Y", help="a point prompt (repeatable)")
    sg.add_argument(
        "--label",
        type=int,
        action="append",
        choices=(0, 1),
        help="label of each --point: 1 foreground (default), 0 background",
    )
    sg.add_argument("--box", type=_box, action="append", metavar="X1,Y1,X2,Y2", help="a box prompt (repeatable)")
    sg.add_argument(
        "--text",
        action="append",
        metavar="TEXT",
        help='FastSAM: a text prompt, e.g. --text "a dog" (repeatable; needs --clip): the detection CLIP finds '
        "most similar to each text",
    )
    sg.add_argument("--clip", type=Path, help="FastSAM --text: the CLIP model folder (`fastseg export clip_vit_b32`)")
    sg.add_argument("--single-mask", action="store_true", help="SAM: one mask per prompt instead of three")
    sg.add_argument("--mask", type=Path, help="write the mask (best per prompt, united) to this .png file")
    sg.add_argument("--overlay", type=Path, help="write the image with the masks painted on it to this .png file")
    sg.add_argument("--backend", choices=BACKENDS, default="openvino")
    sg.add_argument("--precision", choices=PRECISIONS, default="f32")
    sg.add_argument(
        "--no-cache", action="store_true", help="compile the models without OpenVINO's compiled-model cache"
    )
    sg.add_argument(
        "--conf", type=float, default=DEFAULT_CONF, help=f"FastSAM confidence threshold (default {DEFAULT_CONF})"
    )
    sg.add_argument("--iou", type=float, default=DEFAULT_IOU, help=f"FastSAM NMS IoU threshold (default {DEFAULT_IOU})")
    sg.add_argument(
        "--everything",
        action="store_true",
        help="segment the whole image without prompts (SAM: automatic mask generation; FastSAM: all detections)",
    )
    sg.add_argument("--json", type=Path, help="--everything: write the masks as COCO RLE records to this JSON file")
    sg.add_argument("--progress", action="store_true", help="--everything: show progress on stderr")
    gen = sg.add_argument_group("--everything, SAM family (SamAutomaticMaskGenerator / SAM2's parameters)")
    _add_everything_options(gen)
    sg.set_defaults(func=cmd_segment)

    _add_folder_commands(sub)
    from fastseg.label.cli import add_label_command  # argparse only: fastapi is imported when it serves

    add_label_command(sub)
    _add_plugin_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from fastseg.backends import single_threaded_numpy_blas

    single_threaded_numpy_blas()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("fastseg: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, ImportError, RuntimeError) as exc:
        # Our errors say what was expected and what came; a traceback adds nothing for a user.
        if args.debug:
            raise
        print(f"fastseg: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
