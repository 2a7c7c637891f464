"""The B-NCE training objective of one aligned pair (both directions), shared by training and validation."""

from __future__ import annotations

import torch

from fide.config import TrainConfig
from fide.losses import BatchNCELoss, extract_patches, sample_patch_corners

__all__ = ["bnce_objective", "loss_from_config", "pair_loss", "step_generator"]


def bnce_objective(
    fixed_map: torch.Tensor,
    moving_map: torch.Tensor,
    fixed_mask: torch.Tensor,
    moving_mask: torch.Tensor,
    loss_fn: BatchNCELoss,
    num_patches: int,
    patch_px: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both directions of B-NCE on one aligned pair of maps (unweighted; the caller applies ``nce_weight``).

    Args:
        fixed_map: (1, D, H, W) SHG representation.
        moving_map: (1, D, H, W) bright-field representation, same grid.
        fixed_mask: (1, 1, H, W) SHG foreground: set 2 patches must contain some.
        moving_mask: (1, 1, H, W) BF tissue: set 1 patches must contain some.
        loss_fn: one-direction B-NCE (anchors = ``pred``).
        num_patches: patches per set.
        patch_px: patch side, pixels.
        generator: patch-position random source.

    Returns:
        NCE BF -> SHG (set 1) and NCE SHG -> BF (set 2), scalars, minimised.
    """
    if fixed_map.shape != moving_map.shape or fixed_map.shape[0] != 1:
        raise ValueError(
            f"maps must be (1, D, H, W) on one grid, got {tuple(fixed_map.shape)} and {tuple(moving_map.shape)}"
        )
    set1 = sample_patch_corners(moving_mask, num_patches, patch_px, generator)
    set2 = sample_patch_corners(fixed_mask, num_patches, patch_px, generator)
    bf_to_shg = loss_fn(extract_patches(moving_map, set1, patch_px), extract_patches(fixed_map, set1, patch_px))
    shg_to_bf = loss_fn(extract_patches(fixed_map, set2, patch_px), extract_patches(moving_map, set2, patch_px))
    return bf_to_shg, shg_to_bf


def loss_from_config(cfg: TrainConfig) -> BatchNCELoss:
    """The one-direction B-NCE loss the config describes (critic, temperature, smoothing pool)."""
    return BatchNCELoss(cfg.critic, cfg.temperature, cfg.pool_kernel, cfg.pool_stride)


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """Patch-position random source of one step on one rank (validation uses step = pair index, rank = -1)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + rank + 1)


def pair_loss(
    encoders: torch.nn.Module,
    item: dict[str, torch.Tensor],
    loss_fn: BatchNCELoss,
    cfg: TrainConfig,
    generator: torch.Generator,
    patch_px: int,
) -> torch.Tensor:
    """``nce_weight * (NCE_BF->SHG + NCE_SHG->BF)`` of one aligned pair, both maps computed by ``encoders``.

    Args:
        encoders: the encoder pair (or its DDP wrapper): ``(fixed, moving) -> (fixed_map, moving_map)``.
        item: a :class:`~fide.train.data.PairedTrainingSet` item with a batch axis: "fixed" (1, 1, H, W), "moving"
            (1, 3, H, W), "fixed_mask" and "moving_mask" (1, 1, H, W).
        patch_px: patch side, pixels (training: ``cfg.patch_px``, so a too-small image is an error; validation
            clamps it to small held-out images).
    """
    fixed_map, moving_map = encoders(item["fixed"], item["moving"])
    parts = bnce_objective(
        fixed_map,
        moving_map,
        item["fixed_mask"],
        item["moving_mask"],
        loss_fn,
        cfg.num_patches,
        patch_px,
        generator,
    )
    return cfg.nce_weight * (parts[0] + parts[1])
