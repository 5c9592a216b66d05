"""``fastseg export``: registered into the ``fastseg`` command through the ``fastseg.commands`` entry point.

Importing this module is cheap: torch and the reference packages load only when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fastseg.registry import REGISTRY


def add_command(sub: Any) -> None:
    """Add the ``export`` subcommand to the ``fastseg`` parser's subparsers."""
    ex = sub.add_parser("export", help="official checkpoint -> ONNX + OpenVINO model folder, checked against PyTorch")
    ex.add_argument("model", choices=sorted(REGISTRY), help="registry name")
    ex.add_argument("--checkpoint", type=Path, help="the official checkpoint file")
    ex.add_argument("--download", action="store_true", help="download the official checkpoint into the cache")
    ex.add_argument("--url", help="download from this URL instead of the official one")
    ex.add_argument("--out", type=Path, help="model folder to write (default: models/MODEL)")
    ex.add_argument(
        "--ir-precision",
        choices=("f32", "f16"),
        default="f32",
        help="OpenVINO weight precision (f16 halves the files; default f32)",
    )
    ex.add_argument(
        "--int8",
        action="store_true",
        help="also quantize the image graph to INT8 with NNCF (for --precision int8; needs nncf)",
    )
    ex.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    ex.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.checkpoint is None and not args.download:
        raise ValueError("give the checkpoint: --checkpoint PATH, or --download to fetch the official one")
    if args.checkpoint is not None and args.download:
        raise ValueError("--checkpoint and --download exclude each other")
    try:
        from fastseg_export.download import download_checkpoint
        from fastseg_export.export import export_model
    except ImportError as exc:
        raise ImportError(
            f"`fastseg export` needs the export toolchain (torch and the reference implementations): "
            f"pip install 'fastseg[export]' ({exc})"
        ) from exc
    checkpoint = args.checkpoint
    if args.download:
        checkpoint = download_checkpoint(args.model, url=args.url)
    out = args.out or Path("models") / args.model
    export_model(args.model, checkpoint, out, ir_precision=args.ir_precision, int8=args.int8, overwrite=args.overwrite)
    print(out)
    return 0
