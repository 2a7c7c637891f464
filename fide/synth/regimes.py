"""Acquisition regimes of synthetic pairs: how the bright field is moved, cut and exported relative to the SHG.

Each regime is a :class:`Regime` (the misalignment's ranges plus what labs and the challenge do to the images);
``fide synth --regime NAME`` picks one from :data:`REGIMES`. ``core`` is the generator's original behaviour and
draws exactly the same random numbers, so tasks made before regimes existed are byte-identical.

* ``core``: whole cores, any rotation, scale from ``--scale-range``, white (80 %) or black corner fill.
* ``patch20`` / ``patch180``: the challenge's pairs (MIDA-group/MultiRegEval ``make_eliceiri_patches.py``): the
  bright field of a larger field of view is moved rigidly (rotation ±20° or ±180°, shift ±10 %), then the centres
  of both are cut out, so neither the core outline nor any fill is visible.
* ``hard``: whole cores under a harder affine (scale 0.85-1.2, anisotropy ≤ 1.06, shear ≤ 0.05, shift ≤ 12 %),
  half with contrast-adjusted SHG (levels and gamma, as labs export it), a third with black fill, some blurred by
  upsampling from a lower resolution.
* ``mirror``: ``hard`` with the slide mirrored left-right (the affine reflects).
* ``decoupled`` / ``decoupled-patch20``: whole cores as ``core`` / centre patches as ``patch20`` where the SHG's fine
  fibre texture is independent of the bright field's while the coarse layout agrees (stroma bright in SHG and pink
  in H&E, cellular regions dark and purple; stroma 40-75 % of the core, fibres inside it), half of them faint (99th
  percentile 14-30 counts): the held-out real cores whose fibre-texture NCC at the true pose is ~0 while the layout's
  NMI is 0.008-0.022 (shg-bf-appearance.md, "Fine texture against coarse layout"; docs/synth.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Regime", "REGIMES", "look_up_regime", "adjust_contrast", "upsampling_blur"]


@dataclass(frozen=True)
class Regime:
    """Ranges of one acquisition regime (see the module docstring)."""

    rotation_deg: float = 180.0
    scale_range: tuple[float, float] | None = None  # None: the caller's --scale-range
    anisotropy: float = 1.05
    shear: float = 0.08
    shift_frac: float = 0.10
    patch: bool = False  # cut the centres of a larger, rigidly moved field of view
    patch_margin: float = 1.8  # side of that field of view / image side (covers ±180° plus the shift)
    mirror: bool = False
    black_fill_prob: float = 0.2
    contrast_prob: float = 0.0  # SHG levels / gamma adjusted
    blur_prob: float = 0.0  # one image upsampled from a lower resolution
    independent_texture: bool = False  # SHG fibres drawn anew in the same stroma (see make_aligned_pair)
    faint_prob: float = 0.0  # SHG at the dim end of the real range


REGIMES: dict[str, Regime] = {
    "core": Regime(),
    "patch20": Regime(rotation_deg=20.0, scale_range=(1.0, 1.0), anisotropy=1.0, shear=0.0, patch=True),
    "patch180": Regime(rotation_deg=180.0, scale_range=(1.0, 1.0), anisotropy=1.0, shear=0.0, patch=True),
    "hard": Regime(
        scale_range=(0.85, 1.2),
        anisotropy=1.06,
        shear=0.05,
        shift_frac=0.12,
        black_fill_prob=1 / 3,
        contrast_prob=0.5,
        blur_prob=0.3,
    ),
    "mirror": Regime(
        scale_range=(0.85, 1.2),
        anisotropy=1.06,
        shear=0.05,
        shift_frac=0.12,
        mirror=True,
        black_fill_prob=1 / 3,
        contrast_prob=0.5,
        blur_prob=0.3,
    ),
    "decoupled": Regime(independent_texture=True, faint_prob=0.5),
    "decoupled-patch20": Regime(
        rotation_deg=20.0,
        scale_range=(1.0, 1.0),
        anisotropy=1.0,
        shear=0.0,
        patch=True,
        independent_texture=True,
        faint_prob=0.5,
    ),
}


def look_up_regime(name: str) -> Regime:
    """The :class:`Regime` called ``name``.

    Raises:
        ValueError: unknown name (the valid ones are listed).
    """
    if name not in REGIMES:
        raise ValueError(f"regime must be one of {sorted(REGIMES)}, got {name!r}")
    return REGIMES[name]


def adjust_contrast(shg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Levels and gamma as an export would set them: ``255 · clip((x - lo) / (hi - lo), 0, 1) ** gamma``.

    Args:
        shg: (1, H, W) uint8.

    Returns:
        (1, H, W) uint8, with ``lo`` 0-3, ``hi`` between the 99.5th percentile and 255, gamma 0.5-1.6.
    """
    x = shg.astype(np.float32)
    lo = float(rng.uniform(0, 3))
    hi = float(rng.uniform(max(np.percentile(x, 99.5), lo + 8), 255))
    gamma = float(np.exp(rng.uniform(np.log(0.5), np.log(1.6))))
    out = 255 * np.clip((x - lo) / (hi - lo), 0, 1) ** gamma
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def upsampling_blur(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An image acquired at 1/1.5-1/2.5 of the resolution and upsampled back (bilinear): (C, H, W) uint8 → same."""
    factor = float(rng.uniform(1.5, 2.5))
    tensor = torch.from_numpy(image.astype(np.float32))[None]
    size = tuple(image.shape[-2:])
    small = F.interpolate(tensor, scale_factor=1 / factor, mode="area")
    back = F.interpolate(small, size=size, mode="bilinear", align_corners=False)[0].numpy()
    return np.clip(np.round(back), 0, 255).astype(np.uint8)
