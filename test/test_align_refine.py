"""fide.align.refine: coarse-to-fine refinement to full resolution, its verdict, its composite transform.tfm."""

from __future__ import annotations

import types

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from fide import geometry
from fide.align import open_source
from fide.align.export import physical_transform, pixel_map_of
from fide.align.refine import _precision_weights, _robust_fit, ladder, refine
from fide.align.source import working_image
from fide.synth import make_pair

_SIZE = 1536  # synthetic pair side: working size 256 px leaves three levels (x4, x2, x1)
_WORKING = (256, 256)


def _error(affine: np.ndarray) -> np.ndarray:
    """Fixed → moving affine error: 3 px shift, 0.3 degrees about the centre, 0.4 % scale."""
    angle = np.deg2rad(0.3)
    centre = (_SIZE - 1) / 2
    error = np.eye(3)
    error[:2, :2] = 1.004 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    error[:2, 2] = np.array([3.0, -2.0]) + centre - error[:2, :2] @ np.array([centre, centre])
    return affine @ error


@pytest.fixture(scope="module")
def pair():
    """An exactly affine synthetic pair (no smooth warp), its sources and a working-size affine 3 px off."""
    made = make_pair("val", 1, _SIZE, 0, warp_px=0.0)
    fixed = open_source(made["fixed"][0].T, None, "fixed")  # fide (x, y) arrays -> (row, column) pictures
    moving = open_source(np.transpose(made["moving"], (2, 1, 0)), None, "moving")
    work = working_image(fixed, _WORKING)
    truth = made["misalignment"].affine
    return fixed, moving, work, truth, _error(truth), made["fixed_points"]


@pytest.fixture(scope="module")
def refined(pair):
    fixed, moving, work, _, start, _ = pair
    return refine(fixed, moving, start, work.pixels, work.to_working, seed=3)


def _mean_error(affine: np.ndarray, truth: np.ndarray, points: np.ndarray) -> float:
    moved = points @ affine[:2, :2].T + affine[:2, 2]
    return float(np.linalg.norm(moved - (points @ truth[:2, :2].T + truth[:2, 2]), axis=1).mean())


def test_ladder_runs_from_the_working_pixel_to_the_full_resolution_one():
    assert ladder((16384, 16384), 19.6) == [16, 8, 4, 2, 1]
    assert ladder((4096, 4096), 4.9) == [4, 2, 1]
    assert ladder((834, 834), 1.0) == []


def test_the_fit_to_the_same_matches_on_a_larger_image_scales_with_it():
    """Matches of an affine plus a smooth warp on a 4097 px image, and the same matches on one 4 times larger
    (positions, displacements and level RMS x 4): the same inliers, and the local correction 4 times larger, so its
    smoothing does not depend on the pixel count (with weights in the image's own pixels it was 16 times
    stronger at the larger size: ~11 px off here)."""
    rng = np.random.default_rng(0)
    centres = torch.from_numpy(rng.uniform(200, 3900, (40, 2)))
    warp = torch.stack([6 * torch.sin(centres[:, 1] / 900), 5 * torch.cos(centres[:, 0] / 700)], 1)
    linear = torch.tensor([[1.01, 0.02], [-0.01, 0.99]], dtype=torch.float64)
    targets = centres @ linear.T + warp + torch.from_numpy(rng.normal(0, 1, (40, 2)))
    weights = torch.from_numpy(rng.uniform(0.3, 1.0, 40))
    small, large = (4097, 4097), (16385, 16385)  # n - 1 scales by 4: the correction's grid nodes too
    _, field, inliers, _ = _robust_fit(centres, targets, _precision_weights(weights, 1.8, small), small, 1)
    _, field4, inliers4, _ = _robust_fit(4 * centres, 4 * targets, _precision_weights(weights, 7.2, large), large, 1)
    assert torch.equal(inliers, inliers4) and float(field.abs().max()) > 3.0
    torch.testing.assert_close(field4, 4 * field, rtol=0, atol=1e-6)


def test_refinement_reduces_a_known_affine_error_below_half_a_pixel(pair, refined):
    _, _, _, truth, start, points = pair
    before = _mean_error(start, truth, points)
    after = _mean_error(refined.affine, truth, points)
    assert before > 3.0
    assert refined.kept, refined.reason
    assert after < 0.5, (before, after, refined.levels)
    assert [level["factor"] for level in refined.levels] == [4, 4, 2, 1]  # a tracking pass, then the ladder


def test_refinement_is_deterministic_with_the_seed(pair, refined):
    fixed, moving, work, _, start, _ = pair
    again = refine(fixed, moving, start, work.pixels, work.to_working, seed=3)
    # the same patches, matches and fit; the solvers' summation order may differ in the last bits
    np.testing.assert_allclose(again.affine, refined.affine, rtol=0, atol=1e-9)
    torch.testing.assert_close(again.field, refined.field, rtol=0, atol=1e-6)
    assert again.levels == refined.levels


def test_a_pair_without_matching_structure_keeps_the_working_affine():
    rng = np.random.default_rng(0)
    fixed = open_source(rng.integers(0, 255, (1024, 1024), dtype=np.uint8), None, "fixed")
    moving = open_source(rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8), None, "moving")
    work = working_image(fixed, (200, 200))
    start = np.array([[1.0, 0.0, 5.0], [0.0, 1.0, -3.0], [0.0, 0.0, 1.0]])
    result = refine(fixed, moving, start, work.pixels, work.to_working, seed=0)
    assert not result.kept
    assert result.reason.startswith("not refined"), result.reason
    np.testing.assert_array_equal(result.affine, start)
    assert result.pixel_map().field is None


def test_the_composite_transform_resamples_like_the_refined_map(pair, refined):
    """transform.tfm = [affine, displacement field]: SimpleITK's TransformPoint and fide's reading of the file
    both give the points of the refined map A (p + u(p)), in each file's physical frame."""
    fixed, moving, _, _, _, points = pair
    field = refined.field.clone()
    field[:, 0] += torch.linspace(-2.0, 2.0, field.shape[2]).view(1, -1, 1)  # a local correction that shows
    local = types.SimpleNamespace(**{**vars(refined), "field": field})
    forward = type(refined).pixel_map(local, True)
    reg = types.SimpleNamespace(fixed=fixed, moving=moving, affine=refined.affine, deformable=True, forward=forward)
    transform, _, _ = physical_transform(reg)
    assert isinstance(transform, sitk.CompositeTransform) and transform.GetNumberOfTransforms() == 2
    path = "refined.tfm"
    sitk.WriteTransform(transform, path)
    read = sitk.ReadTransform(path)
    expected = forward(torch.from_numpy(points)).numpy()
    to_fixed, to_moving = (geometry.index_to_physical(s.frame) for s in (fixed, moving))
    physical = geometry.apply_affine_to_points(to_fixed, torch.from_numpy(points)).numpy()
    through_itk = np.array([read.TransformPoint(tuple(p)) for p in physical])
    back = geometry.apply_affine_to_points(torch.linalg.inv(to_moving), torch.from_numpy(through_itk)).numpy()
    np.testing.assert_allclose(back, expected, atol=0.02)
    mapped = pixel_map_of(read, fixed.frame, moving.frame)(torch.from_numpy(points)).numpy()
    np.testing.assert_allclose(mapped, expected, atol=0.02)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_register_refines_by_default_and_saves_the_local_correction(pair, tmp_path):
    """fide.register: refinement on by default (affine), ``refine.local`` adds the field; the saved folder's
    transform.tfm gives back the same points, and transform.json says what the refinement did."""
    import fide

    fixed, moving, _, truth, _, points = pair
    arrays = fixed.array.transpose(1, 0, 2), moving.array.transpose(1, 0, 2)  # back to (row, column, C)
    reg = fide.register(*arrays, {"refine": {"local": True}}, working_px=256, encoders=None)
    assert reg.refinement["kept"] and reg.refinement["local"] and reg.deformable, reg.refinement
    assert _mean_error(reg.affine, truth, points) < 1.0
    folder = reg.save(tmp_path / "out", qc=False)["json"].parent
    loaded = fide.load(folder)
    assert loaded.description["refinement"]["kept"] and loaded.deformable
    np.testing.assert_allclose(loaded.warp_points(points), reg.warp_points(points), atol=0.02)
    off = fide.register(*arrays, {"refine": {"enabled": False}}, working_px=256, encoders=None)
    assert off.refinement is None and not off.deformable
