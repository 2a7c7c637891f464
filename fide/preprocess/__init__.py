"""Preprocessing: modality-robust channels, masks and normalisation (stage 1 of the pipeline)."""

from .intensity import optical_density, robust_normalise, shg_log, stain_channels
from .masks import bf_fill, bf_tissue, fill_with_background, shg_footprint, shg_foreground, tissue_mask
from .prepare import PreparedImage, prepare_image, prepare_pair

__all__ = [
    "optical_density",
    "robust_normalise",
    "shg_log",
    "stain_channels",
    "bf_fill",
    "bf_tissue",
    "fill_with_background",
    "shg_footprint",
    "shg_foreground",
    "tissue_mask",
    "PreparedImage",
    "prepare_image",
    "prepare_pair",
]
