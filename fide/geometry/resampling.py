"""Resampling in fide's corner-aligned convention: resize factors, image resizes and the anti-aliased pyramid.

An image resized from n to m pixels along an axis maps pixel ``p`` to ``p * (m - 1) / (n - 1)``. Import these
through :mod:`fide.geometry`, which owns every convention.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["scale_factors", "resize_image", "downsample", "rescale_affine", "resize_matrix"]


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
