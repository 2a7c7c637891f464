"""Patch templates of a sparse SHG image matched against a bright-field texture, every translation by FFT.

The building blocks of the fibre fallback (:mod:`fide.prealign.fibres`): band-passing, the SHG's collagen patches,
the normalised cross-correlation of each patch template for a batch of linear maps, the vote of several patches for
one pose, and each patch's own position near a pose. All on one grid, pixels, array order, fixed to moving.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from fide import geometry
from fide.prealign.search import rotation_angles_deg
from fide.preprocess.filters import gaussian_blur, gaussian_blurs, smooth_fft_length, square_dilation

__all__ = [
    "FIBRE_VOTES",
    "fibre_votes",
    "Patch",
    "band_pass",
    "collagen_patches",
    "similarity_grid",
    "box_px",
    "MovingSpectra",
    "patch_consensus",
    "locate_patches",
]


# how the collagen patches' correlations can be combined into one vote (see :func:`patch_consensus`)
FIBRE_VOTES = ("median", "mean")


def fibre_votes(votes: Sequence[str]) -> tuple[str, ...]:
    """``votes`` as a tuple, checked against :data:`FIBRE_VOTES`.

    Raises:
        ValueError: empty, or a vote that is not one of them.
    """
    if not votes or any(vote not in FIBRE_VOTES for vote in votes):
        raise ValueError(f"votes must be a non-empty list of {list(FIBRE_VOTES)}, got {list(votes)}")
    return tuple(votes)


@dataclass
class Patch:
    """One SHG collagen patch: its band-passed template cut out by ``mask``, centred at ``centre``."""

    mask: torch.Tensor  # (H, W) float 0/1
    centre: torch.Tensor  # (2,) pixels, array order
    radius: float  # largest distance of a mask pixel from the centre, pixels


def band_pass(image: torch.Tensor, low_px: float, high_px: float) -> torch.Tensor:
    """Difference of Gaussians of (1, 1, H, W): keeps structures between ``low_px`` and ``high_px`` wide."""
    fine, coarse = gaussian_blurs(image, (max(low_px, 0.3), high_px))
    return fine - coarse


def collagen_patches(
    shg: torch.Tensor, count: int, smooth_px: float, max_radius: float, min_area: int = 50
) -> list[Patch]:
    """The ``count`` largest connected bright regions of an SHG intensity image (1, 1, H, W), largest first.

    A region wider than ``max_radius`` is cut to the disk of that radius around its centre: a wide template costs
    more and tolerates less rotation, and a disk of texture is already distinctive.
    """
    smooth = gaussian_blur(shg, smooth_px)[0, 0].cpu().numpy()
    labels, n = ndimage.label(smooth > smooth.mean() + smooth.std())
    if n == 0:
        return []
    areas = ndimage.sum_labels(np.ones_like(smooth), labels, np.arange(1, n + 1))
    boxes = ndimage.find_objects(labels)
    patches = []
    for label in np.argsort(-areas)[:count] + 1:
        if areas[label - 1] < min_area:
            break
        # dilate inside the region's box grown by the dilation's reach, not over the whole image
        box = tuple(slice(max(0, b.start - 1), b.stop + 1) for b in boxes[label - 1])
        region = np.zeros(smooth.shape, dtype=bool)
        region[box] = ndimage.binary_dilation(labels[box] == label)
        points = torch.nonzero(torch.from_numpy(region)).to(shg.device)
        centre = points.float().mean(0)
        distance = (points.float() - centre).norm(dim=1)
        if float(distance.max()) > max_radius:
            points, distance = points[distance <= max_radius], distance[distance <= max_radius]
        mask = torch.zeros(smooth.shape, dtype=shg.dtype, device=shg.device)
        mask[points[:, 0], points[:, 1]] = 1
        patches.append(Patch(mask, centre, float(distance.max())))
    return patches


def similarity_grid(
    scale_min: float,
    scale_max: float,
    angle_step_deg: float,
    scale_step: float,
    mirrors: Sequence[bool] = (False,),
    max_rotation_deg: float = 180.0,
) -> torch.Tensor:
    """(B, 2, 2) linear parts ``s R(angle) M`` of a grid: rotations within ±``max_rotation_deg`` (the full circle
    at 180), the scales ``(1 + scale_step)^k`` within ``[scale_min, scale_max]`` (the geometric mean of the two
    where none is), and each of ``mirrors`` (M flips the j axis where True).

    Like the angles, the scales hold the identity: most pairs share the pixel size, and a lattice started at
    ``scale_min`` left the usual scale 1 a third of a step off."""
    angles = rotation_angles_deg(angle_step_deg, max_rotation_deg) * math.pi / 180
    step = math.log1p(scale_step)
    lowest, highest = math.ceil(math.log(scale_min) / step - 1e-9), math.floor(math.log(scale_max) / step + 1e-9)
    exponents = torch.arange(lowest, highest + 1)
    scales = torch.exp(exponents * step) if len(exponents) else torch.tensor([math.sqrt(scale_min * scale_max)])
    flips = torch.tensor([bool(m) for m in mirrors])
    angle, scale, flip = (t.flatten() for t in torch.meshgrid(angles, scales, flips.float(), indexing="ij"))
    return geometry.similarity_matrix(angle, scale, torch.zeros(2), torch.zeros(2), flip > 0.5)[:, :2, :2]


def box_px(patches: list[Patch], linear: torch.Tensor) -> int:
    """Side of a square holding every patch's template under every pose."""
    return int(math.ceil(2 * max(p.radius for p in patches) * float(torch.linalg.matrix_norm(linear, 2).max()))) + 3


class MovingSpectra:
    """FFTs of the band-passed moving image (and its square) on a canvas with room for templates of ``box`` px.

    The correlations are circular: a template reaching ``box // 2`` from its centre reads the image's far side only
    where its centre lies outside the image, so that much zero padding serves every centre inside it (linear
    correlation would pad by the whole box: an 834 px pair's 417 px canvas 625 px instead of 512).
    """

    def __init__(self, moving_band: torch.Tensor, box: int) -> None:
        size = moving_band.shape[-2:]
        self.canvas = tuple(smooth_fft_length(max(n + box // 2, box + 1)) for n in size)
        # templates take all the room the FFT size leaves (zeros beyond the patch): later poses a little larger fit;
        # an odd box centres the template on a pixel
        room = min(c - n for c, n in zip(self.canvas, size))
        self.size, self.box = tuple(size), min(2 * room + 1, min(self.canvas) - 1 + min(self.canvas) % 2)
        self.moving = F.pad(moving_band[0, 0], (0, self.canvas[1] - size[1], 0, self.canvas[0] - size[0]))
        self.image, self._energy = torch.fft.rfft2(self.moving), torch.fft.rfft2(self.moving**2)
        squared = moving_band[0, 0] ** 2
        # background (band-passed white) has no energy: a floor keeps templates there from scoring by division
        self._floor = 0.5 * float(squared[squared > 1e-8].mean()) if bool((squared > 1e-8).any()) else 1e-6
        self.half = self.box // 2
        self.offsets = geometry.identity_grid((self.box,) * 2, like=self.moving) - self.half  # (2, box, box): u
        self._rms: dict[float, torch.Tensor] = {}

    @classmethod
    def reuse(cls, spectra: MovingSpectra | None, moving_band: torch.Tensor, box: int) -> MovingSpectra:
        """``spectra`` where they serve ``moving_band`` with templates of ``box`` px, else new ones."""
        if spectra is not None and spectra.fits(moving_band.shape[-2:], box):
            return spectra
        return cls(moving_band, box)

    def fits(self, size: Sequence[int], box: int) -> bool:
        """Whether templates of ``box`` px against a moving image of ``size`` can use these FFTs."""
        return self.size == tuple(size) and box <= self.box

    def local_rms(self, radius: float) -> torch.Tensor:
        """(canvas) RMS of the moving image under a disk of ``radius`` centred at each pixel; memoised.

        A disk of the template's area stands in for its rotated mask: one map per template size, not per pose.
        """
        if radius not in self._rms:
            disk = ((self.offsets**2).sum(0) <= radius * radius).float()
            spectrum = torch.fft.rfft2(disk, s=self.canvas).conj() * self._energy
            # the correlation puts the disk's box corner at each pixel: roll its centre there
            local = torch.fft.irfft2(spectrum, s=self.canvas).roll((self.half, self.half), (0, 1)) / disk.sum()
            self._rms[radius] = local.clamp(min=self._floor).sqrt()
        return self._rms[radius]


def _patch_ncc(fixed_band: torch.Tensor, patch: Patch, linear: torch.Tensor, spectra: MovingSpectra) -> torch.Tensor:
    """(B, Hm, Wm) NCC of one patch under B linear maps, indexed by the moving position of the patch centre."""
    size = spectra.size
    # template of each pose in the moving frame, on the spectra's box: T(u) = fixed(centre + L^-1 u)
    inverse = torch.linalg.inv(linear)
    points = patch.centre.view(1, 2, 1, 1) + torch.einsum("bij,jhw->bihw", inverse, spectra.offsets)
    grid = geometry.pixel_to_normalised(points.permute(0, 2, 3, 1), fixed_band.shape[-2:])
    pair = torch.stack([fixed_band[0, 0], patch.mask])[None].expand(len(linear), -1, -1, -1)
    sampled = F.grid_sample(pair, grid, align_corners=True, padding_mode="zeros")
    template, mask = sampled[:, 0], (sampled[:, 1] > 0.5).float()
    count = mask.sum((1, 2), keepdim=True).clamp(min=1)
    template = (template - (template * mask).sum((1, 2), keepdim=True) / count) * mask
    template = template / template.norm(dim=(1, 2), keepdim=True).clamp(min=1e-8)
    # correlation as a convolution with the template flipped in its box (a product with a conjugate spectrum
    # materialises it, ~6 % of the grid): the result for centre position n sits at n + half; only the rows kept are
    # transformed along the second axis (pruned inverse FFT, ~30 % of it)
    half = spectra.half
    spectrum = torch.fft.rfft2(template.flip(-2, -1), s=spectra.canvas) * spectra.image
    rows = torch.fft.ifft(spectrum, dim=-2)[:, half : half + size[0]]
    ncc = torch.fft.irfft(rows, n=spectra.canvas[1], dim=-1)[:, :, half : half + size[1]] / count.sqrt()
    radius = torch.round(torch.sqrt(count[:, 0, 0] / math.pi))
    for r in torch.unique(radius).tolist():
        ncc[radius == r] /= spectra.local_rms(r)[: size[0], : size[1]]
    return ncc


def patch_consensus(
    fixed_band: torch.Tensor,
    moving_band: torch.Tensor,
    patches: list[Patch],
    linear: torch.Tensor,
    pool_px: int,
    spectra: MovingSpectra | None = None,
    votes: Sequence[str] = ("mean",),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Consensus over patches of their normalised cross-correlation, for every translation of every pose.

    Args:
        fixed_band: (1, 1, H, W) band-passed SHG.
        moving_band: (1, 1, Hm, Wm) band-passed eosin at the same pixel size as ``fixed_band``.
        patches: templates of the fixed image.
        linear: (B, 2, 2) linear parts of the poses, fixed to moving.
        pool_px: each patch's correlation is max-pooled over this radius before the vote, so that patches far from
            the reference point still agree despite the pose grid's step.
        spectra: the moving image's FFTs from an earlier call on the same image (rebuilt when None or too small).
        votes: combinations of the patches' correlations, each of :data:`FIBRE_VOTES`, all from one
            set of correlations. The median needs half the patches to agree (one patch matching dense texture by
            chance lifts the mean of a wrong pose), the mean counts every patch (a weak true patch still adds).

    Returns:
        (V, B, Hm, Wm) consensus in [-1, 1] per vote, indexed by the moving position of the reference point (the
        area-weighted centre of the patches), and that reference point (2,) in the fixed image.
    """
    votes = fibre_votes(votes)
    size = moving_band.shape[-2:]
    areas = torch.stack([p.mask.sum() for p in patches])
    reference = (torch.stack([p.centre for p in patches]) * areas[:, None]).sum(0) / areas.sum()
    box = box_px(patches, linear)
    spectra = MovingSpectra.reuse(spectra, moving_band, box)
    aligned = torch.zeros(len(patches), len(linear), *size, device=moving_band.device)
    for patch, patch_votes in zip(patches, aligned):
        ncc = square_dilation(_patch_ncc(fixed_band, patch, linear, spectra), pool_px)
        # the patch centre sits at reference' + L (centre - reference): read each vote at that spot (nearest pixel)
        shifts = torch.round(torch.einsum("bij,j->bi", linear, patch.centre - reference)).long().tolist()
        for b, (di, dj) in enumerate(shifts):
            _add_shifted(patch_votes[b], ncc[b], di, dj)
    combined = [_median(aligned) if vote == "median" else aligned.mean(0) for vote in votes]
    return torch.stack(combined), reference


def _median(stack: torch.Tensor) -> torch.Tensor:
    """Median over the first dimension (the lower middle one for an even count)."""
    if len(stack) == 3:  # the default patch count: by min/max, ~10x faster than torch.median over a leading dim
        low, high = torch.minimum(stack[0], stack[1]), torch.maximum(stack[0], stack[1])
        return torch.maximum(low, torch.minimum(high, stack[2]))
    return stack.median(0).values


def locate_patches(
    fixed_band: torch.Tensor,
    moving_band: torch.Tensor,
    patches: list[Patch],
    affine: torch.Tensor,
    window_px: int,
    min_ncc: float = 0.1,
    spectra: MovingSpectra | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each patch's own best position near where ``affine`` puts it (its linear part orients the templates).

    Args:
        fixed_band, moving_band: as in :func:`patch_consensus`.
        patches: templates of the fixed image.
        affine: (3, 3) rough pose, fixed to moving, on these grids.
        window_px: each patch searches this far (Chebyshev distance) from where ``affine`` puts its centre.
        min_ncc: patches peaking lower are left out.
        spectra: the moving band's FFTs from an earlier call (rebuilt when None or too small).

    Returns:
        Fixed centres (P, 2), their moving positions (P, 2) and peak NCCs (P,) of the patches kept.
    """
    linear = affine[:2, :2][None]
    spectra = MovingSpectra.reuse(spectra, moving_band, box_px(patches, linear))
    grid = geometry.identity_grid(spectra.size, like=moving_band)
    centres, positions, peaks = [], [], []
    for patch in patches:
        ncc = _patch_ncc(fixed_band, patch, linear, spectra)[0]
        predicted = affine[:2, :2] @ patch.centre + affine[:2, 2]
        near = (grid - predicted.view(2, 1, 1)).abs().amax(0) <= window_px
        value, index = torch.where(near, ncc, torch.full_like(ncc, -2.0)).flatten().max(0)
        if float(value) > min_ncc:
            centres.append(patch.centre)
            positions.append(torch.stack([index // ncc.shape[1], index % ncc.shape[1]]).float())
            peaks.append(value)
    if not centres:
        return fixed_band.new_zeros(0, 2), fixed_band.new_zeros(0, 2), fixed_band.new_zeros(0)
    return torch.stack(centres), torch.stack(positions), torch.stack(peaks)


def _add_shifted(target: torch.Tensor, source: torch.Tensor, di: int, dj: int) -> None:
    """``target[q] += source[q + (di, dj)]`` where that lies inside ``source``; both (H, W)."""
    h, w = target.shape
    if abs(di) >= h or abs(dj) >= w:
        return
    target[max(0, -di) : h - max(0, di), max(0, -dj) : w - max(0, dj)] += source[
        max(0, di) : h - max(0, -di), max(0, dj) : w - max(0, -dj)
    ]
