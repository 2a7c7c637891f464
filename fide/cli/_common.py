"""Arguments and set-up shared by several commands: device choice, seeding and logging.

Seeding and logging live in the library (:mod:`fide.reproducibility`, :mod:`fide.logs`), which never imports the
command line; they are re-exported here for the commands, the entry point and the benchmarks.
"""

from __future__ import annotations

import argparse

import torch

from fide.logs import configure_logging
from fide.reproducibility import seed_everything

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
