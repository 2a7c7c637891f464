"""Exhaustive global initialisation: rotation x scale (x mirror), every translation at once.

For each candidate similarity the moving label indicators are resampled into the fixed frame and the joint label
counts of *all* translations come from FFT cross-correlations (the cross mutual information function, CMIF, of
Öfverstedt et al., Pattern Recognit. Lett. 2022, used by the organisers' baseline). A 180° rotation is exactly as
easy to find as a 5° one, because every angle is scored.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fide import geometry
from fide.config import MIRROR_CHOICES, SearchConfig
from fide.features import kmeans_labels, one_hot_labels
from fide.features.cooccurrence import correlation_at_shifts, joint_counts_at_shifts

__all__ = [
    "Candidate",
    "cross_mutual_information",
    "search_layout",
    "search_similarity",
    "rotation_angles_deg",
    "search_mirrors",
]

NUM_LABELS = 4  # fide: K of the k-means label maps at search level (K^2 FFT correlations per candidate)
MAX_SHIFT = 0.25  # fide: translations up to this fraction of the image side, from the tissue centroids
MIN_OVERLAP = 0.5  # globalign: at least 50 % overlap
BATCH = 6  # candidates per FFT batch: the spectra stay in the CPU caches (24: the search took ~1.2x as long, 1 thread)
# fide: a second, finer level of the search around each candidate: angles within ±4° in 9 steps, then scales
# within ×/÷ 1.06 in 5, translations within 6 % of the side
REFINE_SIZE_PX = 128
# fide: one peak of the coarse grid spreads over its neighbouring rotations at 64 px, each with its own best shift;
# grid poses within this many angle steps of a better one (compared without their shifts, at the corners,
# fide.geometry.same_pose) add no candidate. With the shifts, or at 2.5 steps, near-copies of one basin got
# through or a true basin was suppressed on the development tasks (benchmarks/HISTORY.md, 2026-12-03)
BASIN_STEPS = 2
# fide: candidates of one basin from two criteria, each refined at REFINE_SIZE_PX, land within ~3° and ~5 % scale
# of each other: 0.04 of the side at the corners
MERGE_DISTINCT = 0.04
REFINE_ANGLE_DEG = 4.0
REFINE_ANGLE_STEPS = 9
REFINE_SCALE_STEPS = 5
REFINE_SCALE_RATIO = 1.06
REFINE_MAX_SHIFT = 0.06
# fide: the layout search for a pose nothing supports: label maps of 8 levels at the search size keep the stroma /
# cellular layout that 4 merge away. On the 6 decoupled-patch20 development pairs whose true basin the 4-label search
# missed, 8 labels ranked it in the top 2 on 3 (4 labels at 128 px: none; 8 at 128 px: 3 others, ~6x the time)
LAYOUT_LABELS = 8
LAYOUT_TOP_K = 6


def search_mirrors(mirror: str) -> tuple[bool, ...]:
    """Which poses a search holds for ``SearchConfig.mirror``: "auto" both, "never" unmirrored, "always" mirrored.

    Raises:
        ValueError: any other value (the valid ones are listed).
    """
    options = dict(zip(MIRROR_CHOICES, [(False, True), (False,), (True,)]))
    if mirror not in options:
        raise ValueError(f"search.mirror must be one of {list(MIRROR_CHOICES)}, got {mirror!r}")
    return options[mirror]


def rotation_angles_deg(step_deg: float, max_rotation_deg: float = 180.0) -> torch.Tensor:
    """Angles of a rotation grid, degrees: the full circle ``[-180, 180)`` when ``max_rotation_deg >= 180``, else
    ``0, ±step, ±2 step, ...`` up to ±``max_rotation_deg`` (the grid always holds the identity).

    Raises:
        ValueError: ``step_deg`` <= 0 or ``max_rotation_deg`` < 0.
    """
    if step_deg <= 0 or max_rotation_deg < 0:
        raise ValueError(f"need step_deg > 0 and max_rotation_deg >= 0, got {step_deg} and {max_rotation_deg}")
    if max_rotation_deg >= 180:
        return torch.arange(-180.0, 180.0, step_deg)
    count = int(math.floor(max_rotation_deg / step_deg + 1e-9))
    return torch.arange(-count, count + 1, dtype=torch.float32) * step_deg


@dataclass
class Candidate:
    """One similarity hypothesis, fixed to moving, in full-resolution pixels."""

    affine: torch.Tensor  # (3, 3)
    angle_deg: float
    scale: float
    mirror: bool
    score: float  # mutual information (nats) at the search level


def cross_mutual_information(
    fixed_onehot: torch.Tensor, moving_onehot: torch.Tensor, min_overlap: float, max_shift: int | None = None
) -> torch.Tensor:
    """Mutual information between two label images for every shift.

    Args:
        fixed_onehot: (K, N, M) fixed label indicators on the canvas (zero outside the fixed image).
        moving_onehot: (B, K, N, M) moving label indicators of B candidates (zero outside the moving image).
        min_overlap: shifts whose overlap is below this fraction of the smaller image are scored -inf.
        max_shift: keep only shifts t with |t_i|, |t_j| <= max_shift (the rest wrap around the canvas).

    Returns:
        (B, S, S) MI in nats for shifts t = -max_shift .. max_shift along each axis (S = 2 max_shift + 1), or
        (B, N, M) indexed modulo the canvas when ``max_shift`` is None; entry t scores fixed(q) against moving(q + t).
    """
    # the entropy terms below cost more than the FFTs: evaluate them on kept shifts only
    joint = joint_counts_at_shifts(fixed_onehot, moving_onehot, max_shift).contiguous()  # (B, Ka, Kb, S, S)
    marginal_fixed = joint.sum(2)  # (B, Ka, S, S): fixed label counts inside the overlap
    marginal_moving = joint.sum(1)
    overlap = marginal_fixed.sum(1)  # (B, S, S)
    eps = 1e-6
    joint_term = torch.special.xlogy(joint, joint).sum((1, 2))
    fixed_term = torch.special.xlogy(marginal_fixed, marginal_fixed).sum(1)
    moving_term = torch.special.xlogy(marginal_moving, marginal_moving).sum(1)
    mi = (joint_term - fixed_term - moving_term) / overlap.clamp(min=eps) + torch.log(overlap.clamp(min=eps))
    smaller = min(float(fixed_onehot.sum()), float(moving_onehot[0].sum()))
    return torch.where(overlap >= min_overlap * smaller, mi, torch.full_like(mi, -math.inf))


def cross_correlation_coefficient(
    fixed: torch.Tensor, moving: torch.Tensor, min_overlap: float, max_shift: int
) -> torch.Tensor:
    """Pearson correlation of two intensity images over their overlap, for every shift (Padfield's masked NCC).

    Args:
        fixed: (2, N, M) fixed intensity and validity (1 inside the fixed image) on the canvas.
        moving: (B, 2, N, M) warped moving intensity and validity of B candidates.
        min_overlap: shifts whose overlap is below this fraction of the smaller image are scored -inf.
        max_shift: shifts kept along each axis (see :func:`cross_mutual_information`).

    Returns:
        (B, S, S) correlation in [-1, 1] for shifts -max_shift .. max_shift.
    """
    size = fixed.shape[-2:]
    f_val, f_int = fixed[1], fixed[0] * fixed[1]
    m_val, m_int = moving[:, 1], moving[:, 0] * moving[:, 1]
    fixed_f = torch.fft.rfft2(torch.stack([f_val, f_int, f_int * f_int]))
    moving_f = torch.fft.rfft2(torch.stack([m_val, m_int, m_int * m_int], dim=1))
    pairs = [(0, 0), (1, 0), (2, 0), (0, 1), (0, 2), (1, 1)]  # n, Sf, Sff, Sm, Smm, Sfm
    cross = torch.stack([fixed_f[a].conj() * moving_f[:, b] for a, b in pairs], dim=1)
    sums = correlation_at_shifts(cross, size, max_shift)
    n, sf, sff, sm, smm, sfm = sums.unbind(1)
    n = n.clamp(min=1e-3)
    covariance = sfm - sf * sm / n
    variance = ((sff - sf * sf / n).clamp(min=0) * (smm - sm * sm / n).clamp(min=0)).sqrt()
    ncc = covariance / variance.clamp(min=1e-6)
    smaller = min(float(f_val.sum()), float(m_val[0].sum()))
    return torch.where(n >= min_overlap * smaller, ncc, torch.full_like(ncc, -math.inf))


@dataclass
class _Level(geometry.PairLevel):
    """Both images at one search resolution, as the scoring function wants them."""

    fixed: torch.Tensor  # (C, hf, wf): label indicators (MI) or intensity + validity (NCC)
    moving: torch.Tensor  # (1, C, hm, wm)
    criterion: str  # "mi" or "ncc"


def _level_shapes(fixed: torch.Tensor, moving: torch.Tensor, size_px: int):
    # the search's sizes are its own: small test images are enlarged to them
    return geometry.level_shapes(fixed.shape[-2:], moving.shape[-2:], size_px, min_side=2, enlarge=True)


def _label_level(
    fixed_colour: torch.Tensor, moving_colour: torch.Tensor, size_px: int, num_labels: int, seed: int
) -> _Level:
    """Downsample both images so the fixed one's longest side is ``size_px``, *then* quantise them.

    Quantising after smoothing turns sparse full-resolution structure (thin SHG fibres, single nuclei) into region
    labels (fibre density, stroma vs nuclei-rich tissue) that survive at the coarse search resolution.
    """
    shapes = _level_shapes(fixed_colour, moving_colour, size_px)
    onehots = [
        one_hot_labels(kmeans_labels(geometry.downsample(image, shape), num_labels, seed=seed), num_labels)
        for image, shape in zip((fixed_colour, moving_colour), shapes)
    ]
    full = (fixed_colour.shape[-2:], moving_colour.shape[-2:])
    return _Level.between(full, shapes, fixed=onehots[0][0], moving=onehots[1], criterion="mi")


def _intensity_level(fixed_intensity: torch.Tensor, moving_intensity: torch.Tensor, size_px: int) -> _Level:
    """Modality-robust intensities (log-SHG vs eosin) with a validity channel, for the correlation criterion."""
    shapes = _level_shapes(fixed_intensity, moving_intensity, size_px)
    fixed = geometry.downsample(fixed_intensity, shapes[0])
    moving = geometry.downsample(moving_intensity, shapes[1])
    return _Level.between(
        (fixed_intensity.shape[-2:], moving_intensity.shape[-2:]),
        shapes,
        fixed=torch.cat([fixed, torch.ones_like(fixed)], dim=1)[0],
        moving=torch.cat([moving, torch.ones_like(moving)], dim=1),
        criterion="ncc",
    )


def _score_candidates(
    level: _Level,
    level_affines: torch.Tensor,
    max_shift: int,
    min_overlap: float,
    batch: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best translation and its MI for each candidate affine (given without its final translation search).

    Args:
        level_affines: (B, 3, 3) fixed → moving at the level's pixels.
        max_shift: translations searched in [-max_shift, max_shift]^2 level pixels (fixed-frame shift).

    Returns:
        (B,) best MI and (B, 2) the fixed-frame shift t (level pixels) achieving it: p ↦ A (p + t).
    """
    hf, wf = level.fixed.shape[-2:]
    size = (hf + 2 * max_shift, wf + 2 * max_shift)
    canvas_fixed = F.pad(level.fixed, (max_shift, max_shift, max_shift, max_shift))
    # canvas pixel q is fixed pixel q - max_shift; fixed labels get a validity channel via the one-hot sum
    to_canvas = torch.eye(3, dtype=level_affines.dtype, device=level_affines.device)
    to_canvas[:2, 2] = -max_shift
    scores, shifts = [], []
    for chunk in level_affines.split(batch):
        disp = geometry.affine_to_disp(chunk @ to_canvas, size)
        warped = geometry.warp(level.moving.expand(len(chunk), -1, -1, -1), disp)
        if level.criterion == "mi":
            score = cross_mutual_information(canvas_fixed, warped, min_overlap, max_shift)
        else:
            score = cross_correlation_coefficient(canvas_fixed, warped, min_overlap, max_shift)
        best, index = score.flatten(1).max(dim=1)
        side = 2 * max_shift + 1
        scores.append(best)
        shifts.append((torch.stack([index // side, index % side], dim=1) - max_shift).to(chunk))
    return torch.cat(scores), torch.cat(shifts)


def _to_full_resolution(level: _Level, level_affines: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    return level.up(geometry.shift_pose(level_affines, shifts))


def _candidate_affines(
    level: _Level, centres: tuple[torch.Tensor, torch.Tensor], angles_deg, scales, mirrors
) -> tuple[torch.Tensor, torch.Tensor]:
    """Level-pixel similarity affines for every (angle, scale, mirror) and their parameter table (B, 3)."""
    table = [(a, s, float(m)) for m in mirrors for s in scales for a in angles_deg]
    grid = torch.tensor(table, dtype=torch.float32, device=level.fixed.device)
    centre_fixed = centres[0] * centres[0].new_tensor(level.fixed_factors)
    centre_moving = centres[1] * centres[1].new_tensor(level.moving_factors)
    affines = geometry.similarity_matrix(
        torch.deg2rad(grid[:, 0]), grid[:, 1], centre_fixed, centre_moving, grid[:, 2] > 0.5
    )
    return affines, grid


def _coarse_candidates(
    level: _Level, fine: _Level, centres, fixed_shape: Sequence[int], cfg: SearchConfig
) -> list[Candidate]:
    angles = rotation_angles_deg(cfg.angle_step_deg, cfg.max_rotation_deg).tolist()
    scales = torch.logspace(math.log10(cfg.scale_min), math.log10(cfg.scale_max), cfg.scale_steps).tolist()
    mirrors = search_mirrors(cfg.mirror)
    affines, grid = _candidate_affines(level, centres, angles, scales, mirrors)
    max_shift = max(2, round(MAX_SHIFT * max(level.fixed.shape[-2:])))
    scores, shifts = _score_candidates(level, affines, max_shift, MIN_OVERLAP, BATCH)
    order = [i for i in torch.argsort(scores, descending=True).tolist() if math.isfinite(float(scores[i]))]
    unshifted = level.up(affines[order])  # rotation and scale: the peaks are told apart without their shifts
    peaks = geometry.distinct_poses(unshifted, fixed_shape, _basin_fraction(cfg.angle_step_deg), limit=cfg.top_k)
    kept = [order[n] for n in peaks]
    full = _to_full_resolution(level, affines[kept], shifts[kept])
    coarse = [
        Candidate(affine, float(grid[i, 0]), float(grid[i, 1]), bool(grid[i, 2] > 0.5), float(scores[i]))
        for affine, i in zip(full, kept)
    ]
    return [refine_similarity(fine, c) for c in coarse]


def search_similarity(
    fixed_colour: torch.Tensor,
    moving_colour: torch.Tensor,
    centres: tuple[torch.Tensor, torch.Tensor],
    cfg: SearchConfig,
    seed: int = 0,
    intensities: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
) -> list[Candidate]:
    """Stage-2 entry: exhaustive rotation/scale/mirror search with all translations scored at once.

    Several criteria propose candidates: the correlation of each given pair of comparable channels (learned
    representations, or log-SHG density vs eosin), which works where SHG is too sparse for labels, and MI of k-means
    labels, which needs no intensity relation at all and recognises the coarse layout (outline, stroma vs cellular
    regions) where the fine texture does not match: it always runs. Their candidates are interleaved, best first, in
    the order given (the correlation criteria first, the label MI last), near-duplicates dropped.

    Args:
        fixed_colour: (1, C, H, W) fixed channels for label maps (log-SHG or RGB in [0, 1]), full resolution.
        moving_colour: (1, C, Hm, Wm) the same for the moving image.
        centres: (2,) fixed and (2,) moving rotation centres (e.g. tissue centroids), pixels, array order.
        cfg: search settings.
        seed: k-means seed.
        intensities: pairs of (1, 1, H, W) fixed and (1, 1, Hm, Wm) moving comparable channels in [0, 1].

    Returns:
        Up to ``(len(intensities) + 1) * cfg.top_k`` distinct candidates, refined at :data:`REFINE_SIZE_PX`.
    """
    proposals = [
        _coarse_candidates(
            _intensity_level(fixed_map, moving_map, cfg.size_px),
            _intensity_level(fixed_map, moving_map, REFINE_SIZE_PX),
            centres,
            fixed_colour.shape[-2:],
            cfg,
        )
        for fixed_map, moving_map in intensities
    ]
    proposals.append(_label_candidates(fixed_colour, moving_colour, centres, cfg, seed, NUM_LABELS))
    interleaved = [c[rank] for rank in range(cfg.top_k) for c in proposals if rank < len(c)]
    kept = geometry.distinct_poses([c.affine for c in interleaved], fixed_colour.shape[-2:], MERGE_DISTINCT)
    return [interleaved[i] for i in kept]


def search_layout(
    fixed_colour: torch.Tensor,
    moving_colour: torch.Tensor,
    centres: tuple[torch.Tensor, torch.Tensor],
    cfg: SearchConfig,
    seed: int = 0,
) -> list[Candidate]:
    """The label-MI criterion alone with :data:`LAYOUT_LABELS` labels and :data:`LAYOUT_TOP_K` candidates: a second,
    finer look at the coarse layout where the first search's hypotheses left no pose supported (arguments as
    :func:`search_similarity`; ~4x its label criterion's time)."""
    wider = dataclasses.replace(cfg, top_k=LAYOUT_TOP_K)
    return _label_candidates(fixed_colour, moving_colour, centres, wider, seed, LAYOUT_LABELS)


def _label_candidates(fixed_colour, moving_colour, centres, cfg: SearchConfig, seed: int, num_labels: int):
    """The label-MI criterion's candidates: coarse grid at ``cfg.size_px``, refined at :data:`REFINE_SIZE_PX`."""
    return _coarse_candidates(
        _label_level(fixed_colour, moving_colour, cfg.size_px, num_labels, seed),
        _label_level(fixed_colour, moving_colour, REFINE_SIZE_PX, num_labels, seed),
        centres,
        fixed_colour.shape[-2:],
        cfg,
    )


def _basin_fraction(angle_step_deg: float) -> float:
    """The corner distance (fraction of the side, :func:`fide.geometry.same_pose`) within which poses of the coarse
    grid are one peak: a square image's corner under a rotation of :data:`BASIN_STEPS` angle steps."""
    return math.sqrt(2) * math.sin(math.radians(BASIN_STEPS * angle_step_deg) / 2)


def refine_similarity(level: _Level, candidate: Candidate) -> Candidate:
    """Finer sweep of angle, then scale, around one candidate (at the finer ``level``), translations by FFT again.

    Angle and scale barely interact at this resolution, so they are swept one after the other: ``A + S`` scored
    affines instead of ``A x S``.
    """
    base = level.down(candidate.affine)
    centre = torch.tensor([(n - 1) / 2 for n in level.fixed.shape[-2:]])  # perturb about the fixed image centre
    max_shift = max(2, round(REFINE_MAX_SHIFT * max(level.fixed.shape[-2:])))

    def sweep(angles_deg: torch.Tensor, scales: torch.Tensor) -> tuple[float, float, torch.Tensor, float]:
        local = geometry.similarity_matrix(torch.deg2rad(angles_deg), scales, centre, centre).to(base)
        affines = base[None] @ local  # A' = A ∘ (rotate/scale about c)
        scores, shifts = _score_candidates(level, affines, max_shift, MIN_OVERLAP, BATCH)
        best = int(scores.argmax())
        full = _to_full_resolution(level, affines[best : best + 1], shifts[best : best + 1])[0]
        return float(angles_deg[best]), float(scales[best]), full, float(scores[best])

    angles = torch.linspace(-REFINE_ANGLE_DEG, REFINE_ANGLE_DEG, REFINE_ANGLE_STEPS)
    log_ratio = math.log(REFINE_SCALE_RATIO)
    scales = torch.exp(torch.linspace(-log_ratio, log_ratio, REFINE_SCALE_STEPS))
    angle, _, _, _ = sweep(angles, torch.ones_like(angles))
    angle, scale, full, score = sweep(torch.full_like(scales, angle), scales)
    return Candidate(full, candidate.angle_deg + angle, candidate.scale * scale, candidate.mirror, score)
