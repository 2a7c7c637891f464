"""Random primitives of the synthetic tissue: smooth noise fields and points drawn from a density.

Both draw from the caller's ``numpy`` generator, in a fixed order, so a seed fixes every image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = ["smooth_noise", "sample_points"]


def smooth_noise(shape: tuple[int, int], scale_px: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std random field with features about ``scale_px`` wide; made coarse then upsampled (fast)."""
    coarse = tuple(max(int(np.ceil(n / scale_px)) + 3, 4) for n in shape)
    field_ = ndimage.gaussian_filter(rng.standard_normal(coarse), 0.7, mode="wrap")
    fine = F.interpolate(torch.from_numpy(field_)[None, None], size=tuple(shape), mode="bicubic", align_corners=True)
    fine = fine[0, 0].numpy()
    return ((fine - fine.mean()) / (fine.std() + 1e-8)).astype(np.float32)


def sample_points(density: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points (n, 2), sub-pixel, drawn with probability proportional to ``density`` (H, W) >= 0."""
    flat = density.ravel().astype(np.float64)
    if n <= 0 or flat.sum() <= 0:
        return np.zeros((0, 2))
    idx = rng.choice(flat.size, size=n, p=flat / flat.sum())
    return np.stack(np.unravel_index(idx, density.shape), 1) + rng.random((n, 2)) - 0.5
