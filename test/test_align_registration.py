"""fide.register on numpy arrays: the pose, point mapping both ways, warping, and pixel sizes at 2:1."""

import numpy as np
import pytest
import torch
from conftest import FAST_CONFIG, blob_pair, move, similarity

import fide
from fide import geometry

SIZE = 128
POINTS = np.array([[40.0, 50.0], [80.0, 70.0], [64.0, 64.0], [50.0, 90.0], [85.0, 45.0]])  # fixed (x, y)


@pytest.fixture(scope="module")
def case():
    """Fixed SHG (rows, columns) and moving RGB (rows, columns, 3) uint8 arrays, and the true (x, y) pose."""
    shg, bf = blob_pair(SIZE, seed=3)
    truth = similarity(20.0, 1.0, SIZE, shift=(3.0, -2.0)).double()  # fide array order = (x, y) here
    moving = move(bf, truth.float(), 242.0)
    fixed_rc = shg[0].numpy().T.round().astype(np.uint8)
    moving_rc = moving.permute(2, 1, 0).numpy().round().astype(np.uint8)
    true_moving = geometry.apply_affine_to_points(truth, torch.from_numpy(POINTS)).numpy()
    return fixed_rc, moving_rc, truth, true_moving


@pytest.fixture(scope="module")
def registration(case):
    return fide.register(case[0], case[1], FAST_CONFIG, working_px=SIZE)


def _tre(estimate, truth):
    return float(np.linalg.norm(estimate - truth, axis=1).mean())


def test_numpy_arrays_register_and_points_map_both_ways(case, registration):
    _, _, _, true_moving = case
    assert _tre(registration.warp_points(POINTS), true_moving) < 1.0
    assert np.allclose(registration.affine[2], [0, 0, 1]) and not registration.mirrored and not registration.deformable
    back = registration.warp_points(registration.warp_points(POINTS), inverse=True)
    assert np.abs(back - POINTS).max() < 1e-9
    assert "quality" in registration.summary()
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        registration.warp_points(np.zeros((3, 3)))


def test_warp_samples_the_moving_image_where_warp_points_says(case, registration):
    """Warping a coordinate ramp of the moving grid returns, at fixed (x, y), the moving (x, y) of warp_points."""
    rows, cols = case[1].shape[:2]
    ramp = np.stack(np.meshgrid(np.arange(cols), np.arange(rows)), -1).astype(np.float32)  # (rows, cols, 2) = (x, y)
    ramp = np.concatenate([ramp, np.zeros((rows, cols, 1), np.float32)], -1)  # 3 channels
    warped = registration.warp(ramp)
    assert warped.shape == (SIZE, SIZE, 3) and warped.dtype == np.float32
    mapped = registration.warp_points(POINTS)
    for (x, y), expected in zip(POINTS.astype(int), mapped):
        assert np.abs(warped[y, x, :2] - expected).max() < 1e-3
    default = registration.warp()  # the moving image itself, its dtype
    assert default.shape == (SIZE, SIZE, 3) and default.dtype == np.uint8
    with pytest.raises(ValueError, match="size"):
        registration.warp(np.zeros((10, 10)))


def test_two_to_one_pixel_sizes_register_as_well_as_one_to_one(case, registration):
    """The bright field at twice the pixel size (2 x 2 block means) registers to the same TRE (full-size pixels)."""
    fixed_rc, moving_rc, _, true_moving = case
    half = moving_rc.astype(np.float32).reshape(SIZE // 2, 2, SIZE // 2, 2, 3).mean((1, 3)).round().astype(np.uint8)
    reg = fide.register(fixed_rc, half, FAST_CONFIG, working_px=SIZE, fixed_pixel_size=1.0, moving_pixel_size=2.0)
    on_full_grid = (reg.warp_points(POINTS) + 0.5) * 2 - 0.5  # half-grid pixel -> full-grid pixel (block centres)
    tre_half, tre_full = _tre(on_full_grid, true_moving), _tre(registration.warp_points(POINTS), true_moving)
    assert tre_half < 1.0 and abs(tre_half - tre_full) < 0.5, (tre_half, tre_full)
    assert abs(np.linalg.det(reg.affine[:2, :2]) - 0.25) < 0.02  # the known 2:1 scale is in the pixel affine


def test_deformable_option_runs_through_the_api(case):
    """With the residual on, the API still registers (the residual is kept only if it raises the NMI; its point
    maps and inverse are tested on a known field in test_align_export)."""
    cfg = {**FAST_CONFIG, "deformable": {"enabled": True, "iterations": 5}}
    reg = fide.register(case[0], case[1], cfg, working_px=SIZE)
    assert _tre(reg.warp_points(POINTS), case[3]) < 1.5
