"""``fide demo``: synthesise a small SHG/BF task, register it, evaluate it and print the table."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from evaluation.evaluation import format_table
from fide.config import FideConfig
from fide.features.select import resolve_encoders
from fide.io import load_dataset
from fide.runner import register_pairs
from fide.synth import make_task

from ._common import add_device_arguments, seed_everything, select_device
from .evaluate import evaluate_folder

__all__ = ["add_parser", "run"]

logger = logging.getLogger("fide")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="synthesise a small task, register it and score it")
    parser.add_argument("--out", type=Path, default=Path("fide-demo"), help="working folder (task and fields)")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--size", type=int, default=512, help="image side, pixels (the challenge uses 834)")
    add_device_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    seed_everything(args.seed)
    device = select_device(args.device)
    descriptor = make_task(args.out / "task", pairs=args.pairs, size=args.size, seed=args.seed)
    logger.info("synthetic task: %s", descriptor)
    pairs = load_dataset(descriptor).split("val")
    cfg = FideConfig(seed=args.seed)
    output = args.out / "fields"
    table = register_pairs(pairs, output, cfg, device=device, encoders=resolve_encoders(cfg.encoder, device))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print()
    print(format_table(evaluate_folder(descriptor, output, "val")))
    print(f"\nfields: {output}    task: {descriptor.parent}")
    return 0 if (table["status"] != "failed").all() else 1
