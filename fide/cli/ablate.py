"""``fide ablate``: the ablation table (pre-alignment only, LNCC only, NMI only, full, editing off, ...)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path

from fide.ablate import VARIANTS, run_ablation
from fide.config import FideConfig, config_from_dict
from fide.io import atomic_path, load_dataset

from ._common import add_device_arguments, seed_everything, select_device

__all__ = ["add_parser", "run", "parse_variants"]

logger = logging.getLogger("fide")


def parse_variants(text: str) -> list[str]:
    """Comma-separated variant names (argparse ``type``); unknown names are an error listing the valid ones."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown variants {unknown or text!r}; choose from {','.join(VARIANTS)}")
    return names


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ablate",
        help="ablation table: TRE and time of pipeline variants",
        description=f"Variants (rows): {', '.join(VARIANTS)}.",
    )
    parser.add_argument(
        "dataset", type=Path, help="<TASK>_dataset.json (with landmarks for TRE), or a folder holding one"
    )
    parser.add_argument("--pairs", type=int, help="use the first N pairs of the split (default: all)")
    parser.add_argument("--split", choices=["val", "test", "train"], help="default: test when listed, else val")
    parser.add_argument("--variants", type=parse_variants, help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=Path("ablation.csv"), help="CSV to write (default ablation.csv)")
    parser.add_argument("--workdir", type=Path, help="keep each variant's fields here (reruns resume); default: temp")
    parser.add_argument("--config", type=Path, help="JSON with (part of) the FideConfig tree every variant modifies")
    add_device_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.pairs is not None and args.pairs < 1:
        raise SystemExit(f"fide ablate: --pairs must be >= 1, got {args.pairs}")
    dataset = load_dataset(args.dataset, check_files=False)
    base = config_from_dict(json.loads(args.config.read_text())) if args.config else FideConfig()
    base.seed = args.seed
    device = select_device(args.device)
    seed_everything(args.seed)
    kwargs = dict(variants=args.variants, split=args.split, num_pairs=args.pairs, device=device)
    if args.workdir is not None:
        table = run_ablation(dataset, args.workdir, base, **kwargs)
    else:
        with tempfile.TemporaryDirectory(prefix="fide-ablate-") as workdir:
            table = run_ablation(dataset, workdir, base, **kwargs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(args.out)
    try:
        table.to_csv(tmp, index=False, float_format="%.4f")
        os.replace(tmp, args.out)
    finally:
        tmp.unlink(missing_ok=True)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    logger.info("ablation table written to %s", args.out)
    return 0
