"""Arguments and set-up shared by several commands: device choice, seeding and logging."""

from __future__ import annotations

import argparse
import logging
import os
import random
import warnings

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
    """Seed every generator and ask for repeatable kernels: the same input and seed give the same field.

    On CUDA, atomic-add kernels (index_add, the backward of advanced indexing, some cuDNN convolutions) sum in an
    order that varies between runs; PyTorch's deterministic mode swaps in fixed-order kernels where it has them
    (measured on an H100: repeated registrations differed by up to 0.14 px without it, not at all with it). Ops
    without such a kernel only warn (``warn_only``): nothing that worked stops working.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for repeatable products
    torch.use_deterministic_algorithms(True, warn_only=True)
    # the two ops that warn in fide are repeatable as fide uses them: grid_sample's backward adds atomically only
    # into the image's gradient, which fide never asks for (it optimises displacements); median's indices vary only
    # between tied values, and fide reads the values
    for op in ("grid_sampler_2d_backward_cuda", "median CUDA with indices output"):
        warnings.filterwarnings("ignore", message=f"{op} does not have a deterministic implementation")
    torch.backends.cudnn.benchmark = False


def configure_logging(verbose: bool = False) -> None:
    """One log format for every fide command line (``fide``, the entry point, the benchmark)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
