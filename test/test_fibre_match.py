"""Patch templates against a texture (fide/prealign/fibre_match.py): grids, patches, votes, per-patch positions."""

import math

import pytest
import torch
from conftest import empty_core_pair, similarity

from fide import geometry
from fide.prealign import fibre_match

SIZE = 200
TRUE_POSE = similarity(150.0, 1.1, SIZE, shift=(4.0, -6.0))


@pytest.fixture(scope="module")
def bands():
    """Band-passed fixed and moving images of the empty-core pair, and its patches."""
    fixed, moving = empty_core_pair(SIZE, TRUE_POSE)
    fixed_band, moving_band = (fibre_match.band_pass(image, 1.4, 7.0) for image in (fixed, moving))
    return fixed_band, moving_band, fibre_match.collagen_patches(fixed, 7, 3.0, 100.0)


def test_similarity_grid_covers_the_circle_and_the_scales():
    linear = fibre_match.similarity_grid(0.8, 1.2, angle_step_deg=10.0, scale_step=0.05)
    scales = torch.linalg.det(linear).sqrt().view(36, 8)  # angle-major
    assert torch.allclose(scales, (1.05 ** torch.arange(-4.0, 4.0)).expand(36, 8), atol=1e-5)  # 0.823 ... 1.158
    one = fibre_match.similarity_grid(1.01, 1.02, angle_step_deg=90.0, scale_step=0.05)  # no lattice point inside
    assert torch.allclose(torch.linalg.det(one).sqrt(), torch.tensor((1.01 * 1.02) ** 0.5))
    angles = torch.atan2(linear[:, 1, 0], linear[:, 0, 0]).remainder(2 * math.pi)
    assert len(torch.unique(torch.round(torch.rad2deg(angles)))) == 36


def test_collagen_patches_come_largest_first_and_wide_ones_are_cut():
    grid = geometry.identity_grid((120, 120))
    image = torch.zeros(1, 1, 120, 120)
    for (ci, cj), radius in zip([(30, 30), (80, 80)], [10, 25]):
        image[0, 0] += ((grid[0] - ci) ** 2 + (grid[1] - cj) ** 2 < radius**2).float()
    patches = fibre_match.collagen_patches(image, count=5, smooth_px=1.0, max_radius=15.0)
    assert len(patches) == 2
    assert torch.allclose(patches[0].centre, torch.tensor([80.0, 80.0]), atol=0.5)
    assert patches[0].radius <= 15.0 and float(patches[0].mask.sum()) < math.pi * 26**2
    assert torch.allclose(patches[1].centre, torch.tensor([30.0, 30.0]), atol=0.5)


def test_patches_vote_for_the_true_pose_at_its_position(bands):
    fixed_band, moving_band, patches = bands
    wrong = similarity(90.0, 1.1, SIZE)[:2, :2]
    linear = torch.stack([TRUE_POSE[:2, :2], wrong])
    both, reference = fibre_match.patch_consensus(
        fixed_band, moving_band, patches, linear, pool_px=1, votes=("median", "mean")
    )
    assert both.shape == (2, 2, *moving_band.shape[-2:])
    expected = geometry.apply_affine_to_points(TRUE_POSE, reference[None])[0]
    for votes in both:  # the median and the mean of the patches
        best = int(votes[0].argmax())
        found = torch.tensor([best // votes.shape[-1], best % votes.shape[-1]], dtype=torch.float32)
        assert float((found - expected).norm()) <= 1.5
        assert float(votes[0].max()) > max(0.6, 1.5 * float(votes[1].max()))


def test_votes_of_one_patch_agree_and_unknown_votes_are_refused(bands):
    fixed_band, moving_band, patches = bands
    linear = TRUE_POSE[None, :2, :2]
    both, _ = fibre_match.patch_consensus(fixed_band, moving_band, patches[:1], linear, 1, votes=("median", "mean"))
    assert torch.equal(both[0], both[1])  # one patch: median and mean are its own correlation
    with pytest.raises(ValueError, match="votes"):
        fibre_match.patch_consensus(fixed_band, moving_band, patches, linear, 1, votes=("max",))


def test_locate_patches_finds_each_patch_near_a_rough_pose(bands):
    fixed_band, moving_band, patches = bands
    rough = TRUE_POSE @ similarity(2.0, 1.02, SIZE, shift=(3.0, -2.0))
    centres, positions, peaks = fibre_match.locate_patches(fixed_band, moving_band, patches, rough, window_px=10)
    assert len(centres) == len(patches) >= 5 and bool((peaks > 0.5).all())
    error = positions - geometry.apply_affine_to_points(TRUE_POSE, centres)
    assert float(error.norm(dim=1).max()) <= 1.5


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_median_of_patches_matches_torch(count):
    stack = torch.randn(count, 2, 5, 7, generator=torch.Generator().manual_seed(count))
    assert torch.equal(fibre_match._median(stack), stack.median(0).values)


@pytest.mark.parametrize("box", [15, 31])
def test_patch_ncc_is_the_direct_masked_correlation_at_every_centre_edges_included(box):
    """The circular FFT correlation pads the moving image by half a box only: centres on the edges must still read
    zeros beyond the image, never its far side."""
    generator = torch.Generator().manual_seed(box)
    fixed_band, moving_band = (
        torch.randn(1, 1, 48, 48, generator=generator),
        torch.randn(1, 1, 37, 44, generator=generator),
    )
    grid = geometry.identity_grid((48, 48))
    mask = (((grid[0] - 20) ** 2 + (grid[1] - 22) ** 2) <= 36).float()
    patch = fibre_match.Patch(mask, torch.tensor([20.0, 22.0]), 6.0)
    spectra = fibre_match.MovingSpectra(moving_band, box)
    assert spectra.box >= box and spectra.box % 2 == 1
    assert all(c < n + box for c, n in zip(spectra.canvas, moving_band.shape[-2:]))  # less than linear padding
    ncc = fibre_match._patch_ncc(fixed_band, patch, torch.eye(2)[None], spectra)[0]

    offsets = torch.nonzero(mask) - torch.tensor([20, 22])  # the template's pixels (identity pose: no resampling)
    values = fixed_band[0, 0][mask > 0]
    template = (values - values.mean()) / (values - values.mean()).norm()
    radius = round(math.sqrt(len(values) / math.pi))
    disk = [
        (di, dj)
        for di in range(-radius, radius + 1)
        for dj in range(-radius, radius + 1)
        if di * di + dj * dj <= radius**2
    ]
    padded = torch.nn.functional.pad(moving_band[0, 0], (box, box, box, box))  # zeros beyond the image
    squared = moving_band[0, 0] ** 2
    floor = 0.5 * float(squared[squared > 1e-8].mean())
    for i in range(moving_band.shape[-2]):
        for j in range(moving_band.shape[-1]):
            read = padded[offsets[:, 0] + i + box, offsets[:, 1] + j + box]
            energy = sum(float(padded[i + box + di, j + box + dj] ** 2) for di, dj in disk) / len(disk)
            direct = float(template @ read) / math.sqrt(len(values)) / math.sqrt(max(energy, floor))
            assert ncc[i, j] == pytest.approx(direct, abs=1e-4), (i, j)
