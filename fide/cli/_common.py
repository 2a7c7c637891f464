"""Arguments and set-up shared by several commands: device choice, seeding and logging."""

from __future__ import annotations

import argparse
import logging
import random

import numpy as np
import torch

__all__ = ["add_device_arguments", "select_device", "seed_everything", "configure_logging"]


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="compute device")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")


def select_device(name: str) -> torch.device:
    """ "auto" picks CUDA when present; asking for CUDA without one is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("fide: --device cuda requested but no CUDA device is available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_logging(verbose: bool = False) -> None:
    """One log format for every fide command line (``fide``, the entry point, the benchmark)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
