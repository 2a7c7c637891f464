"""The chosen pose's precision steps (fide/precision.py): the shift search and the layout pass."""

import numpy as np
import pytest
import torch

from fide import geometry
from fide.config import FideConfig
from fide.decision import PoseEvidence
from fide.io import load_dataset, read_image
from fide.optimise.instance import label_nmi
from fide.optimise.losses import LabelNMILoss
from fide.pair import prepare_inputs
from fide.pipeline import register_pair
from fide.precision import compass_pass, finish_pose, shift_nmis, shift_search
from fide.synth import make_task
from fide.synth.task import make_pair
from fide.synth.tissue import make_aligned_pair


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("synth"), pairs=3, size=256, seed=11)


@pytest.fixture(scope="module")
def decoupled_core():
    """A 320 px core whose SHG fibres are independent of the bright field's (the layout agrees), prepared inputs."""
    shg, bf, _ = make_aligned_pair(320, np.random.default_rng(3), independent_texture=True)
    inputs, _ = prepare_inputs(torch.from_numpy(shg).float(), torch.from_numpy(bf).float(), FideConfig(), None, None)
    return inputs


def test_shift_nmis_equal_the_label_nmi_of_each_shifted_pose(decoupled_core):
    """The FFT map of every shift reads, at each shift, what warping the labels at that shifted pose gives."""
    working = decoupled_core.working(128)
    pose = torch.tensor([[0.98, 0.05, 3.3], [-0.04, 1.01, -2.1], [0.0, 0.0, 1.0]])
    reach, num_labels = 4, decoupled_core.num_labels
    nmis = shift_nmis(working, pose, reach, num_labels)
    assert nmis.shape == (9, 9)
    loss = LabelNMILoss(num_labels)
    for i, j in [(0, 0), (4, 4), (1, 7), (8, 2), (6, 5)]:
        moved = geometry.shift_pose(pose, torch.tensor([i - reach, j - reach], dtype=torch.float32))
        disp = geometry.affine_to_disp(moved[None], working.shape)
        direct = label_nmi(loss, working.fixed_labels, working.moving_labels, disp)[0]
        assert float(nmis[i, j]) == pytest.approx(float(direct), abs=2e-5)
    assert len(set(nmis.flatten().tolist())) > 40  # the shifts really differ


def test_shift_search_brings_a_pose_stuck_beside_the_layout_optimum_back_and_never_lowers_the_nmi(decoupled_core):
    """On a decoupled core a pose 12 px (at 834 px) off the truth is moved back by the shift search; from the truth
    itself it keeps at least the truth's NMI."""
    inputs, size_px = decoupled_core, FideConfig().optimise.fine_size_px
    unit = 320 / 834
    start = torch.eye(3)
    start[0, 2], start[1, 2] = 12 * unit, -8 * unit
    moved, quality = shift_search(inputs, size_px, start, inputs.quality(start))
    assert quality > inputs.quality(start)
    assert float(moved[:2, 2].norm()) < 2 * unit  # within 2 px at 834 of the truth (identity)
    kept, kept_quality = shift_search(inputs, size_px, torch.eye(3), inputs.quality(torch.eye(3)))
    assert kept_quality >= inputs.quality(torch.eye(3))
    far = torch.eye(3)
    far[0, 2] = 40 * unit  # beyond the reach: moved toward the truth by at most the reach, never past it
    moved_far, _ = shift_search(inputs, size_px, far, inputs.quality(far))
    reach_px = 8  # 19 px at 834 in whole pixels of the 320 px working level (its full resolution)
    centre = torch.tensor([159.5, 159.5, 1.0])  # turns are about it: it moves by the shift alone
    assert 0 < float((far @ centre - moved_far @ centre)[0]) <= reach_px + 1e-4


def test_shift_search_turns_a_pose_back_to_the_layout_optimum(decoupled_core):
    """A pose turned 0.4° off the truth (its corners ~1.6 px off at 320 px) comes back within 0.15°."""
    inputs, size_px = decoupled_core, FideConfig().optimise.fine_size_px
    centre = torch.tensor([159.5, 159.5])
    start = geometry.similarity_matrix(torch.deg2rad(torch.tensor([0.4])), torch.ones(1), centre, centre)[0]
    turned, quality = shift_search(inputs, size_px, start, inputs.quality(start))
    assert quality > inputs.quality(start)
    angle = torch.rad2deg(torch.atan2(turned[1, 0] - turned[0, 1], turned[0, 0] + turned[1, 1]))
    assert abs(float(angle)) < 0.15


def test_layout_pass_runs_where_the_texture_is_silent_and_never_lowers_the_nmi(task):
    """Where the texture does not recognise the chosen pose, the affine is re-optimised on label NMI alone."""
    pair = load_dataset(task).split("val")[2]
    fixed, moving = read_image(pair.fixed), read_image(pair.moving)
    cfg = FideConfig()
    inputs, _ = prepare_inputs(fixed, moving, cfg, None, None)
    assert inputs.texture() is not None
    start = register_pair(fixed, moving, cfg).affine.clone()
    start[:2, 2] += 3.0  # a pose a few pixels off, as an LNCC pull leaves it
    silent = PoseEvidence(start, inputs.quality(start), 0.0, 0.0, "restart")
    stages: dict = {}
    laps: list[str] = []
    final = finish_pose(inputs, silent, cfg, laps.append, stages)
    assert "layout" in stages and "polish" not in stages  # a silent texture is never fitted
    assert laps == ["layout", "compass"]  # at 256 px the fine pass has no finer level than the working size
    assert inputs.quality(stages["layout"]) >= silent.nmi
    assert inputs.quality(stages["compass"]) >= inputs.quality(stages["layout"])
    assert final.nmi > silent.nmi


@pytest.fixture(scope="module")
def decoupled_patch():
    """A 512 px decoupled centre patch (no outline: the layout NMI's scale optimum sits at the truth), its inputs and
    the true affine."""
    pair = make_pair("val", 3, 512, 64, regime="decoupled-patch20")
    fixed, moving = (torch.from_numpy(pair[k]).float() for k in ("fixed", "moving"))
    inputs, _ = prepare_inputs(fixed, moving, FideConfig(), None, None)
    return inputs, geometry.fit_affine(torch.from_numpy(pair["disp"]).float()[None])[0]


def test_compass_pass_brings_a_scaled_and_stretched_pose_back_and_never_lowers_the_nmi(decoupled_patch):
    """A pose shifted 1.4 px, scaled -1.5 % and stretched 1 % off the truth (corners 7.7 px off, as the fine pass
    left a development patch) comes back to within a third of that; from the truth it stays within 1.5 px at the
    corners (the criterion's own optimum) and never lowers the NMI."""
    inputs, truth = decoupled_patch
    shape = inputs.fixed.shape
    centre, radius = torch.tensor([(n - 1) / 2 for n in shape]), max(shape) / 2

    def corner_error(pose):
        return float(
            (geometry.corner_positions(pose, shape) - geometry.corner_positions(truth, shape)).norm(dim=-1).max()
        )

    start = geometry.nudge_pose(truth, [1.0, -1.0, 0, -0.015 * radius, 0.01 * radius, 0], centre, radius)
    nudged, quality = compass_pass(inputs, start, inputs.quality(start))
    assert quality > inputs.quality(start)
    assert corner_error(nudged) < corner_error(start) / 3
    kept, kept_quality = compass_pass(inputs, truth, inputs.quality(truth))
    assert kept_quality >= inputs.quality(truth)
    assert corner_error(kept) < 1.5
