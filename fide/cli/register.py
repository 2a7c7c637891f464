"""``fide register``: register every pair of a split and write challenge-format displacement fields."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from fide.config import STAGES, FideConfig, config_from_dict
from fide.io import load_dataset
from fide.runner import METHODS, register_pairs

from ._common import add_device_arguments, seed_everything, select_device

__all__ = ["add_parser", "run", "add_config_arguments", "config_from_args"]

logger = logging.getLogger("fide")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="JSON file with (part of) the FideConfig tree")
    parser.add_argument("--stages", choices=STAGES, help="last pipeline stage to run (ablations)")
    parser.add_argument("--features", choices=["auto", "learned", "handcrafted"], help="features for matching and LNCC")


def config_from_args(args: argparse.Namespace) -> FideConfig:
    cfg = config_from_dict(json.loads(args.config.read_text())) if args.config else FideConfig()
    if args.stages:
        cfg.stages = args.stages
    if args.features:
        cfg.encoder.features = args.features
    cfg.seed = args.seed
    return cfg


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("register", help="register a Learn2Reg dataset split")
    parser.add_argument("dataset", type=Path, help="<TASK>_dataset.json")
    parser.add_argument("--output", "-o", type=Path, required=True, help="folder for disp_*.nii.gz and results.csv")
    parser.add_argument("--split", choices=["val", "test", "train"], help="default: test when listed, else val")
    parser.add_argument("--method", choices=sorted(METHODS), default="fide", help="'zero' = no registration")
    add_config_arguments(parser)
    add_device_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.dataset)
    split = args.split or dataset.default_split()
    pairs = dataset.split(split)
    cfg = config_from_args(args)
    device = select_device(args.device)
    seed_everything(args.seed)
    logger.info("%s: %d %s pairs on %s, method %s", dataset.name, len(pairs), split, device, args.method)
    table = register_pairs(pairs, args.output, cfg, method=args.method, device=device)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    failed = int((table["status"] == "failed").sum()) if len(table) else 0
    logger.info(
        "%d ok, %d flagged, %d failed; fields in %s",
        (table["status"] == "ok").sum(),
        (table["status"] == "flagged").sum(),
        failed,
        args.output,
    )
    return 1 if failed else 0
