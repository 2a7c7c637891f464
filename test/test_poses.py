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


def test_nudge_pose_moves_a_point_at_the_radius_by_each_parameter_in_pixels():
    """Zero moves give the pose itself; a shift moves every point by itself; turn, scale, stretch and shear move a
    point at ``radius`` from the centre by about their value in pixels (fixed frame, before the pose)."""
    from fide.geometry import nudge_pose

    pose = torch.tensor([[0.9, 0.2, 5.0], [-0.1, 1.1, -3.0], [0.0, 0.0, 1.0]])
    centre, radius = torch.tensor([50.0, 60.0]), 40.0
    assert torch.allclose(nudge_pose(pose, [0] * 6, centre, radius), pose)
    point = torch.tensor([90.0, 60.0, 1.0])  # radius below the centre along axis 0
    inverse = torch.linalg.inv(pose.double())

    def moved(moves):
        return (inverse @ nudge_pose(pose, moves, centre, radius).double() @ point.double())[:2] - point[:2].double()

    assert torch.allclose(moved([1.5, -2.0, 0, 0, 0, 0]), torch.tensor([1.5, -2.0], dtype=torch.float64), atol=1e-5)
    assert torch.allclose(moved([0, 0, 0.8, 0, 0, 0]), torch.tensor([-0.008, 0.8], dtype=torch.float64), atol=2e-3)
    assert torch.allclose(moved([0, 0, 0, 0.5, 0, 0]), torch.tensor([0.5, 0.0], dtype=torch.float64), atol=1e-5)
    assert torch.allclose(moved([0, 0, 0, 0, 0.5, 0]), torch.tensor([0.5, 0.0], dtype=torch.float64), atol=1e-5)
    assert torch.allclose(moved([0, 0, 0, 0, 0, 0.5]), torch.tensor([0.0, 0.5], dtype=torch.float64), atol=1e-5)
