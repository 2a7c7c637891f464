"""Modality-robust intensity channels: log-SHG, H&E colour deconvolution, robust (percentile) normalisation."""

from __future__ import annotations

import torch

__all__ = ["shg_log", "optical_density", "stain_channels", "robust_normalise", "HE_STAINS"]

# Ruifrok & Johnston (2001) optical-density vectors (R, G, B) of haematoxylin, eosin and a residual stain
HE_STAINS = torch.tensor(
    [
        [0.650, 0.704, 0.286],
        [0.072, 0.990, 0.105],
        [0.268, 0.570, 0.776],
    ]
)


def shg_log(shg: torch.Tensor) -> torch.Tensor:
    """``log(1 + x)`` of raw SHG counts, the code's test-time mapping, applied everywhere (training included).

    Args:
        shg: (B, 1, H, W) raw SHG intensities (uint8 range).

    Returns:
        (B, 1, H, W), same units compressed; most real SHG signal is dim (median 2, p99 100), so the log spreads it.
    """
    return torch.log1p(shg.clamp(min=0))


def optical_density(rgb: torch.Tensor, white: float = 255.0) -> torch.Tensor:
    """Beer-Lambert optical density ``-log10(I / white)`` per channel; (B, 3, H, W) → (B, 3, H, W), >= 0."""
    return -torch.log10(((rgb + 1.0) / (white + 1.0)).clamp(1e-3, 1.0))


def stain_channels(rgb: torch.Tensor) -> torch.Tensor:
    """Colour deconvolution of an H&E image.

    Args:
        rgb: (B, 3, H, W) raw bright-field RGB in [0, 255].

    Returns:
        (B, 3, H, W) stain concentrations (haematoxylin, eosin, residual), optical-density units, >= 0.
    """
    stains = HE_STAINS.to(rgb) / HE_STAINS.to(rgb).norm(dim=1, keepdim=True)
    od = optical_density(rgb)
    concentrations = torch.einsum("sc,bchw->bshw", torch.linalg.inv(stains).T, od)
    return concentrations.clamp(min=0)


def robust_normalise(
    image: torch.Tensor, mask: torch.Tensor | None = None, low: float = 1.0, high: float = 99.0
) -> torch.Tensor:
    """Map each channel's [p_low, p_high] percentiles (inside ``mask``) to [0, 1] and clamp.

    Args:
        image: (B, C, H, W) any units.
        mask: (B, 1, H, W) bool/float; percentiles over the whole image when None or empty.
        low: lower percentile, 0-100.
        high: upper percentile, 0-100.

    Returns:
        (B, C, H, W) in [0, 1].
    """
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got low={low}, high={high}")
    out = torch.empty_like(image)
    q = image.new_tensor([low / 100, high / 100])
    for b in range(image.shape[0]):
        selected = None if mask is None else mask[b, 0] > 0.5
        for c in range(image.shape[1]):
            values = image[b, c]
            if selected is not None and int(selected.sum()) > 16:
                values = values[selected]
            values = values.flatten()
            if values.numel() > 200_000:  # quantile cost; a strided subsample gives the same percentiles here
                values = values[:: values.numel() // 200_000 + 1]
            lo, hi = torch.quantile(values, q)
            out[b, c] = ((image[b, c] - lo) / (hi - lo).clamp(min=1e-6)).clamp(0, 1)
    return out
