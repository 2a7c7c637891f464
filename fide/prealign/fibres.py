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

__all__ = ["FibreMatch", "FibreTexture", "PatchPixels", "refine_on_patches", "texture_score", "fibre_search"]


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


def _best_poses(
    level: _Level, linear: torch.Tensor, batch: int, pool_px: int, count: int, votes: Sequence[str] = ("mean",)
) -> tuple[list[tuple[float, torch.Tensor]], float]:
    """The ``count`` best distinct poses of a grid for each patch vote, interleaved best first without repeats, as
    (vote, (3, 3) affine on the level's grid), and the best score of a pose far from the first winner (the
    runner-up).

    Poses are distinct when the reference point lands apart or the linear parts differ by more than the grid's
    tolerance; on dense texture the true pose can rank second or third by a few hundredths.
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
    radius = 4 * pool_px + 4
    far = (position[0] - position[0, int(score[0].argmax())]).norm(dim=1) > radius
    runner_up = float(score[0, far].max()) if bool(far.any()) else -1.0

    def distinct(kept: list[tuple[int, int]], vote: int, index: int) -> bool:
        return all(
            float((position[vote, index] - position[v, j]).norm()) > radius
            or float(torch.linalg.matrix_norm(linear[index] - linear[j])) > 0.2  # ~2 angle steps or a mirror
            for v, j in kept
        )

    ranked: list[list[tuple[int, int]]] = []
    for vote in range(len(score)):
        own: list[tuple[int, int]] = []
        for index in torch.argsort(score[vote], descending=True).tolist():
            if distinct(own, vote, index):
                own.append((vote, index))
            if len(own) == count:
                break
        ranked.append(own)
    kept: list[tuple[int, int]] = []
    for rank in range(count):
        for own in ranked:
            if rank < len(own) and distinct(kept, *own[rank]):
                kept.append(own[rank])
    poses = []
    for vote, index in kept:
        affine = torch.eye(3, device=linear.device)
        affine[:2, :2] = linear[index]
        affine[:2, 2] = position[vote, index] - linear[index] @ reference
        poses.append((float(score[vote, index]), affine))
    return poses, runner_up


# mapped patch pixels scored at once (~64 MB of coordinates): an 834 px pair has ~0.1 M patch pixels, 40 poses a pass
_SCORE_POINTS = 1 << 22


class PatchPixels:
    """The patches' pixels on one grid and their centred fixed values: what every texture NCC needs, built once.

    Only the patches' pixels matter, so they are sampled alone instead of warping whole images. Per-patch sums are
    products with the (K, N) membership matrix: index_add adds with atomics on CUDA, in an order that changes from
    run to run, and the same input must give the same field.
    """

    def __init__(self, fixed_band: torch.Tensor, patches: list[Patch]) -> None:
        self.points = torch.cat([torch.nonzero(p.mask > 0.5).float() for p in patches])  # (N, 2)
        sizes = [int((p.mask > 0.5).sum()) for p in patches]
        self.ids = torch.cat([torch.full((n,), k, device=self.points.device) for k, n in enumerate(sizes)])
        self.member = F.one_hot(self.ids, len(patches)).T.to(self.points)  # (K, N)
        self.counts = self.member.sum(1)
        self.fixed_values = self.centred(geometry.sample_at(fixed_band, self.points)[:, 0])

    def centred(self, values: torch.Tensor) -> torch.Tensor:
        """(..., N) values → zero mean and unit norm within each patch."""
        values = values - (values @ self.member.T / self.counts)[..., self.ids]
        # +eps inside the root: a patch mapped onto blank background has zero energy and sqrt'(0) is infinite
        norms = (values**2 @ self.member.T + 1e-12).sqrt()
        return values / norms[..., self.ids]

    def ncc(self, moving_band: torch.Tensor, mapped: torch.Tensor) -> torch.Tensor:
        """Mean over patches of the NCC with the moving image sampled at ``mapped`` (B, N, 2) → (B,)."""
        batch = mapped.shape[0]
        sampled = geometry.sample_at(moving_band, mapped.reshape(-1, 2), padding_mode="zeros")[:, 0]
        moving_values = self.centred(sampled.view(batch, -1))
        return ((self.fixed_values * moving_values) @ self.member.T).mean(-1)

    def scores(self, moving_band: torch.Tensor, affines: torch.Tensor) -> torch.Tensor:
        """Texture NCC under each of (B, 3, 3) affines on this grid → (B,), in chunks of at most ``_SCORE_POINTS``
        mapped points (large images have millions of patch pixels)."""
        chunk = max(1, _SCORE_POINTS // max(1, len(self.points)))
        results = []
        for part in affines.split(chunk):
            mapped = self.points @ part[:, :2, :2].transpose(1, 2) + part[:, None, :2, 2]
            results.append(self.ncc(moving_band, mapped))
        return torch.cat(results)


def refine_on_patches(
    fixed_band: torch.Tensor,
    moving_band: torch.Tensor,
    patches: list[Patch] | PatchPixels,
    affine: torch.Tensor,
    iterations: int,
    learning_rate: float,
) -> tuple[torch.Tensor, float]:
    """Adam on the six affine parameters, maximising the patches' mean masked NCC (all on one grid).

    The grid search leaves ~1° and half a pixel of error; a continuous fit removes it and adds the anisotropy and
    shear a similarity cannot express. Returns the best (3, 3) affine seen and its score.
    """
    pixels = patches if isinstance(patches, PatchPixels) else PatchPixels(fixed_band, patches)
    points = pixels.points
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
        score = pixels.ncc(moving_band, mapped[None])[0]
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
    grid_score: float  # the grid's consensus at the matched pose (nan when a hypothesis was confirmed)
    runner_up: float  # the grid shell's best consensus far from its winner (nan likewise)
    current_score: float  # texture score of the ``current`` affine given to the search (nan when none was)


class FibreTexture:
    """The fibre texture of one pair at full resolution: scores and refines affines on it.

    Band-passing both images and finding the patches costs more than scoring, so the level is built once per pair
    and serves the fallback's last fit, its comparison with the current affine, the confidence and the last
    precision step alike.

    Args:
        fixed: (1, 1, H, W) SHG intensity (log, normalised), full resolution.
        moving: (1, 1, Hm, Wm) eosin intensity, full resolution.
        cfg: bands and patch counts.
    """

    def __init__(self, fixed: torch.Tensor, moving: torch.Tensor, cfg: FibreConfig) -> None:
        self.level = _level(fixed, moving, max(fixed.shape[-2:]), cfg.final_band_px, cfg.refine_patches, cfg)
        self.pixels = PatchPixels(self.level.fixed_band, self.level.patches) if self.level.patches else None

    @property
    def has_patches(self) -> bool:
        return bool(self.level.patches)

    def score(self, affine: torch.Tensor) -> float:
        """Mean NCC of the band-passed SHG patches and the eosin under a (3, 3) full-resolution affine, in [-1, 1]
        (1 = identical texture; 0 when the SHG has no patch)."""
        return float(self.scores(affine[None])[0])

    def scores(self, affines: torch.Tensor) -> torch.Tensor:
        """:meth:`score` of (B, 3, 3) full-resolution affines at once → (B,)."""
        if self.pixels is None:
            return affines.new_zeros(affines.shape[0])
        return self.pixels.scores(self.level.moving_band, self.level.down(affines).to(self.level.moving_band))

    def contrast(self, affine: torch.Tensor, shift_px: float) -> float:
        """How far the texture NCC at ``affine`` stands above its mean at the same pose shifted by ``shift_px``
        (pixels at 834 px, fixed frame) in 8 directions. A true pose is a sharp peak (fibres decorrelate within a
        few pixels, the shifted NCC is ~0 or negative); a wrong pose scores about what its neighbours score.
        0 when the SHG has no patch."""
        if not self.level.patches:
            return 0.0
        step = shift_px * self.level.length  # the level is the full-resolution grid
        angles = torch.arange(8, dtype=affine.dtype, device=affine.device) * (torch.pi / 4)
        offsets = torch.stack([angles.cos(), angles.sin()], 1) * step  # (8, 2) fixed-frame shifts
        poses = affine.expand(9, 3, 3).clone()
        poses[1:, :2, 2] += offsets @ affine[:2, :2].T
        scores = self.scores(poses)
        return float(scores[0] - scores[1:].mean())

    def refine(self, affine: torch.Tensor, iterations: int, learning_rate: float) -> tuple[torch.Tensor, float]:
        """Adam on the texture at full resolution from a (3, 3) affine: the best affine seen and its score."""
        if not self.level.patches:
            return affine, 0.0
        level = self.level
        fitted, score = refine_on_patches(
            level.fixed_band, level.moving_band, self.pixels, level.down(affine), iterations, learning_rate
        )
        return level.up(fitted), score


def texture_score(fixed: torch.Tensor, moving: torch.Tensor, affine: torch.Tensor, cfg: FibreConfig) -> float:
    """:meth:`FibreTexture.score` of one affine (builds the level: use :class:`FibreTexture` for several)."""
    return FibreTexture(fixed, moving, cfg).score(affine)


def _confirm(fine: _Level, affine: torch.Tensor, cfg: FibreConfig, seed: int) -> tuple[torch.Tensor, int] | None:
    """Every patch finds its own position near a full-resolution pose; an affine through the consistent ones
    (RANSAC) adds the shear and anisotropy a similarity lacks. Returns it (full resolution) with its inlier count,
    or None when fewer than ``min_inliers`` agree (the pose is not confirmed)."""
    count = 0
    for window in (cfg.locate_window_px, cfg.locate_window_px / 3):
        window_px = max(2, round(window * fine.length))
        centres, positions, _ = locate_patches(
            fine.fixed_band, fine.moving_band, fine.patches, fine.down(affine), window_px
        )
        threshold_px = cfg.ransac_threshold_px * fine.length
        fitted, inliers = ransac_affine(
            centres, positions, threshold_px=threshold_px, iterations=cfg.ransac_iterations, seed=seed
        )
        count = int(inliers.sum())
        if count < cfg.min_inliers:
            return None
        affine = fine.up(fitted)
    return affine, count


def fibre_search(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    cfg: FibreConfig,
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
    patch), the one most patches agree on winning, kept if its fitted texture NCC reaches ``cfg.verify_below``;
    otherwise, where ``grid`` is set, from the exhaustive similarity grid on which the largest patches vote, searched
    in shells (:func:`_grid_shells`) until a pose is confirmed with a texture NCC of ``cfg.verify_below``.

    Args:
        fixed: (1, 1, H, W) SHG intensity (log, normalised), full resolution.
        moving: (1, 1, Hm, Wm) eosin intensity, full resolution.
        cfg: grid steps, sizes and bands.
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
    fine = _level(fixed, moving, cfg.refine_size_px, cfg.band_px, cfg.refine_patches, cfg)
    if len(fine.patches) < 2:
        return None
    texture = texture or FibreTexture(fixed, moving, cfg)
    current_score = texture.score(current) if current is not None else float("nan")
    confirmed = None
    for hypothesis in _distinct_poses(hypotheses, fine, cfg.locate_window_px / 3):
        found = _confirm(fine, hypothesis, cfg, seed)
        if found is not None and (confirmed is None or found[1] > confirmed[1]):
            confirmed = found
    if confirmed is not None:
        affine, score = _fit_texture(fine, texture, confirmed[0], cfg)
        # a few patches can agree near a wrong hypothesis by chance in dense texture; its fit stays weak
        if score >= cfg.verify_below:
            return FibreMatch(affine, score, float("nan"), float("nan"), current_score)
    if not grid:
        return None
    coarse = _level(fixed, moving, cfg.size_px, cfg.band_px, cfg.patches, cfg)
    if len(coarse.patches) < 2:
        return None
    linear = similarity_grid(*scale_range, cfg.angle_step_deg, cfg.scale_step, mirrors, max_rotation_deg).to(fixed)
    best_match = None
    for shell in _grid_shells(linear, cfg.likely_scales):
        poses, runner_up = _best_poses(coarse, shell, cfg.batch, cfg.pool_px, cfg.grid_candidates, cfg.votes)
        for grid_score, pose in poses:
            confirmed = _confirm(fine, coarse.up(pose), cfg, seed)
            if confirmed is None:
                continue
            affine, score = _fit_texture(fine, texture, confirmed[0], cfg)
            if best_match is None or score > best_match.texture_score:
                best_match = FibreMatch(affine, score, grid_score, runner_up, current_score)
            if score >= cfg.verify_below:  # confirmed with a real texture fit: the rest of the grid is not needed
                return best_match
    return best_match


def _distinct_poses(poses: Sequence[torch.Tensor], level: _Level, tolerance_px: float) -> list[torch.Tensor]:
    """``poses`` (full-resolution (3, 3) affines) without those that put every patch centre within ``tolerance_px``
    (pixels at 834 px) of where an earlier one puts it: a restart and the search candidate it started from would
    be confirmed twice."""
    if not level.patches:
        return list(poses)
    fixed_factors = torch.tensor(level.to_level[0])  # full resolution → level pixels
    full_centres = torch.stack([patch.centre for patch in level.patches]).cpu() / fixed_factors
    tolerance = tolerance_px * level.length / float(fixed_factors.max())  # pixels of the full-resolution image
    kept: list[torch.Tensor] = []
    landed: list[torch.Tensor] = []
    for pose in poses:
        points = geometry.apply_affine_to_points(pose.cpu().to(full_centres), full_centres)
        if all(float((points - other).norm(dim=1).max()) > tolerance for other in landed):
            kept.append(pose)
            landed.append(points)
    return kept


def _grid_shells(linear: torch.Tensor, likely_scales: tuple[float, float]) -> list[torch.Tensor]:
    """The grid's poses (B, 2, 2) in the order they are searched: unmirrored at the likely scales, the other
    unmirrored scales, then the mirrored poses the same way (empty shells left out).

    The whole grid costs ~20 s on an 834 px pair; most pairs are unmirrored at about their nominal scale, and a pose
    confirmed there ends the search after a fraction of it.
    """
    det = torch.linalg.det(linear)
    scale = det.abs().sqrt()
    likely = (scale >= likely_scales[0] * (1 - 1e-6)) & (scale <= likely_scales[1] * (1 + 1e-6))
    shells = [(det > 0) & likely, (det > 0) & ~likely, (det < 0) & likely, (det < 0) & ~likely]
    return [linear[mask] for mask in shells if bool(mask.any())]


def _fit_texture(
    fine: _Level, texture: FibreTexture, affine: torch.Tensor, cfg: FibreConfig
) -> tuple[torch.Tensor, float]:
    """Continuous fits on the texture: at the fine level, then the finest texture at full resolution."""
    fitted, _ = refine_on_patches(
        fine.fixed_band,
        fine.moving_band,
        fine.patches,
        fine.down(affine),
        cfg.refine_iterations,
        cfg.refine_learning_rate,
    )
    return texture.refine(fine.up(fitted), cfg.refine_iterations, cfg.refine_learning_rate)
