"""``fide example-pair OUT``: a synthetic SHG / bright-field pair as OME-TIFFs at 2:1 pixel sizes, to try
``fide align`` on (the README's worked example), with its true landmarks."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from fide.synth import make_pair

__all__ = ["add_parser", "run", "write_example_pair"]

logger = logging.getLogger("fide")

FIXED_UM, MOVING_UM = 0.5, 1.0  # the bright field has pixels twice as large as the SHG


def _ome(path: Path, rows_cols: np.ndarray, pixel_um: float) -> None:
    axes = "YXS" if rows_cols.ndim == 3 else "YX"
    tifffile.imwrite(
        path,
        rows_cols,
        photometric="rgb" if rows_cols.ndim == 3 else "minisblack",
        compression="zlib",
        metadata={"axes": axes, "PhysicalSizeX": pixel_um, "PhysicalSizeY": pixel_um},
        resolution=(1e4 / pixel_um, 1e4 / pixel_um),
        resolutionunit="CENTIMETER",
    )


def write_example_pair(out: str | Path, size: int = 512, seed: int = 0) -> dict[str, Path]:
    """Write ``shg.ome.tif`` (grey, ``size``², 0.5 µm), ``bright field.ome.tif`` (RGB, half the pixels, 1 µm),
    ``landmarks.csv`` (fixed_x, fixed_y, moving_x, moving_y in each image's pixels) and ``pairs.csv`` (one row,
    for ``fide align --pairs`` and ``benchmarks/align_tre.py``).

    The bright field is the synthetic moving image averaged over 2 x 2 blocks, so a moving point q becomes
    ``(q + 0.5) / 2 - 0.5``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pair = make_pair("val", 0, size, seed)
    fixed = pair["fixed"][0].T  # fide's (x, y) arrays -> (row, column) pictures
    moving = np.transpose(pair["moving"], (2, 1, 0)).astype(np.float32)
    half = size // 2
    moving = moving[: 2 * half, : 2 * half].reshape(half, 2, half, 2, 3).mean((1, 3))
    paths = {"fixed": out / "shg.ome.tif", "moving": out / "bright field.ome.tif"}
    _ome(paths["fixed"], fixed, FIXED_UM)
    _ome(paths["moving"], np.clip(np.rint(moving), 0, 255).astype(np.uint8), MOVING_UM)
    fixed_pts, moving_pts = pair["fixed_points"], (pair["moving_points"] + 0.5) / 2 - 0.5
    table = pd.DataFrame(np.hstack([fixed_pts, moving_pts]), columns=["fixed_x", "fixed_y", "moving_x", "moving_y"])
    paths["landmarks"] = out / "landmarks.csv"
    table.to_csv(paths["landmarks"], index=False, float_format="%.3f")
    paths["pairs"] = out / "pairs.csv"
    row = {
        "fixed": ["shg.ome.tif"],
        "moving": ["bright field.ome.tif"],
        "name": ["core 1"],
        "landmarks": ["landmarks.csv"],
    }
    pd.DataFrame(row).to_csv(paths["pairs"], index=False)
    return paths


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("example-pair", help="write a synthetic SHG / bright-field OME-TIFF pair")
    parser.add_argument("output", type=Path, help="folder for shg.ome.tif, 'bright field.ome.tif', landmarks.csv")
    parser.add_argument("--size", type=int, default=512, help="SHG side in pixels (the bright field has half)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.size < 64:
        raise SystemExit(f"fide example-pair: --size must be at least 64, got {args.size}")
    paths = write_example_pair(args.output, args.size, args.seed)
    logger.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return 0
