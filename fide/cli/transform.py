"""``fide transform``: carry points (CSV), annotations (GeoJSON) or images across a ``fide align`` result."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fide.align import load
from fide.align.files import KINDS, naming, transform_file
from fide.io import DatasetError
from fide.io.microscopy import COMPRESSIONS

__all__ = ["add_parser", "run"]

logger = logging.getLogger("fide")


def _columns(text: str) -> tuple[str, str]:
    names = tuple(name.strip() for name in text.split(","))
    if len(names) != 2 or not all(names):
        raise argparse.ArgumentTypeError(f"--columns takes two column names X,Y, got {text!r}")
    return names  # type: ignore[return-value]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "transform",
        help="carry points, GeoJSON or images across a fide align result",
        description="Carry what was drawn or measured on the moving image (the bright field) onto the fixed image "
        "(the SHG) through ALIGNED_DIR's transform.tfm; --inverse carries from the fixed image to the moving one. "
        "CSV: x, y pixel columns (centres at integers; --columns for other names), other columns kept. GeoJSON: "
        "QuPath's export (pixels, origin at the image's top-left corner), properties kept. Images: resampled onto "
        "the other grid (bilinear; nearest neighbour for labels and masks), written as a pyramidal OME-TIFF (.tif) "
        "or a PNG.",
    )
    parser.add_argument("aligned", type=Path, metavar="ALIGNED_DIR", help="a fide align output folder")
    parser.add_argument("input", type=Path, metavar="INPUT", help="CSV, GeoJSON or image of the moving image")
    parser.add_argument("--output", "-o", type=Path, required=True, help="file to write (same kind)")
    parser.add_argument("--inverse", action="store_true", help="carry from the fixed image to the moving image")
    parser.add_argument("--kind", choices=KINDS, help="input kind when its extension does not say")
    parser.add_argument("--columns", type=_columns, metavar="X,Y", help="CSV: the x and y column names")
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument(
        "--labels", dest="labels", action="store_const", const=True, help="images: labels/masks (nearest neighbour)"
    )
    labels.add_argument(
        "--no-labels", dest="labels", action="store_const", const=False, help="images: intensities (bilinear)"
    )
    parser.add_argument(
        "--compression", choices=sorted(COMPRESSIONS), default="zlib", help="OME-TIFF tiles (jpeg: uint8, lossy)"
    )
    parser.set_defaults(run=run, labels=None)


def run(args: argparse.Namespace) -> int:
    aligned = load(args.aligned)
    try:
        summary = transform_file(
            aligned,
            args.input,
            args.output,
            kind=args.kind,
            inverse=args.inverse,
            columns=args.columns,
            labels=args.labels,
            compression=args.compression,
        )
    except ValueError as err:  # a bad option value or malformed content: one line naming the file
        raise DatasetError(naming(args.input, err)) from None
    print(f"{args.input.name}: {summary} -> {args.output}")
    return 0
