"""The ``fastseg`` command: ``export``, ``segment``, ``bench``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fastseg import __version__
from fastseg.registry import REGISTRY


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


def _export_extra_missing() -> str:
    return (
        "`fastseg export` needs the export toolchain (torch and the reference implementations): "
        "pip install 'fastseg[export]'"
    )


def cmd_export(args: argparse.Namespace) -> int:
    try:
        from fastseg_export.download import download_checkpoint
        from fastseg_export.export import export_model
    except ImportError as exc:
        raise ImportError(f"{_export_extra_missing()} ({exc})") from exc

    if args.checkpoint is None and not args.download:
        raise ValueError("give the checkpoint: --checkpoint PATH, or --download to fetch the official one")
    if args.checkpoint is not None and args.download:
        raise ValueError("--checkpoint and --download exclude each other")
    checkpoint = args.checkpoint
    if args.download:
        checkpoint = download_checkpoint(args.model, url=args.url)
    out = args.out or Path("models") / args.model
    export_model(args.model, checkpoint, out, ir_precision=args.ir_precision, overwrite=args.overwrite)
    print(out)
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    import numpy as np

    from fastseg.draw import save_png
    from fastseg.image import load_image
    from fastseg.predictor import Predictor

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
    predictor = Predictor(args.model, backend=args.backend, precision=args.precision, conf=args.conf, iou=args.iou)
    start = time.perf_counter()
    predictor.set_image(image)
    result = predictor.predict(points=points, labels=labels, boxes=boxes, multimask=not args.single_mask)
    elapsed = time.perf_counter() - start
    best = result.best() if predictor.folder.family == "sam" else result
    union = best.masks.any(axis=0) if len(best) else np.zeros(image.shape[:2], dtype=bool)
    print(
        f"{predictor.model_name} ({predictor.folder.weights}), {args.backend} {predictor.precision}: "
        f"{len(result)} masks, kept {len(best)} (scores {np.round(best.scores, 3).tolist()}), "
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
    ("pred_iou_thresh", float, "keep masks with predicted IoU above this (default 0.88)"),
    ("stability_score_thresh", float, "keep masks with stability score at least this (default 0.95)"),
    ("stability_score_offset", float, "logit offset of the stability score (default 1.0)"),
    ("box_nms_thresh", float, "box NMS IoU within a crop; 1.0 turns NMS off (default 0.7)"),
    ("crop_n_layers", int, "extra layers of image crops (default 0)"),
    ("crop_nms_thresh", float, "box NMS IoU between crops (default 0.7)"),
    ("crop_overlap_ratio", float, "crop overlap, fraction of the short side (default 512/1500)"),
    ("crop_n_points_downscale_factor", int, "points per side shrink by this per crop layer (default 1)"),
    ("min_mask_region_area", int, "remove islands and holes smaller than this, in pixels (default 0)"),
)


def _segment_everything(args: argparse.Namespace, image) -> int:
    import numpy as np

    from fastseg import everything as ev
    from fastseg.draw import save_png
    from fastseg.predictor import Predictor

    if args.point or args.box or args.label:
        raise ValueError("--everything segments the whole image without prompts; drop --point/--label/--box")
    params = {name: getattr(args, name) for name, _, _ in EVERYTHING_OPTIONS if getattr(args, name) is not None}
    predictor = Predictor(args.model, backend=args.backend, precision=args.precision, conf=args.conf, iou=args.iou)
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
        print(f"json: {ev.write_json(args.json, records, **info)}")
    if args.mask:
        union = np.zeros(image.shape[:2], dtype=bool)
        for mask in ev.iter_masks(records):
            union |= mask
        print(f"mask: {save_png(union, args.mask)}")
    if args.overlay:
        print(f"overlay: {save_png(ev.overlay(image, records), args.overlay)}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        from fastseg_bench.run import main as bench_main
    except ImportError as exc:
        raise ImportError(f"`fastseg bench` needs the bench extra: pip install 'fastseg[bench]' ({exc})") from exc
    return bench_main(args.bench_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastseg", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fastseg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("export", help="official checkpoint -> ONNX + OpenVINO model folder, checked against PyTorch")
    ex.add_argument("model", choices=sorted(REGISTRY), help="registry name")
    ex.add_argument("--checkpoint", type=Path, help="the official checkpoint file")
    ex.add_argument("--download", action="store_true", help="download the official checkpoint into the cache")
    ex.add_argument("--url", help="download from this URL instead of the official one")
    ex.add_argument("--out", type=Path, help="model folder to write (default: models/MODEL)")
    ex.add_argument("--ir-precision", choices=("f32", "f16"), default="f32",
                    help="OpenVINO weight precision (f16 halves the files; default f32)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    ex.set_defaults(func=cmd_export)

    sg = sub.add_parser("segment", help="segment an image from point/box prompts")
    sg.add_argument("image", help="image file")
    sg.add_argument("--model", required=True, type=Path, help="model folder written by `fastseg export`")
    sg.add_argument("--point", type=_pair, action="append", metavar="X,Y", help="a point prompt (repeatable)")
    sg.add_argument("--label", type=int, action="append", choices=(0, 1),
                    help="label of each --point: 1 foreground (default), 0 background")
    sg.add_argument("--box", type=_box, action="append", metavar="X1,Y1,X2,Y2", help="a box prompt (repeatable)")
    sg.add_argument("--single-mask", action="store_true", help="SAM: one mask per prompt instead of three")
    sg.add_argument("--mask", type=Path, help="write the mask (best per prompt, united) as a PNG")
    sg.add_argument("--overlay", type=Path, help="write the image with the masks painted on it as a PNG")
    sg.add_argument("--backend", choices=("openvino", "onnxruntime"), default="openvino")
    sg.add_argument("--precision", choices=("f32", "bf16"), default="f32")
    sg.add_argument("--conf", type=float, default=0.4, help="FastSAM confidence threshold")
    sg.add_argument("--iou", type=float, default=0.9, help="FastSAM NMS IoU threshold")
    sg.add_argument("--everything", action="store_true",
                    help="segment the whole image without prompts (SAM: automatic mask generation; "
                    "FastSAM: all detections)")
    sg.add_argument("--json", type=Path, help="--everything: write the masks as COCO RLE records to this JSON file")
    sg.add_argument("--progress", action="store_true", help="--everything: show progress on stderr")
    gen = sg.add_argument_group("--everything, SAM family (segment_anything's SamAutomaticMaskGenerator parameters)")
    for name, kind, text in EVERYTHING_OPTIONS:
        gen.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, metavar=kind.__name__.upper(), help=text)
    sg.set_defaults(func=cmd_segment)

    # The benchmark parses its own options (fastseg_bench.run). With argparse's REMAINDER alone, leading
    # options (`fastseg bench --quick`) are refused as unrecognised; a prefix character that never occurs
    # makes this parser treat every following argument, "--quick" included, as a value of bench_args.
    bn = sub.add_parser("bench", help="PyTorch originals vs fastseg (ONNX Runtime, OpenVINO f32/bf16)",
                        add_help=False, prefix_chars="\0")
    bn.add_argument("bench_args", nargs=argparse.REMAINDER)
    bn.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
