"""The preprocessing stage's entry: raw pair → normalised modality channels and masks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fide.config import PreprocessConfig

from .intensity import optical_density, robust_normalise, shg_log, stain_channels
from .masks import fill_with_background, shg_foreground, tissue_mask

__all__ = ["PreparedImage", "prepare_image", "prepare_pair"]

# code: intensities normalised to the common range of their tissue's 1st-99th percentiles
PERCENTILE_LOW = 1.0
PERCENTILE_HIGH = 99.0
# fide: the bright field's label maps against SHG are its haematoxylin (nuclei) density: collagen-rich stroma holds
# few nuclei, cellular regions many, whatever the fibres look like, while eosin and grey also stain the cells'
# cytoplasm. On 5 decoupled centre patches fide had left at wrong poses, NMI (8 bins) of smoothed log-SHG against
# haematoxylin was 1.7-22x higher at the truth than at that pose; against grey 0.1-0.6x, eosin 0.4-1.8x. The tissue
# mask beside it keeps a whole core's outline (haematoxylin alone left 6 more decoupled whole cores at 2-3 px)
LAYOUT_STAIN = 0


@dataclass
class PreparedImage:
    """One image ready for feature extraction; every tensor is (1, C, H, W) on the image's grid.

    Attributes:
        raw: the raw intensities (black fill of RGB images replaced by background colour).
        intensity: (1, 1, H, W) modality-robust channel in [0, 1] (log-SHG, eosin, or optical density).
        colour: (1, C, H, W) channels for label maps in [0, 1] (log-SHG; haematoxylin and tissue mask against SHG;
            RGB).
        tissue: (1, 1, H, W) bool tissue mask.
        fidelity: (1, 1, H, W) bool pixels that carry signal (SHG >= 1; tissue for RGB).
    """

    raw: torch.Tensor
    intensity: torch.Tensor
    colour: torch.Tensor
    tissue: torch.Tensor
    fidelity: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.raw.shape[-2:])  # type: ignore[return-value]


def prepare_image(image: torch.Tensor, *, partner_channels: int, cfg: PreprocessConfig | None = None) -> PreparedImage:
    """Normalise one image for registration against a partner of ``partner_channels`` channels.

    SHG (1 channel) → log(1 + x). RGB against SHG → eosin concentration (SHG marks collagen, which eosin stains)
    and, for the label maps, haematoxylin and the tissue mask (see :data:`LAYOUT_STAIN`); RGB against RGB → mean
    optical density (every stain absorbs; stains differ, tissue density does not) and RGB labels.

    Args:
        image: (C, H, W) or (1, C, H, W) raw intensities, C in {1, 3}.
        partner_channels: channel count of the other image of the pair.
    """
    cfg = cfg or PreprocessConfig()
    raw = image[None] if image.ndim == 3 else image
    if raw.ndim != 4 or raw.shape[0] != 1 or raw.shape[1] not in (1, 3):
        raise ValueError(f"image must be (C, H, W) with C in (1, 3), got {tuple(image.shape)}")
    raw = raw.float()
    if raw.shape[1] == 1:
        tissue = tissue_mask(raw)
        log = shg_log(raw)
        intensity = robust_normalise(log, tissue, PERCENTILE_LOW, PERCENTILE_HIGH)
        return PreparedImage(raw, intensity, intensity, tissue, shg_foreground(raw, cfg.shg_threshold))
    raw = fill_with_background(raw)
    tissue = tissue_mask(raw)
    if partner_channels != 1:
        signal = robust_normalise(optical_density(raw).mean(1, keepdim=True), tissue, PERCENTILE_LOW, PERCENTILE_HIGH)
        return PreparedImage(raw, signal, raw / 255.0, tissue, tissue)
    stains = robust_normalise(stain_channels(raw)[:, :2], tissue, PERCENTILE_LOW, PERCENTILE_HIGH)
    layout = torch.cat([stains[:, LAYOUT_STAIN : LAYOUT_STAIN + 1], tissue.float()], dim=1)
    return PreparedImage(raw, stains[:, 1:2], layout, tissue, tissue)


def prepare_pair(
    fixed: torch.Tensor, moving: torch.Tensor, cfg: PreprocessConfig | None = None
) -> tuple[PreparedImage, PreparedImage]:
    """Prepare a fixed and a moving image (each (C, H, W) raw, sizes may differ)."""
    return (
        prepare_image(fixed, partner_channels=moving.shape[-3], cfg=cfg),
        prepare_image(moving, partner_channels=fixed.shape[-3], cfg=cfg),
    )
