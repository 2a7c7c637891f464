"""Instance optimisation of a displacement field with fidelity-imposed displacement editing (stage 3).

The field is optimised with Adam at the working resolution; every forward pass edits it towards its fidelity affine
(``alpha = 1``: exactly affine, as the paper's submission) and scores it on a pyramid: LNCC of feature maps first,
then normalised MI of k-means label maps inside the overlap. The best field seen (by NMI) is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fide import geometry
from fide.config import OptimiseConfig
from fide.preprocess import PreparedImage

from .editing import edit_displacement
from .losses import LabelNMILoss, make_lncc

__all__ = ["WorkingPair", "make_working_pair", "optimise_affine", "label_nmi"]


@dataclass
class WorkingPair:
    """Both images' inputs of the optimisation at one resolution (every tensor (1, C, h, w)).

    ``moving_factors`` maps full-resolution moving pixels to this grid's moving pixels, ``fixed_factors`` the same
    for the fixed image.
    """

    fixed_intensity: torch.Tensor
    moving_intensity: torch.Tensor
    fixed_features: torch.Tensor
    moving_features: torch.Tensor
    fixed_labels: torch.Tensor  # float label values
    moving_labels: torch.Tensor
    fidelity: torch.Tensor  # (1, 1, h, w) float weights
    fixed_factors: tuple[float, float]
    moving_factors: tuple[float, float]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.fixed_features.shape[-2:])  # type: ignore[return-value]


def make_working_pair(
    fixed: PreparedImage,
    moving: PreparedImage,
    fixed_labels: torch.Tensor,
    moving_labels: torch.Tensor,
    size_px: int,
    features: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
) -> WorkingPair:
    """Resize a prepared pair so the fixed image's longest side is ``size_px`` (never upsampled) and extract features.

    Intensities are anti-aliased before ``features`` sees them; label maps take the nearest value and
    the fidelity mask its area fraction, so they stay labels and weights.

    Args:
        fixed_labels, moving_labels: (1, 1, H, W) int label maps at full resolution.
        features: maps (fixed intensity, moving intensity), each (1, 1, h, w) in [0, 1], to (1, D, h, w) features.
    """
    factor = min(1.0, size_px / max(fixed.shape))
    fixed_shape = tuple(max(8, round(n * factor)) for n in fixed.shape)
    moving_shape = tuple(max(8, round(n * factor)) for n in moving.shape)
    fixed_intensity = geometry.downsample(fixed.intensity, fixed_shape)
    moving_intensity = geometry.downsample(moving.intensity, moving_shape)
    fixed_features, moving_features = features(fixed_intensity, moving_intensity)
    return WorkingPair(
        fixed_intensity,
        moving_intensity,
        fixed_features,
        moving_features,
        geometry.resize_image(fixed_labels.float(), fixed_shape, mode="nearest"),
        geometry.resize_image(moving_labels.float(), moving_shape, mode="nearest"),
        geometry.downsample(fixed.fidelity.float(), fixed_shape),
        geometry.scale_factors(fixed.shape, fixed_shape),
        geometry.scale_factors(moving.shape, moving_shape),
    )


def _pyramid(image: torch.Tensor, levels: int) -> list[torch.Tensor]:
    out = [image]
    for _ in range(1, levels):
        out.append(geometry.downsample(out[-1], [(n + 1) // 2 for n in out[-1].shape[-2:]]))
    return out


def label_nmi(
    loss: LabelNMILoss, fixed_labels: torch.Tensor, moving_labels: torch.Tensor, disp: torch.Tensor
) -> torch.Tensor:
    """NMI of fixed labels against moving labels warped by ``disp``, inside the overlap: (B,) in [0, 1]."""
    warped = geometry.warp(moving_labels.expand(disp.shape[0], -1, -1, -1), disp)
    overlap = geometry.overlap_mask(moving_labels, disp)
    return loss.nmi(fixed_labels.expand_as(warped), warped, overlap)


def optimise_affine(pair: WorkingPair, init_affine: torch.Tensor, cfg: OptimiseConfig) -> tuple[torch.Tensor, float]:
    """Stage-3 entry: optimise a field initialised at ``init_affine`` with editing; return the best affine.

    Args:
        pair: inputs at the working resolution (see :func:`make_working_pair`).
        init_affine: (3, 3) full-resolution affine, fixed to moving, pixels.
        cfg: optimisation settings (iterations, LNCC window, level weights, alpha, learning rate).

    Returns:
        The best (3, 3) full-resolution affine (the fidelity affine of the best field) and its working-level NMI.
    """
    inv = [1 / f for f in pair.fixed_factors], [1 / f for f in pair.moving_factors]
    init = geometry.rescale_affine(init_affine, pair.fixed_factors, pair.moving_factors)
    disp = geometry.affine_to_disp(init[None].to(pair.fixed_features), pair.shape).clone().requires_grad_(True)
    optimiser = torch.optim.Adam([disp], lr=cfg.learning_rate, amsgrad=True)
    levels = max(1, cfg.levels)
    weights = [cfg.level_weights_base**k for k in range(levels)]
    fixed_feat, moving_feat = _pyramid(pair.fixed_features, levels), _pyramid(pair.moving_features, levels)
    fixed_lab = [geometry.resize_image(pair.fixed_labels, f.shape[-2:], mode="nearest") for f in fixed_feat]
    moving_lab = [geometry.resize_image(pair.moving_labels, m.shape[-2:], mode="nearest") for m in moving_feat]
    lncc = make_lncc(cfg.lncc_kernel)
    nmi_loss = LabelNMILoss(cfg.num_labels)
    fidelity = pair.fidelity

    def level_disp(edited: torch.Tensor, k: int) -> torch.Tensor:
        if k == 0:
            return edited
        moving_factors = geometry.scale_factors(moving_feat[0].shape[-2:], moving_feat[k].shape[-2:])
        return geometry.resize_disp(edited, fixed_feat[k].shape[-2:], moving_factors)

    best_nmi, best_affine = -1.0, init
    total = cfg.lncc_iterations + cfg.nmi_iterations
    for step in range(total + 1):
        edited = edit_displacement(disp, fidelity, cfg.alpha)
        with torch.no_grad():  # track the best field so far by working-level NMI (the paper's selection)
            current = float(label_nmi(nmi_loss, fixed_lab[0], moving_lab[0], edited)[0])
            if current > best_nmi:
                best_nmi, best_affine = current, geometry.fit_affine(edited, fidelity)[0]
        if step == total:
            break
        loss = edited.new_zeros(())
        for k in range(levels):
            u = level_disp(edited, k)
            if step < cfg.lncc_iterations:
                warped = geometry.warp(moving_feat[k], u, padding_mode="border")
                loss = loss + weights[k] * lncc(warped, fixed_feat[k])
            else:
                loss = loss + weights[k] * nmi_loss(
                    fixed_lab[k], _warp_labels(moving_lab[k], u), geometry.overlap_mask(moving_lab[k], u)
                )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return geometry.rescale_affine(best_affine, *inv), best_nmi


def _warp_labels(labels: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
    return geometry.warp(labels, disp, padding_mode="border")
