"""How far a registration can be trusted: a confidence in [0, 1] from the criteria measured on its pose.

Label NMI ranks poses but does not say whether the best one is right: on centre patches and mirrored slides wrong
poses reach the NMI of right ones. The fibre texture does: SHG collagen fibres are eosin fibres of the bright
field, their band-passed correlation is a sharp peak at the true pose (it decorrelates within a few pixels) and
about zero anywhere else. So for SHG / H&E pairs with collagen patches the confidence comes from the *texture
contrast* (the texture NCC at the pose minus its mean at the pose shifted by a few pixels); for other pairs
(multi-stain, no SHG patches) from the NMI, as the quality flag did before.

Each criterion maps through a logistic ``L(x; mid, width) = 1 / (1 + exp(-(x - mid) / width))``, calibrated on
synthetic development pairs (docs/operations.md, "Confidence"). With texture,

    confidence = max(L(contrast; texture_mid), min(L(nmi; nmi_support_mid), L(contrast; texture_floor_mid)))

a sharp texture peak alone, or a strong NMI with at least a small texture peak: images with little fibre texture
(smooth SHG) still reach a high confidence at a right pose, while a wrong pose, whose contrast is ~0, stays low
whatever its NMI. A pair under ``flag_below`` is flagged.
"""

from __future__ import annotations

import math

from fide.config import ConfidenceConfig

__all__ = ["pose_confidence", "flag_reason"]


def _logistic(value: float, mid: float, width: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, (value - mid) / width))))


def pose_confidence(scores: dict[str, float], cfg: ConfidenceConfig) -> tuple[float, str]:
    """Confidence that the pose is right, and the criterion it was read from.

    Args:
        scores: ``texture_contrast`` (NaN or absent where the texture cannot judge the pair) and ``nmi``.
        cfg: the logistic's midpoints and widths.

    Returns:
        (confidence in [0, 1], "texture" or "nmi"); (NaN, "none") when neither score is finite.
    """
    contrast = scores.get("texture_contrast", float("nan"))
    nmi = scores.get("nmi", float("nan"))
    if math.isfinite(contrast):
        peak = _logistic(contrast, cfg.texture_mid, cfg.texture_width)
        if math.isfinite(nmi):
            support = _logistic(nmi, cfg.nmi_support_mid, cfg.nmi_support_width)
            peak = max(peak, min(support, _logistic(contrast, cfg.texture_floor_mid, cfg.texture_floor_width)))
        return peak, "texture"
    if math.isfinite(nmi):
        return _logistic(nmi, cfg.nmi_mid, cfg.nmi_width), "nmi"
    return float("nan"), "none"


def flag_reason(confidence: float, basis: str, scores: dict[str, float], cfg: ConfidenceConfig) -> str | None:
    """Why a result should not be trusted (one line for results.csv), or None when its confidence is high enough.

    A result whose confidence could not be estimated (NaN, e.g. the zero-field method) is not flagged.
    """
    if not math.isfinite(confidence) or confidence >= cfg.flag_below:
        return None
    if basis == "texture":
        measured = f"texture contrast {scores['texture_contrast']:.3f}: the fibres do not match"
    else:
        measured = f"NMI {scores.get('nmi', float('nan')):.3f}"
    return f"low confidence {confidence:.2f} ({measured})"
