"""fide.warp_points and ``fide warp-points``: forward through the written field, inverse by iteration."""

import math

import numpy as np
import pytest
import torch

from fide import geometry
from fide.cli.main import main
from fide.io import load_dataset, read_landmark_pair, read_landmarks, write_disp, write_landmarks
from fide.synth import make_task
from fide.warp_points import warp_points


def _affine(angle_deg=25.0, scale=1.1, shift=(3.0, -5.0), size=64):
    centre = torch.tensor([(size - 1) / 2, (size - 1) / 2])
    return geometry.similarity_matrix(
        torch.tensor([math.radians(angle_deg)]), torch.tensor([scale]), centre, centre + torch.tensor(shift)
    )[0].double()


@pytest.fixture(scope="module")
def synth_task(tmp_path_factory):
    return load_dataset(make_task(tmp_path_factory.mktemp("task"), 1, 96, seed=4))


def test_affine_field_maps_points_like_the_affine(tmp_path):
    affine = _affine()
    path = write_disp(tmp_path / "disp_0001_0001.nii.gz", geometry.affine_to_disp(affine[None].float(), (64, 64)))
    points = np.random.default_rng(0).uniform(0, 63, (40, 2))
    expected = geometry.apply_affine_to_points(affine, torch.from_numpy(points)).numpy()
    np.testing.assert_allclose(warp_points(points, path), expected, atol=1e-3)  # float32 on disk
    np.testing.assert_allclose(warp_points(expected, path, inverse=True), points, atol=1e-3)


def test_inverse_of_a_deformable_field_round_trips():
    grid = geometry.identity_grid((80, 80)).double()
    bump = torch.stack([2.0 * torch.sin(grid[1] / 9), 1.5 * torch.cos(grid[0] / 11)])
    field = geometry.affine_to_disp(_affine(40.0, 0.9, (2.0, 1.0), 80)[None], (80, 80)) + bump[None]
    points = np.random.default_rng(1).uniform(5, 75, (30, 2))
    moving = warp_points(points, field)
    np.testing.assert_allclose(warp_points(moving, field, inverse=True), points, atol=1e-4)


def test_ground_truth_field_takes_fixed_landmarks_onto_moving_ones(synth_task):
    pair = synth_task.split("val")[0]
    field = synth_task.root / "groundtruth" / pair.disp_name
    fixed, moving = read_landmark_pair(*pair.landmarks())
    assert np.abs(warp_points(fixed, field) - moving).max() < 0.05
    assert np.abs(warp_points(moving, field, inverse=True) - fixed).max() < 0.05


def test_bad_points_shape_is_a_value_error():
    with pytest.raises(ValueError, match=r"points must have shape \(N, 2\)"):
        warp_points(np.zeros((3, 3)), torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match=r"disp must have shape"):
        warp_points(np.zeros((3, 2)), torch.zeros(3, 8, 8))


def test_empty_point_list():
    assert warp_points(np.zeros((0, 2)), torch.zeros(2, 8, 8), inverse=True).shape == (0, 2)


def test_cli_forward_and_inverse(synth_task, tmp_path):
    pair = synth_task.split("val")[0]
    field = synth_task.root / "groundtruth" / pair.disp_name
    fixed_csv, moving_csv = pair.landmarks()
    assert main(["warp-points", str(field), str(fixed_csv), "--out", str(tmp_path / "f2m.csv")]) == 0
    np.testing.assert_allclose(read_landmarks(tmp_path / "f2m.csv"), read_landmarks(moving_csv), atol=0.05)
    assert main(["warp-points", str(field), str(moving_csv), "-o", str(tmp_path / "m2f.csv"), "--inverse"]) == 0
    np.testing.assert_allclose(read_landmarks(tmp_path / "m2f.csv"), read_landmarks(fixed_csv), atol=0.05)


def test_cli_missing_field_is_exit_2(tmp_path):
    write_landmarks(tmp_path / "p.csv", np.zeros((2, 2)))
    assert main(["warp-points", str(tmp_path / "nope.nii.gz"), str(tmp_path / "p.csv"), "-o", "x.csv"]) == 2
