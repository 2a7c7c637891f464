"""One pair at a working resolution: intensities, features, label maps and the fidelity mask, with the factors
that take full-resolution pixels to its grids. Pre-alignment (keypoints), the optimisation and the deformable
residual all work on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fide import geometry

from .prepare import PreparedImage

__all__ = ["WorkingPair", "make_working_pair"]


@dataclass
class WorkingPair(geometry.PairLevel):
    """Both images' inputs of the optimisation at one resolution (every tensor (1, C, h, w)); its factors to and from
    full resolution inherited."""

    fixed_intensity: torch.Tensor
    moving_intensity: torch.Tensor
    fixed_features: torch.Tensor
    moving_features: torch.Tensor
    fixed_labels: torch.Tensor  # float label values
    moving_labels: torch.Tensor
    fidelity: torch.Tensor  # (1, 1, h, w) float weights

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.fixed_features.shape[-2:])  # type: ignore[return-value]


def make_working_pair(
    fixed: PreparedImage,
    moving: PreparedImage,
    fixed_labels: torch.Tensor,
    moving_labels: torch.Tensor,
    size_px: int,
    features: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
) -> WorkingPair:
    """Resize a prepared pair so the fixed image's longest side is ``size_px`` (never upsampled) and extract features.

    Intensities are anti-aliased before ``features`` sees them; label maps take the nearest value and
    the fidelity mask its area fraction, so they stay labels and weights.

    Args:
        fixed_labels, moving_labels: (1, 1, H, W) int label maps at full resolution.
        features: maps (fixed intensity, moving intensity), each (1, 1, h, w) in [0, 1], to (1, D, h, w) features.
    """
    fixed_shape, moving_shape = geometry.level_shapes(fixed.shape, moving.shape, size_px)
    fixed_intensity = geometry.downsample(fixed.intensity, fixed_shape)
    moving_intensity = geometry.downsample(moving.intensity, moving_shape)
    fixed_features, moving_features = features(fixed_intensity, moving_intensity)
    return WorkingPair.between(
        (fixed.shape, moving.shape),
        (fixed_shape, moving_shape),
        fixed_intensity=fixed_intensity,
        moving_intensity=moving_intensity,
        fixed_features=fixed_features,
        moving_features=moving_features,
        fixed_labels=geometry.resize_image(fixed_labels.float(), fixed_shape, mode="nearest"),
        moving_labels=geometry.resize_image(moving_labels.float(), moving_shape, mode="nearest"),
        fidelity=geometry.downsample(fixed.fidelity.float(), fixed_shape),
    )
