"""The appearance statistics of ``shared/spec/shg-bf-appearance.md``, measured on one aligned SHG / BF pair.

Used to check that synthetic pairs look like the real ones in numbers. Pixel statistics are taken at the image's own
size; texture and cross-modal ones (coherence, correlations) after an anti-aliased resize to 512 px, the size the
real figures were measured at.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = ["appearance_stats", "SPEC_MEDIANS"]

# median over the 26 real pairs (spec tables)
SPEC_MEDIANS = {
    "shg_zero_frac": 0.07,
    "shg_nonzero_median": 2.0,
    "shg_nonzero_p90": 27.0,
    "shg_nonzero_p99": 100.0,
    "shg_saturated_frac": 0.0,
    "shg_footprint": 0.57,
    "shg_coherence": 0.38,
    "bf_background": (244, 243, 244),
    "bf_tissue_p10": (151, 93, 125),
    "bf_tissue_median": (207, 143, 170),
    "bf_tissue_p90": (228, 190, 205),
    "corr_shg_inv_luminance": 0.07,
    "corr_shg_eosin": 0.42,
}


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """(C, H, W) float image to (C, size, size), anti-aliased (area-like) bilinear."""
    tensor = torch.from_numpy(np.asarray(image, np.float32))[None]
    return F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0].numpy()


def _coherence(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean structure-tensor coherence (λ1 - λ2) / (λ1 + λ2) over ``mask``; gradient σ 1 px, window σ 8 px."""
    gi = ndimage.gaussian_filter(image, 1.0, order=(1, 0))
    gj = ndimage.gaussian_filter(image, 1.0, order=(0, 1))
    jii, jjj, jij = (ndimage.gaussian_filter(x, 8.0) for x in (gi * gi, gj * gj, gi * gj))
    coherence = np.sqrt((jii - jjj) ** 2 + 4 * jij**2) / (jii + jjj + 1e-9)
    return float(coherence[mask].mean()) if mask.any() else float("nan")


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def appearance_stats(shg: np.ndarray, bf: np.ndarray) -> dict:
    """Spec statistics of one aligned pair.

    Args:
        shg: (1, H, W) or (H, W) uint8 SHG.
        bf: (3, H, W) uint8 RGB bright-field, aligned with ``shg``.

    Returns:
        dict with the keys of :data:`SPEC_MEDIANS` (RGB triples as tuples of floats) plus ``bf_tissue_frac``.
    """
    shg = np.asarray(shg, np.float32).reshape(np.shape(shg)[-2:])
    bf = np.asarray(bf, np.float32)
    size = shg.shape[0]
    nonzero = shg[shg > 0]
    pct = np.percentile(nonzero, [50, 90, 99]) if nonzero.size else np.zeros(3)
    smooth = ndimage.gaussian_filter(shg, 2.0 * size / 512)
    out = {
        "shg_zero_frac": float((shg == 0).mean()),
        "shg_nonzero_median": float(pct[0]),
        "shg_nonzero_p90": float(pct[1]),
        "shg_nonzero_p99": float(pct[2]),
        "shg_saturated_frac": float((shg >= 255).mean()),
        "shg_footprint": float((smooth > 2).mean()),
    }
    luminance = bf.mean(0)
    bright = luminance >= np.quantile(luminance, 0.97)
    background = bf[:, bright].mean(1)
    # tissue: clearly darker than the background in some channel (the winner's "non-white" mask, in spirit)
    distance = ndimage.gaussian_filter(np.abs(bf - background[:, None, None]).max(0), 1.0)
    tissue = distance > 25
    values = bf[:, tissue]
    out["bf_background"] = tuple(float(v) for v in background.round(1))
    out["bf_tissue_frac"] = float(tissue.mean())
    for key, q in (("bf_tissue_p10", 10), ("bf_tissue_median", 50), ("bf_tissue_p90", 90)):
        out[key] = tuple(float(v) for v in np.percentile(values, q, axis=1)) if values.size else (np.nan,) * 3
    # texture and cross-modal figures at 512 px
    small = _resize(np.concatenate([shg[None], bf, tissue[None].astype(np.float32)]), 512)
    shg_s, rgb_s, tissue_s = small[0], small[1:4], small[4] > 0.5
    footprint_s = ndimage.gaussian_filter(shg_s, 2.0) > 2
    out["shg_coherence"] = _coherence(shg_s, footprint_s & tissue_s)
    inside = tissue_s
    out["corr_shg_inv_luminance"] = _corr(shg_s[inside], 255 - rgb_s.mean(0)[inside])
    out["corr_shg_eosin"] = _corr(shg_s[inside], (rgb_s[0] - rgb_s[1])[inside])
    return out
