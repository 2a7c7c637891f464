"""Seeding and deterministic kernels: the same input and seed give the same field.

A library module (not part of the command line) because :func:`fide.register`, the worker processes of
``fide register --jobs`` and every command set up the same way: a result must not depend on which front end ran it.
"""

from __future__ import annotations

import os
import random
import warnings

import numpy as np
import torch

__all__ = ["seed_everything"]


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
    # only where CUDA is: fide's CPU kernels repeat bit for bit without the mode (their fields differ from the mode's
    # by <= 6e-5 px), and the call imports torch._inductor and torch._dynamo, ~2 s a process (docs/operations.md)
    if torch.cuda.is_available():
        torch.use_deterministic_algorithms(True, warn_only=True)
    # the two ops that warn in fide are repeatable as fide uses them: grid_sample's backward adds atomically only
    # into the image's gradient, which fide never asks for (it optimises displacements); median's indices vary only
    # between tied values, and fide reads the values
    for op in ("grid_sampler_2d_backward_cuda", "median CUDA with indices output"):
        warnings.filterwarnings("ignore", message=f"{op} does not have a deterministic implementation")
    torch.backends.cudnn.benchmark = False
