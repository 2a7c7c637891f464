"""fide.decision: the one rule that picks a pose from the evidence, and the confidence it reports."""

import math

import pytest
import torch

from fide import geometry
from fide.config import ConfidenceConfig
from fide.decision import PoseEvidence, decide, judge_refined, pose_confidence

CFG = ConfidenceConfig()
SHAPE = (200, 200)


def pose(angle_deg: float = 0.0, shift: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    centre = torch.tensor([99.5, 99.5])
    affine = geometry.similarity_matrix(torch.tensor([math.radians(angle_deg)]), torch.ones(1), centre, centre)[0]
    affine[:2, 2] += torch.tensor(shift)
    return affine


def test_a_sharp_texture_wins_over_a_higher_nmi_and_silence_leaves_it_to_nmi():
    truth, wrong = pose(0.0), pose(30.0)
    sharp = [PoseEvidence(wrong, 0.30, 0.01, 0.02), PoseEvidence(truth, 0.20, 0.40, 0.45)]
    assert decide(sharp, SHAPE, CFG).index == 1
    silent = [PoseEvidence(wrong, 0.30, 0.01, 0.02), PoseEvidence(truth, 0.20, 0.05, 0.05)]
    decision = decide(silent, SHAPE, CFG)
    assert decision.index == 0 and decision.basis == "mi"


def test_a_weak_texture_never_flags_a_pose_that_mi_singles_out():
    """The held-out real failure: the fibres do not match at the truth, the coarse layout does."""
    evidence = [PoseEvidence(pose(0.0), 0.12, -0.02, -0.01), PoseEvidence(pose(90.0), 0.03, 0.01, 0.0)]
    decision = decide(evidence, SHAPE, CFG)
    assert decision.index == 0 and not decision.flagged and decision.confidence > 0.9
    assert decision.scores["nmi_runner_up"] == pytest.approx(0.03)


def test_a_pose_no_criterion_singles_out_is_flagged_with_the_evidence():
    evidence = [PoseEvidence(pose(0.0), 0.101, 0.01, 0.0), PoseEvidence(pose(45.0), 0.100, 0.02, 0.0)]
    decision = decide(evidence, SHAPE, CFG)
    assert decision.flagged and decision.confidence < CFG.flag_below
    assert "label NMI 0.101" in decision.reason and "0.100 at the best other pose" in decision.reason
    assert "texture contrast 0.010" in decision.reason


def test_the_runner_up_is_the_best_distinct_pose_only():
    """Hypotheses that converged on the chosen pose (a restart and its search candidate) are not competitors."""
    near = pose(0.0, shift=(0.01 * SHAPE[0], 0.0))  # every corner 2 px away: the same pose
    evidence = [PoseEvidence(pose(0.0), 0.12), PoseEvidence(near, 0.119), PoseEvidence(pose(60.0), 0.05)]
    assert decide(evidence, SHAPE, CFG).scores["nmi_runner_up"] == pytest.approx(0.05)
    alone = decide(evidence[:2], SHAPE, CFG)
    assert alone.scores["nmi_runner_up"] == 0.0 and not alone.flagged  # every hypothesis agrees


def test_near_empty_label_maps_support_nothing_whatever_the_ratio():
    """Label NMI ~1e-3 at every pose is noise: a 3x ratio of noise must not vouch for a pose."""
    confidence, basis = pose_confidence({"nmi": 0.003, "nmi_runner_up": 0.001}, CFG)
    assert confidence < CFG.flag_below and basis == "mi"


def test_a_judged_pose_keeps_its_evidence_and_nothing_measured_means_no_estimate():
    evidence = [PoseEvidence(pose(0.0), 0.05), PoseEvidence(pose(90.0), 0.2)]
    judged = decide(evidence, SHAPE, CFG, chosen=0)
    assert judged.index == 0 and judged.scores["nmi_runner_up"] == pytest.approx(0.2) and judged.flagged
    assert pose_confidence({}, CFG) == (pytest.approx(math.nan, nan_ok=True), "none")
    assert decide([PoseEvidence(pose(), math.nan)], SHAPE, CFG).reason is None  # no estimate: not flagged
    with pytest.raises(ValueError, match="at least one pose"):
        decide([], SHAPE, CFG)


def test_confidence_is_monotone_in_each_criterion():
    values = (-0.2, 0.0, CFG.texture_mid, 0.4, 1.0)
    by_contrast = [pose_confidence({"texture_contrast": x, "nmi": 0.0}, CFG)[0] for x in values]
    assert by_contrast == sorted(by_contrast) and by_contrast[2] == pytest.approx(0.5, abs=0.01)
    by_margin = [pose_confidence({"nmi": 0.1, "nmi_runner_up": r}, CFG)[0] for r in (0.1, 0.09, 0.07, 0.05, 0.01)]
    assert by_margin == sorted(by_margin)


def test_a_refined_pose_is_trusted_at_most_as_much_as_when_it_was_chosen():
    """Refining the chosen pose alone raises its NMI over unrefined alternatives: that margin is no evidence."""
    evidence = [PoseEvidence(pose(0.0), 0.101, 0.01, 0.0), PoseEvidence(pose(45.0), 0.100, 0.02, 0.0)]
    chosen = decide(evidence, SHAPE, CFG)
    assert chosen.flagged
    refined = PoseEvidence(pose(0.0, shift=(1.0, 0.0)), 0.130, 0.01, 0.0)  # the layout pass raised its NMI
    assert not decide([*evidence, refined], SHAPE, CFG, chosen=2).flagged  # judged alone it would look confident
    final = judge_refined([*evidence, refined], SHAPE, CFG, chosen)
    assert final.flagged and final.confidence == chosen.confidence and final.reason == chosen.reason
    assert final.index == 2 and final.scores["nmi"] == pytest.approx(0.130)  # the refined pose's own scores
    trusted = decide([PoseEvidence(pose(0.0), 0.12), PoseEvidence(pose(90.0), 0.03)], SHAPE, CFG)
    worse = PoseEvidence(pose(0.0), 0.031)  # a precision step that lost the margin lowers the trust
    lowered = judge_refined([PoseEvidence(pose(0.0), 0.12), PoseEvidence(pose(90.0), 0.03), worse], SHAPE, CFG, trusted)
    assert lowered.confidence < trusted.confidence and lowered.flagged


def test_what_converged_on_the_chosen_pose_is_no_competitor_of_its_refinement():
    """A hypothesis that was the chosen pose's (same basin at the decision) stays out of the refined pose's
    competitors when the precision steps move the pose beyond the tolerance from it."""
    tolerance_px = CFG.distinct_fraction * max(SHAPE)
    evidence = [
        PoseEvidence(pose(0.0), 0.100),
        PoseEvidence(pose(0.0, shift=(0.8 * tolerance_px, 0.0)), 0.098),  # merged with the chosen pose
        PoseEvidence(pose(90.0), 0.050),
    ]
    chosen = decide(evidence, SHAPE, CFG)
    assert chosen.index == 0 and not chosen.flagged and chosen.scores["nmi_runner_up"] == pytest.approx(0.050)
    refined = PoseEvidence(pose(0.0, shift=(-0.5 * tolerance_px, 0.0)), 0.104)  # 1.3 tolerances from the second
    final = judge_refined([*evidence, refined], SHAPE, CFG, chosen)
    assert final.scores["nmi_runner_up"] == pytest.approx(0.050) and not final.flagged
    alone = decide([*evidence, refined], SHAPE, CFG, chosen=3)  # without the basin the merged one competes
    assert alone.scores["nmi_runner_up"] == pytest.approx(0.098) and alone.flagged
