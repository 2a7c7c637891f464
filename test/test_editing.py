"""Fidelity-imposed displacement editing."""

import pytest
import torch

from fide import geometry
from fide.optimise.editing import edit_displacement, edit_with_affine


def test_alpha_one_returns_exact_fidelity_affine():
    affine = torch.tensor([[[0.9, 0.15, 3.0], [-0.2, 1.05, -1.0], [0, 0, 1]]])
    disp = geometry.affine_to_disp(affine, (32, 24))
    generator = torch.Generator().manual_seed(0)  # seeded: the test must not depend on other tests' RNG use
    noisy = disp + torch.randn(disp.shape, generator=generator) * 0.5
    fidelity = (torch.rand(1, 1, 32, 24, generator=generator) > 0.5).float()
    edited = edit_displacement(noisy, fidelity, alpha=1.0)
    refit = geometry.fit_affine(edited)
    assert torch.allclose(geometry.affine_to_disp(refit, (32, 24)), edited, atol=1e-3)  # exactly affine
    assert (edited - disp).abs().mean() < 0.1  # and the right one


def test_background_outside_fidelity_does_not_drag_the_affine():
    affine = torch.tensor([[[1.0, 0.0, 2.0], [0.0, 1.0, -3.0], [0, 0, 1]]])
    disp = geometry.affine_to_disp(affine, (20, 20))
    disp[:, :, :, 10:] = 40.0  # garbage where there is no signal
    fidelity = torch.zeros(1, 1, 20, 20)
    fidelity[..., :10] = 1
    edited = edit_displacement(disp, fidelity, alpha=1.0)
    assert torch.allclose(edited, geometry.affine_to_disp(affine, (20, 20)), atol=1e-3)


def test_alpha_interpolates_and_zero_is_identity():
    disp = torch.randn(1, 2, 8, 8)
    fidelity = torch.ones(1, 1, 8, 8)
    assert torch.equal(edit_displacement(disp, fidelity, 0.0), disp)
    full = edit_displacement(disp, fidelity, 1.0)
    half = edit_displacement(disp, fidelity, 0.5)
    assert torch.allclose(half, 0.5 * disp + 0.5 * full, atol=1e-5)


def test_editing_is_differentiable():
    disp = torch.randn(1, 2, 8, 8, requires_grad=True)
    edit_displacement(disp, torch.ones(1, 1, 8, 8), 1.0).sum().backward()
    assert disp.grad is not None and torch.isfinite(disp.grad).all() and disp.grad.abs().sum() > 0


def test_alpha_out_of_range():
    with pytest.raises(ValueError, match="alpha must be in"):
        edit_displacement(torch.zeros(1, 2, 4, 4), torch.ones(1, 1, 4, 4), 1.5)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_the_returned_affine_is_the_edited_fields_own_fidelity_affine(alpha):
    """The optimisation keeps its best fields as this affine instead of fitting the edited field again."""
    generator = torch.Generator().manual_seed(1)
    disp = torch.randn(2, 2, 16, 12, generator=generator) * 3
    fidelity = (torch.rand(2, 1, 16, 12, generator=generator) > 0.4).float()
    edited, affine = edit_with_affine(disp, fidelity, alpha)
    assert torch.equal(edited, edit_displacement(disp, fidelity, alpha))
    assert torch.allclose(affine, geometry.fit_affine(edited, fidelity), atol=1e-4)


def test_a_prebuilt_affine_fit_of_the_mask_edits_as_the_mask_itself():
    """The optimisation builds the fidelity mask's AffineFit once for every start and step."""
    generator = torch.Generator().manual_seed(2)
    disp = torch.randn(3, 2, 16, 12, generator=generator) * 3
    fidelity = (torch.rand(1, 1, 16, 12, generator=generator) > 0.4).float()
    edited, affine = edit_with_affine(disp, geometry.AffineFit(fidelity), 1.0)
    expected, expected_affine = edit_with_affine(disp, fidelity.expand(3, -1, -1, -1), 1.0)
    assert torch.allclose(edited, expected, atol=1e-4) and torch.allclose(affine, expected_affine, atol=1e-5)
