"""Fibre-texture search: the fallback for SHG that shows only isolated collagen patches.

When an SHG image is nearly empty (no glow of the core outline, a few bright patches of fibres), neither label maps
nor smoothed intensities carry the pose: the only link to the bright field is the fibre texture itself, which
correlates only within a few degrees of the true pose. Each of the largest SHG patches is therefore matched, as a
band-passed template, against the band-passed eosin channel for every rotation and scale on a fine grid and every
translation at once (FFT); the patches then vote for one common similarity. A single patch finds false matches in
the dense eosin texture; several patches agreeing on one pose do not.

Lengths in :class:`~fide.config.FibreConfig` are pixels of an image whose side is the challenge's 834 px, scaled
with the image side (the core fills the image whatever its size). Affines are in pixels, fixed to moving, with the
conventions of :mod:`fide.geometry`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.layers import GaussianFilter
from scipy import ndimage

from fide import geometry
from fide.config import FibreConfig
from fide.prealign.ransac import ransac_affine

REFERENCE_SIDE = 834

__all__ = [
    "Patch",
    "band_pass",
    "collagen_patches",
    "patch_consensus",
    "similarity_grid",
    "refine_on_patches",
    "texture_score",
    "FibreMatch",
    "fibre_search",
]


@dataclass
class Patch:
    """One SHG collagen patch: its band-passed template cut out by ``mask``, centred at ``centre``."""

    mask: torch.Tensor  # (H, W) float 0/1
    centre: torch.Tensor  # (2,) pixels, array order
    radius: float  # largest distance of a mask pixel from the centre, pixels


def band_pass(image: torch.Tensor, low_px: float, high_px: float) -> torch.Tensor:
    """Difference of Gaussians of (1, 1, H, W): keeps structures between ``low_px`` and ``high_px`` wide."""
    fine = GaussianFilter(spatial_dims=2, sigma=max(low_px, 0.3))(image.float())
    return fine - GaussianFilter(spatial_dims=2, sigma=high_px)(image.float())


def collagen_patches(
    shg: torch.Tensor, count: int, smooth_px: float, max_radius: float, min_area: int = 50
) -> list[Patch]:
    """The ``count`` largest connected bright regions of an SHG intensity image (1, 1, H, W), largest first.

    A region wider than ``max_radius`` is cut to the disk of that radius around its centre: a wide template costs
    more and tolerates less rotation, and a disk of texture is already distinctive.
    """
    smooth = GaussianFilter(spatial_dims=2, sigma=smooth_px)(shg.float())[0, 0].cpu().numpy()
    labels, n = ndimage.label(smooth > smooth.mean() + smooth.std())
    if n == 0:
        return []
    areas = ndimage.sum_labels(np.ones_like(smooth), labels, np.arange(1, n + 1))
    patches = []
    for label in np.argsort(-areas)[:count] + 1:
        if areas[label - 1] < min_area:
            break
        mask = torch.from_numpy(ndimage.binary_dilation(labels == label)).to(shg)
        points = torch.nonzero(mask).float()
        centre = points.mean(0)
        if float((points - centre).norm(dim=1).max()) > max_radius:
            distance = (geometry.identity_grid(mask.shape, like=mask) - centre.view(2, 1, 1)).norm(dim=0)
            mask = mask * (distance <= max_radius)
            points = torch.nonzero(mask).float()
        patches.append(Patch(mask, centre, float((points - centre).norm(dim=1).max())))
    return patches


def similarity_grid(scale_min: float, scale_max: float, angle_step_deg: float, scale_step: float) -> torch.Tensor:
    """(B, 2, 2) linear parts ``s R(angle)`` of every rotation (full circle) and log-spaced scale of a grid."""
    angles = torch.arange(0.0, 360.0, angle_step_deg) * math.pi / 180
    scales = torch.exp(torch.arange(math.log(scale_min), math.log(scale_max) + 1e-9, math.log1p(scale_step)))
    angle, scale = (t.flatten() for t in torch.meshgrid(angles, scales, indexing="ij"))
    return geometry.similarity_matrix(angle, scale, torch.zeros(2), torch.zeros(2))[:, :2, :2]


def _box_px(patches: list[Patch], linear: torch.Tensor) -> int:
    """Side of a square holding every patch's template under every pose."""
    return int(math.ceil(2 * max(p.radius for p in patches) * float(torch.linalg.matrix_norm(linear, 2).max()))) + 3


def _smooth_fft_size(n: int) -> int:
    while True:  # pocketfft is fastest on 2^a 3^b 5^c sizes
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


class _MovingSpectra:
    """FFTs of the band-passed moving image (and its square) on a canvas with room for templates of ``box`` px."""

    def __init__(self, moving_band: torch.Tensor, box: int) -> None:
        size = moving_band.shape[-2:]
        self.size, self.box = tuple(size), box
        self.canvas = (_smooth_fft_size(size[0] + box), _smooth_fft_size(size[1] + box))
        # the image sits box // 2 in from the canvas corner, so correlation index = template centre position
        half = box // 2
        self.moving = F.pad(
            moving_band[0, 0], (half, self.canvas[1] - size[1] - half, half, self.canvas[0] - size[0] - half)
        )
        self.image, self._energy = torch.fft.rfft2(self.moving), torch.fft.rfft2(self.moving**2)
        squared = moving_band[0, 0] ** 2
        # background (band-passed white) has no energy: a floor keeps templates there from scoring by division
        self._floor = 0.5 * float(squared[squared > 1e-8].mean()) if bool((squared > 1e-8).any()) else 1e-6
        self.offsets = geometry.identity_grid((box, box), like=self.moving) - box // 2
        self._rms: dict[float, torch.Tensor] = {}

    def fits(self, size: Sequence[int], box: int) -> bool:
        return self.size == tuple(size) and box <= self.box

    def local_rms(self, radius: float) -> torch.Tensor:
        """RMS of the moving image under a disk of ``radius`` whose box starts at each canvas pixel; memoised.

        A disk of the template's area stands in for its rotated mask: one map per template size, not per pose.
        """
        if radius not in self._rms:
            disk = ((self.offsets**2).sum(0) <= radius * radius).float()
            spectrum = torch.fft.rfft2(disk, s=self.canvas).conj() * self._energy
            local = torch.fft.irfft2(spectrum, s=self.canvas) / disk.sum()
            self._rms[radius] = local.clamp(min=self._floor).sqrt()
        return self._rms[radius]


def _patch_ncc(
    fixed_band: torch.Tensor, patch: Patch, linear: torch.Tensor, spectra: _MovingSpectra, box: int
) -> torch.Tensor:
    """(B, Hm, Wm) NCC of one patch under B linear maps, indexed by the moving position of the patch centre."""
    size = spectra.size
    # template of each pose in the moving frame: T(u) = fixed(centre + L^-1 u)
    offsets = spectra.offsets[:, :box, :box]  # (2, box, box): u = q - centre
    points = patch.centre.view(1, 2, 1, 1) + torch.einsum("bij,jhw->bihw", torch.linalg.inv(linear), offsets)
    grid = geometry.pixel_to_normalised(points.permute(0, 2, 3, 1), fixed_band.shape[-2:])
    pair = torch.stack([fixed_band[0, 0], patch.mask])[None].expand(len(linear), -1, -1, -1)
    sampled = F.grid_sample(pair, grid, align_corners=True, padding_mode="zeros")
    template, mask = sampled[:, 0], (sampled[:, 1] > 0.5).float()
    count = mask.sum((1, 2), keepdim=True).clamp(min=1)
    template = (template - (template * mask).sum((1, 2), keepdim=True) / count) * mask
    template = template / template.norm(dim=(1, 2), keepdim=True).clamp(min=1e-8)
    spectrum = torch.fft.rfft2(template, s=spectra.canvas).conj() * spectra.image
    ncc = torch.fft.irfft2(spectrum, s=spectra.canvas)[:, : size[0], : size[1]] / count.sqrt()
    radius = torch.round(torch.sqrt(count[:, 0, 0] / math.pi))
    for r in torch.unique(radius).tolist():
        ncc[radius == r] /= spectra.local_rms(r)[: size[0], : size[1]]
    return ncc


def locate_patches(
    level: _Level, affine: torch.Tensor, window_px: int, min_ncc: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each patch's own best position near where ``affine`` puts it (its linear part orients the templates).

    Returns fixed centres (P, 2), their moving positions (P, 2) and peak NCCs (P,), for patches peaking above
    ``min_ncc``; all on the level's grid.
    """
    linear = affine[:2, :2][None]
    box = _box_px(level.patches, linear)
    spectra = _MovingSpectra(level.moving_band, box)
    grid = geometry.identity_grid(spectra.size, like=level.moving_band)
    centres, positions, peaks = [], [], []
    for patch in level.patches:
        ncc = _patch_ncc(level.fixed_band, patch, linear, spectra, box)[0]
        predicted = affine[:2, :2] @ patch.centre + affine[:2, 2]
        near = (grid - predicted.view(2, 1, 1)).abs().amax(0) <= window_px
        value, index = torch.where(near, ncc, torch.full_like(ncc, -2.0)).flatten().max(0)
        if float(value) > min_ncc:
            centres.append(patch.centre)
            positions.append(torch.stack([index // ncc.shape[1], index % ncc.shape[1]]).float())
            peaks.append(value)
    if not centres:
        return torch.zeros(0, 2), torch.zeros(0, 2), torch.zeros(0)
    return torch.stack(centres), torch.stack(positions), torch.stack(peaks)


def patch_consensus(
    fixed_band: torch.Tensor,
    moving_band: torch.Tensor,
    patches: list[Patch],
    linear: torch.Tensor,
    pool_px: int,
    spectra: _MovingSpectra | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over patches of their normalised cross-correlation, for every translation of every pose.

    Args:
        fixed_band: (1, 1, H, W) band-passed SHG.
        moving_band: (1, 1, Hm, Wm) band-passed eosin at the same pixel size as ``fixed_band``.
        patches: templates of the fixed image.
        linear: (B, 2, 2) linear parts of the poses, fixed to moving.
        pool_px: each patch's correlation is max-pooled over this radius before the vote, so that patches far from
            the reference point still agree despite the pose grid's step.
        spectra: the moving image's FFTs from an earlier call on the same image (rebuilt when None or too small).

    Returns:
        (B, Hm, Wm) consensus in [-1, 1] indexed by the moving position of the reference point (the area-weighted
        centre of the patches), and that reference point (2,) in the fixed image.
    """
    size = moving_band.shape[-2:]
    areas = torch.stack([p.mask.sum() for p in patches])
    reference = (torch.stack([p.centre for p in patches]) * areas[:, None]).sum(0) / areas.sum()
    box = _box_px(patches, linear)
    spectra = spectra if spectra is not None and spectra.fits(size, box) else _MovingSpectra(moving_band, box)
    votes = torch.zeros(len(linear), *size, device=moving_band.device)
    for patch in patches:
        ncc = _dilate(_patch_ncc(fixed_band, patch, linear, spectra, box), pool_px)
        # the patch centre sits at reference' + L (centre - reference): read each vote at that spot (nearest pixel)
        shifts = torch.round(torch.einsum("bij,j->bi", linear, patch.centre - reference)).long().tolist()
        for b, (di, dj) in enumerate(shifts):
            _add_shifted(votes[b], ncc[b], di, dj)
    return votes / len(patches), reference


def _dilate(image: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey-level dilation of (B, H, W) by a (2r+1)^2 square, separably (torch's max_pool2d is slow on CPU)."""
    for dim in (1, 2):
        padded = F.pad(image, (radius, radius, 0, 0) if dim == 2 else (0, 0, radius, radius), value=-1.0)
        length = image.shape[dim]
        image = padded.narrow(dim, 0, length).clone()
        for k in range(1, 2 * radius + 1):
            torch.maximum(image, padded.narrow(dim, k, length), out=image)
    return image


def _add_shifted(target: torch.Tensor, source: torch.Tensor, di: int, dj: int) -> None:
    """``target[q] += source[q + (di, dj)]`` where that lies inside ``source``; both (H, W)."""
    h, w = target.shape
    if abs(di) >= h or abs(dj) >= w:
        return
    target[max(0, -di) : h - max(0, di), max(0, -dj) : w - max(0, dj)] += source[
        max(0, di) : h - max(0, -di), max(0, dj) : w - max(0, -dj)
    ]


@dataclass
class _Level:
    """One resolution's band-passed images and patches, and its grid's scale factors to and from full resolution."""

    fixed_band: torch.Tensor
    moving_band: torch.Tensor
    patches: list[Patch]
    to_level: tuple[tuple[float, float], tuple[float, float]]

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
    length = max(fixed_shape) / REFERENCE_SIDE  # the core fills the image: fibres are thinner in smaller images
    low, high = (width * length for width in band_px)
    return _Level(
        band_pass(fixed_level, low, high),
        band_pass(moving_level, low, high),
        collagen_patches(fixed_level, patches, cfg.patch_smooth_px * length, cfg.patch_max_radius_px * length),
        (
            geometry.scale_factors(fixed.shape[-2:], fixed_shape),
            geometry.scale_factors(moving.shape[-2:], moving_shape),
        ),
    )


def _best_pose(level: _Level, linear: torch.Tensor, batch: int, pool_px: int) -> tuple[float, torch.Tensor, float]:
    """Best consensus over a pose grid, its (3, 3) affine on the level's grid, and the best score of a pose far
    from it (the runner-up)."""
    scores, positions, reference = [], [], None
    box = _box_px(level.patches, linear)
    spectra = _MovingSpectra(level.moving_band, box)
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
    ids = torch.cat([torch.full((int((p.mask > 0.5).sum()),), k) for k, p in enumerate(patches)])
    counts = torch.bincount(ids, minlength=len(patches)).to(points)

    def centred(values: torch.Tensor) -> torch.Tensor:  # zero mean, unit norm within each patch
        sums = torch.zeros(len(patches), dtype=values.dtype).index_add(0, ids, values)
        values = values - (sums / counts)[ids]
        # +eps inside the root: a patch mapped onto blank background has zero energy and sqrt'(0) is infinite
        norms = (torch.zeros(len(patches), dtype=values.dtype).index_add(0, ids, values**2) + 1e-12).sqrt()
        return values / norms[ids]

    fixed_values = centred(geometry.sample_at(fixed_band, points)[:, 0])
    # the update turns and stretches about the patches' centroid, in units that move a patch rim by ~1 px: about
    # the image origin a small turn would also be a large shift, and Adam would crawl along that coupling
    centroid = points.mean(0)
    reach = float((points - centroid).norm(dim=1).max().clamp(min=1.0))
    local = torch.cat([(points - centroid) / reach, torch.ones(len(points), 1)], 1)
    delta = torch.zeros(2, 3, requires_grad=True)
    optimiser = torch.optim.Adam([delta], lr=learning_rate)
    best, best_score = affine, -2.0
    for _ in range(iterations + 1):
        mapped = points @ affine[:2, :2].T + affine[:2, 2] + local @ delta.T
        moving_values = centred(geometry.sample_at(moving_band, mapped, padding_mode="zeros")[:, 0])
        score = torch.zeros(len(patches)).index_add(0, ids, fixed_values * moving_values).mean()
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


def texture_score(fixed: torch.Tensor, moving: torch.Tensor, affine: torch.Tensor, cfg: FibreConfig) -> float:
    """Mean NCC of the band-passed SHG patches and the eosin under a full-resolution affine (1 = identical)."""
    level = _level(fixed, moving, max(fixed.shape[-2:]), cfg.final_band_px, cfg.refine_patches, cfg)
    if not level.patches:
        return 0.0
    return refine_on_patches(level.fixed_band, level.moving_band, level.patches, level.down(affine), 0, 0.0)[1]


def fibre_search(
    fixed: torch.Tensor, moving: torch.Tensor, cfg: FibreConfig, scale_range: tuple[float, float]
) -> FibreMatch | None:
    """The similarity on which the largest SHG collagen patches agree, confirmed and made affine by every patch.

    Args:
        fixed: (1, 1, H, W) SHG intensity (log, normalised), full resolution.
        moving: (1, 1, Hm, Wm) eosin intensity, full resolution.
        cfg: grid steps, sizes and bands.
        scale_range: (min, max) isotropic scales searched, moving pixels per fixed pixel.

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
    length = max(fine.fixed_band.shape[-2:]) / REFERENCE_SIDE
    for window in (cfg.locate_window_px, cfg.locate_window_px / 3):
        centres, positions, _ = locate_patches(fine, fine.down(affine), max(2, round(window * length)))
        fitted, inliers = ransac_affine(
            centres, positions, threshold_px=cfg.ransac_threshold_px * length, iterations=cfg.ransac_iterations, seed=0
        )
        if int(inliers.sum()) < cfg.min_inliers:
            return None
        affine = fine.up(fitted)
    # continuous fits on the texture: at the fine level, then the finest texture at full resolution
    score = 0.0
    for size_px, band in ((cfg.refine_size_px, cfg.band_px), (max(fixed.shape[-2:]), cfg.final_band_px)):
        level = _level(fixed, moving, size_px, band, cfg.refine_patches, cfg)
        fitted, score = refine_on_patches(
            level.fixed_band,
            level.moving_band,
            level.patches,
            level.down(affine),
            cfg.refine_iterations,
            cfg.refine_learning_rate,
        )
        affine = level.up(fitted)
    return FibreMatch(affine, score, grid_score, runner_up)
