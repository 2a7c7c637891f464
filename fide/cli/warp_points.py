"""``fide warp-points``: map a landmark CSV through a written field (fixed → moving, or back with ``--inverse``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fide.io import read_landmarks, write_landmarks
from fide.warp_points import warp_points

__all__ = ["add_parser", "run"]

logger = logging.getLogger("fide")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "warp-points",
        help="map landmark CSVs through a disp_*.nii.gz field",
        description="Map header-less (N, 2) array-order pixel CSVs through a field: fixed points p go to p + u(p) in "
        "the moving image; --inverse maps moving points back to the fixed image.",
    )
    parser.add_argument("field", type=Path, help="disp_*.nii.gz, (H, W, 1, 2), pixels, fixed to moving")
    parser.add_argument("points", type=Path, help="CSV of fixed points (moving points with --inverse)")
    parser.add_argument("--out", "-o", type=Path, required=True, help="CSV to write, same row order")
    parser.add_argument("--inverse", action="store_true", help="map moving points to the fixed image")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    points = read_landmarks(args.points)
    mapped = warp_points(points, args.field, inverse=args.inverse)
    write_landmarks(args.out, mapped)
    direction = "moving → fixed" if args.inverse else "fixed → moving"
    logger.info("%d points mapped %s through %s into %s", len(points), direction, args.field.name, args.out)
    return 0
