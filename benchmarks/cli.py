"""``fastseg bench``: registered into the ``fastseg`` command through the ``fastseg.commands`` entry point."""

from __future__ import annotations

import argparse
from typing import Any


def add_command(sub: Any) -> None:
    """Add the ``bench`` subcommand; the benchmark parses its own options (:mod:`fastseg_bench.run`)."""
    # With argparse's REMAINDER alone, leading options (`fastseg bench --quick`) are refused as
    # unrecognised; a prefix character that never occurs makes this parser treat every following
    # argument, "--quick" included, as a value of bench_args.
    bn = sub.add_parser(
        "bench",
        help="PyTorch originals vs fastseg (ONNX Runtime, OpenVINO f32/bf16/int8)",
        add_help=False,
        prefix_chars="\0",
    )
    bn.add_argument("bench_args", nargs=argparse.REMAINDER)
    bn.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from fastseg_bench.run import main as bench_main
    except ImportError as exc:
        raise ImportError(f"`fastseg bench` needs the bench extra: pip install 'fastseg[bench]' ({exc})") from exc
    return bench_main(args.bench_args)
