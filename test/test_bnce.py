"""B-NCE: agreement with the original's dense formula, aligned < shuffled, gradients, chunking, patch sampling."""

from __future__ import annotations

import pytest
import torch

from fide.losses import BatchNCELoss, apply_reduction, extract_patches, sample_patch_corners

pytestmark = pytest.mark.usefixtures("one_thread")


def _dense_reference(pred: torch.Tensor, target: torch.Tensor, loss: BatchNCELoss) -> torch.Tensor:
    """The original's formula with the full (Q, 2Q, K) difference tensor (spec §3, steps 4-6)."""
    a, b = loss.embed(pred), loss.embed(target)
    if loss.critic == "l1":
        s_ab = -(a[:, None] - b[None]).abs().mean(-1) / loss.temperature
        s_aa = -(a[:, None] - a[None]).abs().mean(-1) / loss.temperature
    else:
        s_ab, s_aa = a @ b.T / loss.temperature, a @ a.T / loss.temperature
    s_aa = s_aa.masked_fill(torch.eye(len(a), dtype=torch.bool), float("-inf"))
    total = torch.cat([s_ab, s_aa], 1).exp().sum(1).clamp(min=1e-3).log()
    return (total - s_ab.diag()).mean()


def _smooth_maps(num: int, size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num, 1, size // 4, size // 4, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)


@pytest.mark.parametrize("critic", ["l1", "cosine"])
def test_matches_dense_reference_value_and_gradient(critic: str) -> None:
    loss = BatchNCELoss(critic=critic, pool_kernel=5, pool_stride=2, chunk_size=7)
    pred = torch.randn(5, 2, 10, 10, dtype=torch.float64, requires_grad=True)
    target = torch.randn(5, 2, 10, 10, dtype=torch.float64, requires_grad=True)
    value = loss(pred, target)
    reference = _dense_reference(pred, target, loss)
    torch.testing.assert_close(value, reference)
    grads = torch.autograd.grad(value, (pred, target))
    ref_grads = torch.autograd.grad(reference, (pred, target))
    for grad, ref in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref)


def test_chunk_size_does_not_change_the_result() -> None:
    pred, target = _smooth_maps(8, 16, 0), _smooth_maps(8, 16, 1)
    values = [BatchNCELoss(pool_kernel=3, chunk_size=c)(pred, target) for c in (1, 5, 64, 10_000)]
    for value in values[1:]:
        torch.testing.assert_close(value, values[0])


@pytest.mark.parametrize("critic", ["l1", "l2", "cosine"])
def test_aligned_pairs_score_lower_than_shuffled(critic: str) -> None:
    loss = BatchNCELoss(critic=critic, pool_kernel=3, temperature=0.5 if critic != "cosine" else 0.1)
    shg = _smooth_maps(16, 32, 0)
    bf = 2.0 * shg + 0.05 * torch.randn(shg.shape, generator=torch.Generator().manual_seed(2))  # same structure
    shuffled = bf[torch.randperm(16, generator=torch.Generator().manual_seed(3))]  # patches from other positions
    aligned_value = loss(bf, shg)
    assert aligned_value < loss(shuffled, shg)
    assert aligned_value < loss(_smooth_maps(16, 32, 9), shg)


def test_gradients_flow_to_both_maps() -> None:
    pred = _smooth_maps(8, 16, 0).requires_grad_(True)
    target = _smooth_maps(8, 16, 1).requires_grad_(True)
    BatchNCELoss(pool_kernel=3, chunk_size=16)(pred, target).backward()
    for grad in (pred.grad, target.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_reduction_none_and_positions() -> None:
    loss = BatchNCELoss(pool_kernel=5, pool_stride=2, reduction="none")
    values = loss(_smooth_maps(4, 20, 0), _smooth_maps(4, 20, 1))
    assert values.shape == (10 * 10,)
    torch.testing.assert_close(apply_reduction(values, "mean"), values.mean())
    with pytest.raises(ValueError, match="reduction"):
        apply_reduction(values, "max")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"critic": "dot"}, "critic"),
        ({"temperature": 0.0}, "temperature"),
        ({"pool_kernel": 4}, "pool_kernel"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"reduction": "max"}, "reduction"),
    ],
)
def test_invalid_settings_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BatchNCELoss(**kwargs)


def test_invalid_inputs_raise() -> None:
    loss = BatchNCELoss()
    with pytest.raises(ValueError, match="equal shape"):
        loss(torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 9))
    with pytest.raises(ValueError, match="at least 2 patches"):
        loss(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


def test_patch_corners_respect_mask_and_are_distinct() -> None:
    mask = torch.zeros(40, 40, dtype=torch.bool)
    mask[30:, 30:] = True
    corners = sample_patch_corners(mask, 20, 8, torch.Generator().manual_seed(0))
    assert corners.shape == (20, 2)
    assert len({tuple(c) for c in corners.tolist()}) == 20  # without replacement
    for i, j in corners.tolist():
        assert 0 <= i <= 32 and 0 <= j <= 32
        assert mask[i : i + 8, j : j + 8].any()


def test_patch_corners_fall_back_on_small_or_empty_masks() -> None:
    mask = torch.zeros(1, 1, 16, 16)
    corners = sample_patch_corners(mask, 5, 8, torch.Generator().manual_seed(0))  # empty: anywhere
    assert corners.shape == (5, 2) and int(corners.max()) <= 8
    mask[0, 0, 0, 0] = 1  # one qualifying corner only: drawn with replacement
    assert sample_patch_corners(mask, 3, 8).tolist() == [[0, 0]] * 3
    with pytest.raises(ValueError, match="patch_px"):
        sample_patch_corners(mask, 3, 17)


def test_extract_patches_cuts_the_right_pixels() -> None:
    image = torch.arange(2 * 10 * 12, dtype=torch.float32).view(1, 2, 10, 12)
    corners = torch.tensor([[0, 0], [3, 5]])
    patches = extract_patches(image, corners, 4)
    assert patches.shape == (2, 2, 4, 4)
    torch.testing.assert_close(patches[1], image[0, :, 3:7, 5:9])
