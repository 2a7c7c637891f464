"""``fide example-pair OUT``: a synthetic SHG / bright-field pair as OME-TIFFs at 2:1 pixel sizes, to try
``fide align`` on (the README's worked example), with its true landmarks. Above ``ENLARGE_ABOVE_PX`` the pair is
rendered at that size and enlarged band by band into tiled pyramidal OME-TIFFs (:mod:`fide.synth.enlarged`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from fide.synth import make_pair
from fide.synth.enlarged import ENLARGE_ABOVE_PX, enlarged_points, write_enlarged

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


def _render(
    size: int, seed: int, length_scale: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic val pair 0 as pictures: (size, size) uint8 SHG, (size // 2, size // 2, 3) uint8 bright field
    (2 x 2 block means), and their (N, 2) landmarks (x, y) in each picture's pixels."""
    pair = make_pair("val", 0, size, seed, length_scale=length_scale)
    fixed = pair["fixed"][0].T  # fide's (x, y) arrays -> (row, column) pictures
    moving = np.transpose(pair["moving"], (2, 1, 0)).astype(np.float32)
    half = size // 2
    moving = moving[: 2 * half, : 2 * half].reshape(half, 2, half, 2, 3).mean((1, 3))
    moving = np.clip(np.rint(moving), 0, 255).astype(np.uint8)
    return fixed, moving, pair["fixed_points"], (pair["moving_points"] + 0.5) / 2 - 0.5


def write_example_pair(
    out: str | Path,
    size: int = 512,
    seed: int = 0,
    render_px: int | None = None,
    length_scale: float | None = None,
) -> dict[str, Path]:
    """Write ``shg.ome.tif`` (grey, ``size``², 0.5 µm), ``bright field.ome.tif`` (RGB, half the pixels, 1 µm),
    ``landmarks.csv`` (fixed_x, fixed_y, moving_x, moving_y in each image's pixels) and ``pairs.csv`` (one row,
    for ``fide align --pairs`` and ``benchmarks/align_tre.py``).

    The bright field is the synthetic moving image averaged over 2 x 2 blocks, so a moving point q becomes
    ``(q + 0.5) / 2 - 0.5``. Above ``render_px`` (default ``ENLARGE_ABOVE_PX``) both pictures are rendered at that
    SHG side and enlarged by ``size / render_px`` (bilinear, tiled pyramidal BigTIFF OME-TIFFs,
    :func:`write_enlarged`), the landmarks alike (``(p + 0.5) * factor - 0.5``); the bright field then has
    ``floor(size / 2)`` pixels a side. Such a pair holds no detail finer than ``size / render_px`` fixed pixels; a
    larger render costs memory (see ``ENLARGE_ABOVE_PX``).

    ``length_scale``: written SHG pixels per pixel of an 834 px core for the tissue's structures (fibres ~2 px wide
    at 1); None: ``size / 834``, the core drawn as at 834 px at every size, so a larger pair has larger pixels' worth
    of the same detail, not finer detail. The render draws them at ``length_scale * render / size``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    render = min(size, render_px or ENLARGE_ABOVE_PX)
    render_scale = None if length_scale is None else length_scale * render / size
    fixed, moving, fixed_pts, moving_pts = _render(render, seed, render_scale)
    paths = {"fixed": out / "shg.ome.tif", "moving": out / "bright field.ome.tif"}
    if size <= render:
        _ome(paths["fixed"], fixed, FIXED_UM)
        _ome(paths["moving"], moving, MOVING_UM)
    else:
        factor = size / render
        logger.info("rendered at %d px; enlarging x%.4g to %d px", render, factor, size)
        write_enlarged(paths["fixed"], fixed, factor, FIXED_UM)
        write_enlarged(paths["moving"], moving, factor, MOVING_UM)
        fixed_pts, moving_pts = enlarged_points(fixed_pts, factor), enlarged_points(moving_pts, factor)
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
    parser.add_argument(
        "--size",
        type=int,
        default=512,
        help=f"SHG side in pixels (the bright field has half); above {ENLARGE_ABOVE_PX}: rendered at that, enlarged",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--render",
        type=int,
        default=ENLARGE_ABOVE_PX,
        metavar="PX",
        help=f"render at most this SHG side, enlarge above it (default {ENLARGE_ABOVE_PX}; 8192 needs ~12 GB)",
    )
    parser.add_argument(
        "--length-scale",
        type=float,
        default=None,
        metavar="L",
        help="tissue structures L pixels per pixel of an 834 px core (1: fibres ~2 px wide, detail as a finer "
        "scan shows it); default size / 834 (the 834 px core enlarged); above --render, below size / render is blurred",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.size < 64:
        raise SystemExit(f"fide example-pair: --size must be at least 64, got {args.size}")
    if args.render < 64:
        raise SystemExit(f"fide example-pair: --render must be at least 64, got {args.render}")
    if args.length_scale is not None and not args.length_scale > 0:
        raise SystemExit(f"fide example-pair: --length-scale must be positive, got {args.length_scale:g}")
    paths = write_example_pair(args.output, args.size, args.seed, args.render, args.length_scale)
    logger.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return 0
