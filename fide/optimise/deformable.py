"""Regularised deformable residual after the affine (fide's addition; the paper's output is affine only).

A coarse control grid of displacements (cubic-free: bilinear upsampling of a smoothed grid) is optimised with Adam
on the feature dissimilarity plus MONAI's diffusion regulariser, composed with the affine, never added to it.
"""

from __future__ import annotations

import logging
import warnings

import torch
import torch.nn.functional as F
from monai.losses import DiffusionLoss

from fide import geometry
from fide.adam import Adam
from fide.config import DeformableConfig
from fide.preprocess.working import WorkingPair

from .losses import LabelNMILoss

__all__ = ["optimise_deformable"]

logger = logging.getLogger(__name__)

NUM_LABELS = 8  # code: the k = 8 k-means label maps of the optimisation (OptimiseConfig.num_labels' default)
LEARNING_RATE = 0.05  # fide: Adam step on the control grid, working pixels


def _smooth(grid: torch.Tensor) -> torch.Tensor:
    # two 3x3 box filters, as convexAdam smooths its grid, keep the field free of checkerboard modes
    for _ in range(2):
        grid = F.avg_pool2d(F.pad(grid, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return grid


def optimise_deformable(
    pair: WorkingPair, affine: torch.Tensor, fixed_shape: tuple[int, int], cfg: DeformableConfig
) -> torch.Tensor:
    """Stage-4 entry: a smooth residual on top of ``affine``.

    Args:
        pair: features at the working resolution.
        affine: (3, 3) full-resolution affine, fixed to moving, pixels.
        fixed_shape: full-resolution fixed grid (H, W) of the returned field.
        cfg: similarity, grid spacing, iterations, regulariser weight, residual bound.

    Returns:
        (1, 2, H, W) full-resolution displacement, fixed to moving: ``u(p) = r(p) + A(p + r(p)) - (p + r(p))``;
        the affine alone when the residual would fold or exceed ``cfg.max_disp_px``.
    """
    level_affine = pair.down(affine)[None]
    affine_disp = geometry.affine_to_disp(level_affine.to(pair.fixed_features), pair.shape)
    full_affine_disp = geometry.affine_to_disp(affine[None].to(pair.fixed_features), fixed_shape)
    grid_shape = tuple(max(2, n // cfg.grid_spacing_px) for n in pair.shape)
    control = pair.fixed_features.new_zeros(1, 2, *grid_shape).requires_grad_()
    optimiser = Adam([control], lr=LEARNING_RATE)
    regulariser = DiffusionLoss(normalize=False)
    nmi = LabelNMILoss(NUM_LABELS)
    fixed = pair.fixed_features

    def residual() -> torch.Tensor:
        return geometry.resize_image(_smooth(control), pair.shape)

    for _ in range(cfg.iterations):
        res = residual()
        total = geometry.compose(affine_disp, res)
        if cfg.similarity == "nmi":
            warped = geometry.warp(pair.moving_labels, total, padding_mode="border")
            similarity = nmi(pair.fixed_labels, warped, geometry.overlap_mask(pair.moving_labels, total))
        else:
            warped = geometry.warp(pair.moving_features, total, padding_mode="border")
            similarity = F.mse_loss(warped, fixed)
        loss = similarity + cfg.diffusion_weight * _diffusion(regulariser, res)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        res = residual()
        full_res = geometry.resize_disp(res, fixed_shape)  # residual maps the fixed frame into itself
        total = geometry.compose(full_affine_disp, full_res)
        largest, min_det = float(full_res.abs().amax()), float(geometry.jacobian_determinant(total).amin())
        logger.debug("deformable residual: max %.2f px, min det J %.3f", largest, min_det)
        if largest > cfg.max_disp_px or min_det <= 0:
            return full_affine_disp
    return total


def _diffusion(regulariser: DiffusionLoss, disp: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        # MONAI's spatial_gradient indexes with a list of slices: torch warns (once per pair) that a future version
        # reads it as a tensor index; the pinned torch still reads it as a tuple (test_deformable checks the value)
        warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
        return regulariser(disp)
