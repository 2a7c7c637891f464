"""fide/pair.py: the pair's two label map pairs and the decision's NMI measured on pose hypotheses."""

import numpy as np
import pytest
import torch

from fide import geometry
from fide.config import FideConfig
from fide.optimise.instance import label_nmi
from fide.optimise.losses import LabelNMILoss
from fide.pair import EVIDENCE_LABELS, measure_evidence, prepare_inputs
from fide.synth.tissue import make_aligned_pair


@pytest.fixture(scope="module")
def decoupled_core():
    """A 320 px core whose SHG fibres are independent of the bright field's (the layout agrees); truth = identity."""
    shg, bf, _ = make_aligned_pair(320, np.random.default_rng(3), independent_texture=True)
    inputs, _ = prepare_inputs(torch.from_numpy(shg).float(), torch.from_numpy(bf).float(), FideConfig(), None, None)
    return inputs


def _poses() -> torch.Tensor:
    """The truth, then 3° and 2 % off, then a quarter turn off, about the image centre: (3, 3, 3)."""
    centre = torch.full((3, 2), 159.5)
    return geometry.similarity_matrix(
        torch.deg2rad(torch.tensor([0.0, 3.0, 90.0])), torch.tensor([1.0, 1.02, 1.0]), centre, centre
    )


def test_evidence_maps_are_finer_than_the_optimisers(decoupled_core):
    fixed, moving = decoupled_core.evidence_labels
    assert fixed.shape == decoupled_core.fixed_labels.shape and moving.shape == decoupled_core.moving_labels.shape
    assert int(fixed.max()) == EVIDENCE_LABELS - 1 and int(decoupled_core.fixed_labels.max()) < EVIDENCE_LABELS - 1
    assert len(torch.unique(fixed)) == EVIDENCE_LABELS


def test_evidence_nmi_equals_the_soft_histograms_nmi(decoupled_core):
    """The integer-count NMI reads what the optimiser's soft-histogram NMI reads on the same (evidence) maps."""
    fixed, moving = decoupled_core.evidence_labels
    disp = geometry.affine_to_disp(_poses(), decoupled_core.fixed.shape)
    soft = label_nmi(LabelNMILoss(EVIDENCE_LABELS), fixed.float(), moving, disp)
    counted = decoupled_core.evidence_nmis(_poses())
    assert counted == pytest.approx(soft.tolist(), abs=1e-4)


def test_evidence_nmi_peaks_at_the_truth_and_is_what_the_decision_reads(decoupled_core):
    poses = _poses()
    evidence = measure_evidence(decoupled_core, list(poses), "restart", FideConfig())
    nmis = [e.nmi for e in evidence]
    assert nmis == decoupled_core.evidence_nmis(poses)
    assert nmis[0] > nmis[1] > nmis[2] > 0  # truth, 3° and 2 % off, a quarter turn off
    identity = geometry.affine_to_disp(torch.eye(3)[None], decoupled_core.fixed.shape)
    assert decoupled_core.evidence_nmi(identity) == pytest.approx(nmis[0], abs=1e-6)
