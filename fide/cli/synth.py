"""``fide synth``: write a synthetic SHG/BF Learn2Reg task folder with exact ground truth."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fide.synth import make_task
from fide.synth.regimes import REGIMES

__all__ = ["add_parser", "run"]

logger = logging.getLogger("fide")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("synth", help="generate a synthetic SHG/BF task folder with ground truth")
    parser.add_argument("output", type=Path, help="task folder to create")
    parser.add_argument("--pairs", type=int, default=10, help="registration_val pairs (misaligned, with landmarks)")
    parser.add_argument("--train-pairs", type=int, default=0, help="aligned training_paired_images pairs")
    parser.add_argument("--test-pairs", type=int, default=0, help="registration_test pairs (no landmarks)")
    parser.add_argument("--size", type=int, default=834, help="image side, pixels")
    parser.add_argument("--seed", type=int, default=0, help="base seed; same seed, byte-identical images")
    parser.add_argument("--name", default="SYNTHSHGBF", help="task name and file prefix")
    parser.add_argument(
        "--scale-range",
        type=float,
        nargs=2,
        default=(0.85, 1.15),
        metavar=("LOW", "HIGH"),
        help="isotropic scale of the val/test affines (moving px per fixed px)",
    )
    parser.add_argument(
        "--warp-px",
        type=float,
        default=4.0,
        help="largest smooth-warp displacement on top of the affine, pixels at 834 px (0: exactly affine pairs)",
    )
    parser.add_argument(
        "--regime",
        default="core",
        choices=sorted(REGIMES),
        help="how the bright field is moved, cut and exported: whole cores (core), the challenge's centre patches "
        "(patch20, patch180), harder affines with lab exports (hard), mirrored slides (mirror), SHG texture "
        "independent of the bright field's under a shared coarse layout (decoupled, decoupled-patch20); see "
        "docs/synth.md",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        descriptor = make_task(
            args.output,
            args.pairs,
            args.size,
            args.seed,
            train_pairs=args.train_pairs,
            test_pairs=args.test_pairs,
            name=args.name,
            scale_range=tuple(args.scale_range),
            regime=args.regime,
            warp_px=args.warp_px,
        )
    except ValueError as err:
        logger.error("synth: %s", err)
        return 2
    print(descriptor)
    return 0
