"""``fide evaluate``: score written fields with the bundled Learn2Reg evaluator (config from the descriptor)."""

from __future__ import annotations

import argparse
from pathlib import Path

from evaluation.evaluation import evaluate, format_table, make_config, write_outputs
from fide.io import load_dataset

__all__ = ["add_parser", "run", "evaluate_folder"]


def evaluate_folder(dataset_json: Path, disp_dir: Path, split: str = "val") -> dict:
    """Evaluate ``disp_dir`` against the landmarks of ``split``; returns the upstream-layout result dict."""
    descriptor = load_dataset(dataset_json).path  # one-line errors for a bad descriptor before the evaluator runs
    config = make_config(descriptor, split)
    return evaluate(disp_dir, descriptor.parent, config)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="TRE (and SDlogJ) of written fields, as the challenge scores")
    parser.add_argument("dataset", type=Path, help="<TASK>_dataset.json, or a folder holding one")
    parser.add_argument("--disp", type=Path, required=True, help="folder with disp_*.nii.gz")
    parser.add_argument("--split", choices=["val", "test"], default="val")
    parser.add_argument("--json", type=Path, help="write the evaluator's JSON here (and a CSV beside it)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    result = evaluate_folder(args.dataset, args.disp, args.split)
    print(format_table(result))
    if args.json:
        write_outputs(result, args.json, args.json.with_suffix(".csv"))
    return 0
