"""Batch-wise noise-contrastive estimation (B-NCE): the loss that trains the learned modality encoders.

Source: the FIDE team's code (Neon_ShgBf), spec §3. Patches are cut at identical positions from the two
representation maps of an aligned pair and average-pooled; the *embedding* of a patch position is its values across
the batch of patches (and channels), so the batch dimension becomes the feature dimension. Each position must be
closer to the same position in the other modality than to every other position of either modality.

The original materialises a (positions x 2 positions x patches) difference tensor (~8.6 GB at 832^2); here the
anchors are processed in chunks under activation checkpointing, so memory is O(chunk x positions) and the result is
identical.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = ["BatchNCELoss", "CRITICS", "REDUCTIONS", "apply_reduction", "sample_patch_corners", "extract_patches"]

CRITICS = ("l1", "l2", "cosine")
REDUCTIONS = ("none", "mean", "sum")


def _look_up(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def apply_reduction(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce per-element loss values: "none" (unchanged), "mean" or "sum"."""
    _look_up("reduction", reduction, REDUCTIONS)
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def _similarity(anchors: torch.Tensor, others: torch.Tensor, critic: str, temperature: float) -> torch.Tensor:
    """Critic scores s(a, b) of every anchor against every other embedding: (c, K), (M, K) -> (c, M)."""
    dims = anchors.shape[-1]
    if critic == "l1":  # code: -mean_k |a_k - b_k| / tau
        return -torch.cdist(anchors, others, p=1.0) / (dims * temperature)
    if critic == "l2":  # code's option: -mean_k (a_k - b_k)^2 / tau
        return -torch.cdist(anchors, others, p=2.0).square() / (dims * temperature)
    # paper: cosine similarity / tau (embeddings are unit-normalised by the caller)
    return anchors @ others.T / temperature


def _chunk_loss(
    anchors: torch.Tensor,
    index: torch.Tensor,
    own: torch.Tensor,
    other: torch.Tensor,
    critic: str,
    temperature: float,
    log_min_sum: float,
) -> torch.Tensor:
    """Per-anchor loss of one chunk: anchors (c, K) at positions ``index`` (c,), all embeddings own/other (Q, K)."""
    to_other = _similarity(anchors, other, critic, temperature)  # (c, Q), positives on the "diagonal"
    to_own = _similarity(anchors, own, critic, temperature)  # (c, Q), the anchor itself must be excluded
    rows = torch.arange(len(index), device=anchors.device)
    to_own = to_own.index_put((rows, index), to_own.new_tensor(float("-inf")))  # out of place (autograd)
    positive = to_other[rows, index]
    log_sum = torch.logsumexp(torch.cat([to_other, to_own], dim=1), dim=1)
    return log_sum.clamp(min=log_min_sum) - positive  # log(max(sum, eps)) = max(log sum, log eps)


class BatchNCELoss(nn.Module):
    """One direction of B-NCE between two batches of patches cut at identical positions.

    ``L = mean_q [ -s(a_q, b_q) + log max(eps, sum_{v in V_q} exp s(a_q, v)) ]`` with ``a_q`` the embedding of
    position q in ``pred`` and ``b_q`` in ``target``, ``V_q`` = every ``b_r`` and every ``a_r`` with r != q
    (2Q - 1 candidates, the positive included). Embeddings are the pooled patch values across the N patches and
    D channels: ``a_q in R^(N*D)``. The direction "BF -> SHG" passes BF patches as ``pred``.

    Range: ``>= -log(eps) - s_max``; for the L1 critic about [0, log(2Q - 1) + range/tau], minimised (lower is
    better: positives closer than negatives). ``log(2Q - 1)`` means no discrimination at all.

    Args:
        critic: "l1" (code, default), "l2" (code's option) or "cosine" (paper).
        temperature: tau > 0 dividing the critic (code: 0.5 for L1; the paper's cosine temperature is unknown).
        pool_kernel: average-pooling window applied to the patches (odd; code: 5); 1 disables pooling.
        pool_stride: pooling stride (code: 2).
        chunk_size: anchors per chunk; peak memory ~ 3 x chunk_size x 2Q floats (+ cdist's backward buffer
            chunk_size x Q x K on CPU).
        min_sum: eps, the lower clamp of the sum inside the log (code: 1e-3).
        reduction: "mean" (default), "sum", or "none" for the (Q,) per-position values.

    Examples::

        >>> loss = BatchNCELoss(pool_kernel=3)
        >>> maps = torch.rand(16, 1, 24, 24)
        >>> bool(loss(maps, maps) < loss(maps, torch.rand(16, 1, 24, 24)))
        True
    """

    def __init__(
        self,
        critic: str = "l1",
        temperature: float = 0.5,
        pool_kernel: int = 5,
        pool_stride: int = 2,
        chunk_size: int = 512,
        min_sum: float = 1e-3,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.critic = _look_up("critic", critic, CRITICS)
        self.reduction = _look_up("reduction", reduction, REDUCTIONS)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if pool_kernel < 1 or pool_kernel % 2 == 0:
            raise ValueError(f"pool_kernel must be a positive odd integer, got {pool_kernel}")
        if pool_stride < 1:
            raise ValueError(f"pool_stride must be >= 1, got {pool_stride}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if not min_sum > 0:
            raise ValueError(f"min_sum must be > 0, got {min_sum}")
        self.temperature = float(temperature)
        self.pool_kernel = int(pool_kernel)
        self.pool_stride = int(pool_stride)
        self.chunk_size = int(chunk_size)
        self.log_min_sum = math.log(min_sum)

    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        """Pool patches and turn positions into embeddings: (N, D, P, P) -> (Q, N*D), Q = pooled positions."""
        if self.pool_kernel > 1 or self.pool_stride > 1:
            patches = F.avg_pool2d(
                patches,
                self.pool_kernel,
                stride=self.pool_stride,
                padding=self.pool_kernel // 2,
                count_include_pad=False,  # code: padding excluded from the average
            )
        num, dims = patches.shape[:2]
        embedding = patches.permute(2, 3, 0, 1).reshape(-1, num * dims)
        if self.critic == "cosine":
            embedding = F.normalize(embedding, dim=1, eps=1e-8)
        return embedding

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """B-NCE with ``pred`` as anchors.

        Args:
            pred: (N, D, P, P) patches of the anchor modality's map (N patches, D channels), identical positions to
                ``target``.
            target: (N, D, P, P) patches of the other modality's map.

        Returns:
            Scalar for "mean"/"sum"; (Q,) per pooled position for "none".
        """
        if pred.ndim != 4 or pred.shape != target.shape:
            raise ValueError(
                f"pred and target must be (N, D, P, P) of equal shape, got {tuple(pred.shape)} and "
                f"{tuple(target.shape)}"
            )
        if pred.shape[0] < 2:
            raise ValueError(f"B-NCE needs at least 2 patches (the embedding dimension), got {pred.shape[0]}")
        own, other = self.embed(pred), self.embed(target)  # (Q, K) each
        positions = own.shape[0]
        values = []
        for start in range(0, positions, self.chunk_size):
            index = torch.arange(start, min(start + self.chunk_size, positions), device=own.device)
            args = (own[index], index, own, other, self.critic, self.temperature, self.log_min_sum)
            if torch.is_grad_enabled() and (own.requires_grad or other.requires_grad):
                values.append(checkpoint(_chunk_loss, *args, use_reentrant=False))
            else:
                values.append(_chunk_loss(*args))
        return apply_reduction(torch.cat(values), self.reduction)


def sample_patch_corners(
    mask: torch.Tensor, num: int, patch_px: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Top-left corners of ``num`` patches that each contain at least one mask pixel, drawn without replacement.

    Args:
        mask: (H, W) or (1, 1, H, W) bool or {0, 1} mask (code: BF tissue for set 1, SHG >= 1 for set 2).
        num: patches to draw.
        patch_px: patch side, pixels; must not exceed H or W.
        generator: random source (CPU generator; the global one when None).

    Returns:
        (num, 2) long corners (i, j), array order. When fewer than ``num`` corners qualify they are drawn with
        replacement; when none does (an empty mask), corners are drawn from the whole image.
    """
    mask = mask.reshape(mask.shape[-2:]) if mask.ndim == 4 else mask
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W) or (1, 1, H, W), got {tuple(mask.shape)}")
    height, width = mask.shape
    if not 1 <= patch_px <= min(height, width):
        raise ValueError(f"patch_px must be in [1, {min(height, width)}] for a {height}x{width} mask, got {patch_px}")
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    # mask pixels inside every patch window from an integral image
    integral = F.pad(mask.detach().float().cpu().cumsum(0).cumsum(1), (1, 0, 1, 0))
    p = patch_px
    counts = integral[p:, p:] - integral[:-p, p:] - integral[p:, :-p] + integral[:-p, :-p]  # (H-p+1, W-p+1)
    weights = (counts > 0.5).flatten().float()
    if weights.sum() < 1:
        weights = torch.ones_like(weights)
    replacement = bool(weights.sum() < num)
    flat = torch.multinomial(weights, num, replacement=replacement, generator=generator)
    cols = counts.shape[1]
    return torch.stack([flat // cols, flat % cols], dim=1)


def extract_patches(image: torch.Tensor, corners: torch.Tensor, patch_px: int) -> torch.Tensor:
    """Cut square patches (differentiably) from one map.

    Args:
        image: (1, D, H, W) or (D, H, W) map.
        corners: (N, 2) long top-left corners, array order (from :func:`sample_patch_corners`).
        patch_px: patch side, pixels.

    Returns:
        (N, D, patch_px, patch_px).
    """
    image = image[0] if image.ndim == 4 else image
    if image.ndim != 3:
        raise ValueError(f"image must be (1, D, H, W) or (D, H, W), got {tuple(image.shape)}")
    offsets = torch.arange(patch_px, device=image.device)
    rows = (corners[:, 0].to(image.device)[:, None] + offsets)[:, :, None]  # (N, P, 1)
    cols = (corners[:, 1].to(image.device)[:, None] + offsets)[:, None, :]  # (N, 1, P)
    return image[:, rows, cols].permute(1, 0, 2, 3)  # (D, N, P, P) -> (N, D, P, P)
