"""Augmentation of aligned training pairs: joint flips and affine, independent random intensity curves.

Source: the FIDE team's code (spec §3). Geometry is applied identically to both images and their masks so the pair
stays aligned; the intensity curve is drawn independently per image so the encoders cannot rely on a fixed
grey-level relation between the modalities. All transforms go through :mod:`fide.geometry`.
"""

from __future__ import annotations

import torch

from fide import geometry
from fide.config import TrainConfig
from fide.features.encoders import minmax_normalise

__all__ = ["random_affine", "bezier_curve", "random_intensity_curve", "augment_pair"]

_CURVE_SAMPLES = 257


def _uniform(generator: torch.Generator | None, low: float, high: float, size: int = 1) -> torch.Tensor:
    return low + (high - low) * torch.rand(size, generator=generator, dtype=torch.float64)


def random_affine(shape: tuple[int, int], cfg: TrainConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random affine about the image centre: rotation, isotropic scale, shear and translation (code's ranges).

    Args:
        shape: (H, W) of the grid it acts on.
        cfg: ``max_rotation_rad``, ``max_scale`` (factor in 1 +- max_scale), ``max_shear``, ``max_translation``
            (fraction of each side).
        generator: random source.

    Returns:
        (3, 3) float32 pixel-space affine, fixed to moving (the output samples the input at ``A @ p``).
    """
    centre = torch.tensor([(n - 1) / 2 for n in shape], dtype=torch.float64)
    angle = _uniform(generator, -cfg.max_rotation_rad, cfg.max_rotation_rad)
    scale = _uniform(generator, 1 - cfg.max_scale, 1 + cfg.max_scale)
    shear = _uniform(generator, -cfg.max_shear, cfg.max_shear)[0]
    shift = _uniform(generator, -cfg.max_translation, cfg.max_translation, 2) * torch.tensor(shape, dtype=torch.float64)
    similarity = geometry.similarity_matrix(angle, scale, centre, centre + shift)[0]
    shear_about_centre = torch.eye(3, dtype=torch.float64)
    shear_about_centre[0, 1] = shear
    shear_about_centre[0, 2] = -shear * centre[1]
    return geometry.compose_affine(similarity, shear_about_centre).float()


def bezier_curve(image: torch.Tensor, controls: torch.Tensor) -> torch.Tensor:
    """Remap intensities through a quadratic Bezier curve ``(0, y0) - (x1, y1) - (1, y2)``.

    ``x(t)`` is monotone for ``x1`` in [0, 1], so every intensity has one curve value; the curve is tabulated and
    interpolated linearly.

    Args:
        image: (..., H, W) intensities in [0, 1].
        controls: (4,) ``y0, x1, y1, y2`` in [0, 1].

    Returns:
        Same shape, the remapped intensities (in [0, 1], not re-normalised).
    """
    if controls.shape != (4,):
        raise ValueError(f"controls must be (4,) = (y0, x1, y1, y2), got {tuple(controls.shape)}")
    y0, x1, y1, y2 = (float(v) for v in controls)
    t = torch.linspace(0, 1, _CURVE_SAMPLES, dtype=torch.float64)
    xs = 2 * t * (1 - t) * x1 + t**2
    ys = (1 - t) ** 2 * y0 + 2 * t * (1 - t) * y1 + t**2 * y2
    values = image.detach().double().clamp(0, 1).flatten().contiguous()
    upper = torch.searchsorted(xs, values).clamp(1, _CURVE_SAMPLES - 1)
    x_lo, x_hi, y_lo, y_hi = xs[upper - 1], xs[upper], ys[upper - 1], ys[upper]
    weight = ((values - x_lo) / (x_hi - x_lo).clamp(min=1e-12)).clamp(0, 1)
    return (y_lo + weight * (y_hi - y_lo)).view(image.shape).to(image.dtype)


def random_intensity_curve(image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random :func:`bezier_curve` (all control values uniform in [0, 1]), then per-channel min-max again.

    Args:
        image: (B, C, H, W) in [0, 1]; one curve for all channels of an image.

    Returns:
        (B, C, H, W) in [0, 1].
    """
    curved = torch.stack([bezier_curve(im, _uniform(generator, 0.0, 1.0, 4)) for im in image])
    return minmax_normalise(curved)


def augment_pair(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    fixed_mask: torch.Tensor,
    moving_mask: torch.Tensor,
    cfg: TrainConfig,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augment one aligned pair (the code's recipe; probabilities and ranges from ``cfg``).

    Args:
        fixed: (1, 1, H, W) SHG in [0, 1].
        moving: (1, 3, H, W) bright-field RGB in [0, 1], on the same grid.
        fixed_mask: (1, 1, H, W) float {0, 1} SHG foreground.
        moving_mask: (1, 1, H, W) float {0, 1} BF tissue.
        cfg: augmentation settings.
        generator: random source.

    Returns:
        The four tensors, same shapes; images in [0, 1], masks in {0, 1} (0 outside the transformed image).
    """
    if fixed.shape[-2:] != moving.shape[-2:]:
        raise ValueError(f"an aligned pair shares one grid, got fixed {tuple(fixed.shape)}, moving {moving.shape}")
    images = [fixed, moving, fixed_mask.float(), moving_mask.float()]
    for dim in (-2, -1):  # joint vertical and horizontal flips
        if float(torch.rand(1, generator=generator)) < cfg.flip_prob:
            images = [im.flip(dim) for im in images]
    if float(torch.rand(1, generator=generator)) < cfg.affine_prob:
        shape = tuple(fixed.shape[-2:])
        disp = geometry.affine_to_disp(random_affine(shape, cfg, generator)[None], shape)
        # images continue their border (background at the edge of a TMA image); masks are empty outside
        images = [geometry.warp(im, disp, padding_mode="border") for im in images[:2]] + [
            (geometry.warp(im, disp) > 0.5).float() for im in images[2:]
        ]
    fixed, moving, fixed_mask, moving_mask = images
    if float(torch.rand(1, generator=generator)) < cfg.intensity_prob:
        fixed = random_intensity_curve(fixed, generator)
    if float(torch.rand(1, generator=generator)) < cfg.intensity_prob:
        moving = random_intensity_curve(moving, generator)
    return fixed.clamp(0, 1), moving.clamp(0, 1), fixed_mask, moving_mask
