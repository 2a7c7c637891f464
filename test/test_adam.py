"""fide.adam.Adam: torch.optim.Adam's trajectory, without the import of torch._dynamo."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from fide.adam import Adam


def _trajectory(make_optimiser, steps: int = 12) -> list[torch.Tensor]:
    """A small least-squares fit with two parameters of different shapes (one left without a gradient at first)."""
    torch.manual_seed(0)
    target = torch.randn(4, 5)
    weight = torch.zeros(4, 5, requires_grad=True)
    bias = torch.zeros(5, requires_grad=True)
    optimiser = make_optimiser([weight, bias])
    path = []
    for step in range(steps):
        optimiser.zero_grad()
        loss = ((weight - target) ** 2).sum() + (((bias - 1) ** 2).sum() if step >= 3 else 0)
        loss.backward()
        optimiser.step()
        path.append(torch.cat([weight.detach().flatten(), bias.detach()]).clone())
    return path


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_follows_torch_adam_exactly(amsgrad):
    ours = _trajectory(lambda params: Adam(params, lr=0.1, amsgrad=amsgrad))
    theirs = _trajectory(lambda params: torch.optim.Adam(params, lr=0.1, amsgrad=amsgrad))
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    assert not torch.equal(ours[0], ours[-1])  # the fit moved


def test_adam_does_not_import_torch_dynamo():
    code = (
        "import sys, torch\n"
        "from fide.adam import Adam\n"
        "p = torch.zeros(3, requires_grad=True)\n"
        "o = Adam([p], lr=0.1, amsgrad=True)\n"
        "(p * torch.arange(3.0)).sum().backward()\n"
        "o.step()\n"
        "assert float(p[1]) < 0\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
