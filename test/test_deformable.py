"""Stage 4: the optional deformable residual, composed with the affine and guarded against folding."""

import warnings

import pytest
import torch
from conftest import blob_pair, move, similarity
from monai.losses import DiffusionLoss

from fide import geometry
from fide.config import DeformableConfig
from fide.features import kmeans_labels
from fide.optimise.deformable import _diffusion, optimise_deformable
from fide.preprocess import prepare_pair
from fide.preprocess.working import make_working_pair

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 96
TRUTH = similarity(6.0, 1.03, SIZE, shift=(2.0, -1.0))


def test_diffusion_energy_of_a_linear_field_without_warnings():
    """Mean over components of the squared gradient norm: (a0² + b0² + a1² + b1²) / 2 for u_c = a_c i + b_c j."""
    grid = geometry.identity_grid((12, 10))
    field = torch.stack([0.1 * grid[0] + 0.2 * grid[1], -0.3 * grid[0] + 0.05 * grid[1]])[None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the deprecation warning of MONAI's list indexing stays silenced
        energy = _diffusion(DiffusionLoss(normalize=False), field)
    assert float(energy) == pytest.approx((0.01 + 0.04 + 0.09 + 0.0025) / 2, rel=1e-5)


@pytest.fixture(scope="module")
def working():
    shg, bf = blob_pair(SIZE, seed=9)
    fixed, moving = prepare_pair(shg, move(bf, TRUTH, fill=242.0))
    labels = [kmeans_labels(image.colour, 8, seed=0) for image in (fixed, moving)]
    return make_working_pair(fixed, moving, *labels, SIZE, lambda f, m: (f, m))


def test_residual_is_bounded_and_never_folds(working):
    cfg = DeformableConfig(enabled=True, iterations=20, grid_spacing_px=8)
    disp = optimise_deformable(working, TRUTH, (SIZE, SIZE), cfg)
    affine_disp = geometry.affine_to_disp(TRUTH[None], (SIZE, SIZE))
    assert disp.shape == (1, 2, SIZE, SIZE)
    assert float(geometry.jacobian_determinant(disp).amin()) > 0
    # composition, not addition: the field differs from the affine only by a residual within the bound
    assert 0 < float((disp - affine_disp).abs().amax()) <= cfg.max_disp_px * 1.2


def test_a_residual_over_the_bound_falls_back_to_the_affine(working):
    cfg = DeformableConfig(enabled=True, iterations=20, grid_spacing_px=8, max_disp_px=1e-6)
    disp = optimise_deformable(working, TRUTH, (SIZE, SIZE), cfg)
    assert torch.allclose(disp, geometry.affine_to_disp(TRUTH[None], (SIZE, SIZE)))
