"""Fibre-texture search: the fallback for SHG that shows only isolated collagen patches.

When an SHG image is nearly empty (no glow of the core outline, a few bright patches of fibres), neither label maps
nor smoothed intensities carry the pose: the only link to the bright field is the fibre texture itself, which
correlates only within a few degrees of the true pose. So:

1. the three largest SHG patches, band-passed, are matched against the band-passed eosin channel for every rotation
   and scale of a fine grid and every translation at once (FFT), and vote for one similarity. A single patch finds
   false matches in the dense eosin texture; several patches agreeing on one pose do not;
2. the twelve largest patches then each find their own position near that pose, and an affine through those that
   agree (RANSAC, at least ``min_inliers``) confirms the vote and adds the shear a similarity lacks;
3. Adam fits the affine to the patches' texture, at ``refine_size_px`` and at full resolution.

Lengths in :class:`~fide.config.FibreConfig` are pixels of an image whose side is the challenge's 834 px, scaled
with the image side (the core fills the image whatever its size). Affines are in pixels, fixed to moving, with the
conventions of :mod:`fide.geometry`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fide import geometry
from fide.config import REFERENCE_SIDE_PX, FibreConfig
from fide.prealign.fibre_match import (
    MovingSpectra,
    Patch,
    band_pass,
    box_px,
    collagen_patches,
    locate_patches,
    patch_consensus,
    similarity_grid,
)
from fide.prealign.ransac import ransac_affine

__all__ = ["FibreMatch", "refine_on_patches", "texture_score", "fibre_search"]


@dataclass
class _Level:
    """One resolution's band-passed images and patches, and its grid's scale factors to and from full resolution."""

    fixed_band: torch.Tensor
    moving_band: torch.Tensor
    patches: list[Patch]
    to_level: tuple[tuple[float, float], tuple[float, float]]
    length: float  # pixels of this grid per pixel of an 834 px image: FibreConfig lengths times this

    def down(self, affine: torch.Tensor) -> torch.Tensor:
        return geometry.rescale_affine(affine, *self.to_level)

    def up(self, affine: torch.Tensor) -> torch.Tensor:
        return geometry.rescale_affine(affine, *[tuple(1 / f for f in factors) for factors in self.to_level])


def _level(
    fixed: torch.Tensor, moving: torch.Tensor, size_px: int, band_px: Sequence[float], patches: int, cfg: FibreConfig
) -> _Level:
    factor = min(1.0, size_px / max(fixed.shape[-2:]))  # both images by one factor: the pixel-size ratio stays
    fixed_shape, moving_shape = (tuple(max(8, round(n * factor)) for n in im.shape[-2:]) for im in (fixed, moving))
    fixed_level = geometry.downsample(fixed, fixed_shape) if factor < 1 else fixed
    moving_level = geometry.downsample(moving, moving_shape) if factor < 1 else moving
    length = max(fixed_shape) / REFERENCE_SIDE_PX  # the core fills the image: fibres are thinner in smaller images
    low, high = (width * length for width in band_px)
    return _Level(
        band_pass(fixed_level, low, high),
        band_pass(moving_level, low, high),
        collagen_patches(fixed_level, patches, cfg.patch_smooth_px * length, cfg.patch_max_radius_px * length),
        (
            geometry.scale_factors(fixed.shape[-2:], fixed_shape),
            geometry.scale_factors(moving.shape[-2:], moving_shape),
        ),
        length,
    )


def _best_pose(level: _Level, linear: torch.Tensor, batch: int, pool_px: int) -> tuple[float, torch.Tensor, float]:
    """Best consensus over a pose grid, its (3, 3) affine on the level's grid, and the best score of a pose far
    from it (the runner-up)."""
    scores, positions, reference = [], [], None
    spectra = MovingSpectra(level.moving_band, box_px(level.patches, linear))
    for start in range(0, len(linear), batch):
        chunk = linear[start : start + batch]
        votes, reference = patch_consensus(level.fixed_band, level.moving_band, level.patches, chunk, pool_px, spectra)
        value, index = votes.flatten(1).max(1)
        scores.append(value)
        positions.append(torch.stack([index // votes.shape[-1], index % votes.shape[-1]], 1).float())
    score, position = torch.cat(scores), torch.cat(positions)
    best = int(score.argmax())
    far = (position - position[best]).norm(dim=1) > 4 * pool_px + 4
    runner_up = float(score[far].max()) if bool(far.any()) else -1.0
    affine = torch.eye(3, device=linear.device)
    affine[:2, :2] = linear[best]
    affine[:2, 2] = position[best] - linear[best] @ reference
    return float(score[best]), affine, runner_up


def refine_on_patches(
    fixed_band: torch.Tensor,
    moving_band: torch.Tensor,
    patches: list[Patch],
    affine: torch.Tensor,
    iterations: int,
    learning_rate: float,
) -> tuple[torch.Tensor, float]:
    """Adam on the six affine parameters, maximising the patches' mean masked NCC (all on one grid).

    The grid search leaves ~1° and half a pixel of error; a continuous fit removes it and adds the anisotropy and
    shear a similarity cannot express. Returns the best (3, 3) affine seen and its score.
    """
    # only the patches' pixels matter: sample them alone instead of warping whole images
    points = torch.cat([torch.nonzero(p.mask > 0.5).float() for p in patches])  # (N, 2)
    ids = torch.cat([torch.full((int((p.mask > 0.5).sum()),), k, device=points.device) for k, p in enumerate(patches)])
    # per-patch sums as a product with the (K, N) membership matrix: index_add adds with atomics on CUDA, in an
    # order that changes from run to run, and the same input must give the same field
    member = F.one_hot(ids, len(patches)).T.to(points)
    counts = member.sum(1)

    def centred(values: torch.Tensor) -> torch.Tensor:  # zero mean, unit norm within each patch
        values = values - (member @ values / counts)[ids]
        # +eps inside the root: a patch mapped onto blank background has zero energy and sqrt'(0) is infinite
        norms = (member @ values**2 + 1e-12).sqrt()
        return values / norms[ids]

    fixed_values = centred(geometry.sample_at(fixed_band, points)[:, 0])
    # the update turns and stretches about the patches' centroid, in units that move a patch rim by ~1 px: about
    # the image origin a small turn would also be a large shift, and Adam would crawl along that coupling
    centroid = points.mean(0)
    reach = float((points - centroid).norm(dim=1).max().clamp(min=1.0))
    local = torch.cat([(points - centroid) / reach, points.new_ones(len(points), 1)], 1)
    delta = points.new_zeros(2, 3).requires_grad_(True)
    optimiser = torch.optim.Adam([delta], lr=learning_rate)
    best, best_score = affine, -2.0
    for _ in range(iterations + 1):
        mapped = points @ affine[:2, :2].T + affine[:2, 2] + local @ delta.T
        moving_values = centred(geometry.sample_at(moving_band, mapped, padding_mode="zeros")[:, 0])
        score = (member @ (fixed_values * moving_values)).mean()
        if float(score.detach()) > best_score:
            best_score = float(score.detach())
            best = affine.clone()
            best[:2, :2] += delta.detach()[:, :2] / reach
            best[:2, 2] += delta.detach()[:, 2] - delta.detach()[:, :2] @ centroid / reach
        if not iterations:
            break
        optimiser.zero_grad()
        (-score).backward()
        optimiser.step()
    return best, best_score


@dataclass
class FibreMatch:
    """Result of :func:`fibre_search`."""

    affine: torch.Tensor  # (3, 3) full resolution, fixed to moving
    texture_score: float  # the patches' mean NCC under ``affine`` at full resolution (see :func:`texture_score`)
    grid_score: float  # the exhaustive grid's best consensus
    runner_up: float  # the grid's best consensus at a pose far from the winner
    current_score: float  # texture score of the ``current`` affine given to the search (nan when none was)


def texture_score(fixed: torch.Tensor, moving: torch.Tensor, affine: torch.Tensor, cfg: FibreConfig) -> float:
    """Mean NCC of the band-passed SHG patches and the eosin under a full-resolution affine (1 = identical)."""
    return _score(_final_level(fixed, moving, cfg), affine)


def _final_level(fixed: torch.Tensor, moving: torch.Tensor, cfg: FibreConfig) -> _Level:
    return _level(fixed, moving, max(fixed.shape[-2:]), cfg.final_band_px, cfg.refine_patches, cfg)


def _score(level: _Level, affine: torch.Tensor) -> float:
    if not level.patches:
        return 0.0
    return refine_on_patches(level.fixed_band, level.moving_band, level.patches, level.down(affine), 0, 0.0)[1]


def fibre_search(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    cfg: FibreConfig,
    scale_range: tuple[float, float],
    seed: int = 0,
    current: torch.Tensor | None = None,
) -> FibreMatch | None:
    """The similarity on which the largest SHG collagen patches agree, confirmed and made affine by every patch.

    Args:
        fixed: (1, 1, H, W) SHG intensity (log, normalised), full resolution.
        moving: (1, 1, Hm, Wm) eosin intensity, full resolution.
        cfg: grid steps, sizes and bands.
        scale_range: (min, max) isotropic scales searched, moving pixels per fixed pixel.
        seed: seed of RANSAC's samples.
        current: (3, 3) full-resolution affine to compare with: its :func:`texture_score` comes with the match,
            taken on the same full-resolution level.

    Returns:
        The match, or None when the SHG has fewer than two patches (nothing to agree on) or too few patches confirm
        the voted pose.
    """
    coarse = _level(fixed, moving, cfg.size_px, cfg.band_px, cfg.patches, cfg)
    if len(coarse.patches) < 2:
        return None
    linear = similarity_grid(*scale_range, cfg.angle_step_deg, cfg.scale_step).to(fixed)
    grid_score, best, runner_up = _best_pose(coarse, linear, cfg.batch, cfg.pool_px)
    affine = coarse.up(best)
    # every patch finds its own position near the voted pose; an affine through the consistent ones (RANSAC) adds
    # the shear and anisotropy a similarity lacks. Fewer than min_inliers agreeing: the vote was not confirmed.
    fine = _level(fixed, moving, cfg.refine_size_px, cfg.band_px, cfg.refine_patches, cfg)
    for window in (cfg.locate_window_px, cfg.locate_window_px / 3):
        window_px = max(2, round(window * fine.length))
        centres, positions, _ = locate_patches(
            fine.fixed_band, fine.moving_band, fine.patches, fine.down(affine), window_px
        )
        threshold_px = cfg.ransac_threshold_px * fine.length
        fitted, inliers = ransac_affine(
            centres, positions, threshold_px=threshold_px, iterations=cfg.ransac_iterations, seed=seed
        )
        if int(inliers.sum()) < cfg.min_inliers:
            return None
        affine = fine.up(fitted)
    # continuous fits on the texture: at the fine level, then the finest texture at full resolution
    score = 0.0
    final = _final_level(fixed, moving, cfg)
    for level in (fine, final):
        fitted, score = refine_on_patches(
            level.fixed_band,
            level.moving_band,
            level.patches,
            level.down(affine),
            cfg.refine_iterations,
            cfg.refine_learning_rate,
        )
        affine = level.up(fitted)
    current_score = _score(final, current) if current is not None else float("nan")
    return FibreMatch(affine, score, grid_score, runner_up, current_score)
