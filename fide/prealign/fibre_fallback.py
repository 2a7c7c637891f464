"""The fibre texture's two steps after the affine optimisation: a fallback search for doubtful poses, and a last
affine polish at full resolution for trusted ones.

Both judge poses by the texture NCC (:class:`~fide.prealign.fibre_texture.FibreTexture`) and guard the label NMI,
the criterion that selected the pose: ``quality_of`` maps a (3, 3) full-resolution affine (fixed to moving,
pixels) to that NMI.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from fide.config import FibreConfig, FideConfig
from fide.optimise.confidence import pose_confidence
from fide.prealign.fibre_texture import FibreTexture
from fide.prealign.fibres import fibre_search
from fide.prealign.search import search_mirrors

__all__ = ["fibre_fallback", "texture_polish"]

logger = logging.getLogger(__name__)

QualityFn = Callable[[torch.Tensor], float]


def fibre_fallback(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    texture: FibreTexture,
    quality_of: QualityFn,
    cfg: FideConfig,
    affine: torch.Tensor,
    quality: float,
    hypotheses: list[torch.Tensor],
) -> tuple[torch.Tensor, float, float, str]:
    """For a doubtful pair: the fibre-texture search, kept if its texture score clearly wins.

    The collagen patches first check the poses already found (restarts and search candidates: a true pose that
    the label maps ranked low); the exhaustive grid runs where the label maps carry almost nothing (NMI under the
    quality flag: nearly empty SHG) or where the result would be flagged anyway (its confidence, which the texture
    contrast caps, is under the flag: a wrong pose that the label maps still scored above the quality flag).
    Label NMI cannot judge such pairs (it can score a wrong pose above the true one), so the choice is made by
    the measure the search optimises, evaluated on both affines alike.

    Args:
        fixed: (1, 1, H, W) SHG intensity, full resolution.
        moving: (1, 1, Hm, Wm) eosin intensity, full resolution.
        texture: the pair's full-resolution fibre texture.
        quality_of: full-resolution label NMI of an affine.
        cfg: the whole configuration (fibres, search range, quality flag, confidence).
        affine: (3, 3) the selected pose; ``quality`` its NMI.
        hypotheses: (3, 3) poses for the patches to confirm before any grid.

    Returns:
        The affine, its NMI, its texture score and a one-line note of what happened.
    """
    grid = quality < cfg.optimise.quality_flag_below or _would_be_flagged(texture, affine, quality, cfg)
    match = fibre_search(
        fixed,
        moving,
        cfg.fibres,
        (cfg.search.scale_min, cfg.search.scale_max),
        cfg.seed,
        current=affine,
        texture=texture,
        hypotheses=hypotheses,
        grid=grid,
        mirrors=search_mirrors(cfg.search.mirror),
        max_rotation_deg=cfg.search.max_rotation_deg,
    )
    if match is None:
        return affine, quality, texture.score(affine), "fibre fallback: no confirmed match"
    scores = f"texture NCC {match.texture_score:.3f} vs {match.current_score:.3f}"
    match_quality = quality_of(match.affine)
    # where the label maps carry signal (NMI above the flag), a texture match must not lower it much: at 512 px a
    # pose 2 px off scores little texture, and a match elsewhere (13 px, NMI 0.071 vs 0.091) had replaced it, while
    # a true rescue from a wrong mirrored pose scored NMI 0.058 vs 0.062; a texture fit as strong as right poses
    # reach (texture_overrides_nmi) is trusted over labels that lack an outline to hold on to (centre patches)
    informative = quality >= cfg.optimise.quality_flag_below
    strong = match.texture_score >= cfg.fibres.texture_overrides_nmi
    nmi_kept = not informative or strong or match_quality >= (1 - cfg.fibres.nmi_tolerance) * quality
    if match.texture_score > max(cfg.fibres.accept_ratio * match.current_score, 0.0) and nmi_kept:
        return match.affine, match_quality, match.texture_score, f"fibre fallback kept: {scores}"
    if not nmi_kept:
        scores += f", NMI {match_quality:.3f} vs {quality:.3f}"
    return affine, quality, match.current_score, f"fibre fallback not kept: {scores}"


def _would_be_flagged(texture: FibreTexture, affine: torch.Tensor, quality: float, cfg: FideConfig) -> bool:
    """Whether results.csv would flag ``affine`` as it stands (the confidence register_pair reports)."""
    scores = {"nmi": quality, "texture_contrast": texture.contrast(affine, cfg.confidence.texture_shift_px)}
    return pose_confidence(scores, cfg.confidence)[0] < cfg.confidence.flag_below


def texture_polish(
    texture: FibreTexture,
    quality_of: QualityFn,
    cfg: FibreConfig,
    affine: torch.Tensor,
    quality: float,
    start_score: float,
) -> tuple[torch.Tensor, float, float]:
    """The last affine step at full resolution, on the fibre texture (the finest structure both images share).

    Kept only if the full-resolution NMI stays within ``polish_nmi_tolerance`` of the pose it started from
    (``quality``, texture NCC ``start_score``). Returns the affine, its NMI and its texture NCC.
    """
    refined, score = texture.polish(affine, cfg.polish_iterations, cfg.polish_learning_rate)
    refined_quality = quality_of(refined)
    logger.debug("polish: texture %.4f -> %.4f, NMI %.4f -> %.4f", start_score, score, quality, refined_quality)
    if score > start_score and refined_quality >= (1 - cfg.polish_nmi_tolerance) * quality:
        return refined, refined_quality, score
    return affine, quality, start_score
