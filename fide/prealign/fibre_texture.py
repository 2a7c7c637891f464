"""The fibre texture of an SHG / H&E pair: how well the SHG's collagen patches match the eosin under an affine.

The texture NCC (the patches' mean normalised cross-correlation, band-passed) is a sharp peak at the true pose and
~0 elsewhere: the pipeline uses it to choose among restarts, to doubt a pose, for the confidence and for the fibre
search's last fits (:mod:`fide.prealign.fibres`). Affines are in pixels, fixed to moving, with the conventions of
:mod:`fide.geometry`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fide import geometry
from fide.adam import Adam
from fide.config import REFERENCE_SIDE_PX
from fide.prealign.fibre_match import MovingSpectra, Patch, band_pass, box_px, collagen_patches

__all__ = [
    "FibreTexture",
    "PatchPixels",
    "TextureLevel",
    "polish_on_patches",
    "refine_on_patches",
    "texture_level",
    "texture_score",
]

# lengths in pixels of an 834 px image (REFERENCE_SIDE_PX), scaled with the image side; read when used
PATCH_SMOOTH_PX = 4.0  # fide: smoothing before the SHG patches are thresholded
PATCH_MAX_RADIUS_PX = 150.0  # fide: wider patches are cut to this disk (a wide template costs more)
TEXTURE_PATCHES = 12  # fide: the patches located one by one, fitted and scored
TEXTURE_BAND_PX = (1.0, 6.0)  # fide: band of the full-resolution texture: its score and last fits
POLISH_LEARNING_RATE = 0.05  # fide: Adam step of the texture polish (FibreConfig.polish_iterations steps)


@dataclass
class TextureLevel(geometry.PairLevel):
    """One resolution's band-passed images and patches (its factors to and from full resolution inherited)."""

    fixed_band: torch.Tensor
    moving_band: torch.Tensor
    patches: list[Patch]
    length: float  # pixels of this grid per pixel of an 834 px image: the fibre modules' lengths times this
    _spectra: MovingSpectra | None = field(default=None, repr=False)

    def spectra(self, linear: torch.Tensor) -> MovingSpectra:
        """The moving band's FFTs with room for the patches under the linear maps (B, 2, 2), kept for later poses
        (the poses one search checks mostly fit the canvas of the first: two FFTs less per check)."""
        self._spectra = MovingSpectra.reuse(self._spectra, self.moving_band, box_px(self.patches, linear))
        return self._spectra


def texture_level(
    fixed: torch.Tensor, moving: torch.Tensor, size_px: int, band_px: Sequence[float], patches: int
) -> TextureLevel:
    full = (fixed.shape[-2:], moving.shape[-2:])
    fixed_shape, moving_shape = geometry.level_shapes(*full, size_px)  # one factor: the pixel-size ratio stays
    smaller = size_px < max(fixed.shape[-2:])
    fixed_level = geometry.downsample(fixed, fixed_shape) if smaller else fixed
    moving_level = geometry.downsample(moving, moving_shape) if smaller else moving
    length = max(fixed_shape) / REFERENCE_SIDE_PX  # the core fills the image: fibres are thinner in smaller images
    low, high = (width * length for width in band_px)
    return TextureLevel.between(
        full,
        (fixed_shape, moving_shape),
        fixed_band=band_pass(fixed_level, low, high),
        moving_band=band_pass(moving_level, low, high),
        patches=collagen_patches(fixed_level, patches, PATCH_SMOOTH_PX * length, PATCH_MAX_RADIUS_PX * length),
        length=length,
    )


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
        return self.centred_and_norms(values)[0]

    def centred_and_norms(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`centred` and each pixel's patch norm before the normalisation, both (..., N)."""
        values = values - self.patch_sums(values) / self.counts[self.ids]
        # +eps inside the root: a patch mapped onto blank background has zero energy and sqrt'(0) is infinite
        norms = (self.patch_sums(values**2) + 1e-12).sqrt()
        return values / norms, norms

    def patch_sums(self, values: torch.Tensor) -> torch.Tensor:
        """(..., N) → each pixel's patch sum, (..., N)."""
        return (values @ self.member.T)[..., self.ids]

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
    damping: float = 1e-3,
) -> tuple[torch.Tensor, float]:
    """Levenberg-Marquardt on the six affine parameters, maximising the patches' mean masked NCC (all on one grid).

    The grid search leaves ~1° and half a pixel of error; a continuous fit removes it and adds the anisotropy and
    shear a similarity cannot express. With unit-norm patches, ``2 - 2 NCC`` is each patch's squared residual, so
    Gauss-Newton applies: on recorded fits of development pairs 5 steps reached the score that 30 Adam steps had
    (20 steps from a grid pose, where Adam took 60), in 16-59 % of Adam's time. ``damping`` is the
    initial Marquardt factor; a step is kept only if the score rises. Returns the best (3, 3) affine and its score.
    """
    pixels = patches if isinstance(patches, PatchPixels) else PatchPixels(fixed_band, patches)
    frame = _PatchFrame(pixels.points)
    local = frame.local
    base = pixels.points @ affine[:2, :2].T + affine[:2, 2]

    def residuals(delta: torch.Tensor, jacobian: bool) -> tuple[float, torch.Tensor, torch.Tensor | None]:
        """Score, fixed minus moving centred values (N,) and, if asked, their Jacobian in ``delta`` (N, 6)."""
        mapped = (base + local @ delta.view(2, 3).T).requires_grad_(jacobian)
        sampled = geometry.sample_at(moving_band, mapped, padding_mode="zeros")[:, 0]
        gradient = torch.autograd.grad(sampled.sum(), mapped)[0] if jacobian else None  # (N, 2): each point's own
        moving_values, norms = pixels.centred_and_norms(sampled.detach())
        score = float(((pixels.fixed_values * moving_values) @ pixels.member.T).mean())
        if gradient is None:
            return score, pixels.fixed_values - moving_values, None
        raw = torch.cat([gradient[:, :1] * local, gradient[:, 1:] * local], 1)  # d sampled / d delta
        # through the patch centring and normalisation: (I - m m^T) (raw - its patch mean) / norm, per patch
        centred = raw - (pixels.patch_sums(raw.T) / pixels.counts[pixels.ids]).T
        along = pixels.patch_sums((moving_values[:, None] * centred).T).T
        return score, pixels.fixed_values - moving_values, (centred - moving_values[:, None] * along) / norms[:, None]

    delta = base.new_zeros(6)
    score, residual, jac = residuals(delta, iterations > 0)
    factor = damping
    for _ in range(iterations):
        normal = jac.T @ jac
        step = torch.linalg.solve(
            normal + factor * torch.diag(normal.diagonal()) + 1e-9 * torch.eye(6).to(normal), jac.T @ residual
        )
        trial = residuals(delta + step, False)[0]
        if trial > score:
            delta, factor = delta + step, max(factor / 10, 1e-6)
            score, residual, jac = residuals(delta, True)
        else:
            factor *= 10
            if factor > 1e4:  # no step along the damped direction raises the score: converged
                break
    return frame.apply(affine, delta.view(2, 3)), score


def polish_on_patches(
    fixed_band: torch.Tensor,
    moving_band: torch.Tensor,
    patches: list[Patch] | PatchPixels,
    affine: torch.Tensor,
    iterations: int,
    learning_rate: float,
) -> tuple[torch.Tensor, float]:
    """Adam on the same six parameters and score as :func:`refine_on_patches`: the best affine seen and its score.

    The last step of a trusted pose. On synthetic pairs the converged texture optimum (what Levenberg-Marquardt
    reaches) lay further from the truth than a few Adam steps from the NMI pose on harder affines (development
    tasks: harder affines 0.56 -> 0.60 px, mirrored 0.56 -> 0.62, exactly affine harder affines 0.44 -> 0.49; only
    exactly affine whole cores better, 0.37 -> 0.32): short Adam steps stay between the two criteria, so the polish
    keeps them.
    """
    pixels = patches if isinstance(patches, PatchPixels) else PatchPixels(fixed_band, patches)
    frame = _PatchFrame(pixels.points)
    delta = pixels.points.new_zeros(2, 3).requires_grad_(True)
    optimiser = Adam([delta], lr=learning_rate)
    best, best_score = affine, -2.0
    for _ in range(iterations + 1):
        mapped = pixels.points @ affine[:2, :2].T + affine[:2, 2] + frame.local @ delta.T
        score = pixels.ncc(moving_band, mapped[None])[0]
        if float(score.detach()) > best_score:
            best, best_score = frame.apply(affine, delta.detach()), float(score.detach())
        if not iterations:
            break
        optimiser.zero_grad()
        (-score).backward()
        optimiser.step()
    return best, best_score


class _PatchFrame:
    """Affine updates about the patches' centroid, in units that move a patch rim by ~1 px: about the image origin
    a small turn would also be a large shift, and the fits would crawl along (or be ill-conditioned by) that
    coupling. ``local`` (N, 3) holds each point's coordinates in that frame, and a 1."""

    def __init__(self, points: torch.Tensor) -> None:
        self.centroid = points.mean(0)
        self.reach = float((points - self.centroid).norm(dim=1).max().clamp(min=1.0))
        self.local = torch.cat([(points - self.centroid) / self.reach, points.new_ones(len(points), 1)], 1)

    def apply(self, affine: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The (3, 3) affine that maps each point where ``affine`` does plus ``local @ delta.T`` ((2, 3) update)."""
        out = affine.clone()
        out[:2, :2] += delta[:, :2] / self.reach
        out[:2, 2] += delta[:, 2] - delta[:, :2] @ self.centroid / self.reach
        return out


class FibreTexture:
    """The fibre texture of one pair at full resolution: scores and refines affines on it.

    Band-passing both images and finding the patches costs more than scoring, so the level is built once per pair
    and serves the fallback's last fit, its comparison with the current affine, the confidence and the last
    precision step alike.

    Args:
        fixed: (1, 1, H, W) SHG intensity (log, normalised), full resolution.
        moving: (1, 1, Hm, Wm) eosin intensity, full resolution.
    """

    def __init__(self, fixed: torch.Tensor, moving: torch.Tensor) -> None:
        self.level = texture_level(fixed, moving, max(fixed.shape[-2:]), TEXTURE_BAND_PX, TEXTURE_PATCHES)
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
        return float(self.scores_and_contrasts(affine[None], shift_px)[1][0])

    def scores_and_contrasts(self, affines: torch.Tensor, shift_px: float) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`score` and :meth:`contrast` of (B, 3, 3) full-resolution affines, all 9 B poses scored at once →
        (B,) and (B,); zeros when the SHG has no patch."""
        if not self.level.patches:
            zeros = affines.new_zeros(affines.shape[0])
            return zeros, zeros
        step = shift_px * self.level.length  # the level is the full-resolution grid
        angles = torch.arange(8, dtype=affines.dtype, device=affines.device) * (torch.pi / 4)
        offsets = torch.stack([angles.cos(), angles.sin()], 1) * step  # (8, 2) fixed-frame shifts
        poses = affines[:, None].expand(-1, 9, 3, 3).clone()  # (B, 9, 3, 3): each pose, then its 8 shifts
        poses[:, 1:, :2, 2] += offsets @ affines[:, :2, :2].transpose(1, 2)
        scores = self.scores(poses.reshape(-1, 3, 3)).view(-1, 9)
        return scores[:, 0], scores[:, 0] - scores[:, 1:].mean(1)

    def polish(self, affine: torch.Tensor, iterations: int, learning_rate: float) -> tuple[torch.Tensor, float]:
        """:func:`polish_on_patches` at full resolution from a (3, 3) affine: the best affine seen and its score."""
        return self._fit(polish_on_patches, affine, iterations, learning_rate)

    def refine(self, affine: torch.Tensor, iterations: int, damping: float = 1e-3) -> tuple[torch.Tensor, float]:
        """:func:`refine_on_patches` at full resolution from a (3, 3) affine: the best affine and its score."""
        return self._fit(refine_on_patches, affine, iterations, damping)

    def _fit(self, fit, affine: torch.Tensor, iterations: int, setting: float) -> tuple[torch.Tensor, float]:
        if not self.level.patches:
            return affine, 0.0
        level = self.level
        fitted, score = fit(level.fixed_band, level.moving_band, self.pixels, level.down(affine), iterations, setting)
        return level.up(fitted), score


def texture_score(fixed: torch.Tensor, moving: torch.Tensor, affine: torch.Tensor) -> float:
    """:meth:`FibreTexture.score` of one affine (builds the level: use :class:`FibreTexture` for several)."""
    return FibreTexture(fixed, moving).score(affine)
