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
* **Physical space (ITK).** Array axis k is ITK index k (x = column for TIFF/PNG, nibabel i for NIfTI), so a
  point ``(i, j)`` in array order is an ITK continuous index. Physical point = ``origin + D @ diag(spacing) @ index``
  (:func:`index_to_physical`); a pixel affine ``A`` becomes the physical ``P_moving @ A @ P_fixed^-1``
  (:func:`pixel_to_physical_affine`), the map ``SimpleITK.Resample(moving, fixed, T)`` expects. These live in
  :mod:`fide.geometry.physical` and are re-exported here: callers use ``fide.geometry`` alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fide.geometry.physical import (
    PhysicalFrame,
    index_to_physical,
    physical_to_pixel_affine,
    pixel_to_physical_affine,
)

__all__ = [
    "identity_grid",
    "affine_to_disp",
    "fit_affine",
    "compose",
    "overlap_mask",
    "compose_affine",
    "warp",
    "map_points",
    "sample_at",
    "apply_affine_to_points",
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


def affine_to_disp(affine: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Dense displacement of an affine on a fixed grid.

    Args:
        affine: (B, 3, 3) pixel-space affine, fixed to moving.
        shape: fixed grid (H, W).

    Returns:
        (B, 2, H, W) displacement in pixels, fixed to moving: ``A @ [p, 1] - p``.
    """
    grid = identity_grid(shape, like=affine)  # (2, H, W)
    moved = torch.einsum("bkl,lhw->bkhw", affine[:, :2, :2], grid) + affine[:, :2, 2, None, None]
    return moved - grid


def fit_affine(disp: torch.Tensor, weight: torch.Tensor | None = None, ridge: float = 1e-6) -> torch.Tensor:
    """Weighted least-squares affine ``A`` minimising ``sum_p w(p) |A [p, 1] - (p + disp(p))|^2``.

    Differentiable (closed form), used by fidelity-imposed displacement editing. Coordinates are centred and scaled
    before solving so the normal equations stay well conditioned at any image size.

    Args:
        disp: (B, 2, H, W) displacement, pixels, fixed to moving.
        weight: (B, 1, H, W) non-negative pixel weights (the fidelity mask); all ones when None.
        ridge: Tikhonov term on the normalised normal equations; keeps empty masks solvable.

    Returns:
        (B, 3, 3) affine, pixels, fixed to moving.
    """
    _check_disp(disp)
    batch, _, height, width = disp.shape
    grid = identity_grid((height, width), like=disp)
    if weight is None:
        weight = torch.ones_like(disp[:, :1])
    if weight.shape != (batch, 1, height, width):
        raise ValueError(f"weight must have shape {(batch, 1, height, width)}, got {tuple(weight.shape)}")
    centre = grid.new_tensor([(height - 1) / 2, (width - 1) / 2]).view(2, 1, 1)
    scale = max(height, width) / 2
    src = ((grid - centre) / scale).reshape(2, -1)  # (2, N)
    dst = ((grid + disp - centre) / scale).reshape(batch, 2, -1)  # (B, 2, N)
    design = torch.cat([src, torch.ones_like(src[:1])]).T.expand(batch, -1, -1)  # (B, N, 3)
    w = weight.reshape(batch, -1, 1)
    normal = design.transpose(1, 2) @ (w * design) + ridge * torch.eye(3, device=disp.device, dtype=disp.dtype)
    rhs = design.transpose(1, 2) @ (w * dst.transpose(1, 2))  # (B, 3, 2)
    params = torch.linalg.solve(normal, rhs).transpose(1, 2)  # (B, 2, 3) in normalised coordinates
    norm = torch.eye(3, device=disp.device, dtype=disp.dtype)
    norm[:2, :2] /= scale
    norm[:2, 2] = -centre.flatten() / scale
    bottom = torch.tensor([[0.0, 0.0, 1.0]], device=disp.device, dtype=disp.dtype).expand(batch, 1, 3)
    affine_norm = torch.cat([params, bottom], dim=1)
    return torch.linalg.inv(norm) @ affine_norm @ norm


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
    points = identity_grid(disp.shape[2:], like=disp) + disp  # (B, 2, H, W)
    grid = pixel_to_normalised(points.permute(0, 2, 3, 1), image.shape[2:])
    return F.grid_sample(image, grid.to(image.dtype), mode=mode, padding_mode=padding_mode, align_corners=True)


def overlap_mask(moving: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
    """Where the fixed grid maps inside the moving image: (B, 1, H, W) float 0/1, no gradient.

    Args:
        moving: (1 or B, C, Hm, Wm) moving image (only its size is used).
        disp: (B, 2, H, W) displacement, fixed to moving.
    """
    with torch.no_grad():
        ones = moving.new_ones(1, 1, *moving.shape[-2:]).expand(disp.shape[0], -1, -1, -1)
        return (warp(ones, disp) > 0.99).to(disp.dtype)  # 0.99: bilinear weights blur the image edge


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


def scale_factors(old_shape: Sequence[int], new_shape: Sequence[int]) -> tuple[float, float]:
    """Per-axis factor ``(m - 1) / (n - 1)`` mapping pixel coordinates of a grid of size n to one of size m."""
    return tuple((int(m) - 1) / max(int(n) - 1, 1) for n, m in zip(old_shape, new_shape))  # type: ignore[return-value]


def resize_image(image: torch.Tensor, shape: Sequence[int], *, mode: str = "bilinear") -> torch.Tensor:
    """Resize (B, C, H, W) to (B, C, *shape) with the module's corner-aligned convention (no anti-aliasing)."""
    if mode == "nearest":  # F.interpolate's nearest floors src = dst * n / m, off the corner-aligned mapping
        theta = torch.eye(2, 3, dtype=image.dtype, device=image.device).expand(image.shape[0], 2, 3)
        grid = F.affine_grid(theta, [image.shape[0], 1, *shape], align_corners=True)
        return F.grid_sample(image, grid, mode="nearest", align_corners=True)
    return F.interpolate(image, size=tuple(shape), mode=mode, align_corners=True)


def _binomial_blur(image: torch.Tensor) -> torch.Tensor:
    """[1 4 6 4 1] / 16 along both axes (sigma ~1 px, symmetric: moves no pixel centre), replicate padding.

    Written as sums of shifted views: PyTorch's grouped conv2d with a 5-tap kernel is ~8x slower on CPU.
    """
    padded = F.pad(image, (2, 2, 2, 2), mode="replicate")
    height, width = image.shape[-2:]
    rows = [padded[..., k : k + height, :] for k in range(5)]
    blurred = (rows[0] + rows[4]) + 4 * (rows[1] + rows[3]) + 6 * rows[2]
    cols = [blurred[..., k : k + width] for k in range(5)]
    return ((cols[0] + cols[4]) + 4 * (cols[1] + cols[3]) + 6 * cols[2]) / 256


def downsample(image: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Anti-aliased resize of (B, C, H, W) to a smaller (B, C, *shape), keeping the corner-aligned convention.

    Area/average pooling would put low-resolution pixel centres half a pixel off the ``(m-1)/(n-1)`` mapping
    that every other function here assumes, a bias that grows with rotation; so: blur, halve, repeat, resize.
    """
    current = image
    while current.shape[-2] >= 2 * shape[0] and current.shape[-1] >= 2 * shape[1]:
        half = [(n + 1) // 2 for n in current.shape[-2:]]
        current = resize_image(_binomial_blur(current), half)
    if tuple(current.shape[-2:]) == tuple(shape):
        return current
    return resize_image(_binomial_blur(current) if current.shape[-2] > shape[0] else current, shape)


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
    positions = identity_grid(disp.shape[2:], like=disp) + disp  # moving points of the old grid
    resized = resize_image(positions, shape) * disp.new_tensor(moving_factors).view(1, 2, 1, 1)
    return resized - identity_grid(shape, like=disp)


def rescale_affine(
    affine: torch.Tensor, fixed_factors: Sequence[float], moving_factors: Sequence[float]
) -> torch.Tensor:
    """Express an affine between resized grids: ``S_moving @ A @ S_fixed^-1``.

    Args:
        affine: (B, 3, 3) or (3, 3) pixel-space affine, fixed to moving.
        fixed_factors: per-axis :func:`scale_factors` from the old to the new fixed grid.
        moving_factors: the same for the moving grid.
    """
    s_fixed = torch.diag(affine.new_tensor([*fixed_factors, 1.0]))
    s_moving = torch.diag(affine.new_tensor([*moving_factors, 1.0]))
    return s_moving @ affine @ torch.linalg.inv(s_fixed)


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


def resize_matrix(old_shape: Sequence[int], new_shape: Sequence[int], *, centres: str = "corner") -> torch.Tensor:
    """(3, 3) float64 map of pixel coordinates, array order, from a grid of ``old_shape`` to one of ``new_shape``.

    ``centres="corner"``: ``p * (m - 1) / (n - 1)`` (this module's resizes, :func:`downsample`). ``"area"``:
    ``(p + 0.5) * m / n - 0.5``, the pixel centres of a pyramid level or block mean covering the same area.
    """
    if centres not in ("corner", "area"):
        raise ValueError(f"centres must be 'corner' or 'area', got {centres!r}")
    matrix = torch.eye(3, dtype=torch.float64)
    for axis, (n, m) in enumerate(zip(old_shape, new_shape)):
        factor = scale_factors([n], [m])[0] if centres == "corner" else int(m) / int(n)
        matrix[axis, axis] = factor
        matrix[axis, 2] = 0.0 if centres == "corner" else 0.5 * factor - 0.5
    return matrix


def transpose_disp(disp: torch.Tensor) -> torch.Tensor:
    """The field of the transposed images: (B, 2, H, W) → (B, 2, W, H), its two components swapped.

    A (row, column) view of an image whose array order is (x, y) (TIFF, PNG) swaps both the grid axes and the
    vector components; applying it twice gives the field back.
    """
    _check_disp(disp)
    return disp.flip(1).transpose(2, 3)
