"""The registration of one pair: preprocess → features → global search → pre-alignment → optimisation → field.

Pairs whose quality score stays low get one more chance from the fibre-texture search (sparse SHG).

Every stage is a function over tensors living in its own module; this module only wires them together and keeps
the best of several restarts.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fide import geometry
from fide.config import FibreConfig, FideConfig, OptimiseConfig
from fide.features import ModalityEncoders, kmeans_labels, learned_features, mind_ssc
from fide.optimise.confidence import pose_confidence
from fide.optimise.deformable import optimise_deformable
from fide.optimise.instance import WorkingPair, label_nmi, make_working_pair, optimise_affine
from fide.optimise.losses import LabelNMILoss
from fide.prealign.fibre_fallback import fibre_fallback, texture_polish
from fide.prealign.fibres import FibreTexture
from fide.prealign.prealign import fixed_keypoints, prealign_affine
from fide.prealign.search import search_similarity
from fide.preprocess import PreparedImage, prepare_pair

__all__ = ["RegistrationResult", "register_pair", "FeatureFn", "handcrafted_features"]

logger = logging.getLogger(__name__)

FeatureFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class RegistrationResult:
    """Output of :func:`register_pair`.

    Attributes:
        disp: (1, 2, H, W) displacement on the fixed grid, pixels, fixed to moving.
        affine: (3, 3) the affine part, fixed to moving, pixels.
        quality: full-resolution NMI of the label maps under ``disp``, in [0, 1] (higher is better).
        stage_affines: the affine after each stage that ran (for ablations and QC).
        seconds: wall time per stage.
        notes: what a user should know about this pair (e.g. what the fibre fallback did), one line each.
        confidence: how likely the pose is right, in [0, 1] (NaN where not estimated); see docs/operations.md.
        confidence_basis: the criterion the confidence was read from: "texture", "nmi" or "none".
        mirrored: whether the fixed-to-moving affine reflects (det < 0: the slide was flipped).
        scores: the criteria measured on the result, which the confidence is made of: ``nmi``; for SHG/H&E with
            collagen patches ``texture`` (the fibre-texture NCC) and ``texture_contrast`` (its peak above the pose
            shifted by a few pixels), NaN elsewhere.
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


def handcrafted_features(fixed: torch.Tensor, moving: torch.Tensor, radius: int = 1, dilation: int = 2):
    """MIND-SSC of both modality-robust intensity channels: (1, 1, h, w) each → (1, 6, h, w) each."""
    return mind_ssc(fixed, radius, dilation), mind_ssc(moving, radius, dilation)


def _centroid(mask: torch.Tensor) -> torch.Tensor:
    """Centre of mass of a (1, 1, H, W) mask (the image centre when empty), pixels, array order."""
    weights = mask[0, 0].float()
    if float(weights.sum()) < 1:
        return weights.new_tensor([(n - 1) / 2 for n in mask.shape[-2:]])
    grid = geometry.identity_grid(mask.shape[-2:], like=weights)
    return (grid * weights).sum((1, 2)) / weights.sum()


@dataclass
class _PairInputs:
    """One pair's full-resolution inputs, shared by the stages after the search."""

    fixed: PreparedImage
    moving: PreparedImage
    fixed_labels: torch.Tensor  # (1, 1, H, W) int
    moving_labels: torch.Tensor  # (1, 1, Hm, Wm) int
    features: FeatureFn
    num_labels: int
    fibres: FibreConfig
    _working: dict[int, WorkingPair] = field(default_factory=dict, repr=False)
    _texture: FibreTexture | None = field(default=None, repr=False)

    @property
    def shg_and_he(self) -> bool:
        """Whether the pair is SHG (one channel) against H&E (RGB), the pairs the fibre texture can judge."""
        return self.fixed.raw.shape[1] == 1 and self.moving.raw.shape[1] == 3

    def texture(self) -> FibreTexture | None:
        """The full-resolution fibre texture (built once), or None where it cannot judge the pair."""
        if not (self.fibres.enabled and self.shg_and_he):
            return None
        if self._texture is None:
            self._texture = FibreTexture(self.fixed.intensity, self.moving.intensity, self.fibres)
        return self._texture if self._texture.has_patches else None

    def working(self, size_px: int) -> WorkingPair:
        """The pair at ``size_px``, built once (pre-alignment and optimisation share the 256 px one)."""
        if size_px not in self._working:
            self._working[size_px] = make_working_pair(
                self.fixed, self.moving, self.fixed_labels, self.moving_labels, size_px, self.features
            )
        return self._working[size_px]

    def quality(self, affine: torch.Tensor) -> float:
        """Full-resolution NMI of the label maps under an affine (the selection criterion and the quality score)."""
        return self.quality_of_field(geometry.affine_to_disp(affine[None], self.fixed.shape))

    def quality_of_field(self, disp: torch.Tensor) -> float:
        loss = LabelNMILoss(self.num_labels)
        return float(label_nmi(loss, self.fixed_labels.float(), self.moving_labels.float(), disp)[0])


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
        The field on the fixed grid and its quality score.
    """
    cfg = cfg or FideConfig()
    device = torch.device(device) if device is not None else fixed_image.device
    generator_seed = cfg.seed
    timings: dict[str, float] = {}
    stage_affines: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - clock
        logger.debug("%s: %.2f s", name, now - clock)
        clock = now

    if features is None and encoders is not None and fixed_image.shape[0] != 1:
        # the encoders are trained for SHG (1 channel) -> bright field; other modality pairs use MIND-SSC
        if cfg.encoder.features == "learned":
            raise ValueError(
                f"learned encoders need a 1-channel SHG fixed image, got {fixed_image.shape[0]} channels "
                "(use handcrafted features)"
            )
        logger.info(
            "fixed image has %d channels: handcrafted features instead of the SHG encoders", fixed_image.shape[0]
        )
        encoders = None
    fixed, moving = prepare_pair(fixed_image.to(device), moving_image.to(device), cfg.preprocess)
    if features is not None:
        feature_fn = features
    elif encoders is not None:
        feature_fn = learned_features(fixed.raw, moving.raw, encoders)  # raw with corner fill already replaced
    else:
        feature_fn = lambda f, m: handcrafted_features(f, m, cfg.deformable.mind_radius, cfg.deformable.mind_dilation)  # noqa: E731
    opt = cfg.optimise
    fixed_labels = kmeans_labels(fixed.colour, opt.num_labels, iterations=opt.kmeans_iterations, seed=generator_seed)
    moving_labels = kmeans_labels(moving.colour, opt.num_labels, iterations=opt.kmeans_iterations, seed=generator_seed)
    lap("preprocess")

    # learned maps are the most distinctive search criterion where present (synthetic validation: the true pose
    # ranks first far more often than with eosin vs log-SHG); the handcrafted criteria stay as a safety net
    search_maps = [(fixed.intensity, moving.intensity)]
    if features is None and encoders is not None:
        search_maps.insert(0, feature_fn(fixed.intensity, moving.intensity))
    inputs = _PairInputs(fixed, moving, fixed_labels, moving_labels, feature_fn, opt.num_labels, cfg.fibres)
    texture_judges = cfg.runs("affine") and inputs.texture() is not None
    candidates = _search(fixed, moving, search_maps, cfg, texture_judges)
    stage_affines["search"] = candidates[0]
    lap("search")

    starts = _screen(candidates, inputs, cfg)
    stage_affines["prealign"] = starts[0]
    lap("prealign")

    working = inputs.working(opt.size_px)
    if cfg.runs("affine"):
        starts = list(optimise_affine(working, torch.stack(starts), opt)[0])
    ranked = sorted(((inputs.quality(affine), affine) for affine in starts), key=lambda item: -item[0])
    best_quality, best_affine = _select(inputs, ranked, cfg) if cfg.runs("affine") else ranked[0]
    if cfg.runs("affine") and min(opt.fine_size_px, max(fixed.shape)) > opt.size_px and opt.fine_iterations > 0:
        best_affine, best_quality = _fine_pass(inputs, opt, best_affine, best_quality)
    if cfg.runs("affine"):
        stage_affines["affine"] = best_affine
    lap("affine")

    texture = inputs.texture() if cfg.runs("affine") else None
    texture_score = texture.score(best_affine) if texture is not None else float("nan")
    # the texture judges SHG/H&E pairs directly (a right pose scores >= 0.3 on synthetic pairs, a wrong one ~0),
    # also where the label NMI is low at a right pose (centre patches)
    if texture is not None and texture_score < cfg.fibres.verify_below:
        hypotheses = [affine for _, affine in ranked] + candidates
        best_affine, best_quality, texture_score, note = fibre_fallback(
            inputs.fixed.intensity,
            inputs.moving.intensity,
            texture,
            inputs.quality,
            cfg,
            best_affine,
            best_quality,
            hypotheses,
        )
        stage_affines["fibres"] = best_affine
        notes.append(note)
        lap("fibres")
    if texture is not None and texture_score >= cfg.fibres.verify_below and cfg.fibres.polish_iterations > 0:
        best_affine, best_quality, texture_score = texture_polish(
            texture, inputs.quality, cfg.fibres, best_affine, best_quality, texture_score
        )
        stage_affines["polish"] = best_affine
        lap("polish")
    scores = {"nmi": best_quality, "texture": texture_score}
    scores["texture_contrast"] = (
        texture.contrast(best_affine, cfg.confidence.texture_shift_px) if texture is not None else float("nan")
    )
    confidence, basis = pose_confidence(scores, cfg.confidence)
    for name, value in scores.items():
        logger.debug("score %s: %.4f", name, value)

    disp = geometry.affine_to_disp(best_affine[None], fixed.shape)
    if cfg.runs("deformable") and cfg.deformable.enabled:
        deformed = optimise_deformable(working, best_affine, fixed.shape, cfg.deformable)
        quality = inputs.quality_of_field(deformed)
        if quality >= best_quality:  # the residual must not lower the full-resolution similarity
            disp, best_quality = deformed, quality
        lap("deformable")
    mirrored = bool(torch.linalg.det(best_affine[:2, :2]) < 0)
    return RegistrationResult(
        disp.detach(),
        best_affine.detach(),
        best_quality,
        stage_affines,
        timings,
        notes,
        confidence=confidence,
        confidence_basis=basis,
        mirrored=mirrored,
        scores=scores,
    )


def _select(
    inputs: _PairInputs, ranked: list[tuple[float, torch.Tensor]], cfg: FideConfig
) -> tuple[float, torch.Tensor]:
    """The restart with the best NMI, unless the fibre texture clearly prefers another (the fallback's rule).

    On centre patches without a core outline the label maps can favour a wrong pose whose texture is noise, while
    a restart at the true pose matches the fibres; where the texture is weak or absent, NMI decides.
    """
    texture = inputs.texture()
    if texture is None or len(ranked) < 2:
        return ranked[0]
    textures = texture.scores(torch.stack([affine for _, affine in ranked])).tolist()
    best = max(range(len(ranked)), key=textures.__getitem__)
    wins = textures[best] > max(cfg.fibres.accept_ratio * textures[0], cfg.fibres.verify_below)
    if best and wins:
        logger.debug("selection: texture NCC %.3f beats the NMI choice's %.3f", textures[best], textures[0])
        return ranked[best]
    return ranked[0]


def _fine_pass(
    inputs: _PairInputs, opt: OptimiseConfig, affine: torch.Tensor, quality: float
) -> tuple[torch.Tensor, float]:
    """NMI-only refinement of the selected affine at ``fine_size_px``; kept only if full-resolution NMI rises."""
    schedule = dataclasses.replace(
        opt, lncc_iterations=0, nmi_iterations=opt.fine_iterations, levels=1, learning_rate=opt.fine_learning_rate
    )
    refined = optimise_affine(inputs.working(opt.fine_size_px), affine, schedule)[0][0]
    refined_quality = inputs.quality(refined)
    logger.debug("fine pass: full-resolution NMI %.4f -> %.4f", quality, refined_quality)
    return (refined, refined_quality) if refined_quality > quality else (affine, quality)


def _working_nmi(loss: LabelNMILoss, working: WorkingPair, affine: torch.Tensor) -> float:
    level = geometry.rescale_affine(affine, working.fixed_factors, working.moving_factors)[None]
    disp = geometry.affine_to_disp(level.to(working.fixed_features), working.shape)
    return float(label_nmi(loss, working.fixed_labels, working.moving_labels, disp)[0])


def _screen(candidates: list[torch.Tensor], inputs: _PairInputs, cfg: FideConfig) -> list[torch.Tensor]:
    """Pre-align every search candidate, polish it briefly at a coarse level and keep the ``restarts`` best.

    The search's ranking is only a hint at 64 px; a short NMI optimisation separates a true basin (NMI rises)
    from a false one, so restarts are spent on the right candidates.
    """
    opt = cfg.optimise
    nmi_loss = LabelNMILoss(opt.num_labels)
    working = inputs.working(cfg.prealign.size_px)
    coarse = inputs.working(opt.screen_size_px)
    quick = dataclasses.replace(opt, lncc_iterations=0, nmi_iterations=opt.screen_iterations, levels=1)
    starts = []
    keypoints = fixed_keypoints(working, cfg.prealign) if cfg.runs("prealign") else None
    for affine in candidates:
        if cfg.runs("prealign"):
            refined, _ = prealign_affine(working, affine, cfg.prealign, keypoints)
            if _working_nmi(nmi_loss, working, refined) >= _working_nmi(nmi_loss, working, affine):
                affine = refined  # keypoints are checked against the search, never trusted blindly
        starts.append(affine)
    if cfg.runs("affine") and len(candidates) > opt.restarts:
        polished, scores = optimise_affine(coarse, torch.stack(starts), quick)
        scored = list(zip(scores.tolist(), polished))
    else:
        scored = [(_working_nmi(nmi_loss, coarse, affine), affine) for affine in starts]
    for score, _ in scored:
        logger.debug("screen: NMI %.4f", score)
    scored.sort(key=lambda item: -item[0])
    best = scored[0][0]
    kept = [affine for score, affine in scored if score >= opt.restart_keep_ratio * best]
    return kept[: max(1, opt.restarts)]


def _search(
    fixed: PreparedImage,
    moving: PreparedImage,
    search_maps: list[tuple[torch.Tensor, torch.Tensor]],
    cfg: FideConfig,
    texture_judges: bool,
) -> list[torch.Tensor]:
    """Global search candidates (full-resolution affines), best first; ``search_maps`` and ``texture_judges`` as in
    ``search_similarity``."""
    centres = (_centroid(fixed.tissue), _centroid(moving.tissue))
    candidates = search_similarity(
        fixed.colour,
        moving.colour,
        centres,
        cfg.search,
        cfg.seed,
        intensities=search_maps,
        texture_judges=texture_judges,
    )
    for c in candidates:
        logger.debug("search candidate: %.1f°, scale %.3f, MI %.4f", c.angle_deg, c.scale, c.score)
    return [c.affine for c in candidates]
