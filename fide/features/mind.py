"""2D MIND-SSC descriptors (Heinrich et al., MICCAI 2013), the handcrafted modality-independent features."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["MIND_RADIUS", "MIND_DILATION", "mind_ssc"]

# convexAdam: MIND-SSC patch radius 1, neighbours at distance 2 (the handcrafted features of every stage)
MIND_RADIUS = 1
MIND_DILATION = 2

# four neighbours at distance d; self-similarity is measured between pairs of them (not with the centre)
_NEIGHBOURS = ((0, 1), (1, 0), (0, -1), (-1, 0))
_PAIRS = ((0, 1), (1, 2), (2, 3), (3, 0), (0, 2), (1, 3))


def _shift(image: torch.Tensor, offset: tuple[int, int], pad: int) -> torch.Tensor:
    height, width = image.shape[-2:]
    padded = F.pad(image, (pad, pad, pad, pad), mode="replicate")
    di, dj = offset
    return padded[..., pad + di : pad + di + height, pad + dj : pad + dj + width]


def mind_ssc(image: torch.Tensor, radius: int = MIND_RADIUS, dilation: int = MIND_DILATION) -> torch.Tensor:
    """MIND with a self-similarity context in 2D: 6 channels, each a patch distance between two neighbours.

    The 3D MIND-SSC uses the 12 edges of the six-neighbourhood; in 2D the four-neighbourhood gives 4 edges plus the
    2 diagonals across the centre.

    Args:
        image: (B, 1, H, W) intensities in comparable units, e.g. [0, 1].
        radius: patch radius of the box-filtered squared differences, pixels.
        dilation: neighbour distance, pixels.

    Returns:
        (B, 6, H, W) descriptors in (0, 1], invariant to monotone-ish intensity changes between modalities.
    """
    if image.ndim != 4 or image.shape[1] != 1:
        raise ValueError(f"image must be (B, 1, H, W), got {tuple(image.shape)}")
    pad = dilation + radius
    shifted = [_shift(image, (di * dilation, dj * dilation), pad) for di, dj in _NEIGHBOURS]
    distances = torch.cat([(shifted[a] - shifted[b]) ** 2 for a, b in _PAIRS], dim=1)
    distances = F.avg_pool2d(F.pad(distances, (radius,) * 4, mode="replicate"), 2 * radius + 1, stride=1)  # patch SSD
    distances = distances - distances.amin(dim=1, keepdim=True)
    variance = distances.mean(dim=1, keepdim=True)
    variance = variance.clamp(min=variance.mean() * 1e-3, max=variance.mean() * 1e3) + 1e-8
    mind = torch.exp(-distances / variance)
    return mind / mind.amax(dim=1, keepdim=True)
