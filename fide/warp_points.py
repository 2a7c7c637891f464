"""Mapping points through a written displacement field, forwards (fixed → moving) and backwards.

Convention (``fide.geometry``, Learn2Reg §3): a field ``u`` on the fixed grid maps fixed to moving, so a fixed
landmark ``f`` lands at ``f + u(f)`` in the moving image. That is the forward direction and needs no inversion.
Mapping moving points to the fixed image needs the inverse map: :func:`warp_points` with ``inverse=True`` solves
``p + u(p) = q`` for ``p`` by a quasi-Newton iteration started from the inverse of the field's best-fitting affine.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from fide import geometry
from fide.arrays import as_points, as_tensor
from fide.io import read_disp

__all__ = ["warp_points", "invert_points", "load_field"]

logger = logging.getLogger(__name__)

_FIT_PX = 256  # the initial affine of the inverse is fitted on the field resampled to at most this size


def load_field(disp: str | Path | torch.Tensor | np.ndarray) -> torch.Tensor:
    """A field as a (1, 2, H, W) float64 tensor, pixels, fixed to moving.

    Args:
        disp: a ``disp_*.nii.gz`` path, or an array/tensor (2, H, W) or (1, 2, H, W).
    """
    if isinstance(disp, (str, Path)):
        field = read_disp(disp)
    else:
        field = as_tensor(disp, "disp")
    field = field[None] if field.ndim == 3 else field
    if field.ndim != 4 or field.shape[:2] != (1, 2):
        raise ValueError(f"disp must have shape (2, H, W) or (1, 2, H, W), got {tuple(field.shape)}")
    return field.detach().to("cpu", torch.float64)


def _points(points) -> torch.Tensor:
    """Any array-like of (N, 2) points (lists, numpy views of any strides, torch tensors) as float64."""
    return torch.from_numpy(as_points(points))


def warp_points(
    points: np.ndarray | torch.Tensor,
    disp: str | Path | torch.Tensor | np.ndarray,
    *,
    inverse: bool = False,
    tolerance_px: float = 1e-6,
    max_iterations: int = 100,
) -> np.ndarray:
    """Map points through a displacement field.

    Forward (default): fixed points ``f`` → moving points ``f + u(f)``, ``u`` interpolated bilinearly (exact for
    affine fields); points outside the grid take the nearest border displacement (the challenge's evaluator
    interpolates with a cubic spline and uses zero outside the grid; both agree inside for smooth fields).

    Inverse: moving points ``q`` → fixed points ``p`` with ``p + u(p) = q`` (see :func:`invert_points`).

    Args:
        points: (N, 2) pixels, array order (i, j) = (nibabel axis 0, axis 1), as in Learn2Reg landmark CSVs; any
            array-like (lists, numpy views of any strides, integer or float, torch tensors).
        disp: a ``disp_*.nii.gz`` path, or (2, H, W) / (1, 2, H, W) displacement array-like, pixels, fixed to
            moving.
        inverse: map moving points to the fixed image instead.
        tolerance_px: inverse only: stop when every residual ``|p + u(p) - q|`` is below this.
        max_iterations: inverse only: iteration cap.

    Returns:
        (N, 2) float64 points, pixels, array order.

    Examples::

        >>> import torch
        >>> shift = torch.zeros(2, 8, 8); shift[0] = 1.5   # moving = fixed shifted by 1.5 px along axis 0
        >>> warp_points([[2.0, 3.0]], shift)
        array([[3.5, 3. ]])
        >>> warp_points([[3.5, 3.0]], shift, inverse=True).round(6)
        array([[2., 3.]])
    """
    field = load_field(disp)
    array = _points(points)
    if inverse:
        return invert_points(array, field, tolerance_px=tolerance_px, max_iterations=max_iterations).numpy()
    return geometry.map_points(array, field).numpy()


def _affine_of(field: torch.Tensor) -> torch.Tensor:
    """(3, 3) least-squares affine of the whole field, fitted on a grid of at most ``_FIT_PX`` pixels."""
    shape = field.shape[2:]
    factor = min(1.0, _FIT_PX / max(shape))
    small = (max(2, round(shape[0] * factor)), max(2, round(shape[1] * factor)))
    factors = geometry.scale_factors(shape, small)
    coarse = geometry.resize_disp(field, small) if tuple(small) != tuple(shape) else field
    affine = geometry.fit_affine(coarse)[0]
    return geometry.rescale_affine(affine, [1 / f for f in factors], [1 / f for f in factors])


def invert_points(
    points: torch.Tensor, field: torch.Tensor, *, tolerance_px: float = 1e-6, max_iterations: int = 100
) -> torch.Tensor:
    """Solve ``p + u(p) = q`` for every moving point ``q``.

    Starts at ``A^-1 q`` for the field's least-squares affine ``A``, then iterates ``p ← p − L^-1 r`` with the
    residual ``r = p + u(p) − q`` and ``L`` the affine's linear part (exact in one step for affine fields; converges
    for deformations whose non-affine part has a Jacobian well below 1). Points whose residual stays above the
    tolerance are logged as a warning and returned as found.

    Args:
        points: (N, 2) moving points, pixels, array order.
        field: (1, 2, H, W) displacement, pixels, fixed to moving.

    Returns:
        (N, 2) fixed points, pixels, array order.
    """
    if tolerance_px <= 0 or max_iterations < 1:
        raise ValueError(f"need tolerance_px > 0 and max_iterations >= 1, got {tolerance_px}, {max_iterations}")
    if len(points) == 0:
        return points.clone()
    affine = _affine_of(field)
    inverse = torch.linalg.inv(affine)
    step = torch.linalg.inv(affine[:2, :2])
    estimate = geometry.apply_affine_to_points(inverse, points)
    residual = geometry.map_points(estimate, field) - points
    for _ in range(max_iterations):
        if float(residual.norm(dim=1).max()) < tolerance_px:
            break
        estimate = estimate - residual @ step.T
        residual = geometry.map_points(estimate, field) - points
    distance = residual.norm(dim=1)
    if float(distance.max()) >= tolerance_px:
        logger.warning(
            "inverse did not converge for %d of %d points (worst residual %.3g px)",
            int((distance >= tolerance_px).sum()),
            len(points),
            float(distance.max()),
        )
    return estimate
