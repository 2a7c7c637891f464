"""``fide align``: register two image files (or a ``pairs.csv`` of them) and write an ITK transform, the warped
images, the Learn2Reg field and a QC picture (see :mod:`fide.align`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fide.align import WORKING_PX, open_source, register_sources
from fide.align.batch import AlignWorker, is_complete, read_pairs
from fide.executors import ClusterError
from fide.features.select import resolve_encoders
from fide.io import DatasetError
from fide.io.microscopy import COMPRESSIONS
from fide.runner import merge_results, register_pairs

from ._common import add_device_arguments, seed_everything, select_device
from .register import add_config_arguments, add_dask_argument, config_from_args, executor_from_args, parse_shard

__all__ = ["add_parser", "run"]

logger = logging.getLogger("fide")


def _pixel_size(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"pixel size must be a number of µm, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"pixel size must be positive, got {text!r}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("align", help="register two image files (TIFF, PNG, JPEG, NIfTI, MHA, NRRD)")
    parser.add_argument("fixed", nargs="?", type=Path, help="fixed image (e.g. SHG)")
    parser.add_argument("moving", nargs="?", type=Path, help="moving image (e.g. bright field)")
    parser.add_argument("--pairs", type=Path, help="CSV with columns fixed,moving[,name]: one folder OUT/<name>/ each")
    parser.add_argument("--output", "-o", type=Path, required=True, help="output folder")
    parser.add_argument("--inverse", action="store_true", help="also write fixed_warped.<ext> on the moving grid")
    parser.add_argument(
        "--compression",
        choices=sorted(COMPRESSIONS),
        default="zlib",
        help="warped OME-TIFF tiles (jpeg: 8-bit images, lossy; others stay zlib)",
    )
    parser.add_argument("--fixed-pixel-size", type=_pixel_size, metavar="UM", help="µm per fixed pixel")
    parser.add_argument("--moving-pixel-size", type=_pixel_size, metavar="UM", help="µm per moving pixel")
    parser.add_argument(
        "--working-size", type=int, default=WORKING_PX, metavar="PX", help="fixed side during registration"
    )
    parser.add_argument(
        "--no-refine", action="store_true", help="keep the working-size affine (no full-resolution refinement)"
    )
    parser.add_argument(
        "--local",
        action="store_true",
        help="add a smooth local correction to the refined affine (transform.tfm: [affine, displacement field])",
    )
    parser.add_argument("--shard", type=parse_shard, metavar="I/N", help="--pairs: process pairs[I::N] only")
    parser.add_argument("--force", action="store_true", help="--pairs: recompute pairs already complete")
    parser.add_argument("--merge-shards", action="store_true", help="--pairs: only join the shards' results")
    add_dask_argument(parser)
    add_config_arguments(parser)
    add_device_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if (args.pairs is None) == (args.fixed is None or args.moving is None):
        raise SystemExit("fide align: give FIXED MOVING, or --pairs pairs.csv (not both)")
    if args.dask and args.pairs is None:
        raise SystemExit("fide align: --dask registers a --pairs table; one pair runs here")
    if args.working_size < 64:
        raise SystemExit(f"fide align: --working-size must be at least 64 px, got {args.working_size}")
    cfg = config_from_args(args)
    cfg.refine.enabled = cfg.refine.enabled and not args.no_refine
    cfg.refine.local = cfg.refine.local or args.local
    device = select_device(args.device)
    if args.pairs is not None and args.merge_shards:
        table = merge_results(args.output)
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        missing = sorted({p.name for p in read_pairs(args.pairs)} - set(table["pair"]))
        return 1 if missing or (table["status"] == "failed").any() else 0
    seed_everything(args.seed)
    try:
        encoders = resolve_encoders(cfg.encoder, device)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"fide align: {err}") from None
    sizes = {"fixed_pixel_size": args.fixed_pixel_size, "moving_pixel_size": args.moving_pixel_size}
    if args.pairs is None:
        fixed = open_source(args.fixed, sizes["fixed_pixel_size"], "fixed")
        moving = open_source(args.moving, sizes["moving_pixel_size"], "moving")
        try:
            reg = register_sources(fixed, moving, cfg, working_px=args.working_size, device=device, encoders=encoders)
        except (RuntimeError, MemoryError) as err:  # torch's errors: out of memory, bad shapes
            text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SystemExit(f"fide align: registering {args.moving} to {args.fixed} failed ({text[:200]})") from None
        try:
            reg.save(args.output, inverse=args.inverse, compression=args.compression)
        except OSError as err:
            raise DatasetError(f"{args.output}: cannot write outputs ({err.strerror or err})") from None
        print(f"{args.moving.name} -> {args.fixed.name}: {reg.summary()}; outputs in {args.output}")
        return 0
    pairs = read_pairs(args.pairs)
    executor = executor_from_args(args, "align")
    worker = AlignWorker(
        args.output, cfg, args.working_size, device=device, inverse=args.inverse, compression=args.compression, **sizes
    )
    try:
        table = register_pairs(
            pairs,
            args.output,
            cfg,
            encoders=encoders,
            worker=worker,
            is_complete=lambda pair: is_complete(args.output, pair),
            resume=not args.force,
            shard=args.shard,
            executor=executor,
        )
    except ClusterError as err:
        raise SystemExit(f"fide align: {err}") from None
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    failed = int((table["status"] == "failed").sum())
    logger.info("%d pairs, %d failed; results in %s", len(table), failed, args.output / "results.csv")
    return 1 if failed else 0
