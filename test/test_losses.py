"""Similarity losses: label NMI (and its joint histogram) and the fixed-image LNCC (against MONAI's LNCC)."""

import pytest
import torch
from monai.losses import LocalNormalizedCrossCorrelationLoss

from fide.optimise.losses import FixedImageLNCC, LabelNMILoss, joint_label_histogram, soft_level_sets


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


def test_lncc_is_minus_one_for_identical_images():
    image = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    assert float(FixedImageLNCC(image, 5)(image)) < -0.99


def test_nmi_shape_mismatch_raises():
    with pytest.raises(ValueError, match="must share"):
        LabelNMILoss(3).nmi(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 5, 4), torch.ones(1, 1, 4, 4))


def test_fixed_image_lncc_equals_monai_lncc_in_value_and_gradient():
    generator = torch.Generator().manual_seed(3)
    fixed = torch.rand(2, 2, 40, 37, generator=generator)
    fixed[..., :10, :] = 0  # flat windows: the variance clamp must act as in MONAI
    moving = torch.rand(2, 2, 40, 37, generator=generator, dtype=torch.float32).requires_grad_(True)
    monai_lncc = LocalNormalizedCrossCorrelationLoss(spatial_dims=2, kernel_size=9, kernel_type="rectangular")
    reference = monai_lncc(moving, fixed)
    (reference_grad,) = torch.autograd.grad(reference, moving)
    ours = FixedImageLNCC(fixed, 9)(moving)
    (grad,) = torch.autograd.grad(ours, moving)
    assert abs(float(ours.detach()) - float(reference.detach())) < 1e-5
    assert float((grad - reference_grad).abs().max()) < 1e-4 * float(reference_grad.abs().max())
    expanded = FixedImageLNCC(fixed[:1].expand(2, -1, -1, -1), 9)(moving)
    assert torch.allclose(FixedImageLNCC(fixed[:1], 9)(moving), expanded)  # batch 1 serves every start of a batch
    with pytest.raises(ValueError, match="must match"):
        FixedImageLNCC(fixed, 9)(moving[:, :1])
    with pytest.raises(ValueError, match="must match"):
        FixedImageLNCC(fixed, 9)(moving.repeat(2, 1, 1, 1))  # batch 2 against 4
    with pytest.raises(ValueError, match="odd"):
        FixedImageLNCC(fixed, 4)


@pytest.mark.parametrize("num_labels", [2, 3, 8])
def test_joint_histogram_equals_the_level_set_products(num_labels):
    """The scatter-add histogram is the einsum of the soft level sets, in value and in gradient (away from integer
    label values, where the level sets have kinks)."""
    generator = torch.Generator().manual_seed(num_labels)
    pred = torch.randint(0, num_labels, (2, 1, 20, 21), generator=generator).float()  # fixed labels: integers
    target = (torch.rand(2, 1, 20, 21, generator=generator) * (num_labels - 1)).requires_grad_(True)
    mask = torch.rand(2, 1, 20, 21, generator=generator)
    weights = torch.rand(2, num_labels, num_labels, generator=generator)
    reference = torch.einsum(
        "bphw,bqhw->bpq", soft_level_sets(pred, num_labels) * mask, soft_level_sets(target, num_labels)
    )
    ours = joint_label_histogram(pred, target, mask, num_labels)
    assert ours.shape == (2, num_labels, num_labels)
    assert torch.allclose(ours, reference, atol=1e-4)
    (reference_grad,) = torch.autograd.grad((reference * weights).sum(), target)
    (grad,) = torch.autograd.grad((ours * weights).sum(), target)
    assert torch.allclose(grad, reference_grad, atol=1e-5)
    flat = joint_label_histogram(pred, target, mask, num_labels, flat=True)  # the CUDA path, checked on the CPU
    assert torch.allclose(flat, ours, atol=1e-5)
    top = torch.full((1, 1, 2, 2), float(num_labels - 1))  # the top label value lands in the top bin
    assert float(joint_label_histogram(top, top, torch.ones_like(top), num_labels)[0, -1, -1]) == 4.0


def test_integer_label_counts_equal_the_soft_joint_histogram_of_whole_fixed_labels():
    from fide.optimise.losses import integer_label_counts

    generator = torch.Generator().manual_seed(5)
    fixed = torch.randint(0, 5, (1, 1, 30, 40), generator=generator).float()
    moving = torch.rand(1, 1, 30, 40, generator=generator) * 4.6 - 0.3  # interpolated, a little out of range
    masks = (torch.rand(2, 1, 30, 40, generator=generator) > 0.3).float()
    counts = integer_label_counts(fixed.to(torch.int8), moving, masks, 5)
    expected = joint_label_histogram(fixed.expand(2, -1, -1, -1), moving.expand(2, -1, -1, -1), masks, 5)
    assert counts.shape == (2, 5, 5) and counts.dtype == torch.float64
    assert torch.allclose(counts, expected.double(), atol=1e-4)
    assert float(counts[0].sum()) == pytest.approx(float(masks[0].sum()), rel=1e-9)


def test_integer_label_counts_by_scatter_add_equal_its_bincounts():
    """The 1-D scatter-add (CUDA's repeatable path in deterministic mode) counts what the bincounts count."""
    from fide.optimise.losses import integer_label_counts

    generator = torch.Generator().manual_seed(6)
    fixed = torch.randint(0, 16, (1, 1, 25, 33), generator=generator)
    moving = torch.rand(1, 1, 25, 33, generator=generator) * 15
    masks = torch.rand(3, 1, 25, 33, generator=generator)
    by_bincount = integer_label_counts(fixed, moving, masks, 16, scatter=False)
    by_scatter = integer_label_counts(fixed, moving, masks, 16, scatter=True)
    assert torch.allclose(by_scatter, by_bincount, rtol=0, atol=1e-12)
    assert float(by_scatter.sum()) > 0
