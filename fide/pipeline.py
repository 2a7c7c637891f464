"""The registration of one pair: preprocess → global search → pre-alignment → optimisation → decision → field.

Every stage is a function over tensors living in its own module; this module only wires them together. Which pose
is kept, and whether it can be trusted, is decided in one place (:mod:`fide.decision`) from the evidence on every
hypothesis.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import torch

from fide import geometry
from fide.config import FideConfig
from fide.decision import Decision, PoseEvidence, decide, judge_refined
from fide.features import ModalityEncoders
from fide.optimise.deformable import optimise_deformable
from fide.optimise.instance import label_nmi, optimise_affine
from fide.optimise.losses import LabelNMILoss
from fide.pair import FeatureFn, PairInputs, handcrafted_features, measure_evidence, prepare_inputs
from fide.prealign.fibres import fibre_search
from fide.prealign.prealign import fixed_keypoints, prealign_affine
from fide.prealign.search import search_layout, search_mirrors, search_similarity
from fide.precision import finish_pose
from fide.preprocess.working import WorkingPair

__all__ = ["RegistrationResult", "register_pair", "FeatureFn", "handcrafted_features"]

logger = logging.getLogger(__name__)


@dataclass
class RegistrationResult:
    """Output of :func:`register_pair`.

    Attributes:
        disp: (1, 2, H, W) displacement on the fixed grid, pixels, fixed to moving.
        affine: (3, 3) the affine part, fixed to moving, pixels.
        quality: full-resolution NMI of the decision's label maps under ``disp``, in [0, 1] (higher is better).
        stage_affines: the affine after each stage that ran (for ablations and QC).
        seconds: wall time per stage.
        notes: what a user should know about this pair (e.g. what the fibre fallback did), one line each.
        confidence: how likely the pose is right, in [0, 1] (NaN where not estimated); see docs/operations.md.
        confidence_basis: the criterion the confidence was read from: "texture", "mi" or "none".
        mirrored: whether the fixed-to-moving affine reflects (det < 0: the slide was flipped).
        scores: the evidence the confidence is made of (:class:`fide.decision.Decision`): ``nmi``,
            ``nmi_runner_up`` (the best distinct hypothesis' NMI); for SHG/H&E with collagen patches ``texture`` (the
            fibre-texture NCC) and ``texture_contrast`` (its peak above the pose shifted by a few pixels), NaN
            elsewhere.
        flag_reason: one line on why the pose should not be trusted (None when it can).
    """

    disp: torch.Tensor
    affine: torch.Tensor
    quality: float
    stage_affines: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    confidence: float = float("nan")
    confidence_basis: str = "none"
    mirrored: bool = False
    scores: dict[str, float] = field(default_factory=dict)
    flag_reason: str | None = None


def _centroid(mask: torch.Tensor) -> torch.Tensor:
    """Centre of mass of a (1, 1, H, W) mask (the image centre when empty), pixels, array order."""
    weights = mask[0, 0].float()
    if float(weights.sum()) < 1:
        return weights.new_tensor([(n - 1) / 2 for n in mask.shape[-2:]])
    grid = geometry.identity_grid(mask.shape[-2:], like=weights)
    return (grid * weights).sum((1, 2)) / weights.sum()


def register_pair(
    fixed_image: torch.Tensor,
    moving_image: torch.Tensor,
    cfg: FideConfig | None = None,
    *,
    device: torch.device | str | None = None,
    features: FeatureFn | None = None,
    encoders: ModalityEncoders | None = None,
) -> RegistrationResult:
    """Register one SHG (fixed) / bright-field (moving) pair.

    Args:
        fixed_image: (C, H, W) raw fixed image, C in {1, 3}.
        moving_image: (C, Hm, Wm) raw moving image; its size may differ from the fixed one.
        cfg: hyper-parameters; ``cfg.stages`` selects a prefix of the pipeline.
        device: where to compute; the inputs' device when None.
        features: feature extractor for matching and LNCC; overrides ``encoders``.
        encoders: learned modality encoders (see :func:`fide.features.select.resolve_encoders`); MIND-SSC when None.

    Returns:
        The field on the fixed grid, its quality score and the decision's confidence.
    """
    cfg = cfg or FideConfig()
    device = torch.device(device) if device is not None else fixed_image.device
    clock = _Clock()
    inputs, search_maps = prepare_inputs(fixed_image.to(device), moving_image.to(device), cfg, features, encoders)
    clock.lap("preprocess")
    candidates = _search(inputs, search_maps, cfg)
    clock.lap("search")
    starts, screened = _screen(candidates, inputs, cfg)
    stage_affines = {"search": candidates[0], "prealign": starts[0]}
    clock.lap("prealign")
    if not cfg.runs("affine"):
        return _result(
            inputs, starts[0], measure_evidence(inputs, [starts[0]], "candidate", cfg), cfg, clock, stage_affines
        )

    restarts = _optimise_starts(inputs, starts, cfg)
    distinct = geometry.distinct_poses(screened, inputs.fixed.shape, cfg.confidence.distinct_fraction, restarts)
    others = [screened[i] for i in distinct]
    evidence = measure_evidence(inputs, restarts, "restart", cfg) + measure_evidence(inputs, others, "candidate", cfg)
    decision = decide(evidence, inputs.fixed.shape, cfg.confidence)
    clock.lap("affine")
    notes = []
    # the fibres first: where the texture can judge they settle the pose in ~half the layout search's time (14 of the
    # 25 development pairs the fallbacks rescued needed them anyway); where it cannot, the layout search still runs
    if decision.flagged and inputs.texture() is not None and cfg.fibres.fallback:
        evidence, decision, note = _fibre_fallback(inputs, evidence, decision, cfg)
        notes.append(note)
        clock.lap("fibres")
    if decision.flagged and cfg.search.layout_fallback:
        evidence, decision, note = _layout_fallback(inputs, evidence, decision, cfg)
        notes.append(note)
        clock.lap("layout search")
    best = evidence[decision.index]
    stage_affines["affine"] = best.affine
    final = finish_pose(inputs, best, cfg, clock.lap, stage_affines)
    return _result(inputs, final.affine, [*evidence, final], cfg, clock, stage_affines, notes, chosen=decision)


class _Clock:
    """Wall time per stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
        logger.debug("%s: %.2f s", name, now - self._last)
        self._last = now


def _layout_fallback(
    inputs: PairInputs, evidence: list[PoseEvidence], decision: Decision, cfg: FideConfig
) -> tuple[list[PoseEvidence], Decision, str]:
    """For a pose nothing supports: a finer layout search's candidates, screened and optimised as the first search's,
    join the evidence and the same rule decides again."""
    centres = (_centroid(inputs.fixed.tissue), _centroid(inputs.moving.tissue))
    candidates = search_layout(inputs.fixed.colour, inputs.moving.colour, centres, cfg.search, cfg.seed)
    if not candidates:
        return evidence, decision, "layout search: no candidate"
    starts, _ = _screen([c.affine for c in candidates], inputs, cfg)
    refined = _optimise_starts(inputs, starts, cfg)
    evidence = evidence + measure_evidence(inputs, refined, "layout search", cfg)
    updated = decide(evidence, inputs.fixed.shape, cfg.confidence)
    kept = "kept" if updated.index >= len(evidence) - len(refined) else "not kept"
    return evidence, updated, f"layout search {kept}: confidence {decision.confidence:.2f} -> {updated.confidence:.2f}"


def _optimise_starts(inputs: PairInputs, starts: list[torch.Tensor], cfg: FideConfig) -> list[torch.Tensor]:
    """The screened starts, each (3, 3), optimised at the working size: the first search's and the layout search's
    hypotheses alike."""
    return list(optimise_affine(inputs.working(cfg.optimise.size_px), torch.stack(starts), cfg.optimise)[0])


def _fibre_fallback(
    inputs: PairInputs, evidence: list[PoseEvidence], decision: Decision, cfg: FideConfig
) -> tuple[list[PoseEvidence], Decision, str]:
    """For a pose nothing supports: the SHG collagen patches check every hypothesis, then vote over a similarity
    grid; a confirmed match fitted to the texture joins the evidence and the same rule decides again."""
    match = fibre_search(
        inputs.fixed.intensity,
        inputs.moving.intensity,
        (cfg.search.scale_min, cfg.search.scale_max),
        cfg.seed,
        texture=inputs.texture(),
        hypotheses=[evidence[decision.index].affine] + [e.affine for e in evidence],
        mirrors=search_mirrors(cfg.search.mirror),
        max_rotation_deg=cfg.search.max_rotation_deg,
    )
    if match is None:
        return evidence, decision, "fibre fallback: no confirmed match"
    evidence = evidence + measure_evidence(inputs, [match.affine], "fibres", cfg)
    updated = decide(evidence, inputs.fixed.shape, cfg.confidence)
    kept = "kept" if updated.index == len(evidence) - 1 else "not kept"
    return evidence, updated, f"fibre fallback {kept}: texture contrast {evidence[-1].contrast:.3f}"


# the screening of search candidates: a short NMI polish at this size and step count
SCREEN_SIZE_PX = 128
SCREEN_ITERATIONS = 15
# fide: a restart is only spent on a start whose screening NMI is at least this fraction of the best one (the
# others are false basins: on synthetic validation the true pose screened >= 0.95 x best, false ones <= 0.75 x)
RESTART_KEEP_RATIO = 0.85


def _result(
    inputs: PairInputs,
    affine: torch.Tensor,
    evidence: list[PoseEvidence],
    cfg: FideConfig,
    clock: _Clock,
    stage_affines: dict[str, torch.Tensor],
    notes: list[str] | None = None,
    chosen: Decision | None = None,
) -> RegistrationResult:
    """The field of the final pose (the last evidence entry), judged against every other hypothesis (trusted at
    most as much as when it was ``chosen``, where a decision chose it before the precision steps)."""
    if chosen is None:
        decision = decide(evidence, inputs.fixed.shape, cfg.confidence, chosen=len(evidence) - 1)
    else:
        decision = judge_refined(evidence, inputs.fixed.shape, cfg.confidence, chosen)
    for name, value in decision.scores.items():
        logger.debug("score %s: %.4f", name, value)
    disp = geometry.affine_to_disp(affine[None], inputs.fixed.shape)
    quality = decision.scores["nmi"]
    if cfg.runs("deformable") and cfg.deformable.enabled:
        deformed = optimise_deformable(inputs.working(cfg.optimise.size_px), affine, inputs.fixed.shape, cfg.deformable)
        deformed_quality = inputs.evidence_nmi(deformed)
        if deformed_quality >= quality:  # the residual must not lower the full-resolution similarity
            disp, quality = deformed, deformed_quality
        clock.lap("deformable")
    return RegistrationResult(
        disp.detach(),
        affine.detach(),
        quality,
        stage_affines,
        clock.seconds,
        notes or [],
        confidence=decision.confidence,
        confidence_basis=decision.basis,
        mirrored=bool(torch.linalg.det(affine[:2, :2]) < 0),
        scores=decision.scores,
        flag_reason=decision.reason,
    )


# poses scored together at a working level: memory of the warped label maps' soft level sets
_WORKING_BATCH = 16


def _working_nmis(loss: LabelNMILoss, working: WorkingPair, affines: torch.Tensor) -> torch.Tensor:
    """Label NMI at ``working``'s level of (B, 3, 3) full-resolution affines: (B,)."""
    scores = []
    for chunk in working.down(affines).split(_WORKING_BATCH):
        disp = geometry.affine_to_disp(chunk.to(working.fixed_features), working.shape)
        scores.append(label_nmi(loss, working.fixed_labels, working.moving_labels, disp))
    return torch.cat(scores)


def _working_nmi(loss: LabelNMILoss, working: WorkingPair, affine: torch.Tensor) -> float:
    return float(_working_nmis(loss, working, affine[None])[0])


def _screen(
    candidates: list[torch.Tensor], inputs: PairInputs, cfg: FideConfig
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Polish every search candidate briefly at a coarse level; the ``restarts`` best and the search's first
    candidate, pre-aligned by keypoints, are the optimisation's starts.

    The search's ranking is only a hint at 64 px; a short NMI optimisation separates a true basin (NMI rises)
    from a false one, so restarts (and keypoint matching, ~0.1 s a pose) are spent on the right candidates.
    Returns the starts and every screened candidate (the decision weighs them all).
    """
    opt = cfg.optimise
    nmi_loss = LabelNMILoss(opt.num_labels)
    coarse = inputs.working(SCREEN_SIZE_PX)
    if cfg.runs("affine") and len(candidates) > opt.restarts:
        quick = dataclasses.replace(opt, lncc_iterations=0, nmi_iterations=SCREEN_ITERATIONS, levels=1)
        polished, scores = optimise_affine(coarse, torch.stack(candidates), quick)
        scored = list(zip(scores.tolist(), polished))
    else:
        scored = [(_working_nmi(nmi_loss, coarse, affine), affine) for affine in candidates]
    lead = scored[0][1]
    for score, _ in scored:
        logger.debug("screen: NMI %.4f", score)
    scored.sort(key=lambda item: -item[0])
    best = scored[0][0]
    promising = [affine for score, affine in scored if score >= RESTART_KEEP_RATIO * best]
    # screening pulls candidates of one basin together: a restart is spent on each basin once
    basins = geometry.distinct_poses(promising, inputs.fixed.shape, cfg.confidence.distinct_fraction)
    starts = [promising[i] for i in basins][: max(1, opt.restarts)]
    # the search's first candidate always gets a restart: where the label maps cannot tell poses apart (NMI within
    # a few % at every pose) screening buries it, though the correlations ranked it first and right (4 of 20
    # development pairs the first search left flagged)
    if geometry.distinct_poses([lead], inputs.fixed.shape, cfg.confidence.distinct_fraction, starts):
        starts.append(lead)
    if cfg.runs("prealign"):
        working = inputs.working(cfg.prealign.size_px)
        keypoints = fixed_keypoints(working, cfg.prealign)
        for k, affine in enumerate(starts):
            refined, _ = prealign_affine(working, affine, cfg.prealign, keypoints)
            if _working_nmi(nmi_loss, working, refined) >= _working_nmi(nmi_loss, working, affine):
                starts[k] = refined  # keypoints are checked against the search, never trusted blindly
    return starts, [affine for _, affine in scored]


def _search(
    inputs: PairInputs, search_maps: list[tuple[torch.Tensor, torch.Tensor]], cfg: FideConfig
) -> list[torch.Tensor]:
    """Global search candidates (full-resolution affines), best first (see ``search_similarity``)."""
    fixed, moving = inputs.fixed, inputs.moving
    centres = (_centroid(fixed.tissue), _centroid(moving.tissue))
    candidates = search_similarity(fixed.colour, moving.colour, centres, cfg.search, cfg.seed, intensities=search_maps)
    for c in candidates:
        logger.debug("search candidate: %.1f°, scale %.3f, MI %.4f", c.angle_deg, c.scale, c.score)
    return [c.affine for c in candidates]
