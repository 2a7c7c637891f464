"""Coordinate conventions: round trips that fail if two axes are swapped or a sign flips."""

import math

import pytest
import SimpleITK as sitk
import torch

from fide import geometry


def _ramp(height=20, width=30):
    grid = geometry.identity_grid((height, width))
    return torch.stack([grid[0], grid[1] * 10])[None]  # channel 0 = i, channel 1 = 10 j


def test_identity_grid_is_array_order():
    grid = geometry.identity_grid((3, 5))
    assert grid.shape == (2, 3, 5)
    assert grid[0, 2, 4] == 2 and grid[1, 2, 4] == 4


def test_shared_grids_equal_fresh_ones_per_shape_dtype_and_size():
    for shape, dtype in [((3, 5), torch.float32), ((3, 5), torch.float64), ((5, 3), torch.float32)]:
        like = torch.zeros((), dtype=dtype)
        shared = geometry._grid(shape, like)
        assert shared.dtype == dtype and torch.equal(shared, geometry.identity_grid(shape, like=like))
        assert geometry._grid(shape, like) is shared  # built once
    big = (geometry._CACHED_GRID_PIXELS // 2 + 1, 2)
    assert geometry._grid(big, torch.zeros(())) is not geometry._grid(big, torch.zeros(()))  # too big to keep


def test_overlap_mask_is_where_a_warped_image_of_ones_stays_above_0_99():
    """The mask is computed without sampling; it must equal bilinear sampling of ones, edges and corners included."""
    generator = torch.Generator().manual_seed(0)
    for height, width in [(7, 12), (30, 9), (2, 5)]:
        disp = (torch.rand(2, 2, 25, 21, generator=generator) - 0.5) * 3 * max(height, width)
        # rows 0-4 of the first field map 0, 0.005, 0.02, 0.5 and 1.5 px above the moving image, columns inside it
        disp[0, 0, :5, :5] = -geometry.identity_grid((5, 5))[0] - torch.tensor([0.0, 0.005, 0.02, 0.5, 1.5]).view(5, 1)
        disp[0, 1, :5, :5] = 0.0
        ones = torch.ones(2, 1, height, width)
        expected = (geometry.warp(ones, disp) > 0.99).float()
        mask = geometry.overlap_mask(torch.zeros(1, 3, height, width), disp)
        assert mask.shape == (2, 1, 25, 21) and torch.equal(mask, expected)
        assert 0 < float(mask.mean()) < 1
    assert mask[0, 0, 1, 0] == 1 and mask[0, 0, 2, 0] == 0  # 0.005 px beyond the edge is inside, 0.02 px is not


def test_warp_constant_shift_samples_at_p_plus_u():
    image = _ramp()
    disp = torch.zeros(1, 2, 20, 30)
    disp[:, 0] = 2.0  # +2 along axis 0
    disp[:, 1] = -3.0  # -3 along axis 1
    warped = geometry.warp(image, disp)
    # moving(p + u): channel 0 reads i + 2, channel 1 reads 10 (j - 3)
    assert torch.allclose(warped[0, 0, 5, 10], torch.tensor(7.0))
    assert torch.allclose(warped[0, 1, 5, 10], torch.tensor(70.0))


def test_warp_moving_of_other_size_uses_its_own_grid():
    moving = _ramp(40, 50)
    disp = torch.zeros(1, 2, 10, 12)
    disp[:, 0], disp[:, 1] = 20.0, 30.0
    warped = geometry.warp(moving, disp)
    assert torch.allclose(warped[0, 0, 1, 2], torch.tensor(21.0), atol=1e-4)
    assert torch.allclose(warped[0, 1, 1, 2], torch.tensor(320.0), atol=1e-3)


def test_affine_to_disp_matches_point_mapping():
    affine = torch.tensor([[[0.9, 0.2, 3.0], [-0.1, 1.1, -2.0], [0, 0, 1]]])
    disp = geometry.affine_to_disp(affine, (15, 25))
    points = torch.tensor([[4.0, 7.0], [10.0, 20.0]])
    expected = geometry.apply_affine_to_points(affine[0], points)
    assert torch.allclose(geometry.map_points(points, disp), expected, atol=1e-5)
    # explicit: axis-0 component of A @ [4, 7, 1]
    assert math.isclose(float(expected[0, 0]), 0.9 * 4 + 0.2 * 7 + 3.0, rel_tol=1e-6)


def test_fit_affine_recovers_affine_and_respects_weights():
    affine = torch.tensor([[[1.05, -0.2, 4.0], [0.15, 0.95, -6.0], [0, 0, 1]]])
    disp = geometry.affine_to_disp(affine, (40, 60))
    assert torch.allclose(geometry.fit_affine(disp), affine, atol=1e-3)
    corrupted = disp.clone()
    corrupted[:, :, :, 30:] += 25.0  # garbage outside the fidelity region
    weight = torch.zeros(1, 1, 40, 60)
    weight[..., :30] = 1
    assert torch.allclose(geometry.fit_affine(corrupted, weight), affine, atol=1e-3)


def test_one_affine_fit_serves_a_batch_of_fields_and_passes_gradients():
    """AffineFit solves one mask's normal equations once; each field's affine must equal its own weighted fit."""
    generator = torch.Generator().manual_seed(3)
    affines = torch.eye(3).repeat(3, 1, 1)
    affines[:, :2] += torch.randn(3, 2, 3, generator=generator) * torch.tensor([0.1, 0.1, 5.0])
    weight = (torch.rand(1, 1, 30, 44, generator=generator) > 0.5).float()
    disp = geometry.affine_to_disp(affines, (30, 44)) + torch.randn(3, 2, 30, 44, generator=generator) * 0.1
    disp[:, :, weight[0, 0] == 0] += 40.0  # outside the mask: must not count
    fit = geometry.AffineFit(weight)
    fitted = fit(disp.requires_grad_(True))
    assert torch.allclose(fitted, geometry.fit_affine(disp, weight.expand(3, -1, -1, -1)), atol=1e-4)
    assert torch.allclose(fitted, affines, atol=0.05)
    fitted[:, :2, 2].sum().backward()
    assert float(disp.grad[:, :, weight[0, 0] == 0].abs().max()) == 0 and float(disp.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="does not match"):
        fit(torch.zeros(3, 2, 30, 40))


def test_compose_equals_sequential_warping():
    # a coordinate ramp is reproduced exactly by bilinear warping, so sequential warping is an exact reference
    ramp = geometry.identity_grid((40, 40))[None] * 1.0
    outer = geometry.affine_to_disp(torch.tensor([[[0.95, 0.1, 2.0], [-0.1, 0.95, 3.0], [0, 0, 1]]]), (40, 40))
    inner = 2 * torch.sin(geometry.identity_grid((40, 40))[None] / 7.0)
    once = geometry.warp(ramp, geometry.compose(outer, inner))
    twice = geometry.warp(geometry.warp(ramp, outer), inner)
    inside = (slice(None), slice(None), slice(6, -6), slice(6, -6))
    assert (once[inside] - twice[inside]).abs().max() < 1e-3
    # adding instead of composing is wrong by the outer map's linear part applied to the inner field
    added = geometry.warp(ramp, outer + inner)
    assert (added[inside] - twice[inside]).abs().max() > 0.1


def test_compose_affine_order():
    shift = torch.tensor([[1.0, 0, 5], [0, 1, 0], [0, 0, 1]])
    rot = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    point = torch.tensor([[1.0, 2.0]])
    both = geometry.apply_affine_to_points(geometry.compose_affine(shift, rot), point)
    assert torch.allclose(both, geometry.apply_affine_to_points(shift, geometry.apply_affine_to_points(rot, point)))


def test_shift_pose_moves_the_fixed_point_before_the_affine_and_scales_between_levels():
    """p -> A (p + t), batched; a shift of t level pixels is t / factor full-resolution pixels (PairLevel.up)."""
    affines = torch.tensor([[[0.8, 0.3, 2.0], [-0.3, 0.8, 1.0], [0, 0, 1]], [[0.0, -1, 4], [1, 0, 0], [0, 0, 1]]])
    shifts = torch.tensor([[1.5, -2.0], [0.0, 3.0]])
    points = torch.tensor([[4.0, 7.0], [0.0, 1.0]])
    moved = geometry.shift_pose(affines, shifts)
    for affine, shift, pose in zip(affines, shifts, moved):
        expected = geometry.apply_affine_to_points(affine, points + shift)
        assert torch.allclose(geometry.apply_affine_to_points(pose, points), expected)
    level = geometry.PairLevel.between(((41, 61), (41, 61)), ((21, 31), (21, 31)))
    full = level.up(geometry.shift_pose(level.down(affines[0]), shifts[0]))
    assert torch.allclose(full, geometry.shift_pose(affines[0], shifts[0] * 2), atol=1e-5)  # factor 1/2 each axis


@pytest.mark.parametrize("shape", [(21, 31), (40, 17)])
def test_resize_disp_and_rescale_affine_agree(shape):
    affine = torch.tensor([[0.8, 0.3, 2.0], [-0.3, 0.8, 1.0], [0, 0, 1]])
    small = (11, 16)
    factors = geometry.scale_factors(shape, small)
    disp_small = geometry.resize_disp(geometry.affine_to_disp(affine[None], shape), small)
    expected = geometry.affine_to_disp(geometry.rescale_affine(affine, factors, factors)[None], small)
    assert torch.allclose(disp_small, expected, atol=1e-4)


def test_downsample_keeps_corner_aligned_centres_under_rotation():
    """Area pooling would shift low-resolution centres by half a pixel; rotation makes that a real error."""
    grid = geometry.identity_grid((64, 64))
    image = torch.exp(-((grid[0] - 20) ** 2 + (grid[1] - 41) ** 2) / 30)[None, None]
    small = geometry.downsample(image, (16, 16))
    peak = torch.nonzero(small[0, 0] == small.max())[0].float()
    factor = geometry.scale_factors((64, 64), (16, 16))[0]
    assert torch.allclose(peak, torch.tensor([20.0, 41.0]) * factor, atol=0.6)
    nearest = geometry.resize_image(image, (16, 16), mode="nearest")
    assert nearest[0, 0, 0, 0] == image[0, 0, 0, 0] and nearest[0, 0, -1, -1] == image[0, 0, -1, -1]


def test_similarity_matrix_rotates_i_towards_j():
    affine = geometry.similarity_matrix(
        torch.tensor([math.pi / 2]), torch.tensor([2.0]), torch.tensor([0.0, 0.0]), torch.tensor([10.0, 20.0])
    )[0]
    moved = geometry.apply_affine_to_points(affine, torch.tensor([[1.0, 0.0]]))
    assert torch.allclose(moved, torch.tensor([[10.0, 22.0]]), atol=1e-5)
    mirrored = geometry.similarity_matrix(
        torch.tensor([0.0]), torch.tensor([1.0]), torch.zeros(2), torch.zeros(2), torch.tensor([True])
    )[0]
    assert torch.allclose(
        geometry.apply_affine_to_points(mirrored, torch.tensor([[1.0, 2.0]])), torch.tensor([[1.0, -2.0]])
    )


def test_jacobian_determinant_of_linear_map():
    affine = torch.tensor([[[1.2, 0.1, 0], [0.0, 0.5, 0], [0, 0, 1]]])
    det = geometry.jacobian_determinant(geometry.affine_to_disp(affine, (10, 12)))
    assert torch.allclose(det, torch.full_like(det, 0.6), atol=1e-5)


def test_bad_shapes_raise_value_error():
    with pytest.raises(ValueError, match="disp must have shape"):
        geometry.warp(torch.zeros(1, 1, 4, 4), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="weight must have shape"):
        geometry.fit_affine(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 5, 4))


def test_resize_matrix_corner_matches_scale_factors_and_area_matches_block_centres():
    corner = geometry.resize_matrix((9, 5), (5, 3))
    assert torch.allclose(corner.diagonal()[:2], torch.tensor([0.5, 0.5], dtype=torch.float64))
    area = geometry.resize_matrix((8, 6), (4, 3), centres="area")
    # the 2 x 2 block whose pixels are 0 and 1 has its centre at 0.5 on the full grid, at 0 on the reduced one
    centre = geometry.apply_affine_to_points(area, torch.tensor([[0.5, 2.5]], dtype=torch.float64))
    assert torch.allclose(centre, torch.tensor([[0.0, 1.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="centres"):
        geometry.resize_matrix((4, 4), (2, 2), centres="nearest")


def _frame(dim: int = 2) -> geometry.PhysicalFrame:
    angle = math.radians(30)
    rotation = [math.cos(angle), -math.sin(angle), math.sin(angle), math.cos(angle)]
    if dim == 2:
        return geometry.PhysicalFrame((3.0, -7.5), (0.25, 0.5), tuple(rotation))
    direction = (rotation[0], rotation[1], 0.0, rotation[2], rotation[3], 0.0, 0.0, 0.0, 1.0)
    return geometry.PhysicalFrame((3.0, -7.5, 2.0), (0.25, 0.5, 1.5), direction)


@pytest.mark.parametrize("dim", [2, 3])
def test_index_to_physical_matches_simpleitk(dim):
    """Origin, anisotropic spacing and a rotated direction: the matrix is ITK's index-to-physical map."""
    frame = _frame(dim)
    image = sitk.Image([7, 5] + [1] * (dim - 2), sitk.sitkFloat32)
    image.SetOrigin(frame.origin)
    image.SetSpacing(frame.spacing)
    image.SetDirection(frame.direction)
    assert geometry.PhysicalFrame.of_image(image) == frame
    index = (2.5, 1.25) + (0.0,) * (dim - 2)
    expected = image.TransformContinuousIndexToPhysicalPoint(index)
    got = geometry.index_to_physical(frame) @ torch.tensor([*index, 1.0], dtype=torch.float64)
    assert torch.allclose(got[:dim], torch.tensor(expected, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("dim", [2, 3])
def test_pixel_affine_to_physical_round_trip_and_point_mapping(dim):
    fixed = _frame(dim)
    moving = geometry.PhysicalFrame(
        tuple(o + 1 for o in fixed.origin), tuple(2 * s for s in fixed.spacing), fixed.direction
    )
    pixel = geometry.similarity_matrix(
        torch.tensor([0.4]), torch.tensor([1.2]), torch.tensor([3.0, 2.0]), torch.tensor([5.0, 1.0])
    )[0].double()
    physical = geometry.pixel_to_physical_affine(pixel, fixed, moving)
    assert torch.allclose(geometry.physical_to_pixel_affine(physical, fixed, moving), pixel, atol=1e-12)
    index = torch.tensor([[4.0, 3.0]], dtype=torch.float64)
    moving_index = geometry.apply_affine_to_points(pixel, index)
    pad = torch.zeros(1, dim - 2, dtype=torch.float64)
    x_fixed = geometry.index_to_physical(fixed) @ torch.cat([index, pad, torch.ones(1, 1, dtype=torch.float64)], 1).T
    x_moving = (
        geometry.index_to_physical(moving) @ torch.cat([moving_index, pad, torch.ones(1, 1, dtype=torch.float64)], 1).T
    )
    assert torch.allclose(physical @ x_fixed, x_moving, atol=1e-12)
    with pytest.raises(ValueError, match="one dimension"):
        geometry.pixel_to_physical_affine(pixel, _frame(2), _frame(3))


def test_transpose_disp_matches_warping_transposed_images():
    """Warping the (row, column) view of an image by the transposed field = transposing the warped image."""
    image = torch.rand(1, 2, 9, 7, generator=torch.Generator().manual_seed(0))
    disp = torch.randn(1, 2, 9, 7, generator=torch.Generator().manual_seed(1))
    warped = geometry.warp(image, disp)
    warped_t = geometry.warp(image.transpose(2, 3), geometry.transpose_disp(disp))
    assert torch.allclose(warped_t, warped.transpose(2, 3), atol=1e-6)
    assert torch.equal(geometry.transpose_disp(geometry.transpose_disp(disp)), disp)
