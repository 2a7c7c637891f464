"""Instance optimisation of a displacement field with fidelity-imposed displacement editing (stage 3).

The field is optimised with Adam at the working resolution; every forward pass edits it towards its fidelity affine
(``alpha = 1``: exactly affine, as the paper's submission) and scores it on a pyramid: LNCC of feature maps first,
then normalised MI of k-means label maps inside the overlap. The best field seen (by NMI) is kept.
"""

from __future__ import annotations

import torch

from fide import geometry
from fide.adam import Adam
from fide.config import OptimiseConfig
from fide.preprocess.working import WorkingPair

from .editing import edit_with_affine
from .losses import FixedImageLNCC, LabelNMILoss, integer_label_counts, nmi_of_joint

__all__ = ["optimise_affine", "label_nmi", "counted_label_nmis"]

LNCC_KERNEL = 9  # code: windows 19, 13, 9, 5, 3 over levels 832..52; 9 at 256^2 covers the same tissue
LEVEL_WEIGHTS_BASE = 0.5  # code: level weights w_l = 1, 1/2, 1/4, ...


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


def counted_label_nmis(
    fixed_labels: torch.Tensor,
    moving_labels: torch.Tensor,
    disp: torch.Tensor,
    num_labels: int,
    within: torch.Tensor | None = None,
    padding_mode: str = "zeros",
) -> list[float]:
    """:func:`label_nmi` of *integer* fixed labels under one field, without a gradient, by
    :func:`~fide.optimise.losses.integer_label_counts`: over the overlap, then over the overlap inside each mask.

    Args:
        fixed_labels: (1, 1, H, W) integer labels; moving_labels: (1, 1, Hm, Wm) float labels; disp: (1, 2, H, W).
        within: (K, 1, H, W) masks (weights), or None.
        padding_mode: how ``geometry.warp`` samples beyond the moving image (the overlap's edge pixels weigh < 1).

    Returns:
        1 + K NMIs in [0, 1].
    """
    warped = geometry.warp(moving_labels, disp.to(moving_labels), padding_mode=padding_mode)
    overlap = geometry.overlap_mask(moving_labels, disp)
    masks = overlap if within is None else torch.cat([overlap, overlap * within])
    return nmi_of_joint(integer_label_counts(fixed_labels, warped, masks, num_labels)).tolist()


# starts optimised together in one batch hold at most this many working pixels (two 256 px starts): on 2 CPU
# cores ten 128 px starts took 0.23 s in batches of 8 and 0.28 s in batches of 4, three 256 px ones 1.9-2.1 s either way
_BATCH_PIXELS = 1 << 17


def optimise_affine(
    pair: WorkingPair, init_affines: torch.Tensor, cfg: OptimiseConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage-3 entry: optimise fields initialised at each start with editing; return each start's best affine.

    The starts are independent (every loss term is per batch element, Adam's update is elementwise); they share
    batched passes as far as ``_BATCH_PIXELS`` allows.

    Args:
        pair: inputs at the working resolution (see :func:`make_working_pair`).
        init_affines: (B, 3, 3) or (3, 3) full-resolution affines, fixed to moving, pixels.
        cfg: optimisation settings (levels, iterations, alpha, learning rate, labels).

    Returns:
        (B, 3, 3) best full-resolution affines (the fidelity affine of each start's best field by working-level NMI)
        and (B,) those NMIs.
    """
    inits = init_affines[None] if init_affines.ndim == 2 else init_affines
    levels = _Levels(pair, max(1, cfg.levels), cfg)
    chunk = max(1, _BATCH_PIXELS // (pair.shape[0] * pair.shape[1]))
    results = [_optimise_starts(levels, pair, part, cfg) for part in inits.split(chunk)]
    return torch.cat([affines for affines, _ in results]).to(inits), torch.cat([nmi for _, nmi in results])


class _Levels:
    """The pyramid of one working pair: features, label maps and the fixed-image LNCC of every level."""

    def __init__(self, pair: WorkingPair, levels: int, cfg: OptimiseConfig) -> None:
        self.fixed_feat = _pyramid(pair.fixed_features, levels)
        self.moving_feat = _pyramid(pair.moving_features, levels)
        self.fixed_lab = [
            geometry.resize_image(pair.fixed_labels, f.shape[-2:], mode="nearest") for f in self.fixed_feat
        ]
        self.moving_lab = [
            geometry.resize_image(pair.moving_labels, m.shape[-2:], mode="nearest") for m in self.moving_feat
        ]
        self.fidelity = pair.fidelity
        self.weights = [LEVEL_WEIGHTS_BASE**k for k in range(levels)]
        # against the fixed features of each level, for batches of any size; not built for NMI-only schedules
        self.lncc = [FixedImageLNCC(f, LNCC_KERNEL) for f in self.fixed_feat] if cfg.lncc_iterations else []

    def disp(self, edited: torch.Tensor, k: int) -> torch.Tensor:
        """The level-0 displacement at level ``k`` (its grid and its moving pixels)."""
        if k == 0:
            return edited
        moving_factors = geometry.scale_factors(self.moving_feat[0].shape[-2:], self.moving_feat[k].shape[-2:])
        return geometry.resize_disp(edited, self.fixed_feat[k].shape[-2:], moving_factors)


def _optimise_starts(
    levels: _Levels, pair: WorkingPair, init_affines: torch.Tensor, cfg: OptimiseConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Starts (B, 3, 3) → their best full-resolution affines (B, 3, 3) and those affines' working-level NMIs (B,)."""
    batch = init_affines.shape[0]
    init = pair.down(init_affines).to(pair.fixed_features)
    disp = geometry.affine_to_disp(init, pair.shape).clone().requires_grad_(True)
    optimiser = Adam([disp], lr=cfg.learning_rate, amsgrad=True)
    nmi_loss = LabelNMILoss(cfg.num_labels)

    def batched(images: list[torch.Tensor], k: int) -> torch.Tensor:
        return images[k].expand(batch, -1, -1, -1)

    fidelity = geometry.AffineFit(levels.fidelity)  # one mask for every start and step
    best_nmi = torch.full((batch,), -1.0)
    best_affine = init.detach().cpu().clone()

    def level_nmi(edited: torch.Tensor, k: int) -> torch.Tensor:
        u = levels.disp(edited, k)
        moving_labels = batched(levels.moving_lab, k)
        overlap = geometry.overlap_mask(moving_labels, u)
        return nmi_loss.nmi(batched(levels.fixed_lab, k), _warp_labels(moving_labels, u), overlap)

    def keep_best(current: torch.Tensor, affine: torch.Tensor) -> None:
        """Each start's best field so far by working-level NMI (the paper's selection), kept as its affine."""
        nonlocal best_nmi
        current = current.detach().cpu()
        improved = current > best_nmi
        if bool(improved.any()):
            best_nmi = torch.where(improved, current, best_nmi)
            best_affine[improved] = affine.detach().cpu()[improved]

    total = cfg.lncc_iterations + cfg.nmi_iterations
    for step in range(total + 1):
        edited, affine = edit_with_affine(disp, fidelity, cfg.alpha)
        nmi_phase = cfg.lncc_iterations <= step < total
        if not nmi_phase:  # in the NMI phase the loss's finest term is the selection's NMI: computed once, below
            with torch.no_grad():
                keep_best(level_nmi(edited, 0), affine)
        if step == total:
            break
        if nmi_phase:
            nmis = [level_nmi(edited, k) for k in range(len(levels.weights))]
            keep_best(nmis[0], affine)
            loss = sum(w * (1 - nmi).mean() for w, nmi in zip(levels.weights, nmis))
        else:
            warped = [
                geometry.warp(batched(levels.moving_feat, k), levels.disp(edited, k), padding_mode="border")
                for k in range(len(levels.weights))
            ]
            loss = sum(w * lncc(m) for w, lncc, m in zip(levels.weights, levels.lncc, warped))
        optimiser.zero_grad()
        (loss * batch).backward()  # both losses average over the batch: undo it so each start sees its own gradient
        optimiser.step()
    return pair.up(best_affine.to(init_affines)), best_nmi


def _warp_labels(labels: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
    return geometry.warp(labels, disp, padding_mode="border")
