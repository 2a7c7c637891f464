"""One resolution of a fixed / moving pair: the multi-resolution base every stage's level builds on.

The search's levels, the fibre texture's levels and the optimisation's working pairs each hold different images
(label indicators, band-passed texture, features and label maps) but the same geometry: both images resized by one
factor (so the pixel-size ratio between them stays) and the per-axis factors that carry affines between full
resolution and the level (:func:`fide.geometry.rescale_affine`, corner-aligned as everywhere in fide).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fide.geometry.resampling import rescale_affine, scale_factors

__all__ = ["PairLevel", "level_shapes"]

Shape = tuple[int, int]


def level_shapes(
    fixed_shape: Sequence[int], moving_shape: Sequence[int], size_px: int, *, min_side: int = 8, enlarge: bool = False
) -> tuple[Shape, Shape]:
    """Both images' (H, W) at the level whose fixed image has ``size_px`` as its longest side: one factor for both,
    never above 1 unless ``enlarge``, every side at least ``min_side``."""
    factor = size_px / max(fixed_shape)
    factor = factor if enlarge else min(1.0, factor)
    fixed, moving = (tuple(max(min_side, round(n * factor)) for n in shape) for shape in (fixed_shape, moving_shape))
    return fixed, moving  # type: ignore[return-value]


@dataclass
class PairLevel:
    """The factors between full resolution and one level of a pair (:func:`fide.geometry.scale_factors`).

    Attributes:
        fixed_factors: per-axis factor from full-resolution fixed pixels to this level's fixed pixels.
        moving_factors: the same for the moving image.
    """

    fixed_factors: tuple[float, float]
    moving_factors: tuple[float, float]

    @classmethod
    def between(cls, full: tuple[Sequence[int], Sequence[int]], level: tuple[Sequence[int], Sequence[int]], **payload):
        """The level (of ``cls``, with its ``payload`` fields) whose (fixed, moving) shapes are ``level``, of images
        whose full-resolution shapes are ``full``."""
        return cls(scale_factors(full[0], level[0]), scale_factors(full[1], level[1]), **payload)

    def down(self, affine: torch.Tensor) -> torch.Tensor:
        """(..., 3, 3) full-resolution fixed → moving affines in this level's pixels."""
        return rescale_affine(affine, self.fixed_factors, self.moving_factors)

    def up(self, affine: torch.Tensor) -> torch.Tensor:
        """(..., 3, 3) affines in this level's pixels at full resolution."""
        return rescale_affine(affine, [1 / f for f in self.fixed_factors], [1 / f for f in self.moving_factors])
