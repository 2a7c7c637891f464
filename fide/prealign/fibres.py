"""Fibre-texture search: the fallback for SHG that shows only isolated collagen patches.

When an SHG image is nearly empty (no glow of the core outline, a few bright patches of fibres), neither label maps
nor smoothed intensities carry the pose: the only link to the bright field is the fibre texture itself, which
correlates only within a few degrees of the true pose. So:

1. the three largest SHG patches, band-passed, are matched against the band-passed eosin channel for every rotation
   and scale of a fine grid and every translation at once (FFT), and vote for one similarity. A single patch finds
   false matches in the dense eosin texture; several patches agreeing on one pose do not;
2. the twelve largest patches then each find their own position near that pose, and an affine through those that
   agree (RANSAC, at least :data:`MIN_INLIERS`) confirms the vote and adds the shear a similarity lacks;
3. Levenberg-Marquardt fits the affine to the patches' texture, at :data:`REFINE_SIZE_PX` and at full resolution.

The texture NCC itself lives in :mod:`fide.prealign.fibre_texture`. Lengths (the constants below and those of
:mod:`fide.prealign.fibre_texture`) are pixels of an image whose side is the challenge's 834 px, scaled with the
image side (the core fills the image whatever its size). Affines are in pixels, fixed to moving, with the
conventions of :mod:`fide.geometry`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fide import geometry
from fide.config import REFERENCE_SIDE_PX
from fide.prealign.fibre_match import MovingSpectra, box_px, locate_patches, patch_consensus, similarity_grid
from fide.prealign.fibre_texture import (
    TEXTURE_PATCHES,
    FibreTexture,
    PatchPixels,
    TextureLevel,
    refine_on_patches,
    texture_level,
    texture_score,
)
from fide.prealign.ransac import ransac_affine

__all__ = ["FibreMatch", "FibreTexture", "PatchPixels", "refine_on_patches", "texture_score", "fibre_search"]

# read when used (tests set them for their small textures)
GRID_SIZE_PX = 278  # fide: exhaustive grid at a third of 834 px: fibres survive as texture, an FFT ~1 ms
GRID_BAND_PX = (2.0, 8.0)  # fide: band-pass Gaussian sigmas of the grid searches and the patch location
GRID_PATCHES = 3  # fide: the largest patches vote on the grids
ANGLE_STEP_DEG = 4.0  # fide: the patches' consensus falls ~25 % 2° and ~60 % 3° off the truth: a 6° grid missed one
SCALE_STEP = 0.06  # fide: ratio between neighbouring scales of the grid
LIKELY_SCALES = (0.9, 1.1)  # fide: the grid holds these scales (the usual pair), unmirrored first (see _grid_shells)
GRID_CANDIDATES = 4  # fide: poses checked per grid shell and vote: on dense synthetic patches the truth ranked 2nd-3rd
POOL_PX = 2  # fide: tolerance of each vote, pixels at GRID_SIZE_PX, for the grid's pose error
VOTES = ("median", "mean")  # fide: 7 dense synthetic patches: the truth in either vote's 4 best on 6, in each's on 4
BATCH = 8  # grid poses correlated at once: the spectra stay in the CPU caches (32: 1.5x the time, 1 thread)
REFINE_SIZE_PX = 417  # fide: per-patch location and the first continuous fit
LOCATE_WINDOW_PX = 24.0  # fide: each patch looks this far from where the voted pose puts it
RANSAC_THRESHOLD_PX = 4.0  # fide: a patch within this of where an affine puts it agrees with it
RANSAC_ITERATIONS = 300  # samples of three among at most a dozen located patches
MIN_INLIERS = 5  # fide: patches that must agree on one affine (three always fit one; 4 agreed by chance)
REFINE_ITERATIONS = 20  # fide: Levenberg-Marquardt steps of each texture fit: 20 reached what 60 Adam steps had
FIT_DAMPING = 1e-3  # initial Marquardt factor of those fits
# fide: grid poses closer than this (a fraction of the side, fide.geometry.same_pose) are one peak of the consensus:
# it falls ~60 % 3° off the truth, so neighbours within ~5° (0.06 at the corners) add no candidate
GRID_DISTINCT = 0.06
# a hypothesis within a third of a patch's search window of an earlier one is confirmed once (8 px at 834 px)
HYPOTHESIS_DISTINCT = LOCATE_WINDOW_PX / 3 / REFERENCE_SIDE_PX
VERIFY_BELOW = 0.2  # fide: a confirmed pose is kept when its fitted texture NCC reaches this (a wrong pose scores ~0)


def _best_poses(
    level: TextureLevel, linear: torch.Tensor, batch: int, pool_px: int, count: int, votes: Sequence[str] = ("mean",)
) -> list[tuple[float, torch.Tensor]]:
    """The ``count`` best distinct poses of a grid for each patch vote, interleaved best first without repeats, as
    (consensus score, (3, 3) affine on the level's grid).

    Poses are distinct by :func:`fide.geometry.distinct_poses` at :data:`GRID_DISTINCT`; on dense texture the true
    pose can rank second or third by a few hundredths.
    """
    scores, positions, reference = [], [], None
    spectra = MovingSpectra(level.moving_band, box_px(level.patches, linear))
    for start in range(0, len(linear), batch):
        chunk = linear[start : start + batch]
        consensus, reference = patch_consensus(
            level.fixed_band, level.moving_band, level.patches, chunk, pool_px, spectra, votes
        )
        value, index = consensus.flatten(2).max(2)  # (V, B)
        scores.append(value)
        positions.append(torch.stack([index // consensus.shape[-1], index % consensus.shape[-1]], -1).float())
    score, position = torch.cat(scores, 1), torch.cat(positions, 1)  # (V, P), (V, P, 2)
    affines = torch.eye(3, device=linear.device).repeat(*score.shape, 1, 1)  # (V, P, 3, 3)
    affines[..., :2, :2] = linear
    affines[..., :2, 2] = position - linear @ reference
    shape = level.fixed_band.shape[-2:]
    order = torch.argsort(score, dim=1, descending=True)  # (V, P)
    ranked = [
        [
            int(order[vote, i])
            for i in geometry.distinct_poses(affines[vote, order[vote]], shape, GRID_DISTINCT, limit=count)
        ]
        for vote in range(len(score))
    ]
    interleaved = [(vote, own[rank]) for rank in range(count) for vote, own in enumerate(ranked) if rank < len(own)]
    kept = geometry.distinct_poses(torch.stack([affines[v, i] for v, i in interleaved]), shape, GRID_DISTINCT)
    return [(float(score[interleaved[k]]), affines[interleaved[k]]) for k in kept]


@dataclass
class FibreMatch:
    """Result of :func:`fibre_search`."""

    affine: torch.Tensor  # (3, 3) full resolution, fixed to moving
    texture_score: float  # the patches' mean NCC under ``affine`` at full resolution (see :func:`texture_score`)
    grid_score: float  # the grid's consensus at the matched pose (nan when a hypothesis was confirmed)
    current_score: float  # texture score of the ``current`` affine given to the search (nan when none was)


def _confirm(fine: TextureLevel, affine: torch.Tensor, seed: int) -> tuple[torch.Tensor, int] | None:
    """Every patch finds its own position near a full-resolution pose; an affine through the consistent ones
    (RANSAC) adds the shear and anisotropy a similarity lacks. Returns it (full resolution) with its inlier count,
    or None when fewer than :data:`MIN_INLIERS` agree (the pose is not confirmed)."""
    count = 0
    for window in (LOCATE_WINDOW_PX, LOCATE_WINDOW_PX / 3):
        window_px = max(2, round(window * fine.length))
        level_affine = fine.down(affine)
        centres, positions, _ = locate_patches(
            fine.fixed_band,
            fine.moving_band,
            fine.patches,
            level_affine,
            window_px,
            spectra=fine.spectra(level_affine[None, :2, :2]),
        )
        threshold_px = RANSAC_THRESHOLD_PX * fine.length
        fitted, inliers = ransac_affine(
            centres, positions, threshold_px=threshold_px, iterations=RANSAC_ITERATIONS, seed=seed
        )
        count = int(inliers.sum())
        if count < MIN_INLIERS:
            return None
        affine = fine.up(fitted)
    return affine, count


def fibre_search(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    scale_range: tuple[float, float],
    seed: int = 0,
    current: torch.Tensor | None = None,
    *,
    texture: FibreTexture | None = None,
    hypotheses: Sequence[torch.Tensor] = (),
    grid: bool = True,
    mirrors: Sequence[bool] = (False,),
    max_rotation_deg: float = 180.0,
) -> FibreMatch | None:
    """The pose that the SHG collagen patches confirm, made affine by every patch and fitted to their texture.

    Poses come first from ``hypotheses`` (e.g. the global search's candidates: checking one costs one FFT per
    patch), the one most patches agree on winning, kept if its fitted texture NCC reaches :data:`VERIFY_BELOW`;
    otherwise, where ``grid`` is set, from the exhaustive similarity grid on which the largest patches vote, searched
    in shells (:func:`_grid_shells`) until a pose is confirmed with a texture NCC of :data:`VERIFY_BELOW`.

    Args:
        fixed: (1, 1, H, W) SHG intensity (log, normalised), full resolution.
        moving: (1, 1, Hm, Wm) eosin intensity, full resolution.
        scale_range: (min, max) isotropic scales searched, moving pixels per fixed pixel.
        seed: seed of RANSAC's samples.
        current: (3, 3) full-resolution affine to compare with: its :func:`texture_score` comes with the match,
            taken on the same full-resolution level.
        texture: the pair's full-resolution :class:`FibreTexture` (built here when None).
        hypotheses: (3, 3) full-resolution poses to confirm before any grid search.
        grid: search the similarity grid when no hypothesis is confirmed.
        mirrors: which of unmirrored (False) and mirrored (True) poses the grid holds.
        max_rotation_deg: rotations of the grid are limited to ±this.

    Returns:
        The match, or None when the SHG has fewer than two patches (nothing to agree on) or too few patches confirm
        any pose.
    """
    fine = texture_level(fixed, moving, REFINE_SIZE_PX, GRID_BAND_PX, TEXTURE_PATCHES)
    if len(fine.patches) < 2:
        return None
    texture = texture or FibreTexture(fixed, moving)
    current_score = texture.score(current) if current is not None else float("nan")
    confirmed = None
    for index in geometry.distinct_poses(hypotheses, fixed.shape[-2:], HYPOTHESIS_DISTINCT):
        found = _confirm(fine, hypotheses[index], seed)
        if found is not None and (confirmed is None or found[1] > confirmed[1]):
            confirmed = found
    if confirmed is not None:
        affine, score = _fit_texture(fine, texture, confirmed[0])
        # a few patches can agree near a wrong hypothesis by chance in dense texture; its fit stays weak
        if score >= VERIFY_BELOW:
            return FibreMatch(affine, score, float("nan"), current_score)
    if not grid:
        return None
    coarse = texture_level(fixed, moving, GRID_SIZE_PX, GRID_BAND_PX, GRID_PATCHES)
    if len(coarse.patches) < 2:
        return None
    linear = similarity_grid(*scale_range, ANGLE_STEP_DEG, SCALE_STEP, mirrors, max_rotation_deg).to(fixed)
    best_match = None
    for shell in _grid_shells(linear, LIKELY_SCALES):
        poses = _best_poses(coarse, shell, BATCH, POOL_PX, GRID_CANDIDATES, VOTES)
        for grid_score, pose in poses:
            confirmed = _confirm(fine, coarse.up(pose), seed)
            if confirmed is None:
                continue
            affine, score = _fit_texture(fine, texture, confirmed[0])
            if best_match is None or score > best_match.texture_score:
                best_match = FibreMatch(affine, score, grid_score, current_score)
            if score >= VERIFY_BELOW:  # confirmed with a real texture fit: the rest of the grid is not needed
                return best_match
    return best_match


def _grid_shells(linear: torch.Tensor, likely_scales: tuple[float, float]) -> list[torch.Tensor]:
    """The grid's poses (B, 2, 2) in the order they are searched: unmirrored at the likely scales, then mirrored at
    the likely scales (empty shells left out); the other scales are not searched.

    The whole grid (2520 poses) cost ~11 s on an 834 px pair on 2 cores, and a pair that reached it ran 20-40 s:
    the fallback is bounded to the usual pair's nominal scale (unmirrored first, a mirrored slide next), ~1.5 s a
    shell; pairs at other scales rely on the global search, whose scales cover 0.6-1.35.
    """
    det = torch.linalg.det(linear)
    scale = det.abs().sqrt()
    likely = (scale >= likely_scales[0] * (1 - 1e-6)) & (scale <= likely_scales[1] * (1 + 1e-6))
    shells = [(det > 0) & likely, (det < 0) & likely]
    return [linear[mask] for mask in shells if bool(mask.any())]


def _fit_texture(fine: TextureLevel, texture: FibreTexture, affine: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Continuous fits on the texture: at the fine level, then the finest texture at full resolution, each only
    where it can still matter (the full-resolution texture NCC decides both).

    On 110 development pairs (23 confirmed poses fitted) every right pose already scored >= 0.27 at full
    resolution before any fit (the 417 px fit then moved it by <= 0.04), and no wrong pose reached 0.13 after both
    fits (the full-resolution fit added <= 0.05): a pose at :data:`VERIFY_BELOW` goes straight to the full-resolution
    fit, one under half of it after the first fit is not fitted further (~0.4 s each)."""
    score = texture.score(affine)
    if score < VERIFY_BELOW:
        fitted, _ = refine_on_patches(
            fine.fixed_band, fine.moving_band, fine.patches, fine.down(affine), REFINE_ITERATIONS, FIT_DAMPING
        )
        affine = fine.up(fitted)
        score = texture.score(affine)
        if score < VERIFY_BELOW / 2:
            return affine, score
    return texture.refine(affine, REFINE_ITERATIONS, FIT_DAMPING)
