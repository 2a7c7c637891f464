"""The chosen pose's last precision steps: a turn and shift search and a layout pass where the fibre texture is
silent, NMI at ``fine_size_px``, there a compass search over the whole affine at full resolution, and the texture
polish where the texture recognises the pose.

Each step starts from the pose the decision (:mod:`fide.decision`) chose and keeps its result only where the
full-resolution label NMI rises (the polish excepted, see :data:`_POLISH_REACH`); none of them chooses among poses.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from fide import geometry
from fide.config import REFERENCE_SIDE_PX, FideConfig, OptimiseConfig
from fide.decision import PoseEvidence
from fide.features.cooccurrence import joint_counts_at_shifts, peak_position, sampled_peak
from fide.optimise.compass import compass_search
from fide.optimise.instance import counted_label_nmis, optimise_affine
from fide.optimise.losses import nmi_of_joint, soft_level_sets
from fide.pair import PairInputs, measure_evidence
from fide.prealign.fibre_texture import POLISH_LEARNING_RATE
from fide.preprocess.filters import square_dilation
from fide.preprocess.working import WorkingPair

__all__ = ["compass_pass", "finish_pose", "shift_search", "shift_nmis"]

logger = logging.getLogger(__name__)

FINE_LEARNING_RATE = 3e-2  # fide: Adam step of the last NMI-only pass at OptimiseConfig.fine_size_px
# the texture polish moves a recognised pose by a fraction of a pixel; a fit that ran further is not kept. No NMI
# guard: the layout label maps' optimum lies ~1 px off the fibres' (a 1 % guard rejected right polishes and left hard
# development pairs at 1.4-1.7 px instead of 0.5)
_POLISH_REACH = 0.01
# the shift search's reach, pixels at 834 px. Where the fibres do not match, the affine optimisation stops in a local
# optimum of the layout labels' NMI up to ~10 px from their global one (decoupled-patch20 pairs left 7-12 px off and
# `ok`; the truth scored higher there, and optimising from it stayed within 2.3 px)
_SHIFT_REACH_PX = 19
# the shift search's turns about the fixed centre, degrees. There the affine optimisation also leaves poses turned
# 0.3-0.6° off the layout labels' optimum, which lies within ~0.1° of the truth in every decoupled regime
# (benchmarks/criterion_peak.py; their scale optimum does not: -0.3 % on whole cores, so scale is not searched)
_TURNS_DEG = (-0.6, -0.3, 0.0, 0.3, 0.6)
# the compass search's steps, pixels moved at the fixed image's half side (at 834 px): the fine pass leaves silent
# poses 2-3 px off (scale, stretch, shear: 0.7-2 % anisotropy against the truth on 8 decoupled development pairs),
# and moves under 0.25 px follow the label maps' noise. Offline from the fields of 140 development pairs (scratch
# study, HISTORY part 15) these steps, at 834 px, fixed 6 of those 8; at 417 px the search lost more than it gained
_COMPASS_START_PX = 2.0
_COMPASS_MIN_PX = 0.25
_COMPASS_EVALUATIONS = 200  # a bound on its time; the development pairs needed 48-130
# the compass search must also raise the NMI inside the fixed tissue this far from its outline (pixels at 834 px):
# on whole cores the outline alone pulls the scale (the layout NMI's optimum -0.3 % off the truth,
# benchmarks/criterion_peak.py), so whole-overlap NMI alone made 13 of 20 decoupled cores worse, 4 better
_INTERIOR_MARGIN_PX = 20


def finish_pose(
    inputs: PairInputs,
    chosen: PoseEvidence,
    cfg: FideConfig,
    lap: Callable[[str], None],
    stage_affines: dict[str, torch.Tensor],
) -> PoseEvidence:
    """The chosen pose after the precision steps, measured on all the evidence; each step's affine goes into
    ``stage_affines`` and its time to ``lap(name)``.

    Where the fibre texture does not recognise the pose: the turn and shift search and the affine optimisation again
    without its LNCC phase; NMI at ``fine_size_px``; there the compass search at full resolution; then the fibre
    texture at full resolution where it recognises the pose (a texture it does not recognise would be fitted to noise).
    """
    opt = cfg.optimise
    affine = chosen.affine
    quality = inputs.quality(affine)  # the optimiser's NMI: chosen.nmi is the decision's (pair.EVIDENCE_LABELS)
    texture = inputs.texture()
    sharp = math.isfinite(chosen.contrast) and chosen.contrast >= cfg.confidence.texture_mid
    silent = texture is not None and not sharp
    if silent and opt.lncc_iterations > 0:
        affine, quality = shift_search(inputs, opt.fine_size_px, affine, quality)
        affine, quality = _layout_pass(inputs, opt, affine, quality)
        stage_affines["layout"] = affine
        lap("layout")
    if min(opt.fine_size_px, max(inputs.fixed.shape)) > opt.size_px and opt.fine_iterations > 0:
        affine, quality = _fine_pass(inputs, opt, affine, quality)
        stage_affines["fine"] = affine
        lap("fine")
    if silent:
        affine, quality = compass_pass(inputs, affine, quality)
        stage_affines["compass"] = affine
        lap("compass")
    if texture is not None and sharp and cfg.fibres.polish_iterations > 0:
        start = texture.score(affine)
        refined, score = texture.polish(affine, cfg.fibres.polish_iterations, POLISH_LEARNING_RATE)
        logger.debug("polish: texture %.4f -> %.4f", start, score)
        if score > start and geometry.same_pose(refined, affine, inputs.fixed.shape, _POLISH_REACH):
            affine = refined
        stage_affines["polish"] = affine
        lap("polish")
    return measure_evidence(inputs, [affine], "final", cfg)[0]


def shift_search(inputs: PairInputs, size_px: int, affine: torch.Tensor, quality: float) -> tuple[torch.Tensor, float]:
    """The pose turned about the fixed image's centre by the angle (:data:`_TURNS_DEG`) and moved by the fixed-grid
    shift (every whole pixel at ``size_px`` within :data:`_SHIFT_REACH_PX`) whose label NMI there is highest, kept
    only if full-resolution NMI rises above ``quality``.

    At each angle the moving labels are warped once onto the fixed grid padded by the reach; the joint label counts
    of every shift are then cross-correlations of the soft level sets (:func:`fide.features.cooccurrence`), the same
    NMI that warping at each shifted pose gives, for the cost of one warp and a few FFTs. The best angle is refined
    between the samples by a parabola, and its map's peak between pixels.
    """
    working = inputs.working(size_px)
    reach = math.ceil(_SHIFT_REACH_PX * max(working.shape) / REFERENCE_SIDE_PX)
    level_affine = working.down(affine.to(working.fixed_labels))
    centre = level_affine.new_tensor([(n - 1) / 2 for n in working.shape])
    peaks = [
        float(shift_nmis(working, _turned(level_affine, angle, centre), reach, inputs.num_labels, torch.float32).max())
        for angle in _TURNS_DEG
    ]
    angle = sampled_peak(peaks, _TURNS_DEG)
    turned = _turned(level_affine, angle, centre)
    nmi = shift_nmis(working, turned, reach, inputs.num_labels)
    shift = peak_position(nmi) - reach
    shifted = working.up(geometry.shift_pose(turned, shift)).to(affine)
    shifted_quality = inputs.quality(shifted)
    logger.debug(
        "shift search: %.2f°, %s px at %d, full-resolution NMI %.4f -> %.4f",
        angle,
        shift.tolist(),
        size_px,
        quality,
        shifted_quality,
    )
    return (shifted, shifted_quality) if shifted_quality > quality else (affine, quality)


def _turned(level_affine: torch.Tensor, angle_deg: float, centre: torch.Tensor) -> torch.Tensor:
    """``level_affine`` after a turn by ``angle_deg`` about ``centre`` (2,) of the fixed level grid (exactly
    ``level_affine`` at 0)."""
    if angle_deg == 0.0:
        return level_affine
    turn = geometry.similarity_matrix(
        torch.deg2rad(level_affine.new_tensor([angle_deg])), level_affine.new_ones(1), centre, centre
    )[0]
    return level_affine @ turn


def shift_nmis(
    working: WorkingPair,
    level_affine: torch.Tensor,
    reach: int,
    num_labels: int,
    counts_dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Label NMI at ``working``'s level of the (3, 3) level-pixel pose moved by every fixed-grid shift t in
    ``-reach .. reach`` along each axis: (S, S), S = 2 reach + 1, entry [i, j] for t = (i - reach, j - reach).

    ``counts_dtype``: float64 where neighbouring shifts are compared (their NMIs differ by ~10^-4 over counts of
    ~10^5 pixels); float32 (~0.6x the time) where only maps' maxima are compared (on three decoupled pairs their
    maxima were within 1.3e-7 of float64's, neighbouring turns' maxima 1e-4 or more apart).
    """
    height, width = working.shape
    canvas = (height + 2 * reach, width + 2 * reach)
    from_canvas = geometry.shift_pose(level_affine, level_affine.new_tensor([-reach, -reach]))
    disp = geometry.affine_to_disp(from_canvas[None], canvas)
    warped = geometry.warp(working.moving_labels, disp)
    moving_sets = soft_level_sets(warped, num_labels) * geometry.overlap_mask(working.moving_labels, disp)
    fixed_sets = F.pad(soft_level_sets(working.fixed_labels, num_labels), (reach,) * 4)[0]
    joint = joint_counts_at_shifts(fixed_sets.to(counts_dtype), moving_sets.to(counts_dtype), reach)[0]  # (K, K, S, S)
    return nmi_of_joint(joint.permute(2, 3, 0, 1)).to(level_affine)


def _layout_pass(
    inputs: PairInputs, opt: OptimiseConfig, affine: torch.Tensor, quality: float
) -> tuple[torch.Tensor, float]:
    """The affine optimisation from the chosen pose on the label maps' NMI only. The LNCC phase correlates feature
    maps of the fibre texture: where the SHG's fibres do not match the bright field's it pulls the pose off the
    layout's optimum (decoupled development pairs: 2.9 / 5.9 px -> 0.5 / 1.7 px on two of three)."""
    schedule = dataclasses.replace(opt, lncc_iterations=0)
    return _refine_if_nmi_rises(inputs, opt.size_px, schedule, affine, quality, "layout pass")


def _fine_pass(
    inputs: PairInputs, opt: OptimiseConfig, affine: torch.Tensor, quality: float
) -> tuple[torch.Tensor, float]:
    """NMI-only refinement of the selected affine at ``fine_size_px``."""
    schedule = dataclasses.replace(
        opt, lncc_iterations=0, nmi_iterations=opt.fine_iterations, levels=1, learning_rate=FINE_LEARNING_RATE
    )
    return _refine_if_nmi_rises(inputs, opt.fine_size_px, schedule, affine, quality, "fine pass")


def _refine_if_nmi_rises(
    inputs: PairInputs, size_px: int, schedule: OptimiseConfig, affine: torch.Tensor, quality: float, name: str
) -> tuple[torch.Tensor, float]:
    """``affine`` optimised at ``size_px`` with ``schedule``, kept only if full-resolution NMI rises."""
    refined = optimise_affine(inputs.working(size_px), affine, schedule)[0][0]
    refined_quality = inputs.quality(refined)
    logger.debug("%s: full-resolution NMI %.4f -> %.4f", name, quality, refined_quality)
    return (refined, refined_quality) if refined_quality > quality else (affine, quality)


def compass_pass(inputs: PairInputs, affine: torch.Tensor, quality: float) -> tuple[torch.Tensor, float]:
    """The pose nudged (:func:`fide.geometry.nudge_pose`: shift, turn, scale, stretch, shear about the fixed centre)
    by a compass search at full resolution that moves only where the label NMI rises both over the whole overlap and
    inside the fixed tissue away from its outline; kept only if full-resolution NMI rises above ``quality``."""
    height, width = inputs.fixed.shape
    unit = max(height, width) / REFERENCE_SIDE_PX
    margin = round(_INTERIOR_MARGIN_PX * unit)
    interior = 1 - square_dilation(1 - inputs.fixed.tissue.float(), margin)  # the tissue eroded by a square
    moving_labels = inputs.moving_labels.float()
    centre = torch.tensor([(height - 1) / 2, (width - 1) / 2])
    radius = max(height, width) / 2

    def pose(moves) -> torch.Tensor:
        return geometry.nudge_pose(affine, moves, centre, radius)

    def views(moves) -> list[float]:
        disp = geometry.affine_to_disp(pose(moves)[None].to(moving_labels), (height, width))
        fixed_labels = inputs.fixed_labels
        return counted_label_nmis(fixed_labels, moving_labels, disp, inputs.num_labels, interior, padding_mode="border")

    moves, _, calls = compass_search(views, 6, _COMPASS_START_PX * unit, _COMPASS_MIN_PX * unit, _COMPASS_EVALUATIONS)
    nudged = pose(moves)
    nudged_quality = inputs.quality(nudged)
    logger.debug(
        "compass: %s after %d NMIs, full-resolution NMI %.4f -> %.4f", moves.round(2), calls, quality, nudged_quality
    )
    return (nudged, nudged_quality) if nudged_quality > quality else (affine, quality)
