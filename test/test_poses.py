"""fide.geometry.poses: the one rule for "the same pose"."""

import math

import torch

from fide import geometry
from fide.geometry.poses import corner_positions, distinct_poses, same_pose

SHAPE = (100, 200)


def _pose(angle_deg: float = 0.0, shift=(0.0, 0.0), scale: float = 1.0, mirror: bool = False) -> torch.Tensor:
    centre = torch.tensor([49.5, 99.5])
    affine = geometry.similarity_matrix(
        torch.tensor([math.radians(angle_deg)]), torch.tensor([scale]), centre, centre, torch.tensor([mirror])
    )[0]
    affine[:2, 2] += torch.tensor(shift)
    return affine


def test_corner_positions_are_where_the_affine_maps_the_corners():
    affine = _pose(30.0, (3.0, -7.0), 1.2)
    corners = torch.tensor([[0.0, 0.0], [0.0, 199.0], [99.0, 0.0], [99.0, 199.0]])
    expected = geometry.apply_affine_to_points(affine, corners).double()
    assert torch.allclose(corner_positions(affine, SHAPE), expected, atol=1e-4)
    assert corner_positions(torch.stack([affine, affine]), SHAPE).shape == (2, 4, 2)


def test_same_pose_is_a_distance_at_the_corners_relative_to_the_side():
    base = _pose()
    assert same_pose(base, _pose(shift=(0.0, 7.9)), SHAPE, 0.04)  # 7.9 px < 0.04 x 200
    assert not same_pose(base, _pose(shift=(0.0, 8.1)), SHAPE, 0.04)
    assert not same_pose(base, _pose(angle_deg=5.0), SHAPE, 0.04)  # a corner moves ~9.7 px
    assert same_pose(base, _pose(angle_deg=5.0), SHAPE, 0.05)
    assert not same_pose(base, _pose(scale=1.1), SHAPE, 0.04)  # a corner moves ~11 px
    assert not same_pose(base, _pose(mirror=True), SHAPE, 0.4)  # a mirror moves corners across the image


def test_distinct_poses_keep_the_first_of_each_basin_in_order():
    poses = [_pose(), _pose(shift=(1.0, 0.0)), _pose(angle_deg=90.0), _pose(angle_deg=91.0), _pose(mirror=True)]
    assert distinct_poses(poses, SHAPE, 0.04) == [0, 2, 4]
    assert distinct_poses(torch.stack(poses), SHAPE, 0.04) == [0, 2, 4]  # a stacked tensor reads the same
    assert distinct_poses(poses, SHAPE, 0.04, limit=2) == [0, 2]
    assert distinct_poses(poses, SHAPE, 0.04, known=[_pose(angle_deg=90.5)]) == [0, 4]
    assert distinct_poses([], SHAPE, 0.04) == []
