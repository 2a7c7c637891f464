"""Tissue and fidelity masks of SHG and bright-field images."""

from __future__ import annotations

import torch

from .filters import gaussian_blur

__all__ = ["shg_foreground", "shg_footprint", "bf_tissue", "bf_fill", "tissue_mask", "fill_with_background"]

SHG_MASK_SIGMA_PX = 4.0  # fide: smooths the sparse fibre signal into a tissue footprint
SHG_FOOTPRINT_THRESHOLD = 2.0  # appearance spec: "smoothed signal > 2" is the footprint
# code: bright-field background = unsaturated and bright (HSV inRange 0..50, 132..255)
BF_MAX_SATURATION = 50 / 255
BF_MIN_VALUE = 132 / 255
BF_FILL_VALUE = 40 / 255  # fide: unsaturated and this dark is black corner fill, not tissue


def shg_foreground(shg: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
    """Pixels carrying SHG signal, the code's fidelity mask ``SHG >= 1``: (B, 1, H, W) raw → (B, 1, H, W) bool."""
    return shg >= threshold


def shg_footprint(
    shg: torch.Tensor, sigma_px: float = SHG_MASK_SIGMA_PX, threshold: float = SHG_FOOTPRINT_THRESHOLD
) -> torch.Tensor:
    """Tissue footprint of an SHG image: the Gaussian-smoothed signal above ``threshold`` (raw counts).

    Fibres are thin and sparse; smoothing turns them into the area of the core they belong to.
    """
    smooth = gaussian_blur(shg, sigma_px)
    return smooth > threshold


def _hsv_saturation_value(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    value = rgb.amax(dim=1, keepdim=True)
    saturation = (value - rgb.amin(dim=1, keepdim=True)) / value.clamp(min=1e-6)
    return saturation, value


def bf_fill(rgb: torch.Tensor) -> torch.Tensor:
    """Corner fill of a rotated bright-field image, black or pure white: (B, 3, H, W) raw → (B, 1, H, W) bool."""
    saturation, value = _hsv_saturation_value(rgb / 255.0)
    white = (rgb >= 255).all(dim=1, keepdim=True)  # saturated white fill; a real slide background sits below 255
    return (saturation < BF_MAX_SATURATION) & ((value < BF_FILL_VALUE) | white)


def bf_tissue(rgb: torch.Tensor) -> torch.Tensor:
    """Stained tissue of a bright-field image: NOT (unsaturated and bright), and not black fill.

    Args:
        rgb: (B, 3, H, W) raw RGB in [0, 255].

    Returns:
        (B, 1, H, W) bool. The grey-blue backgrounds of some slides (127, 135, 145) count as background.
    """
    saturation, value = _hsv_saturation_value(rgb / 255.0)
    background = (saturation < BF_MAX_SATURATION) & (value > BF_MIN_VALUE)
    return ~background & ~bf_fill(rgb)


def tissue_mask(image: torch.Tensor) -> torch.Tensor:
    """Tissue mask of either modality: SHG footprint for 1 channel, bright-field tissue for RGB."""
    if image.shape[1] == 1:
        return shg_footprint(image)
    if image.shape[1] == 3:
        return bf_tissue(image)
    raise ValueError(f"image must have 1 (SHG) or 3 (RGB) channels, got shape {tuple(image.shape)}")


def fill_with_background(rgb: torch.Tensor) -> torch.Tensor:
    """Replace black corner fill by the slide's background colour so fill never looks like tissue.

    Args:
        rgb: (B, 3, H, W) raw RGB.

    Returns:
        (B, 3, H, W) with fill pixels set to the median colour of the bright background (white when there is none).
    """
    fill = bf_fill(rgb)
    if not bool(fill.any()):
        return rgb
    out = rgb.clone()
    saturation, value = _hsv_saturation_value(rgb / 255.0)
    background = (saturation < BF_MAX_SATURATION) & (value > BF_MIN_VALUE) & ~fill
    for b in range(rgb.shape[0]):
        bg = background[b, 0]
        colour = rgb[b][:, bg].median(dim=1).values if int(bg.sum()) > 16 else rgb.new_full((3,), 255.0)
        out[b] = torch.where(fill[b], colour.view(3, 1, 1), rgb[b])
    return out
