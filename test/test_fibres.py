"""Fibre-texture search (fide/prealign/fibres.py) on a nearly empty SHG: a few textured patches, nothing else."""

import math

import pytest
import torch
from conftest import FAST_CONFIG, similarity

from fide import geometry
from fide.config import FibreConfig, config_from_dict
from fide.pipeline import register_pair
from fide.prealign import fibres
from fide.preprocess.intensity import HE_STAINS

SIZE = 200
# lengths scale with the image side / 834: these give ~2-8 px bands at 200 px, where the test texture lives
SMALL = FibreConfig(
    size_px=SIZE,
    refine_size_px=SIZE,
    band_px=(6.0, 30.0),
    final_band_px=(4.0, 24.0),
    patch_smooth_px=12.0,
    patch_max_radius_px=400.0,
    angle_step_deg=6.0,
    scale_step=0.06,
)
TRUE_POSE = similarity(150.0, 1.1, SIZE, shift=(4.0, -6.0))


def _texture(size: int, seed: int) -> torch.Tensor:
    """(1, 1, H, W) fibre-like texture in [0, 1]: thresholded band-limited noise."""
    noise = torch.randn(1, 1, size, size, generator=torch.Generator().manual_seed(seed))
    smooth = fibres.band_pass(noise, 1.5, 6.0)
    return (smooth / smooth.std()).clamp(0, 3) / 3


@pytest.fixture(scope="module")
def sparse_pair():
    """Fixed: the moving texture, seen only inside seven disks (an "empty core"); moving: texture everywhere.

    Returns fixed (1, 1, H, W), moving (1, 1, H, W) and the true fixed-to-moving affine.
    """
    texture = _texture(SIZE, seed=4)
    seen_from_fixed = geometry.warp(texture, geometry.affine_to_disp(TRUE_POSE[None], (SIZE, SIZE)))
    grid = geometry.identity_grid((SIZE, SIZE))
    disks = torch.zeros(SIZE, SIZE)
    centres = [(70, 80), (120, 130), (80, 140), (135, 70), (100, 100), (55, 120), (145, 115)]
    for (ci, cj), radius in zip(centres, [20, 18, 14, 13, 11, 10, 10]):
        disks += ((grid[0] - ci) ** 2 + (grid[1] - cj) ** 2 < radius**2).float()
    return seen_from_fixed * disks, texture, TRUE_POSE


def test_similarity_grid_covers_the_circle_and_the_scales():
    linear = fibres.similarity_grid(0.8, 1.2, angle_step_deg=10.0, scale_step=0.05)
    scales = torch.linalg.det(linear).sqrt()
    assert linear.shape[0] == 36 * 9  # 0.8 * 1.05^8 = 1.18 <= 1.2
    assert torch.allclose(scales.min(), torch.tensor(0.8)) and float(scales.max()) <= 1.2
    angles = torch.atan2(linear[:, 1, 0], linear[:, 0, 0]).remainder(2 * math.pi)
    assert len(torch.unique(torch.round(torch.rad2deg(angles)))) == 36


def test_collagen_patches_come_largest_first_and_wide_ones_are_cut():
    grid = geometry.identity_grid((120, 120))
    image = torch.zeros(1, 1, 120, 120)
    for (ci, cj), radius in zip([(30, 30), (80, 80)], [10, 25]):
        image[0, 0] += ((grid[0] - ci) ** 2 + (grid[1] - cj) ** 2 < radius**2).float()
    patches = fibres.collagen_patches(image, count=5, smooth_px=1.0, max_radius=15.0)
    assert len(patches) == 2
    assert torch.allclose(patches[0].centre, torch.tensor([80.0, 80.0]), atol=0.5)
    assert patches[0].radius <= 15.0 and float(patches[0].mask.sum()) < math.pi * 26**2
    assert torch.allclose(patches[1].centre, torch.tensor([30.0, 30.0]), atol=0.5)


def test_fibre_search_finds_a_150_degree_turn_from_patches_alone(sparse_pair):
    fixed, moving, truth = sparse_pair
    match = fibres.fibre_search(fixed, moving, SMALL, scale_range=(0.9, 1.25))
    assert match is not None
    points = torch.tensor([[40.0, 40.0], [160.0, 60.0], [100.0, 100.0], [60.0, 160.0], [150.0, 150.0]])
    error = geometry.apply_affine_to_points(match.affine, points) - geometry.apply_affine_to_points(truth, points)
    assert float(error.norm(dim=1).max()) < 1.0, match.affine
    assert match.grid_score > 1.5 * match.runner_up  # the patches agree on one pose only


def test_texture_score_is_high_at_the_truth_only(sparse_pair):
    fixed, moving, truth = sparse_pair
    at_truth = fibres.texture_score(fixed, moving, truth, SMALL)
    off = truth @ similarity(8.0, 1.0, SIZE)
    assert at_truth > 0.8
    assert fibres.texture_score(fixed, moving, off, SMALL) < 0.5 * at_truth


def test_refine_on_patches_removes_a_small_error(sparse_pair):
    fixed, moving, truth = sparse_pair
    band = [fibres.band_pass(image, 1.0, 6.0) for image in (fixed, moving)]
    patches = fibres.collagen_patches(fixed, 4, 3.0, 100.0)
    start = truth @ similarity(1.0, 1.01, SIZE, shift=(1.0, -1.0))
    refined, score = fibres.refine_on_patches(*band, patches, start, iterations=60, learning_rate=0.1)
    points = torch.stack([patch.centre for patch in patches])  # the affine is only constrained where the patches are
    error = geometry.apply_affine_to_points(refined, points) - geometry.apply_affine_to_points(truth, points)
    before = geometry.apply_affine_to_points(start, points) - geometry.apply_affine_to_points(truth, points)
    assert float(error.norm(dim=1).max()) < 0.3 < 1.0 < float(before.norm(dim=1).max())
    assert score > 0.9


def test_locate_patches_finds_each_patch_near_a_rough_pose(sparse_pair):
    fixed, moving, truth = sparse_pair
    level = fibres._level(fixed, moving, SIZE, SMALL.band_px, 7, SMALL)
    rough = truth @ similarity(2.0, 1.02, SIZE, shift=(3.0, -2.0))
    centres, positions, peaks = fibres.locate_patches(level, rough, window_px=10)
    assert len(centres) == len(level.patches) >= 5 and bool((peaks > 0.5).all())
    error = positions - geometry.apply_affine_to_points(truth, centres)
    assert float(error.norm(dim=1).max()) <= 1.5


def test_an_unconfirmed_vote_gives_no_match(sparse_pair):
    """Patches of one texture against an unrelated texture: whatever wins the vote, the patches do not agree."""
    fixed, _, _ = sparse_pair
    assert fibres.fibre_search(fixed, _texture(SIZE, seed=9), SMALL, scale_range=(0.9, 1.25)) is None


def test_fewer_than_two_patches_give_no_match():
    fixed = torch.zeros(1, 1, SIZE, SIZE)
    fixed[0, 0, 90:110, 90:110] = _texture(20, seed=1)[0, 0] + 0.5
    assert fibres.fibre_search(fixed, _texture(SIZE, seed=2), SMALL, scale_range=(0.9, 1.1)) is None


def test_fallback_in_register_pair_recovers_an_empty_core(sparse_pair):
    """End to end: SHG of patches only, bright field from the same texture as eosin; the fallback is forced."""
    fixed, moving, truth = sparse_pair
    eosin = HE_STAINS[1] / HE_STAINS[1].norm()
    concentration = 0.15 + 0.6 * moving[0]  # (1, H, W): stroma stained everywhere, fibres darker
    rgb = 240 * torch.pow(10, -eosin.view(3, 1, 1) * concentration)
    shg = 1 + 120 * fixed[0]
    values = {**FAST_CONFIG, "optimise": {**FAST_CONFIG["optimise"], "quality_flag_below": 1.0}}
    values["fibres"] = {**SMALL.__dict__, "band_px": list(SMALL.band_px), "final_band_px": list(SMALL.final_band_px)}
    result = register_pair(shg, rgb, config_from_dict(values))
    assert "fibres" in result.stage_affines and "fibres" in result.seconds
    points = torch.tensor([[60.0, 60.0], [140.0, 140.0], [100.0, 100.0]])
    error = geometry.map_points(points, result.disp) - geometry.apply_affine_to_points(truth, points)
    assert float(error.norm(dim=1).max()) < 1.5
