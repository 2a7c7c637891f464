"""fide.optimise.confidence: the confidence of a pose and the flag in results.csv."""

import math

import pytest

from fide.config import ConfidenceConfig
from fide.optimise.confidence import flag_reason, pose_confidence

CFG = ConfidenceConfig()


def test_texture_contrast_decides_where_it_exists():
    high, basis = pose_confidence({"texture_contrast": 0.4, "nmi": 0.001}, CFG)
    assert basis == "texture" and high > 0.99  # a low NMI does not overrule a sharp texture peak (centre patches)
    low, _ = pose_confidence({"texture_contrast": 0.01, "nmi": 0.2}, CFG)
    assert low < 0.05  # nor a high NMI a texture that does not match (a wrong pose on a mirrored slide)
    middle, _ = pose_confidence({"texture_contrast": CFG.texture_mid}, CFG)
    assert middle == pytest.approx(0.5)


def test_nmi_decides_without_texture_and_nothing_without_either():
    assert pose_confidence({"texture_contrast": math.nan, "nmi": 0.1}, CFG)[0] > 0.99
    assert pose_confidence({"nmi": 0.01}, CFG) == (pytest.approx(pose_confidence({"nmi": 0.01}, CFG)[0]), "nmi")
    assert pose_confidence({"nmi": 0.01}, CFG)[0] < 0.1
    confidence, basis = pose_confidence({}, CFG)
    assert math.isnan(confidence) and basis == "none"


def test_confidence_is_monotone_in_its_criterion():
    values = [pose_confidence({"texture_contrast": x}, CFG)[0] for x in (-0.2, 0.0, 0.1, 0.15, 0.2, 0.5, 2.0)]
    assert values == sorted(values) and 0.0 <= values[0] and values[-1] <= 1.0


def test_flag_reason_names_the_criterion():
    scores = {"texture_contrast": 0.02, "nmi": 0.1}
    confidence, basis = pose_confidence(scores, CFG)
    reason = flag_reason(confidence, basis, scores, CFG)
    assert reason is not None and reason.startswith("low confidence 0.01") and "texture contrast 0.020" in reason
    assert flag_reason(0.9, "texture", scores, CFG) is None
    assert flag_reason(math.nan, "none", {}, CFG) is None  # no estimate (zero field): not flagged
    assert "NMI 0.010" in flag_reason(0.1, "nmi", {"nmi": 0.01}, CFG)


def test_a_strong_nmi_vouches_for_a_small_but_real_texture_peak_only():
    smooth_shg, _ = pose_confidence({"texture_contrast": 0.138, "nmi": 0.43}, CFG)  # a right pose, little texture
    assert smooth_shg > 0.95
    wrong, _ = pose_confidence({"texture_contrast": 0.02, "nmi": 0.43}, CFG)  # no texture peak: NMI cannot help
    assert wrong < CFG.flag_below
    polished_wrong, _ = pose_confidence({"texture_contrast": 0.11, "nmi": 0.003}, CFG)
    assert polished_wrong < CFG.flag_below


def test_a_moderate_nmi_does_not_vouch_for_a_weak_texture_peak():
    """Measured: a wrong pose (380 px) at texture contrast ~0.07 and NMI 0.054 must be flagged."""
    for contrast in (0.065, 0.075):
        assert pose_confidence({"texture_contrast": contrast, "nmi": 0.054}, CFG)[0] < CFG.flag_below
