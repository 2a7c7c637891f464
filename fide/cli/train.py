"""``fide train``: train the learned modality encoders with B-NCE on a dataset's aligned training pairs.

Multi-GPU: ``torchrun --nproc_per_node N -m fide.cli.main train DATASET --out weights/NAME.pt --device cuda``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from fide.config import TrainConfig
from fide.features.encoders import OUT_CHANNELS, WORKING_SIZE_PX

from ._common import add_device_arguments, seed_everything, select_device

__all__ = ["add_parser", "run"]

logger = logging.getLogger("fide")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    defaults = TrainConfig()
    parser = subparsers.add_parser("train", help="train the learned SHG / bright-field encoders (B-NCE)")
    parser.add_argument("dataset", type=Path, help="<TASK>_dataset.json with training_paired_images")
    parser.add_argument("--out", type=Path, required=True, help="best encoders, e.g. weights/NAME.pt")
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps, help="stop after N steps (0 = no cap)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="epochs (one pass over the pairs each)")
    parser.add_argument("--resume", action="store_true", help="continue from <out stem>.last.pt when present")
    parser.add_argument("--lr", type=float, default=defaults.learning_rate, help="Adam learning rate")
    parser.add_argument("--critic", choices=["l1", "l2", "cosine"], default=defaults.critic, help="B-NCE critic")
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="B-NCE temperature")
    parser.add_argument("--size", type=int, default=WORKING_SIZE_PX, help="encoders' working size (longest side)")
    parser.add_argument("--channels", type=int, default=OUT_CHANNELS, help="D, representation channels")
    parser.add_argument(
        "--validation",
        choices=["auto", "prealign", "bnce"],
        default=defaults.validation,
        help="checkpoint criterion: pre-alignment TRE (auto: when the pipeline is importable) or held-out B-NCE",
    )
    parser.add_argument("--val-pairs", type=int, default=defaults.val_pairs, help="validation pairs (0 = all)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fide.train import train  # heavy imports only when training

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(
        epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.lr,
        critic=args.critic,
        temperature=args.temperature,
        validation=args.validation,
        val_pairs=args.val_pairs,
        seed=args.seed,
    )
    network = {"out_channels": args.channels, "size_px": args.size}
    seed_everything(args.seed)
    device = select_device(args.device)
    result = train(
        args.dataset, args.out, cfg, network, device=device, resume=args.resume, progress=not args.no_progress
    )
    logger.info(
        "%d steps, %d epochs in %.0f s; best %s %.4f -> %s (state: %s)",
        result.steps,
        result.epochs,
        result.seconds,
        result.validation,
        result.best_score,
        result.best_path,
        result.last_path,
    )
    return 0
