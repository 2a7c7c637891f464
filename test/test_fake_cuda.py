"""The CPU stand-in for CUDA (test/fake_cuda.py) fails where real CUDA fails, and only there."""

import pytest
import torch
from fake_cuda import FakeCuda, is_fake_cuda, without_gpu

pytestmark = without_gpu


def test_mixing_a_cuda_tensor_with_a_cpu_tensor_raises_as_on_cuda():
    with FakeCuda():
        x = torch.ones(3).to("cuda")
        assert x.is_cuda and x.device.type == "cuda" and is_fake_cuda(x * 2)
        with pytest.raises(RuntimeError, match="same device"):
            _ = x + torch.ones(3)
        with pytest.raises(RuntimeError, match="same device"):
            torch.stack([x, torch.zeros(3)])
        with pytest.raises(TypeError, match="numpy"):
            x.numpy()
        with pytest.raises(RuntimeError, match="generator"):
            torch.randn(3, device="cuda", generator=torch.Generator().manual_seed(0))


def test_what_cuda_allows_is_allowed_and_the_tag_follows_the_data():
    with FakeCuda():
        x = torch.arange(6.0).to("cuda")
        assert is_fake_cuda(x + torch.tensor(1.0))  # 0-dim CPU tensors mix freely
        assert is_fake_cuda(x[torch.tensor([0, 2])])  # CPU index tensors too
        assert is_fake_cuda(x.new_zeros(2)) and is_fake_cuda(torch.zeros_like(x))
        assert is_fake_cuda(torch.zeros(2, device=x.device)) and is_fake_cuda(torch.ones(2).to(x))
        values, indices = x.view(2, 3).max(dim=1)
        assert is_fake_cuda(values) and is_fake_cuda(indices)
        back = x.cpu()
        assert not is_fake_cuda(back) and is_fake_cuda(x)  # .cpu() of a tagged tensor is a new, untagged alias
        assert not back.is_cuda and float((back + torch.ones(6)).sum()) == 21.0
        module = torch.nn.Linear(6, 1).to("cuda")
        assert is_fake_cuda(module(x[None]))
