"""Which pose a pair gets, and how far it can be trusted: one rule over all the evidence on every hypothesis.

Every pose hypothesis (the refined restarts, the screened search candidates, a fibre-texture match) is scored on
the same evidence:

* ``nmi``: full-resolution normalised MI of the label maps (coarse layout: outline, stroma vs cellular regions);
* ``contrast``: the fibre texture's *sharpness* at the pose (texture NCC minus its mean a few pixels away), NaN
  where the texture cannot judge the pair (no SHG collagen patches, RGB fixed image).

The texture is decisive where it is sharp and says nothing where it is not: on real cores whose fine SHG fibres do
not match the bright field (shg-bf-appearance.md) the texture scores ~0 *at the truth*, so its silence is no
evidence against a pose. Hence the rule, in this order:

1. a hypothesis whose contrast reaches ``texture_mid`` is recognised by the fibres: the sharpest of those wins;
2. otherwise the highest NMI wins.

The confidence says how strongly the evidence agrees on the chosen pose: a sharp texture peak, or label MI that
clearly prefers it over every *distinct* hypothesis (its NMI above the runner-up's by a margin; near-empty label
maps, NMI ~0.005 at every pose, cannot open one). Each criterion maps through
``L(x; mid, width) = 1 / (1 + exp(-(x - mid) / width))``::

    confidence = max(L(contrast; texture_mid, texture_width), L(nmi - runner_up; margin_mid, margin_width))

so a weak texture alone never flags a pose that MI supports, and a pose nothing supports is flagged whatever the
single criterion that chose it says. Hypotheses that converged on the chosen pose are not its competitors; where
every hypothesis did, the runner-up is 0 (the search's criteria agree).

The precision steps after the choice refine the chosen pose alone, so the NMI they add is not comparable with the
unrefined alternatives': they can lower the trust, never raise it (:func:`judge_refined`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fide import geometry
from fide.config import ConfidenceConfig

__all__ = ["PoseEvidence", "Decision", "decide", "judge_refined", "pose_confidence"]


@dataclass
class PoseEvidence:
    """One pose hypothesis and what the evidence says about it.

    Attributes:
        affine: (3, 3) fixed → moving, full-resolution pixels.
        nmi: full-resolution label NMI, [0, 1] (higher is better).
        contrast: texture sharpness at the pose (NaN where the texture cannot judge the pair).
        texture: texture NCC at the pose, [-1, 1] (NaN likewise).
        source: where it came from ("restart", "candidate", "fibres"), for logs.
    """

    affine: torch.Tensor
    nmi: float
    contrast: float = float("nan")
    texture: float = float("nan")
    source: str = "restart"


@dataclass
class Decision:
    """The chosen hypothesis and its trust.

    Attributes:
        index: position of the chosen pose in the evidence list.
        confidence: in [0, 1] (NaN where nothing could be measured).
        basis: "texture" (a sharp fibre match carries it), "mi" (label MI carries it) or "none".
        scores: the evidence on the chosen pose: ``nmi``, ``nmi_runner_up``, ``texture``, ``texture_contrast``.
        reason: one line on why the pose should not be trusted (None when confident).
    """

    index: int
    confidence: float
    basis: str
    scores: dict[str, float]
    reason: str | None

    @property
    def flagged(self) -> bool:
        return self.reason is not None


def _logistic(value: float, mid: float, width: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, (value - mid) / width))))


def _choose(evidence: Sequence[PoseEvidence], texture_sharp: float) -> int:
    sharp = [k for k, e in enumerate(evidence) if math.isfinite(e.contrast) and e.contrast >= texture_sharp]
    if sharp:
        return max(sharp, key=lambda k: evidence[k].contrast)
    return max(range(len(evidence)), key=lambda k: evidence[k].nmi)


def _runner_up(
    evidence: Sequence[PoseEvidence], index: int, shape: Sequence[int], tolerance: float, basin: int | None = None
) -> float:
    """Best NMI of the hypotheses distinct from ``evidence[index]`` and from ``evidence[basin]`` (0 when there is
    none)."""
    poses = [evidence[index].affine] + ([evidence[basin].affine] if basin is not None else [])
    others = [e.nmi for e in evidence if not any(geometry.same_pose(e.affine, p, shape, tolerance) for p in poses)]
    return max(others, default=0.0)


def pose_confidence(scores: dict[str, float], cfg: ConfidenceConfig) -> tuple[float, str]:
    """Confidence in [0, 1] from the evidence on one pose, and the criterion that carries it.

    Args:
        scores: ``texture_contrast`` (NaN or absent where the texture cannot judge), ``nmi`` and ``nmi_runner_up``
            (the best NMI of a distinct hypothesis; absent or NaN where no other hypothesis was measured: the
            margin is then the NMI itself).
        cfg: the logistics' midpoints and widths.

    Returns:
        (confidence, "texture" | "mi"), or (NaN, "none") when no score is finite.
    """
    contrast = scores.get("texture_contrast", float("nan"))
    nmi = scores.get("nmi", float("nan"))
    texture = _logistic(contrast, cfg.texture_mid, cfg.texture_width) if math.isfinite(contrast) else float("nan")
    mi = float("nan")
    if math.isfinite(nmi):
        runner_up = scores.get("nmi_runner_up", float("nan"))
        margin = nmi - (runner_up if math.isfinite(runner_up) else 0.0)
        mi = _logistic(margin, cfg.margin_mid, cfg.margin_width)
    if not (math.isfinite(texture) or math.isfinite(mi)):
        return float("nan"), "none"
    if math.isfinite(texture) and not (math.isfinite(mi) and mi > texture):
        return texture, "texture"
    return mi, "mi"


def _reason(confidence: float, scores: dict[str, float], cfg: ConfidenceConfig) -> str | None:
    if not math.isfinite(confidence) or confidence >= cfg.flag_below:
        return None
    measured = [f"label NMI {scores['nmi']:.3f}"]
    if math.isfinite(scores.get("nmi_runner_up", float("nan"))):
        measured.append(f"{scores['nmi_runner_up']:.3f} at the best other pose")
    if math.isfinite(scores.get("texture_contrast", float("nan"))):
        measured.append(f"texture contrast {scores['texture_contrast']:.3f}")
    return f"low confidence {confidence:.2f}: no criterion singles the pose out ({', '.join(measured)})"


def decide(
    evidence: Sequence[PoseEvidence],
    shape: Sequence[int],
    cfg: ConfidenceConfig,
    chosen: int | None = None,
    basin: int | None = None,
) -> Decision:
    """Pick the pose (the rule in the module docstring) and say how far it can be trusted.

    Args:
        evidence: every hypothesis measured on the pair (at least one).
        shape: (H, W) of the fixed image, to tell distinct poses apart (:func:`fide.geometry.same_pose`).
        cfg: thresholds of the rule and the confidence.
        chosen: judge this hypothesis instead of choosing one (a pose refined after the choice).
        basin: the hypothesis ``chosen`` was refined from: what converged on that one is no competitor either.

    Raises:
        ValueError: no evidence.
    """
    if not evidence:
        raise ValueError("decide needs at least one pose hypothesis, got none")
    index = _choose(evidence, cfg.texture_mid) if chosen is None else chosen
    best = evidence[index]
    scores = {
        "nmi": best.nmi,
        "nmi_runner_up": (
            _runner_up(evidence, index, shape, cfg.distinct_fraction, basin) if len(evidence) > 1 else math.nan
        ),
        "texture": best.texture,
        "texture_contrast": best.contrast,
    }
    confidence, basis = pose_confidence(scores, cfg)
    return Decision(index, confidence, basis, scores, _reason(confidence, scores, cfg))


def judge_refined(evidence: Sequence[PoseEvidence], shape: Sequence[int], cfg: ConfidenceConfig, chosen: Decision):
    """The final pose (the last evidence entry: the chosen one after the precision steps) judged against the rest,
    trusted at most as much as when it was chosen (``chosen``, the decision on the unrefined evidence).

    Optimising one hypothesis further raises its NMI over alternatives that were not: a wrong pose nothing singled
    out could otherwise open a margin by being refined (a benchmark ``decoupled-patch20`` pair, 502 px off, went
    from confidence 0.00 to 0.71 through the layout pass). Its competitors are the hypotheses distinct from the
    chosen pose before and after the refinement: one that had converged on the chosen pose is none, though the
    refinement moved the pose more than the tolerance away from it (a development pair's right pose, 1.75 px off,
    was flagged against a hypothesis 11 px off that had merged with it at the decision).
    """
    final = decide(evidence, shape, cfg, chosen=len(evidence) - 1, basin=chosen.index)
    earlier = chosen.confidence
    if math.isfinite(earlier) and not (math.isfinite(final.confidence) and final.confidence <= earlier):
        return Decision(final.index, earlier, chosen.basis, final.scores, chosen.reason)
    return final
