"""Fail fast on images that carry nothing to register: too small, constant, blank SHG, bright field with no tissue.

Decided from cheap statistics before any registration work (the statistics of a 4096² image take well under a
second), so such a pair fails at once with a reason instead of running the whole pipeline to a meaningless field
or into a library error (k-means++ seeding on a constant image ends in torch's "invalid multinomial distribution").

Thresholds (:data:`MIN_SIDE_PX`, ``PreprocessConfig.min_signal_fraction``) sit far below real data: real SHG covers at
least 0.15 of the image (smoothed signal > 2, docs/synth.md), as do the nearly empty cores of ``fide synth``
(0.15-0.37), and a bright field with tissue shows it on far more than 2 % of its pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fide.config import PreprocessConfig
from fide.io import DatasetError

from .masks import SHG_FOOTPRINT_THRESHOLD, SHG_MASK_SIGMA_PX, bf_tissue, shg_footprint

__all__ = ["signal_problem", "check_pair_signal"]

# the statistics are taken at most at this longest side: a coverage fraction needs no finer grid
_STATISTICS_SIDE_PX = 1024
MIN_SIDE_PX = 16  # fide: smaller images are refused before registration
# fide: a bright-field pixel this many grey levels (0-255) off the image's median colour is structure, not
# background noise; pale stains the H&E tissue mask misses (HISTOLM's) still count as tissue
BF_STRUCTURE_LEVELS = 15.0


def _pooled(image: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(1, C, h, w) average-pooled copy with longest side <= _STATISTICS_SIDE_PX, and the integer factor used."""
    factor = max(1, -(-max(image.shape[-2:]) // _STATISTICS_SIDE_PX))
    batch = image[None].float()
    return (F.avg_pool2d(batch, factor, ceil_mode=True) if factor > 1 else batch), factor


def signal_problem(image: torch.Tensor, cfg: PreprocessConfig | None = None) -> str | None:
    """What makes ``image`` unusable for registration, in words, or None when it carries signal.

    Args:
        image: (C, H, W) raw intensities, C = 1 (SHG or any grey image: raw counts) or 3 (RGB in [0, 255]).
        cfg: the threshold ``min_signal_fraction`` (the image side's is :data:`MIN_SIDE_PX`).

    Returns:
        e.g. ``"image is 8 x 8 px, smaller than the minimum 16 px per side"``, ``"image is constant (all pixels
        0)"``, ``"SHG image has no signal (...)"``, ``"bright-field image shows no tissue (...)"``.
    """
    cfg = cfg or PreprocessConfig()
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be (C, H, W) with C in (1, 3), got {tuple(image.shape)}")
    height, width = image.shape[-2:]
    if min(height, width) < MIN_SIDE_PX:
        return f"image is {height} x {width} px, smaller than the minimum {MIN_SIDE_PX} px per side"
    low, high = float(image.min()), float(image.max())
    if low == high:
        return f"image is constant (all pixels {low:g})"
    pooled, factor = _pooled(image)
    if image.shape[0] == 1:
        # the pipeline's own tissue footprint (raw counts), at the pooled scale
        footprint = shg_footprint(pooled, max(SHG_MASK_SIGMA_PX / factor, 0.5), SHG_FOOTPRINT_THRESHOLD)
        fraction = float(footprint.float().mean())
        if fraction < cfg.min_signal_fraction:
            return (
                f"SHG image has no signal (smoothed signal above {SHG_FOOTPRINT_THRESHOLD:g} covers "
                f"{100 * fraction:.1f} % of the image, at least {100 * cfg.min_signal_fraction:g} % needed; "
                f"pixels {low:g}..{high:g}, raw SHG counts expected)"
            )
        return None
    fraction = float(bf_tissue(pooled).float().mean())
    # pale, unsaturated stains (immunohistochemistry, faded H&E) escape the H&E tissue mask but still differ
    # from their background: only an image that does neither is empty
    background = pooled.flatten(2).median(dim=2).values[..., None, None]
    structure = float(((pooled - background).abs().amax(1) > BF_STRUCTURE_LEVELS).float().mean())
    if max(fraction, structure) < cfg.min_signal_fraction:
        return (
            f"bright-field image shows no tissue (tissue mask covers {100 * fraction:.1f} % of the image and pixels "
            f"{BF_STRUCTURE_LEVELS:g} grey levels off the background {100 * structure:.1f} %, at least "
            f"{100 * cfg.min_signal_fraction:g} % needed)"
        )
    return None


def check_pair_signal(
    fixed: torch.Tensor, moving: torch.Tensor, fixed_name: str, moving_name: str, cfg: PreprocessConfig | None = None
) -> None:
    """Raise when either image of a pair carries nothing to register.

    Args:
        fixed: (C, H, W) raw fixed image.
        moving: (C, Hm, Wm) raw moving image.
        fixed_name, moving_name: the files they came from, for the message.
        cfg: thresholds (see :func:`signal_problem`).

    Raises:
        DatasetError: one line naming the file and the problem, e.g.
            ``".../X_0001_0000.nii.gz: image is constant (all pixels 0)"``.
    """
    for image, name in ((fixed, fixed_name), (moving, moving_name)):
        problem = signal_problem(image, cfg)
        if problem is not None:
            raise DatasetError(f"{name}: {problem}")
