"""Physical space (ITK) of fide's conventions: an image's frame, index ↔ physical point, pixel ↔ physical affines.

Array axis k is ITK index k, so a point ``(i, j)`` in array order is an ITK continuous index; physical point =
``origin + D @ diag(spacing) @ index``. Import these through :mod:`fide.geometry`, which owns every convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["PhysicalFrame", "index_to_physical", "pixel_to_physical_affine", "physical_to_pixel_affine"]


@dataclass(frozen=True)
class PhysicalFrame:
    """An image's ITK physical space: ``x = origin + D @ diag(spacing) @ index`` (d = 2 or 3 axes).

    Attributes:
        origin: (d,) physical position of index 0.
        spacing: (d,) physical pixel size per index axis.
        direction: d x d direction cosines, row-major (SimpleITK's ``GetDirection``).
    """

    origin: tuple[float, ...]
    spacing: tuple[float, ...]
    direction: tuple[float, ...]

    @property
    def dimension(self) -> int:
        return len(self.origin)

    @classmethod
    def of_image(cls, image) -> PhysicalFrame:
        """The frame of a ``SimpleITK.Image`` (or of an ``ImageFileReader`` after ``ReadImageInformation``)."""
        return cls(tuple(image.GetOrigin()), tuple(image.GetSpacing()), tuple(image.GetDirection()))


def index_to_physical(frame: PhysicalFrame) -> torch.Tensor:
    """(d + 1, d + 1) float64 homogeneous matrix mapping an ITK continuous index to the physical point."""
    dim = frame.dimension
    direction = torch.tensor(frame.direction, dtype=torch.float64).view(dim, dim)
    matrix = torch.eye(dim + 1, dtype=torch.float64)
    matrix[:dim, :dim] = direction @ torch.diag(torch.tensor(frame.spacing, dtype=torch.float64))
    matrix[:dim, dim] = torch.tensor(frame.origin, dtype=torch.float64)
    return matrix


def _lift(affine: torch.Tensor, dim: int) -> torch.Tensor:
    """A (3, 3) in-plane pixel affine acting on index axes 0 and 1 of a d-axis index (identity on the others)."""
    lifted = torch.eye(dim + 1, dtype=torch.float64)
    lifted[:2, :2] = affine[:2, :2]
    lifted[:2, dim] = affine[:2, 2]
    return lifted


def pixel_to_physical_affine(affine: torch.Tensor, fixed: PhysicalFrame, moving: PhysicalFrame) -> torch.Tensor:
    """Express a pixel affine (3, 3), array order, fixed to moving, in physical space: (d + 1, d + 1) float64.

    ``T = P_moving @ A @ P_fixed^-1``: fixed physical point to moving physical point, ITK's direction for
    ``Resample(moving, fixed, T)``. Both frames must have the same dimension d (a third axis has identity index).
    """
    if fixed.dimension != moving.dimension:
        raise ValueError(f"frames must have one dimension, got fixed {fixed.dimension} and moving {moving.dimension}")
    lifted = _lift(torch.as_tensor(affine, dtype=torch.float64), fixed.dimension)
    return index_to_physical(moving) @ lifted @ torch.linalg.inv(index_to_physical(fixed))


def physical_to_pixel_affine(matrix: torch.Tensor, fixed: PhysicalFrame, moving: PhysicalFrame) -> torch.Tensor:
    """Inverse of :func:`pixel_to_physical_affine`: the (3, 3) float64 pixel affine, array order, fixed to moving."""
    pixel = torch.linalg.inv(index_to_physical(moving)) @ torch.as_tensor(matrix, dtype=torch.float64)
    pixel = pixel @ index_to_physical(fixed)
    dim = fixed.dimension
    out = torch.eye(3, dtype=torch.float64)
    out[:2, :2], out[:2, 2] = pixel[:2, :2], pixel[:2, dim]
    return out
