"""``fide register``: register every pair of a split and write challenge-format displacement fields."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
from pathlib import Path

import pandas as pd
import torch

from fide.config import MIRROR_CHOICES, STAGES, FideConfig, SearchConfig, config_from_dict
from fide.executors import ClusterError, Executor, make_executor
from fide.features import ModalityEncoders
from fide.features.select import resolve_encoders
from fide.io import Pair, load_dataset
from fide.resources import configure_threads
from fide.runner import METHODS, merge_results, register_pairs, select_shard

from ._common import add_device_arguments, seed_everything, select_device

__all__ = [
    "add_parser",
    "run",
    "add_config_arguments",
    "config_from_args",
    "parse_shard",
    "add_run_arguments",
    "positive_int",
    "executor_from_args",
    "add_dask_argument",
]

logger = logging.getLogger("fide")

_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` → ``(I, N)`` with 0 <= I < N (argparse ``type``; SLURM's ``$SLURM_ARRAY_TASK_ID/N`` fits)."""
    match = _SHARD_RE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"--shard expects I/N with integers 0 <= I < N, got {text!r}")
    index, count = int(match[1]), int(match[2])
    if count < 1 or index >= count:
        raise argparse.ArgumentTypeError(f"--shard expects I/N with 0 <= I < N, got {index}/{count}")
    return index, count


def positive_int(text: str) -> int:
    """argparse ``type`` of ``--threads`` and ``--jobs``: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="JSON file with (part of) the FideConfig tree")
    parser.add_argument("--stages", choices=STAGES, help="last pipeline stage to run (ablations)")
    parser.add_argument("--features", choices=["auto", "learned", "handcrafted"], help="features for matching and LNCC")
    parser.add_argument(
        "--max-rotation",
        type=float,
        metavar="DEG",
        help="search rotations within ±DEG only (default 180: any; the challenge's pairs: 20)",
    )
    parser.add_argument(
        "--mirror",
        choices=list(MIRROR_CHOICES),
        help="mirrored slides: auto (default: search both), never, always (every slide is mirrored)",
    )


def add_dask_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="register on a Dask cluster: a scheduler (tcp://host:8786) or local:N worker processes "
        "(needs pip install 'fide[dask]')",
    )


def executor_from_args(args: argparse.Namespace, command: str) -> Executor:
    """The executor of ``--jobs``, ``--threads`` and ``--dask``; a bad combination exits with one line."""
    try:
        return make_executor(getattr(args, "jobs", 1), getattr(args, "threads", None), getattr(args, "dask", None))
    except ValueError as err:
        raise SystemExit(f"fide {command}: {err}") from None


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--shard``, ``--force``, ``--qc``, ``--threads``, ``--jobs``, ``--dask``: for ``fide register`` and the
    entry point."""
    parser.add_argument("--shard", type=parse_shard, metavar="I/N", help="process pairs[I::N] only (0 <= I < N)")
    parser.add_argument("--force", action="store_true", help="recompute pairs whose field is already valid")
    parser.add_argument("--qc", action="store_true", help="write QC pictures to OUTPUT/qc/ (PNG per pair, summary)")
    parser.add_argument(
        "--threads", type=positive_int, metavar="N", help="threads in all (default: the cores this process may use)"
    )
    parser.add_argument(
        "--jobs", type=positive_int, default=1, metavar="N", help="worker processes, threads split between them"
    )
    add_dask_argument(parser)


def config_from_args(args: argparse.Namespace) -> FideConfig:
    cfg = config_from_dict(json.loads(args.config.read_text())) if args.config else FideConfig()
    if args.stages:
        cfg.stages = args.stages
    if args.features:
        cfg.encoder.features = args.features
    if getattr(args, "max_rotation", None) is not None or getattr(args, "mirror", None):
        search = dataclasses.asdict(cfg.search)
        search["max_rotation_deg"] = search["max_rotation_deg"] if args.max_rotation is None else args.max_rotation
        search["mirror"] = args.mirror or search["mirror"]
        try:
            cfg.search = SearchConfig(**search)  # validated like a config file
        except ValueError as err:
            raise SystemExit(f"fide: {err}") from None
    cfg.seed = args.seed
    return cfg


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("register", help="register a Learn2Reg dataset split")
    parser.add_argument("dataset", type=Path, help="<TASK>_dataset.json, or a folder holding one")
    parser.add_argument("--output", "-o", type=Path, required=True, help="folder for disp_*.nii.gz and results.csv")
    parser.add_argument("--split", choices=["val", "test", "train"], help="default: test when listed, else val")
    parser.add_argument("--method", choices=sorted(METHODS), default="fide", help="'zero' = no registration")
    add_run_arguments(parser)
    parser.add_argument(
        "--merge-shards", action="store_true", help="only join OUTPUT/results.shard-*.csv into results.csv"
    )
    add_config_arguments(parser)
    add_device_arguments(parser)
    parser.set_defaults(run=run)


def register_with_run_options(
    pairs: list[Pair],
    args: argparse.Namespace,
    cfg: FideConfig,
    device: torch.device,
    encoders: ModalityEncoders | None,
    method: str = "fide",
) -> pd.DataFrame:
    """``register_pairs`` with the options of :func:`add_run_arguments` (``--qc``, ``--force``, ``--shard``, ...).

    Shared by ``fide register`` and the container entry point; ``args.output`` is the output folder.
    """
    executor = executor_from_args(args, "register")
    recorder = None
    if args.qc:
        from fide.qc import QCRecorder  # matplotlib only when asked for

        recorder = QCRecorder(args.output / "qc", flag_below=cfg.confidence.flag_below)
    try:
        table = register_pairs(
            pairs,
            args.output,
            cfg,
            method=method,
            device=device,
            encoders=encoders,
            on_result=recorder,
            resume=not args.force,
            shard=args.shard,
            executor=executor,
        )
    except ClusterError as err:
        raise SystemExit(f"fide register: {err}") from None
    if recorder is not None:
        todo = select_shard(pairs, *args.shard) if args.shard else pairs
        summary = recorder.finish(todo, table, args.output, shard=args.shard)
        logger.info("QC pictures in %s (summary %s)", recorder.folder, summary.name)
    return table


def run(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.dataset, check_files=False)  # a missing image fails its pair only
    split = args.split or dataset.default_split()
    pairs = dataset.split(split)
    if args.merge_shards:
        table = merge_results(args.output)
        missing = sorted({p.name for p in pairs} - set(table["pair"]))
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        if missing:
            logger.error("%d %s pairs have no row yet: %s", len(missing), split, ", ".join(missing))
        return 1 if missing or (table["status"] == "failed").any() else 0
    cfg = config_from_args(args)
    threads = configure_threads(args.threads)
    device = select_device(args.device)
    seed_everything(args.seed)
    todo = select_shard(pairs, *args.shard) if args.shard else pairs
    shard_note = f" (shard {args.shard[0]}/{args.shard[1]} of {len(pairs)})" if args.shard else ""
    where = f"Dask {args.dask}" if args.dask else f"{threads} threads, {args.jobs} jobs"
    name, method = dataset.name, args.method
    logger.info("%s: %d %s pairs%s on %s (%s), method %s", name, len(todo), split, shard_note, device, where, method)
    try:
        encoders = resolve_encoders(cfg.encoder, device) if args.method == "fide" else None
    except (FileNotFoundError, ValueError) as err:  # e.g. --features learned without weights
        raise SystemExit(f"fide register: {err}") from None
    table = register_with_run_options(pairs, args, cfg, device, encoders, method=args.method)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    counts = table["status"].value_counts()
    failed = int(counts.get("failed", 0))
    logger.info(
        "%d ok, %d flagged, %d skipped (kept), %d failed; fields in %s",
        counts.get("ok", 0),
        counts.get("flagged", 0),
        counts.get("skipped", 0),
        failed,
        args.output,
    )
    return 1 if failed else 0
