"""Keypoints, descriptors and guided mutual matching (the pre-alignment's front end)."""

import torch
from conftest import blob_pair

from fide.prealign.keypoints import describe, detect_keypoints, match_mutual


def test_describe_zero_points_gives_an_empty_table():
    features = torch.rand(1, 3, 32, 32)
    desc = describe(features, torch.zeros(0, 2), radius=2)
    assert desc.shape == (0, 3 * 25)


def test_detect_keypoints_respects_the_mask_and_count():
    shg, _ = blob_pair(96, seed=1)
    image = torch.log1p(shg)[None] / 6
    mask = torch.zeros(1, 1, 96, 96, dtype=torch.bool)
    mask[..., 20:70, 20:70] = True
    points = detect_keypoints(image, mask, num=30, nms_radius=3)
    assert 0 < len(points) <= 30
    assert bool(((points >= 20) & (points < 70)).all())
    assert len(detect_keypoints(image, torch.zeros_like(mask), num=30)) == 0


def test_mutual_matching_pairs_identical_points_and_respects_the_radius():
    shg, _ = blob_pair(96, seed=2)
    features = torch.log1p(shg)[None] / 6
    points = detect_keypoints(features, torch.ones(1, 1, 96, 96, dtype=torch.bool), num=40)
    desc = describe(features, points)
    fixed_index, moving_index = match_mutual(points, desc, points, desc, radius_px=4.0)
    assert len(fixed_index) >= 0.9 * len(points)
    assert torch.equal(fixed_index, moving_index)
    far = points + 50.0  # every candidate partner is out of the search radius
    fixed_index, _ = match_mutual(points, desc, far, desc, radius_px=4.0)
    assert len(fixed_index) == 0
