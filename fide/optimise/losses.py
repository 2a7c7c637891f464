"""Similarity losses of the instance optimisation: normalised MI of label maps (soft level sets) and LNCC.

MONAI's ``GlobalMutualInformationLoss`` bins raw intensities with Parzen windows and has no mask; fide's MI is
computed on k-means *label* maps with a validity mask (globalign's CMIF at zero shift), so it is written here.
LNCC against a fixed image is ``FixedImageLNCC``: MONAI's ``LocalNormalizedCrossCorrelationLoss`` (rectangular window)
recomputes the fixed image's window sums at every call and its five separable convolutions' backward took ~60 % of the
affine optimisation; running-sum window sums with the fixed sums cached give the same value (tested against MONAI).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "LabelNMILoss",
    "nmi_of_joint",
    "soft_level_sets",
    "joint_label_histogram",
    "integer_label_counts",
    "FixedImageLNCC",
]


def soft_level_sets(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Soft indicators ``S_a(L) = max(0, 1 - |L - a|)`` of (possibly interpolated) label maps.

    Args:
        labels: (B, 1, H, W) float label values in [0, num_labels - 1].

    Returns:
        (B, num_labels, H, W), summing to 1 wherever labels are in range.
    """
    levels = torch.arange(num_labels, device=labels.device, dtype=labels.dtype).view(1, -1, 1, 1)
    return (1 - (labels - levels).abs()).clamp(min=0)


def joint_label_histogram(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, num_labels: int, *, flat: bool | None = None
) -> torch.Tensor:
    """``sum_x mask(x) S_p(pred(x)) S_q(target(x))`` of the soft level sets, without building them: (B, Q, Q).

    A label value in [0, Q-1] has at most two non-zero level sets (its floor and the next one), so the joint
    histogram is four scatter-adds of B x H x W weights; the einsum over all Q^2 level-set products (its equal,
    tested) made the NMI passes ~3x slower. Values are clamped to [0, Q-1], where the level sets sum to 1.

    Args:
        pred, target: (B, 1, H, W) float label values; mask: (B, 1, H, W) weights.
        flat: add into one flat row of bins (None: on CUDA, see below).
    """
    top = num_labels - 1

    def corners(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labels = labels.clamp(0, top).flatten(1)
        lower = labels.detach().floor().clamp(max=top - 1)  # the value Q-1 is the upper corner of Q-2, weight 1
        return lower.long(), labels - lower  # index of the lower level set, weight of the upper one

    pred_index, pred_frac = corners(pred)
    target_index, target_frac = corners(target)
    weights = mask.flatten(1).to(pred_frac)
    batch, bins = pred_frac.shape[0], num_labels * num_labels
    # CUDA adds a 2-D scatter atomically, in an order that changes between runs; its 1-D scatter-add runs in a fixed
    # order in deterministic mode (which fide's commands set), so there the histogram is one flat row of B x Q^2
    # bins. The CPU adds in order either way, and its 2-D scatter is faster.
    flat = pred_frac.is_cuda if flat is None else flat
    offset = torch.arange(batch, device=pred_index.device)[:, None] * bins if flat else 0
    joint = pred_frac.new_zeros(batch * bins) if flat else pred_frac.new_zeros(batch, bins)
    for pred_step, pred_weight in ((0, 1 - pred_frac), (1, pred_frac)):
        for target_step, target_weight in ((0, 1 - target_frac), (1, target_frac)):
            index = (pred_index + pred_step) * num_labels + target_index + target_step
            values = weights * pred_weight * target_weight
            if flat:
                joint = joint.scatter_add(0, (offset + index).flatten(), values.flatten())
            else:
                joint = joint.scatter_add(1, index, values)
    return joint.view(batch, num_labels, num_labels)


def integer_label_counts(
    fixed: torch.Tensor, moving: torch.Tensor, masks: torch.Tensor, num_labels: int, *, scatter: bool | None = None
) -> torch.Tensor:
    """:func:`joint_label_histogram` of *integer* fixed labels against (interpolated) moving labels under several
    masks, without a gradient: (B, Q, Q) float64.

    With whole fixed labels each pixel meets two moving level sets only, so each mask's histogram is two weighted
    bincounts: ~10x faster than the four scatter-adds per batch element at 834 px (the compass search's hundred
    evaluations a pair).

    Args:
        fixed: (1, 1, H, W) integer label values in [0, Q-1] (any dtype); moving: (1, 1, H, W) float label values;
        masks: (B, 1, H, W) weights.
        scatter: add by 1-D scatter-add instead of bincount (default: on CUDA, where bincount adds weights atomically
            in an order that changes between runs, while deterministic mode runs the 1-D scatter-add in a fixed order,
            as in :func:`joint_label_histogram`; the CPU's bincount is ordered and faster).
    """
    scatter = fixed.is_cuda if scatter is None else scatter

    def weighted_counts(index: torch.Tensor, weights: torch.Tensor, size: int) -> torch.Tensor:
        if scatter:
            return weights.new_zeros(size).scatter_add_(0, index, weights)
        return torch.bincount(index, weights, minlength=size)

    top = num_labels - 1
    values = moving.detach().clamp(0, top).flatten().double()
    lower = values.floor().clamp(max=top - 1)
    upper_weight = values - lower
    index = fixed.flatten().long() * num_labels + lower.long()
    bins = num_labels * num_labels
    counts = []
    for mask in masks.detach().flatten(1).double():
        lower_counts = weighted_counts(index, mask * (1 - upper_weight), bins + 1)
        upper_counts = weighted_counts(index + 1, mask * upper_weight, bins + 1)
        counts.append((lower_counts + upper_counts)[:bins])
    return torch.stack(counts).view(-1, num_labels, num_labels)


def nmi_of_joint(joint: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """NMI = (H_A + H_B) / H_AB - 1 in [0, 1] of (..., Qa, Qb) joint label counts (any scale): (...,)."""
    joint = joint / joint.sum((-2, -1), keepdim=True).clamp(min=eps)
    marginal_a, marginal_b = joint.sum(-1), joint.sum(-2)

    def entropy(p: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        return -(p * torch.log(p + eps)).sum(dims)

    h_joint = entropy(joint, (-2, -1))
    return ((entropy(marginal_a, (-1,)) + entropy(marginal_b, (-1,))) / h_joint.clamp(min=eps) - 1).clamp(0, 1)


class LabelNMILoss(nn.Module):
    """``1 - NMI`` of two label maps inside a mask, NMI = (H_A + H_B) / H_AB - 1 in [0, 1] (log base irrelevant).

    Range [0, 1], minimised; 0 when one label map determines the other.

    Args:
        num_labels: number of labels Q of both maps.
        eps: added inside the logarithms.
    """

    def __init__(self, num_labels: int, eps: float = 1e-8) -> None:
        super().__init__()
        if num_labels < 2:
            raise ValueError(f"num_labels must be >= 2, got {num_labels}")
        self.num_labels = num_labels
        self.eps = eps

    def nmi(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """NMI per batch element: pred/target (B, 1, H, W) float labels, mask (B, 1, H, W) weights → (B,)."""
        if pred.shape != target.shape or pred.shape[0] != mask.shape[0] or pred.shape[2:] != mask.shape[2:]:
            raise ValueError(
                f"pred, target and mask must share (B, 1, H, W), got {tuple(pred.shape)}, "
                f"{tuple(target.shape)}, {tuple(mask.shape)}"
            )
        return nmi_of_joint(joint_label_histogram(pred, target, mask, self.num_labels), self.eps)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (1 - self.nmi(pred, target, mask)).mean()


class FixedImageLNCC(nn.Module):
    """``-mean(LNCC^2)`` of moving images against one fixed image: MONAI's rectangular-window LNCC, fixed sums cached.

    Same value as ``LocalNormalizedCrossCorrelationLoss(kernel_type="rectangular", smooth_dr=1e-5)`` (zero padding,
    variances clamped at ``smooth_dr``); range about [-1, 0], minimised.

    Args:
        fixed: (1, C, H, W) or (B, C, H, W) the target of every call (batch 1 serves moving batches of any size).
        kernel_size: odd side of the square window.
    """

    def __init__(self, fixed: torch.Tensor, kernel_size: int, smooth_dr: float = 1e-5) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.kernel_size, self.smooth_dr = kernel_size, smooth_dr
        self.volume = float(kernel_size**2)
        self.fixed = fixed.detach()
        self.fixed_sum = self._window_sum(self.fixed)
        fixed_var = self._window_sum(self.fixed * self.fixed) - self.fixed_sum**2 / self.volume
        self.fixed_var = fixed_var.clamp(min=smooth_dr)

    def _window_sum(self, image: torch.Tensor) -> torch.Tensor:
        """Zero-padded k x k window sums, by running sums along each axis (4x faster than avg_pool2d's k^2 adds)."""
        k, half = self.kernel_size, self.kernel_size // 2
        dtype, image = image.dtype, image.double()  # float32 running sums cancel badly (variances of flat windows)
        for dim in (2, 3):
            padding = [0, 0, half + 1, half] if dim == 2 else [half + 1, half, 0, 0]
            running = F.pad(image, padding).cumsum(dim)
            image = running.narrow(dim, k, running.shape[dim] - k) - running.narrow(dim, 0, running.shape[dim] - k)
        return image.to(dtype)

    def forward(self, moving: torch.Tensor) -> torch.Tensor:
        """moving: (B, C, H, W) like ``fixed`` (any B where ``fixed`` has batch 1) → scalar loss."""
        same_batch = self.fixed.shape[0] in (1, moving.shape[0])
        if moving.shape[1:] != self.fixed.shape[1:] or not same_batch:
            raise ValueError(f"moving {tuple(moving.shape)} and fixed {tuple(self.fixed.shape)} must match")
        channels = moving.shape[1]
        sums = self._window_sum(torch.cat([moving, moving * moving, moving * self.fixed], 1))
        moving_sum, moving_sq_sum, cross_sum = sums.split(channels, 1)
        cross = cross_sum - moving_sum * self.fixed_sum / self.volume
        moving_var = (moving_sq_sum - moving_sum**2 / self.volume).clamp(min=self.smooth_dr)
        return -(cross * cross / (self.fixed_var * moving_var)).mean()
