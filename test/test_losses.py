"""Similarity losses: label NMI and the MONAI LNCC wrapper."""

import pytest
import torch

from fide.optimise.losses import LabelNMILoss, make_lncc, soft_level_sets


def test_soft_level_sets_partition_of_unity():
    labels = torch.tensor([[[[0.0, 0.5, 2.0, 1.7]]]])
    sets = soft_level_sets(labels, 3)
    assert torch.allclose(sets.sum(1), torch.ones(1, 1, 4))
    assert torch.allclose(sets[0, :, 0, 1], torch.tensor([0.5, 0.5, 0.0]))


def test_nmi_is_one_for_relabelled_copy_and_low_for_independent_maps():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (1, 1, 64, 64), generator=generator).float()
    relabelled = 3 - labels  # a permutation of the labels: still fully dependent
    independent = torch.randint(0, 4, (1, 1, 64, 64), generator=generator).float()
    loss = LabelNMILoss(4)
    mask = torch.ones(1, 1, 64, 64)
    assert float(loss.nmi(labels, relabelled, mask)) > 0.99
    assert float(loss.nmi(labels, independent, mask)) < 0.01
    assert float(loss(labels, relabelled, mask)) < 0.01


def test_nmi_respects_mask():
    labels = torch.zeros(1, 1, 8, 8)
    labels[..., 4:] = 1
    other = labels.clone()
    other[..., :4, :] = 1 - other[..., :4, :]  # disagree on the top half
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:, :] = 1
    assert float(LabelNMILoss(2).nmi(labels, other, mask)) > 0.99


def test_lncc_is_minus_one_for_identical_images_and_checks_kernel():
    image = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    assert float(make_lncc(5)(image, image)) < -0.99
    with pytest.raises(ValueError, match="odd"):
        make_lncc(4)


def test_nmi_shape_mismatch_raises():
    with pytest.raises(ValueError, match="must share"):
        LabelNMILoss(3).nmi(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 5, 4), torch.ones(1, 1, 4, 4))
