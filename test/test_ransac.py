"""RANSAC affine from matches with half of them outliers."""

import torch

from fide.prealign.ransac import fit_affine_points, minimal_samples, ransac_affine


def test_ransac_recovers_affine_with_half_outliers():
    generator = torch.Generator().manual_seed(1)
    src = torch.rand(120, 2, generator=generator) * 200
    truth = torch.tensor([[1.1, 0.2, 5.0], [-0.1, 0.9, -3.0], [0.0, 0.0, 1.0]])
    dst = src @ truth[:2, :2].T + truth[:2, 2] + 0.2 * torch.randn(120, 2, generator=generator)
    dst[:60] = torch.rand(60, 2, generator=generator) * 200  # 50 % outliers
    affine, inliers = ransac_affine(src, dst, threshold_px=1.5, iterations=500, seed=0)
    assert (affine - truth).abs().max() < 0.05 * truth.abs().max()
    assert inliers[60:].float().mean() > 0.9 and inliers[:60].float().mean() < 0.1


def test_ransac_is_deterministic_for_a_seed():
    generator = torch.Generator().manual_seed(2)
    src, dst = torch.rand(30, 2, generator=generator), torch.rand(30, 2, generator=generator)
    first = ransac_affine(src, dst, threshold_px=0.1, seed=5)
    second = ransac_affine(src, dst, threshold_px=0.1, seed=5)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_too_few_matches_give_identity_and_no_inliers():
    affine, inliers = ransac_affine(torch.zeros(2, 2), torch.ones(2, 2), threshold_px=1.0)
    assert torch.equal(affine, torch.eye(3)) and not inliers.any()


def test_weighted_least_squares_ignores_zero_weight_points():
    src = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    dst = src + torch.tensor([2.0, 3.0])
    dst[3] = torch.tensor([100.0, -100.0])
    affine = fit_affine_points(src, dst, torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert torch.allclose(affine[:2, 2], torch.tensor([2.0, 3.0]), atol=1e-4)
    assert torch.allclose(affine[:2, :2], torch.eye(2), atol=1e-4)


def test_minimal_samples_are_distinct_uniform_triples():
    samples = minimal_samples(10, 6000, seed=3)
    assert samples.shape == (6000, 3)
    assert all(len(set(row)) == 3 for row in samples.tolist())
    counts = torch.bincount(samples.flatten(), minlength=10).float()
    assert (counts / counts.mean() - 1).abs().max() < 0.05  # each point in 3/10 of the samples
    assert torch.equal(samples, minimal_samples(10, 6000, seed=3))
