"""Similarity losses of the instance optimisation: normalised MI of label maps (soft level sets) and LNCC.

MONAI's ``GlobalMutualInformationLoss`` bins raw intensities with Parzen windows and has no mask; fide's MI is
computed on k-means *label* maps with a validity mask (globalign's CMIF at zero shift), so it is written here.
LNCC is MONAI's ``LocalNormalizedCrossCorrelationLoss``.
"""

from __future__ import annotations

import torch
from monai.losses import LocalNormalizedCrossCorrelationLoss
from torch import nn

__all__ = ["LabelNMILoss", "soft_level_sets", "make_lncc"]


def soft_level_sets(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Soft indicators ``S_a(L) = max(0, 1 - |L - a|)`` of (possibly interpolated) label maps.

    Args:
        labels: (B, 1, H, W) float label values in [0, num_labels - 1].

    Returns:
        (B, num_labels, H, W), summing to 1 wherever labels are in range.
    """
    levels = torch.arange(num_labels, device=labels.device, dtype=labels.dtype).view(1, -1, 1, 1)
    return (1 - (labels - levels).abs()).clamp(min=0)


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
        a = soft_level_sets(pred, self.num_labels) * mask
        b = soft_level_sets(target, self.num_labels)
        joint = torch.einsum("bphw,bqhw->bpq", a, b)
        joint = joint / joint.sum((1, 2), keepdim=True).clamp(min=self.eps)
        pa, pb = joint.sum(2), joint.sum(1)

        def entropy(p: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
            return -(p * torch.log(p + self.eps)).sum(dims)

        h_joint = entropy(joint, (1, 2))
        return ((entropy(pa, (1,)) + entropy(pb, (1,))) / h_joint.clamp(min=self.eps) - 1).clamp(0, 1)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (1 - self.nmi(pred, target, mask)).mean()


def make_lncc(kernel_size: int) -> nn.Module:
    """MONAI LNCC for 2D images with a square window; its value is about [-1, 0], minimised."""
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    return LocalNormalizedCrossCorrelationLoss(spatial_dims=2, kernel_size=kernel_size, kernel_type="rectangular")
