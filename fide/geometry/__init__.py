"""Coordinate conventions of fide: the one module that builds grids and moves points.

Conventions (every other module relies on them, none re-derives them):

* **Array order.** Images are ``(B, C, H, W)`` tensors whose spatial axes are the nibabel array axes 0 and 1 of the
  file on disk. Points are ``(..., 2)`` tensors ``(i, j)`` = (array axis 0, array axis 1), in pixels, pixel centres at
  integers. This is the order of Learn2Reg landmark CSVs and displacement fields.
* **Direction.** A displacement ``disp`` of shape ``(B, 2, H, W)`` lives on the *fixed* grid and maps fixed to moving:
  fixed pixel ``p`` corresponds to moving point ``p + disp[:, :, p]``; ``disp[:, 0]`` is along axis 0.
  The warped moving image is ``moving(p + disp(p))``.
* **Affines.** ``(B, 3, 3)`` homogeneous matrices in pixel coordinates, fixed to moving: ``q = A @ [i, j, 1]``.
* **torch.grid_sample** wants ``(x, y)`` = (last axis, second-to-last axis) normalised to [-1, 1]; we always use
  ``align_corners=True`` so that -1 and +1 are the centres of the first and last pixels.
* **Resizing.** An image resized from n to m pixels along an axis (``align_corners=True``) maps pixel ``p`` to
  ``p * (m - 1) / (n - 1)``; :func:`resize_disp` and :func:`rescale_affine` apply that factor to vectors. Pyramid
  levels and block means put pixel centres at ``(p + 0.5) * m / n - 0.5`` instead (:func:`resize_matrix`, "area").
  The resizes live in :mod:`fide.geometry.resampling` and are re-exported here.
* **Pixel origin.** fide (like ITK and napari) puts pixel centres at integers. QuPath, GeoJSON exported from it
  and shapely on raster coordinates put the origin at the top-left *corner* of the first pixel, so a pixel centre
  is at ``+0.5``: :func:`corner_to_centre` and :func:`centre_to_corner` convert (x, y) points between the two.
* **Physical space (ITK).** Array axis k is ITK index k (x = column for TIFF/PNG, nibabel i for NIfTI), so a
  point ``(i, j)`` in array order is an ITK continuous index. Physical point = ``origin + D @ diag(spacing) @ index``
  (:func:`index_to_physical`); a pixel affine ``A`` becomes the physical ``P_moving @ A @ P_fixed^-1``
  (:func:`pixel_to_physical_affine`), the map ``SimpleITK.Resample(moving, fixed, T)`` expects. These live in
  :mod:`fide.geometry.physical` and are re-exported here: callers use ``fide.geometry`` alone.
* **The same pose.** Two affines are one pose when they put every fixed corner within a fraction of the side of
  each other (:mod:`fide.geometry.poses`, re-exported): the one rule for merging and pruning hypotheses.
* **Levels.** A pair at a coarser resolution is a :class:`PairLevel` (:mod:`fide.geometry.levels`, re-exported):
  both images resized by one factor, ``down`` / ``up`` carry affines between full resolution and the level.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fide.geometry.levels import PairLevel, level_shapes
from fide.geometry.physical import (
    PhysicalFrame,
    index_to_physical,
    physical_to_pixel_affine,
    pixel_to_physical_affine,
)
from fide.geometry.poses import corner_positions, distinct_poses, nudge_pose, same_pose, shift_pose
from fide.geometry.resampling import downsample, rescale_affine, resize_image, resize_matrix, scale_factors

__all__ = [
    "identity_grid",
    "affine_to_disp",
    "fit_affine",
    "AffineFit",
    "compose",
    "overlap_mask",
    "compose_affine",
    "warp",
    "map_points",
    "sample_at",
    "apply_affine_to_points",
    "same_pose",
    "distinct_poses",
    "shift_pose",
    "nudge_pose",
    "PairLevel",
    "level_shapes",
    "corner_positions",
    "resize_image",
    "downsample",
    "resize_disp",
    "scale_factors",
    "rescale_affine",
    "similarity_matrix",
    "pixel_to_normalised",
    "jacobian_determinant",
    "resize_matrix",
    "transpose_disp",
    "corner_to_centre",
    "centre_to_corner",
    "PhysicalFrame",
    "index_to_physical",
    "pixel_to_physical_affine",
    "physical_to_pixel_affine",
]


def _check_disp(disp: torch.Tensor) -> None:
    if disp.ndim != 4 or disp.shape[1] != 2:
        raise ValueError(f"disp must have shape (B, 2, H, W), got {tuple(disp.shape)}")


def identity_grid(shape: Sequence[int], *, like: torch.Tensor | None = None) -> torch.Tensor:
    """Pixel coordinates of every pixel of a grid.

    Args:
        shape: (H, W).
        like: tensor whose device and dtype the grid takes (float32 on CPU when None).

    Returns:
        (2, H, W): ``grid[0]`` = array index i, ``grid[1]`` = array index j, pixels.
    """
    kwargs = {"device": like.device, "dtype": like.dtype} if like is not None else {"dtype": torch.float32}
    axes = [torch.arange(int(n), **kwargs) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


# grids up to this many pixels are built once per (shape, device, dtype) for this module's own use: the optimisation
# loops ask for the same few grids hundreds of times a pair; larger ones are rebuilt (memory of big images)
_CACHED_GRID_PIXELS = 1 << 20


@functools.lru_cache(maxsize=32)
def _cached_grid(shape: tuple[int, int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return identity_grid(shape, like=torch.empty(0, device=device, dtype=dtype))


def _grid(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """:func:`identity_grid`, shared between calls: never modify it in place."""
    shape = tuple(int(n) for n in shape)
    if shape[0] * shape[1] > _CACHED_GRID_PIXELS:
        return identity_grid(shape, like=like)
    return _cached_grid(shape, like.device, like.dtype)


def affine_to_disp(affine: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Dense displacement of an affine on a fixed grid.

    Args:
        affine: (B, 3, 3) pixel-space affine, fixed to moving.
        shape: fixed grid (H, W).

    Returns:
        (B, 2, H, W) displacement in pixels, fixed to moving: ``A @ [p, 1] - p``.
    """
    grid = _grid(shape, affine)  # (2, H, W)
    moved = torch.einsum("bkl,lhw->bkhw", affine[:, :2, :2], grid) + affine[:, :2, 2, None, None]
    return moved - grid


class AffineFit:
    """Weighted least-squares affine ``A`` minimising ``sum_p w(p) |A [p, 1] - (p + disp(p))|^2``, for many fields.

    The normal equations depend only on the grid and the weights: they are solved once here, and each field then
    costs one weighted sum per parameter (the editing loop fits hundreds of fields under one fidelity mask).
    Differentiable in ``disp`` (linear). Coordinates are centred and scaled so the equations stay well conditioned.

    Args:
        weight: (1 or B, 1, H, W) non-negative pixel weights (the fidelity mask).
        ridge: Tikhonov term on the normalised normal equations; keeps empty masks solvable.
    """

    def __init__(self, weight: torch.Tensor, ridge: float = 1e-6) -> None:
        if weight.ndim != 4 or weight.shape[1] != 1:
            raise ValueError(f"weight must have shape (B, 1, H, W), got {tuple(weight.shape)}")
        weight = weight if weight.is_floating_point() else weight.float()
        self.shape = tuple(weight.shape[-2:])
        height, width = self.shape
        self.grid = _grid(self.shape, weight)
        self.centre = self.grid.new_tensor([(height - 1) / 2, (width - 1) / 2]).view(2, 1, 1)
        self.scale = max(height, width) / 2
        src = ((self.grid - self.centre) / self.scale).reshape(2, -1)
        design = torch.cat([src, torch.ones_like(src[:1])])  # (3, N)
        weighted = weight.reshape(weight.shape[0], 1, -1).to(design) * design  # (B, 3, N)
        normal = weighted @ design.T + ridge * torch.eye(3, device=design.device, dtype=design.dtype)
        self.projector = torch.linalg.solve(normal, weighted)  # (B, 3, N): parameters = projector @ targets
        norm = torch.eye(3, device=design.device, dtype=design.dtype)
        norm[:2, :2] /= self.scale
        norm[:2, 2] = -self.centre.flatten() / self.scale
        self.norm, self.norm_inverse = norm, torch.linalg.inv(norm)

    def __call__(self, disp: torch.Tensor) -> torch.Tensor:
        """(B, 2, H, W) displacements, pixels, fixed to moving → (B, 3, 3) affines, pixels, fixed to moving."""
        _check_disp(disp)
        batch = disp.shape[0]
        if tuple(disp.shape[2:]) != self.shape or self.projector.shape[0] not in (1, batch):
            raise ValueError(f"disp {tuple(disp.shape)} does not match weights of {tuple(self.projector.shape)}")
        dst = ((self.grid + disp - self.centre) / self.scale).reshape(batch, 2, -1)  # (B, 2, N)
        params = dst @ self.projector.transpose(1, 2)  # (B, 2, 3) in normalised coordinates
        bottom = params.new_tensor([[0.0, 0.0, 1.0]]).expand(batch, 1, 3)
        return self.norm_inverse @ torch.cat([params, bottom], dim=1) @ self.norm


def fit_affine(disp: torch.Tensor, weight: torch.Tensor | None = None, ridge: float = 1e-6) -> torch.Tensor:
    """One field's :class:`AffineFit`: (B, 2, H, W) displacement, (B, 1, H, W) weights (ones when None) →
    (B, 3, 3) affine, pixels, fixed to moving."""
    _check_disp(disp)
    batch, _, height, width = disp.shape
    if weight is None:
        weight = torch.ones_like(disp[:1, :1])
    elif weight.shape != (batch, 1, height, width):
        raise ValueError(f"weight must have shape {(batch, 1, height, width)}, got {tuple(weight.shape)}")
    return AffineFit(weight, ridge)(disp)


def pixel_to_normalised(points: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Pixel points (..., 2) in array order (i, j) to grid_sample coordinates (..., 2) in (x, y) = (j, i) order."""
    sizes = points.new_tensor([float(n) for n in shape])
    normalised = 2 * points / (sizes - 1).clamp(min=1) - 1
    return normalised.flip(-1)  # array order (i, j) -> grid_sample order (x=j, y=i)


def warp(
    image: torch.Tensor,
    disp: torch.Tensor,
    *,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Sample ``image`` at ``p + disp(p)`` for every pixel ``p`` of the displacement's grid.

    MONAI's ``Warp`` needs the image and the field on one grid; a pair's moving image may be larger or smaller than
    the fixed one, so the sampling grid is normalised by the moving image's own size here.

    Args:
        image: (B, C, Hm, Wm) moving image.
        disp: (B, 2, H, W) displacement, pixels in the moving image's pixel units, fixed to moving.
        mode: ``"bilinear"`` or ``"nearest"``.
        padding_mode: ``"zeros"``, ``"border"`` or ``"reflection"`` (values outside the moving image).

    Returns:
        (B, C, H, W) moving image resampled on the fixed grid.
    """
    _check_disp(disp)
    if image.ndim != 4 or image.shape[0] != disp.shape[0]:
        raise ValueError(f"image must be (B, C, H, W) with B={disp.shape[0]}, got {tuple(image.shape)}")
    points = _grid(disp.shape[2:], disp) + disp  # (B, 2, H, W)
    grid = pixel_to_normalised(points.permute(0, 2, 3, 1), image.shape[2:])
    return F.grid_sample(image, grid.to(image.dtype), mode=mode, padding_mode=padding_mode, align_corners=True)


def overlap_mask(moving: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
    """Where the fixed grid maps inside the moving image: (B, 1, H, W) float 0/1, no gradient.

    Args:
        moving: (1 or B, C, Hm, Wm) moving image (only its size is used).
        disp: (B, 2, H, W) displacement, fixed to moving.
    """
    # what warping an image of ones bilinearly gives, > 0.99 (bilinear weights blur the image edge), without
    # sampling: a point d < 1 px beyond an edge keeps the weight 1 - d of the pixels inside
    with torch.no_grad():
        points = _grid(disp.shape[2:], disp) + disp
        last = disp.new_tensor([n - 1 for n in moving.shape[-2:]]).view(1, 2, 1, 1)
        beyond = torch.maximum(-points, points - last).clamp(0, 1)
        return ((1 - beyond).prod(dim=1, keepdim=True) > 0.99).to(disp.dtype)


def compose(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """Displacement of the map ``p -> outer_map(inner_map(p))``: ``u(p) = inner(p) + outer(p + inner(p))``.

    With ``inner`` the residual found after pre-warping the moving image by ``outer`` (the pre-alignment), the result
    warps the original moving image in one step. Never add displacements instead.

    Args:
        outer: (B, 2, H1, W1) displacement, fixed-to-moving, defined on the grid ``inner`` points into.
        inner: (B, 2, H, W) displacement on the fixed grid.

    Returns:
        (B, 2, H, W) displacement, fixed to moving.
    """
    _check_disp(outer)
    _check_disp(inner)
    return inner + warp(outer, inner, padding_mode="border")


def compose_affine(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """Affine of ``p -> outer(inner(p))``; both (B, 3, 3) or (3, 3) pixel-space matrices."""
    return outer @ inner


def apply_affine_to_points(affine: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Map points (N, 2) (or (B, N, 2)) in array order through a (3, 3) (or (B, 3, 3)) affine."""
    return points @ affine[..., :2, :2].transpose(-1, -2) + affine[..., None, :2, 2]


def map_points(points: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
    """Map fixed points to the moving image: ``q = p + disp(p)``, disp interpolated bilinearly.

    Args:
        points: (N, 2) fixed points, pixels, array order.
        disp: (1, 2, H, W) displacement, fixed to moving.

    Returns:
        (N, 2) moving points, pixels, array order. Points outside the grid take the nearest border displacement.
    """
    _check_disp(disp)
    return points + sample_at(disp, points.to(disp.dtype)).to(points.dtype)


def sample_at(image: torch.Tensor, points: torch.Tensor, *, padding_mode: str = "border") -> torch.Tensor:
    """Bilinear values of an image at points.

    Args:
        image: (1, C, H, W).
        points: (N, 2) pixels, array order.

    Returns:
        (N, C).
    """
    grid = pixel_to_normalised(points, image.shape[2:]).view(1, 1, -1, 2).to(image.dtype)
    sampled = F.grid_sample(image, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)
    return sampled[0, :, 0, :].T


def resize_disp(
    disp: torch.Tensor, shape: Sequence[int], moving_factors: Sequence[float] | None = None
) -> torch.Tensor:
    """Resample a displacement to a new fixed grid *and* rescale its vectors.

    Args:
        disp: (B, 2, H, W) displacement, fixed to moving, pixels.
        shape: new fixed grid (H', W').
        moving_factors: per-axis :func:`scale_factors` of the moving image's resize; the fixed grid's factors when
            None (both images resized alike).

    Returns:
        (B, 2, H', W') displacement between the resized grids.
    """
    _check_disp(disp)
    fixed_factors = scale_factors(disp.shape[2:], shape)
    moving_factors = fixed_factors if moving_factors is None else moving_factors
    positions = _grid(disp.shape[2:], disp) + disp  # moving points of the old grid
    resized = resize_image(positions, shape) * disp.new_tensor(moving_factors).view(1, 2, 1, 1)
    return resized - _grid(shape, disp)


def similarity_matrix(
    angle_rad: torch.Tensor,
    scale: torch.Tensor,
    centre_fixed: torch.Tensor,
    centre_moving: torch.Tensor,
    mirror: torch.Tensor | None = None,
) -> torch.Tensor:
    """Similarity transforms (batched) mapping ``centre_fixed`` to ``centre_moving``, fixed to moving.

    ``q = c_m + s * R(angle) * M * (p - c_f)`` where R rotates in the (i, j) array plane (positive angle turns the
    i axis towards the j axis) and M optionally mirrors axis 1.

    Args:
        angle_rad: (B,) rotation angles, radians.
        scale: (B,) isotropic scale factors (moving pixels per fixed pixel).
        centre_fixed: (2,) or (B, 2) fixed centre, pixels, array order.
        centre_moving: (2,) or (B, 2) moving centre, pixels, array order.
        mirror: (B,) bool; True flips the j axis before rotating.

    Returns:
        (B, 3, 3) affine, pixels.
    """
    cos, sin = torch.cos(angle_rad), torch.sin(angle_rad)
    batch = angle_rad.shape[0]
    linear = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2) * scale.view(-1, 1, 1)
    if mirror is not None:
        flip = torch.ones(batch, 2, device=angle_rad.device, dtype=angle_rad.dtype)
        flip[:, 1] = torch.where(mirror, -1.0, 1.0)
        linear = linear * flip[:, None, :]
    centre_fixed = centre_fixed.expand(batch, 2).to(linear)
    centre_moving = centre_moving.expand(batch, 2).to(linear)
    translation = centre_moving - (linear @ centre_fixed.unsqueeze(-1)).squeeze(-1)
    affine = torch.zeros(batch, 3, 3, device=linear.device, dtype=linear.dtype)
    affine[:, :2, :2] = linear
    affine[:, :2, 2] = translation
    affine[:, 2, 2] = 1
    return affine


def jacobian_determinant(disp: torch.Tensor) -> torch.Tensor:
    """Determinant of ``I + grad(disp)`` with central differences (one-sided at the border).

    Args:
        disp: (B, 2, H, W) displacement, pixels.

    Returns:
        (B, H, W); values <= 0 are foldings.
    """
    _check_disp(disp)
    grad_i = torch.gradient(disp, dim=2)[0]  # d(disp)/d(axis 0)
    grad_j = torch.gradient(disp, dim=3)[0]
    return (1 + grad_i[:, 0]) * (1 + grad_j[:, 1]) - grad_j[:, 0] * grad_i[:, 1]


def transpose_disp(disp: torch.Tensor) -> torch.Tensor:
    """The field of the transposed images: (B, 2, H, W) → (B, 2, W, H), its two components swapped.

    A (row, column) view of an image whose array order is (x, y) (TIFF, PNG) swaps both the grid axes and the
    vector components; applying it twice gives the field back.
    """
    _check_disp(disp)
    return disp.flip(1).transpose(2, 3)


def corner_to_centre(points: torch.Tensor) -> torch.Tensor:
    """(..., 2) points whose origin is the first pixel's top-left corner (QuPath, GeoJSON) → fide's pixel centres
    at integers: ``p - 0.5`` on both axes."""
    return points - 0.5


def centre_to_corner(points: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`corner_to_centre`: fide pixel coordinates → corner-origin ones, ``p + 0.5``."""
    return points + 0.5
