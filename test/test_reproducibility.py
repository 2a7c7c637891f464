"""fide.reproducibility.seed_everything: seeds, and PyTorch's deterministic kernels only where CUDA is."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from fide.reproducibility import seed_everything


@pytest.fixture
def restore_mode():
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


@pytest.mark.parametrize("cuda", [False, True])
def test_deterministic_mode_follows_cuda(monkeypatch, restore_mode, cuda):
    torch.use_deterministic_algorithms(False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    seed_everything(3)
    assert torch.are_deterministic_algorithms_enabled() is cuda
    if cuda:
        assert torch.is_deterministic_algorithms_warn_only_enabled()  # ops without such a kernel only warn


def test_same_seed_same_draws(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    draws = []
    for _ in range(2):
        seed_everything(11)
        draws.append((random.random(), float(np.random.rand()), float(torch.rand(()))))
    assert draws[0] == draws[1]
    seed_everything(12)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) != draws[0]
